#!/usr/bin/env python3
"""The routing mesh and VIPs against direct connections, on a real 4-host lab.

A 2-replica service ``web`` runs on host-2 and host-3 (one task each), on an overlay network,
publishing 8080:80. One client container on host-4 (same overlay network) runs an asyncio load
generator (``docker exec`` through host-4's engine): ``--conns`` concurrent connections, each doing
short HTTP/1.0 requests without keep-alive (connect, GET /, read to EOF, close) for ``--seconds``.
Three targets, interleaved over ``--rounds`` rounds (direct, mesh, vip, direct, …) so machine noise
hits all three alike:

- direct: the tasks' overlay addresses, port 80, round-robin over both (no NAT anywhere);
- mesh:   host-1's lab address 10.77.0.1:8080; host-1 runs no task, so every connection crosses
          two hosts (host-4 → host-1, DNATed there → host-2/3 over the ingress overlay);
- vip:    the service's VIP on the overlay, port 80 (DNATed on host-4 itself).

Each server answers its container's hostname, so the generator also counts which task answered
(both should, for every target). The server is a small asyncio HTTP server (``--server python``,
the default) in shoal-demo/base: it gave the higher direct rate, 5,359 requests/s in the lab
against 3,996 for busybox httpd (``--server httpd``, a fork per request; its small listen backlog
also costs the odd 1 s SYN retry), and 8,300-11,700 against 6,100-7,900 on one loopback.

On a one-machine lab every host's packet work runs on the same two cores. Without receive packet
steering on the lab's links (shoal/lab/net.py turns it on) it runs on the sender's core (one core
sits at 0-3 % idle in softirq while the other is 40 % idle): the generator is bound by that core,
so the mesh's extra hop through host-1 (NAT and forwarding, ~50 us of CPU a request) shows as lost
rate here, where on real hosts it would be host-1's CPU. See README, "Routing mesh".

The lab's daemons run the code of ``--src`` (default: this checkout's src; PYTHONPATH is set for
them). ``--mesh-host 2 --no-vip`` measures the old user-space proxy, which answered only on hosts
running a task and did not route VIPs: ``--src <a checkout of 9f3bee2>/src --mesh-host 2 --no-vip``.

Usage (root): bench/mesh.py [--conns 16] [--seconds 5] [--rounds 3] [--server python|httpd]
                            [--mesh-host 1] [--no-vip] [--src DIR] [--keep]
Per-round figures go to stderr; the last line on stdout:
mesh: conns=<n> direct_rps=<r> mesh_rps=<r> ratio=<mesh/direct> vip_rps=<r> p99_ms=<mesh p99>
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOSTS = 4
SECOND = 1_000_000_000
STATE_DIR = "/run/shoal-lab-mesh"
BASE = "shoal-demo/base:latest"  # python3 inside: the client, and the python server
MESH_PORT = 8080
TARGET_PORT = 80

# The python server: one Protocol object per connection, no streams (half the work of asyncio's
# StreamReader/Writer per request); answers the container's hostname and closes (HTTP/1.0).
PY_SERVER = r"""
import asyncio, socket, sys
port = int(sys.argv[1]) if len(sys.argv) > 1 else 80
body = socket.gethostname().encode() + b"\n"
resp = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        % len(body)) + body

class Conn(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            self.t.write(resp)
            self.t.close()  # flushes, then FIN: the server closes first, as HTTP/1.0 does

async def main():
    srv = await asyncio.get_running_loop().create_server(Conn, "0.0.0.0", port, backlog=4096, reuse_address=True)
    print("listening on", port, flush=True)
    await srv.serve_forever()

asyncio.run(main())
"""
HTTPD_SERVER = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p {port} -h /www"

# The load generator, run inside the client container: argv[1] is JSON
# {"targets": ["ip:port", ...], "conns": N, "seconds": D}; prints one JSON object.
LOADGEN = r"""
import asyncio, collections, json, sys, time
cfg = json.loads(sys.argv[1])
targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in cfg["targets"]]
REQ = b"GET / HTTP/1.0\r\nHost: web\r\nUser-Agent: shoal-bench\r\n\r\n"
TIMEOUT = 10.0

class Req(asyncio.Protocol):
    def __init__(self, done):
        self.done, self.chunks = done, []

    def connection_made(self, transport):
        transport.write(REQ)

    def data_received(self, data):
        self.chunks.append(data)

    def eof_received(self):
        return False  # the server closed: close our side too (no TIME_WAIT here)

    def connection_lost(self, exc):
        if not self.done.done():
            if exc is None:
                self.done.set_result(b"".join(self.chunks))
            else:
                self.done.set_exception(exc)

