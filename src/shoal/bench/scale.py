"""``shoal bench scale``: a real manager, N hollow nodes, T replicas, and what it costs.

The manager is a ``shoal daemon`` subprocess (own data root and socket) whose swarm listens on
127.0.0.1; its own node is drained so no real container is ever started. The hollow nodes join it
over the real bootstrap and keep real gRPC sessions (see ``fleet.py``). Services are created and
everything is measured through the Docker API, as a user would see it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests
from docker.types import ServiceMode

from shoal.bench.fleet import FleetConfig, ProcessFleet

log = logging.getLogger(__name__)

ASSIGNED_OR_LATER = {"assigned", "accepted", "preparing", "ready", "starting", "running"}


@dataclass
class ScaleConfig:
    nodes: int = 1000
    tasks: int = 100_000
    services: int = 10
    manager_data: Path | None = None  # kept afterwards when given; a temporary directory otherwise
    join_batch: int = 50
    start_delay_s: float = 0.5
    place_samples: int = 20
    api_samples: int = 50
    timeout_s: float = 900.0  # for all tasks to run
    image: str = "busybox:latest"  # never pulled: hollow nodes only pretend
    fleet_processes: int = 2  # the hollow nodes' processes (one is one core at most)
    heartbeat_s: float | None = None  # the swarm's dispatcher heartbeat period; Swarm's default if None
    profile: Path | None = None  # py-spy output for the manager during the run (.svg, else raw stacks)
    store: str = "sqlite"  # "etcd": the swarm's store on etcd, one member per manager
    managers: int = 1  # with etcd: more managers (followers that hold the store), joined with the token
    log_level: str = "warning"  # the managers' (in shoal.log under their data roots)
    progress: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


@dataclass
class ScaleResult:
    nodes: int
    tasks: int
    store: str = "sqlite"
    managers: int = 1
    join_s: float = 0.0
    all_running_s: float = 0.0
    placements_per_s: float = 0.0
    place_ms: list[float] = field(default_factory=list)
    services_ms: list[float] = field(default_factory=list)
    nodes_ms: list[float] = field(default_factory=list)
    metrics_ms: list[float] = field(default_factory=list)  # GET /metrics (Prometheus scrape)
    rss_mb: float = 0.0
    false_down: int = 0  # nodes the manager marked Down while their agent was alive
    loop_lag: dict[str, float] = field(default_factory=dict)  # the manager's event-loop lag (ms)

    @property
    def api_ms(self) -> list[float]:
        return self.services_ms + self.nodes_ms

    def report(self) -> str:
        lines = [
            f"nodes joined and connected: {self.nodes} in {self.join_s:.1f} s",
            f"all {self.tasks} tasks running: {self.all_running_s:.1f} s "
            f"({self.placements_per_s:.0f} placements/s, request to running)",
            f"extra single-replica placement: p50 {pct(self.place_ms, 50):.1f} ms, "
            f"p99 {pct(self.place_ms, 99):.1f} ms ({len(self.place_ms)} samples)",
            f"GET /services: p50 {pct(self.services_ms, 50):.1f} ms, p99 {pct(self.services_ms, 99):.1f} ms",
            f"GET /nodes:    p50 {pct(self.nodes_ms, 50):.1f} ms, p99 {pct(self.nodes_ms, 99):.1f} ms",
            f"GET /metrics:  p50 {pct(self.metrics_ms, 50):.1f} ms, p99 {pct(self.metrics_ms, 99):.1f} ms",
            f"manager peak RSS: {self.rss_mb:.0f} MiB",
            f"manager event-loop lag: p50 {self.loop_lag.get('p50_ms', 0):.1f} ms, "
            f"p99 {self.loop_lag.get('p99_ms', 0):.1f} ms, max {self.loop_lag.get('max_ms', 0):.1f} ms",
            f"nodes marked Down while their agent was alive: {self.false_down}",
        ]
        return "\n".join(lines)

    def line(self) -> str:
        return (f"scale: nodes={self.nodes} tasks={self.tasks} all_running_s={self.all_running_s:.1f} "
                f"placements_per_s={self.placements_per_s:.0f} place_p99_ms={pct(self.place_ms, 99):.1f} "
                f"api_p99_ms={pct(self.api_ms, 99):.1f} rss_mb={self.rss_mb:.0f} false_down={self.false_down} "
                f"loop_lag_p99_ms={self.loop_lag.get('p99_ms', 0):.1f} metrics_p99_ms={pct(self.metrics_ms, 99):.1f}"
                + (f" store={self.store} managers={self.managers}" if self.store != "sqlite" else ""))


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (interpolated); 0 for no samples."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(max(int(p), 1), 99) - 1]


def raise_nofile() -> None:
    """Each hollow node holds a TLS connection (and the manager, our child, one per node too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port_pair() -> int:
    """A port p with p+1 also free on 127.0.0.1 (cluster listener and bootstrap listener)."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free pair of ports on 127.0.0.1")


def peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class ManagerProcess:
    """A ``shoal daemon`` subprocess with its own socket and data root."""

    def __init__(self, root: Path, args: tuple[str, ...] = (), log_level: str = "warning") -> None:
        self.root = root
        self.log_level = log_level
        self.args = args
        self.sock = root / "shoal.sock"
        self.data = root / "data"
        self.log = root / "shoal.log"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-c", "from shoal.cli.main import main; main()", "daemon", "-H", self.host,
               "--data-root", str(self.data), "--log-level", self.log_level, *self.args]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"shoal daemon exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(requests.exceptions.ConnectionError, docker.errors.APIError, FileNotFoundError):
                if self.client().ping():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"shoal daemon did not answer in {timeout}s: {self.log.read_text()[-2000:]}")

    def client(self, timeout: int = 300) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, version="1.41", timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def init_swarm(client: docker.DockerClient, port: int, heartbeat_s: float | None = None, etcd_port: int = 0) -> str:
    """Swarm init on 127.0.0.1:port with the manager's own node drained; returns the worker token.
    ``heartbeat_s`` is ``docker swarm init --dispatcher-heartbeat`` (Swarm's default 5 s if None);
    ``etcd_port``: the store on etcd, with a member on that client port."""
    api = client.api
    body: dict[str, object] = {"ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": "127.0.0.1",
                               "Availability": "drain"}
    if etcd_port:
        body["Store"], body["EtcdPort"] = "etcd", etcd_port
    if heartbeat_s is not None:
        body["Spec"] = {"Dispatcher": {"HeartbeatPeriod": int(heartbeat_s * 1e9)}}
    api._result(api._post_json(api._url("/swarm/init"), data=body), json=True)
    return str(api.inspect_swarm()["JoinTokens"]["Worker"])


def join_manager(client: docker.DockerClient, leader_port: int, token: str) -> None:
    """Join a swarm on etcd as a drained manager (its own cluster port and etcd member)."""
    api = client.api
    body = {"ListenAddr": f"127.0.0.1:{free_port_pair()}", "AdvertiseAddr": "127.0.0.1",
            "RemoteAddrs": [f"127.0.0.1:{leader_port}"], "JoinToken": token, "Availability": "drain",
            "EtcdPort": free_port_pair()}
    api._raise_for_status(api._post_json(api._url("/swarm/join"), data=body))


def timed_get(client: docker.DockerClient, path: str) -> float:
    """Milliseconds until the whole body of GET ``path`` arrived (JSON decoding not counted)."""
    api = client.api
    t0 = time.perf_counter()
    resp = api._get(api._url(path))
    resp.raise_for_status()
    _ = resp.content
    return (time.perf_counter() - t0) * 1000


def replicas_per_service(tasks: int, services: int) -> list[int]:
    services = max(1, min(services, tasks))
    base, extra = divmod(tasks, services)
    return [base + (1 if i < extra else 0) for i in range(services)]


def running_tasks(client: docker.DockerClient) -> int:
    return sum((s.get("ServiceStatus") or {}).get("RunningTasks", 0)
               for s in client.api.services(filters={"label": "shoal.bench=scale"}, status=True))


def wait_all_running(client: docker.DockerClient, cfg: ScaleConfig, t0: float) -> float:
    last_report = time.monotonic()
    while True:
        n = running_tasks(client)
        if n >= cfg.tasks:
            return time.monotonic() - t0
        if time.monotonic() - t0 > cfg.timeout_s:
            raise TimeoutError(f"only {n} of {cfg.tasks} tasks running after {cfg.timeout_s:.0f} s")
        if time.monotonic() - last_report > 5:
            cfg.progress(f"  {time.monotonic() - t0:6.1f} s: {n} running")
            last_report = time.monotonic()
        time.sleep(0.25)


def manager_health(client: docker.DockerClient) -> dict:
    api = client.api
    return dict(api._result(api._get(api._url("/shoal/debug/manager")), json=True))


def wait_durable(client: docker.DockerClient, timeout_s: float = 60.0) -> float:
    """Seconds until the manager's store has persisted everything committed so far. The probes
    measure placement in a full, settled cluster; a create answered while the deploy's last status
    writes are still being persisted waits for them (its answer waits until it is durable)."""
    t0 = time.monotonic()
    target = manager_health(client)["Store"]["Revision"]
    while manager_health(client)["Store"]["Durable"] < target and time.monotonic() - t0 < timeout_s:
        time.sleep(0.05)
    return time.monotonic() - t0


def create_services(manager: ManagerProcess, cfg: ScaleConfig, counts: list[int]) -> None:
    """All services requested at once, one client each (as a deploy tool would): every answer waits
    until the write is durable, and under this load one such round trip takes about a second, so
    ten in a row would measure the clients' patience rather than the cluster's work."""

    def create(i: int, n: int) -> None:
        client = manager.client()
        try:
            client.api.create_service(docker.types.TaskTemplate(docker.types.ContainerSpec(cfg.image)),
                                      name=f"bench-{i}", mode=ServiceMode("replicated", replicas=n),
                                      labels={"shoal.bench": "scale"})
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(counts)) as pool:
        for f in [pool.submit(create, i, n) for i, n in enumerate(counts)]:
            f.result()


def place_one(client: docker.DockerClient, cfg: ScaleConfig, name: str) -> float:
    """Milliseconds from the create request to the new service's task being assigned (or later)."""
    t0 = time.perf_counter()
    svc = client.services.create(cfg.image, name=name, mode=ServiceMode("replicated", replicas=1),
                                 labels={"shoal.bench": "probe"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tasks = client.api.tasks(filters={"service": svc.id})
        if any(t["Status"]["State"] in ASSIGNED_OR_LATER for t in tasks):
            return (time.perf_counter() - t0) * 1000
        time.sleep(0.002)
    raise TimeoutError(f"service {name}'s task was not assigned within 60 s")


@contextlib.contextmanager
def profiler(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy on the manager while the block runs (when asked for and installed)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if out is None or not Path(spy).exists():
        yield
        return
    fmt = "flamegraph" if out.suffix == ".svg" else "raw"
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "-o", str(out), "--format", fmt, "--rate", "50",
                             "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def hollow_cluster(cfg: ScaleConfig, fleet_processes: int = 2, manager_args: tuple[str, ...] = (),
                   prefix: str = "shoal-bench-") -> Iterator[tuple[ManagerProcess, docker.DockerClient]]:
    """A manager with ``cfg.nodes`` hollow nodes and ``cfg.tasks`` running tasks in ``cfg.services``
    services, for benchmarks that measure something on a cluster of that size (the console's);
    everything is stopped and removed on exit."""
    raise_nofile()
    say = cfg.progress
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    manager = ManagerProcess(tmp / "manager", manager_args, cfg.log_level)
    fleet: ProcessFleet | None = None
    try:
        manager.start()
        client = manager.client()
        port = free_port_pair()
        token = init_swarm(client, port)
        fleet = ProcessFleet(FleetConfig(manager=f"127.0.0.1:{port}", token=token, cert_root=tmp / "nodes",
                                         nodes=cfg.nodes, join_batch=cfg.join_batch, start_delay_s=cfg.start_delay_s),
                             processes=fleet_processes)
        say(f"joining {cfg.nodes} hollow nodes ...")
        fleet.start()
        counts = replicas_per_service(cfg.tasks, cfg.services)
        say(f"creating {len(counts)} services, {cfg.tasks} replicas ...")
        t0 = time.monotonic()
        create_services(manager, cfg, counts)
        say(f"  all {cfg.tasks} tasks running in {wait_all_running(client, cfg, t0):.1f} s")
        wait_durable(client)
        yield manager, client
    finally:
        manager.stop()  # first: a manager watching 1,000 sessions end would only reschedule
        if fleet is not None:
            with contextlib.suppress(Exception):
                fleet.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def run_scale(cfg: ScaleConfig) -> ScaleResult:
    raise_nofile()
    say = cfg.progress
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    root = cfg.manager_data or tmp / "manager"
    manager = ManagerProcess(root, log_level=cfg.log_level)
    followers: list[ManagerProcess] = []
    fleet: ProcessFleet | None = None
    result = ScaleResult(cfg.nodes, cfg.tasks, cfg.store, cfg.managers)
    try:
        manager.start()
        client = manager.client()
        port = free_port_pair()
        on_etcd = cfg.store == "etcd"
        token = init_swarm(client, port, cfg.heartbeat_s, etcd_port=free_port_pair() if on_etcd else 0)
        say(f"manager pid {manager.pid} on {manager.host}, cluster port 127.0.0.1:{port}"
            + (", store on etcd" if on_etcd else ""))
        for i in range(2, cfg.managers + 1 if on_etcd else 0):
            follower = ManagerProcess(root.parent / f"manager{i}", ("--hostname", f"manager-{i}"), cfg.log_level)
            followers.append(follower)
            follower.start()
            join_manager(follower.client(), port, client.api.inspect_swarm()["JoinTokens"]["Manager"])
            say(f"manager {i} pid {follower.pid} joined (follower)")
        with profiler(manager.pid, cfg.profile):
            fleet = ProcessFleet(FleetConfig(manager=f"127.0.0.1:{port}", token=token, cert_root=tmp / "nodes",
                                             nodes=cfg.nodes, join_batch=cfg.join_batch,
                                             start_delay_s=cfg.start_delay_s,
                                             log_dir=root if cfg.manager_data else None),
                               processes=cfg.fleet_processes)
            say(f"joining {cfg.nodes} hollow nodes in {fleet.processes} processes, {cfg.join_batch} at a time each ...")
            fleet.start()
            result.join_s = fleet.connect_s
            say(f"  joined in {fleet.join_s:.1f} s, all sessions up in {fleet.connect_s:.1f} s")

            counts = replicas_per_service(cfg.tasks, cfg.services)
            say(f"creating {len(counts)} services at once, {cfg.tasks} replicas in all ...")
            t0 = time.monotonic()
            create_services(manager, cfg, counts)
            say(f"  services created in {time.monotonic() - t0:.1f} s")
            result.all_running_s = wait_all_running(client, cfg, t0)
            result.placements_per_s = cfg.tasks / result.all_running_s if result.all_running_s else 0.0
            say(f"  all running in {result.all_running_s:.1f} s")

            settle_s = wait_durable(client)
            say(f"  the deploy's writes durable {settle_s:.1f} s later")
            say(f"placing {cfg.place_samples} extra single-replica services ...")
            result.place_ms = [place_one(client, cfg, f"probe-{i}") for i in range(cfg.place_samples)]
            say("  placements (ms, in order): " + " ".join(f"{ms:.0f}" for ms in result.place_ms))
            say(f"timing GET /services, GET /nodes and GET /metrics ({cfg.api_samples} each) ...")
            result.services_ms = [timed_get(client, "/services") for _ in range(cfg.api_samples)]
            result.nodes_ms = [timed_get(client, "/nodes") for _ in range(cfg.api_samples)]
            result.metrics_ms = [timed_get(client, "/metrics") for _ in range(cfg.api_samples)]
            health = manager_health(client)
            result.loop_lag = health["LoopLag"] or {}
            say(f"  manager GC: {health.get('GC')}")
            alive = fleet.alive_node_ids()
            result.false_down = sum(1 for nid in health["NodesMarkedDown"] if nid in alive)
        result.rss_mb = peak_rss_mb(manager.pid)
        return result
    finally:
        for f in followers:
            f.stop()
        manager.stop()  # first: a manager watching 1,000 sessions end would only reschedule
        if fleet is not None:
            with contextlib.suppress(Exception):
                fleet.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``bench/scale.py``'s entry point: argparse flags over :class:`ScaleConfig`."""
    import argparse

    p = argparse.ArgumentParser(description="Shoal scale benchmark: hollow nodes against a real manager.")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--manager-data", type=Path, default=None)
    p.add_argument("--start-delay", type=float, default=0.5, help="hollow engine's start time (s)")
    p.add_argument("--join-batch", type=int, default=50)
    p.add_argument("--timeout", type=float, default=900.0, help="for all tasks to run (s)")
    p.add_argument("--heartbeat", type=float, default=None, help="swarm heartbeat period (s); default 5")
    p.add_argument("--fleet-processes", type=int, default=2, help="processes the hollow nodes run in")
    p.add_argument("--profile", type=Path, default=None, help="py-spy the manager into this file")
    p.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite", help="the swarm's store")
    p.add_argument("--managers", type=int, default=1, help="managers (with --store etcd)")
    p.add_argument("--log-level", default="warning", help="the managers' log level (logs kept with --manager-data)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    # SIGTERM (a timeout, a killed series) ends the run like Ctrl-C: run_scale's cleanup stops the
    # managers and the hollow nodes instead of leaving them running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cfg = ScaleConfig(nodes=args.nodes, tasks=args.tasks, services=args.services, manager_data=args.manager_data,
                      start_delay_s=args.start_delay, join_batch=args.join_batch, timeout_s=args.timeout,
                      heartbeat_s=args.heartbeat, profile=args.profile, fleet_processes=args.fleet_processes,
                      store=args.store, managers=args.managers, log_level=args.log_level)
    result = run_scale(cfg)
    print(result.report())
    print(result.line(), flush=True)
    return 0
