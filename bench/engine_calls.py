#!/usr/bin/env python3
"""Container calls through Shoal against the same calls on the engine directly (one host).

A Shoal daemon (this checkout's code) is started on a temporary data root, in a swarm of one, with
one busybox container. Three calls, each timed ``--n`` times through Shoal's socket and directly on
dockerd's, interleaved (Shoal, engine, Shoal, ...) so machine noise hits both alike:

- inspect: ``GET /containers/{id}/json`` (Shoal: locate by full ID from its index, open a pipe,
  relay, add the Node field);
- exec:    create + start (not detached, hijacked) + inspect of ``true`` — what ``docker exec`` does;
- list:    ``GET /containers/json?all=1`` (Shoal: every ready node's engine, merged).

On one host the pipe is a direct unix-socket connection to the engine; on other hosts it is the
agent's tunnel over the cluster port (gRPC, mutual TLS), which adds a round trip per pipe.
Prints the medians and the ratio direct/Shoal (1.0: no cost) per call; the last line on stdout:
engine_calls: inspect_ms=<shoal> (<direct>) exec_ms=... list_ms=... ratios=<inspect>/<exec>/<list>

Usage: bench/engine_calls.py [--n 200]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import docker

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.shoal_process import ShoalProcess  # noqa: E402
from tests.integration.transport_env import listen_addr  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def exec_true(api: docker.APIClient, cid: str) -> None:
    eid = api.exec_create(cid, ["true"])["Id"]
    api.exec_start(eid)
    assert api.exec_inspect(eid)["ExitCode"] == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    shoal = ShoalProcess(pathlib.Path(tempfile.mkdtemp(prefix="shoal-bench-engine-")))
    shoal.start()
    engine = docker.APIClient(base_url="unix:///var/run/docker.sock", version="1.41")
    cid = ""
    try:
        via = docker.APIClient(base_url=shoal.host, version="1.41", timeout=60)
        shoal.client().swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
        cid = via.create_container("busybox:latest", ["sleep", "3600"], name="shoal-bench-engine")["Id"]
        via.start(cid)
        calls = {
            "inspect": lambda api: api.inspect_container(cid),
            "exec": lambda api: exec_true(api, cid),
            "list": lambda api: api.containers(all=True),
        }
        out: dict[str, tuple[float, float]] = {}
        for name, call in calls.items():
            call(via), call(engine)  # warm both paths
            through, direct = [], []
            for _ in range(args.n):
                through.append(timed(lambda c=call: c(via)))
                direct.append(timed(lambda c=call: c(engine)))
            out[name] = (statistics.median(through), statistics.median(direct))
            print(f"{name}: shoal median {out[name][0]:.2f} ms (p90 {sorted(through)[int(0.9 * args.n)]:.2f}), "
                  f"engine median {out[name][1]:.2f} ms, ratio {out[name][1] / out[name][0]:.2f}", file=sys.stderr)
        print("engine_calls: " + " ".join(f"{k}_ms={v[0]:.2f} ({v[1]:.2f})" for k, v in out.items())
              + " ratios=" + "/".join(f"{v[1] / v[0]:.2f}" for v in out.values()))
    finally:
        if cid:
            engine.remove_container(cid, force=True)
        try:
            shoal.client().swarm.leave(force=True)
        finally:
            shoal.stop()


if __name__ == "__main__":
    main()