async def main():
    loop = asyncio.get_running_loop()
    lat, errors, answered = [], collections.Counter(), collections.Counter()
    turn = 0

    async def one(host, port):
        done = loop.create_future()
        transport, _ = await loop.create_connection(lambda: Req(done), host, port)
        try:
            return await done
        finally:
            transport.close()

    async def worker(deadline):
        nonlocal turn
        while time.monotonic() < deadline:
            host, port = targets[turn % len(targets)]
            turn += 1
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(TIMEOUT):
                    data = await one(host, port)
            except (OSError, TimeoutError) as e:
                errors[type(e).__name__] += 1
                continue
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
                errors["bad-response"] += 1
                continue
            lat.append(time.perf_counter() - t0)
            answered[body.decode(errors="replace").strip()] += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(start + cfg["seconds"]) for _ in range(cfg["conns"])))
    took = time.monotonic() - start
    lat.sort()

    def pct(p):
        return round(1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 3) if lat else None

    print(json.dumps({"requests": len(lat), "errors": dict(errors), "seconds": round(took, 3),
                      "rps": round(len(lat) / took, 1), "p50_ms": pct(50), "p90_ms": pct(90),
                      "p99_ms": pct(99), "max_ms": pct(100), "answered": dict(answered)}))

asyncio.run(main())
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def wait(predicate: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"mesh bench: {what} not within {within}s")
        time.sleep(0.2)


def server_command(kind: str) -> tuple[str, list[str]]:
    """(image, command) of the web service."""
    if kind == "httpd":
        return "busybox:latest", ["sh", "-c", HTTPD_SERVER.format(port=TARGET_PORT)]
    return BASE, ["python3", "-c", PY_SERVER, str(TARGET_PORT)]


def use_source(src: Path) -> str:
    """Make this script and the lab's daemons (spawned with our environment) import Shoal from
    ``src``; returns where a child interpreter really finds ``shoal``, to show it."""
    sys.path.insert(0, str(src))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, "-c", "import shoal; print(shoal.__file__)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def running_on(client: Any, name: str) -> dict[str, dict[str, Any]]:
    """Running tasks of a service by hostname."""
    names = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
    tasks = client.api.tasks(filters={"service": name, "desired-state": "running"})
    return {names[t["NodeID"]]: t for t in tasks if t["Status"]["State"] == "running"}


def task_ip(task: dict[str, Any], net_id: str) -> str:
    for att in task.get("NetworksAttachments") or []:
        if att["Network"]["ID"] == net_id and att.get("Addresses"):
            return str(att["Addresses"][0].split("/")[0])
    raise SystemExit(f"mesh bench: task {task['ID']} has no address on the bench network")


def summarize(results: dict[str, list[dict[str, Any]]], conns: int) -> str:
    med = {k: statistics.median(r["rps"] for r in rs) for k, rs in results.items() if rs}
    mesh_p99 = statistics.median(r["p99_ms"] or 0.0 for r in results["mesh"])
    ratio = med["mesh"] / med["direct"] if med["direct"] else 0.0
    vip = f"{med['vip']:.0f}" if "vip" in med else "-"
    return (f"mesh: conns={conns} direct_rps={med['direct']:.0f} mesh_rps={med['mesh']:.0f} ratio={ratio:.3f} "
            f"vip_rps={vip} p99_ms={mesh_p99:.2f}")


class Bench:
    def __init__(self, lab: Any, args: argparse.Namespace) -> None:
        import docker

        self.lab, self.args = lab, args
        self.client = docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)
        self.engine4 = docker.DockerClient(base_url=lab.host(4).engine, version="1.41", timeout=600)
        self.container: Any = None

    def deploy(self) -> dict[str, list[str]]:
        """The web service and the client; returns the targets (ip:port lists) by name."""
        import docker

        c = self.client
        wait(lambda: len(c.nodes.list()) == HOSTS and all(n.attrs["Status"]["State"] == "ready"
                                                          for n in c.nodes.list()), 60, "4 nodes ready")
        net = c.networks.create("benchnet", driver="overlay")
        image, command = server_command(self.args.server)
        web = c.services.create(
            image, command, name="web", networks=[net.id],
            endpoint_spec=docker.types.EndpointSpec(ports={MESH_PORT: TARGET_PORT}),
            constraints=["node.hostname!=host-1", "node.hostname!=host-4"], maxreplicas=1,
            mode=docker.types.ServiceMode("replicated", replicas=2), stop_grace_period=SECOND,
        )
        c.services.create(BASE, ["sleep", "infinity"], name="client", networks=[net.id],
                          constraints=["node.hostname==host-4"], stop_grace_period=SECOND)
        tasks = wait(lambda: (t := running_on(c, "web")) and sorted(t) == ["host-2", "host-3"] and t, 180,
                     "web running on host-2 and host-3")
        wait(lambda: "host-4" in running_on(c, "client"), 180, "the client running on host-4")
        self.container = wait(lambda: self.engine4.containers.list(
            filters={"label": "com.docker.swarm.service.name=client"}), 30, "the client container")[0]
        targets = {"direct": [f"{task_ip(tasks[h], net.id)}:{TARGET_PORT}" for h in ("host-2", "host-3")],
                   "mesh": [f"{self.lab.host(self.args.mesh_host).addr}:{MESH_PORT}"]}
        if not self.args.no_vip:
            web.reload()
            vips = [v["Addr"].split("/")[0] for v in web.attrs["Endpoint"].get("VirtualIPs") or []
                    if v["NetworkID"] == net.id]
            if not vips:
                raise SystemExit("mesh bench: the service has no VIP on the bench network (--no-vip skips it)")
            targets["vip"] = [f"{vips[0]}:{TARGET_PORT}"]
        return targets

    def load(self, targets: list[str], seconds: float) -> dict[str, Any]:
        cfg = json.dumps({"targets": targets, "conns": self.args.conns, "seconds": seconds})
        code, (out, err) = self.container.exec_run(["python3", "-c", LOADGEN, cfg], demux=True)
        if code != 0:
            raise SystemExit(f"mesh bench: the load generator failed ({code}): {(err or out or b'').decode()[-500:]}")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    def warm_up(self, targets: dict[str, list[str]]) -> None:
        """Each target answers without errors before anything is measured (a task's server may still
        be starting, the mesh's rules still arriving), and from both tasks unless it cannot: the old
        user-space proxy reached only its own host's task (then a warning, not a failure)."""
        for name, t in targets.items():
            def answers(t: list[str] = t) -> set[str]:
                r = self.load(t, 1.0)
                return set() if r["errors"] else set(r["answered"])
            seen = wait(answers, 90, f"{name} ({', '.join(t)}) answering without errors")
            deadline = time.monotonic() + 20
            while len(seen) < 2 and time.monotonic() < deadline:
                seen |= answers()
            if len(seen) < 2:
                log(f"WARNING {name}: {', '.join(t)} answers from one task only ({', '.join(seen)})")
            else:
                log(f"{name}: {', '.join(t)} answers from both tasks")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=16, help="concurrent connections")
    ap.add_argument("--seconds", type=float, default=5.0, help="per target and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server", choices=("python", "httpd"), default="python")
    ap.add_argument("--mesh-host", type=int, default=1, choices=range(1, HOSTS + 1),
                    help="the host whose :8080 is the mesh target (1: runs no task)")
    ap.add_argument("--no-vip", action="store_true", help="skip the VIP target (code without VIPs)")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the Shoal source the lab runs")
    ap.add_argument("--keep", action="store_true", help="leave the lab up (`shoal lab down --state-dir ...`)")
    args = ap.parse_args()
    if args.conns < 1 or args.seconds <= 0 or args.rounds < 1:
        raise SystemExit("mesh bench: --conns, --seconds and --rounds must be positive")
    if not (args.src / "shoal" / "lab" / "lab.py").is_file():
        raise SystemExit(f"mesh bench: --src {args.src}: no Shoal source there")
    where = use_source(args.src.resolve())
    from shoal.lab import DEFAULT_PRELOAD, Lab, missing_requirements

    why = missing_requirements()
    if why:
        raise SystemExit(f"mesh bench: {why}")
    log(f"shoal code: {where}")

    lab = Lab(STATE_DIR, HOSTS, preload=(*DEFAULT_PRELOAD, BASE), progress=lambda m: log(f"lab: {m}"))
    lab.up()
    try:
        bench = Bench(lab, args)
        targets = bench.deploy()
        bench.warm_up(targets)
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
        for r in range(args.rounds):
            for name, t in targets.items():
                res = bench.load(t, args.seconds)
                results[name].append(res)
                log(f"round {r + 1} {name:6} rps={res['rps']:8.1f} p50_ms={res['p50_ms']} p99_ms={res['p99_ms']} "
                    f"max_ms={res['max_ms']} errors={res['errors'] or 0} answered={res['answered']}")
        line = summarize(results, args.conns)
        if "vip" in results:
            med = {k: statistics.median(x["rps"] for x in rs) for k, rs in results.items()}
            log(f"vip/direct={med['vip'] / med['direct']:.3f}  direct p99_ms="
                f"{statistics.median(x['p99_ms'] for x in results['direct']):.2f}  vip p99_ms="
                f"{statistics.median(x['p99_ms'] for x in results['vip']):.2f}")
        print(line, flush=True)
    finally:
        if args.keep:
            log(f"lab kept: `shoal lab down --state-dir {STATE_DIR}` removes it")
        else:
            lab.down()


if __name__ == "__main__":
    main()
