#!/usr/bin/env python3
"""The web console's aggregate routes at scale (issue 15): 1,000 hollow nodes, 100,000 tasks.

Brings up the scale benchmark's cluster (shoal/bench/scale.py: a real ``shoal daemon``, hollow
nodes over real gRPC sessions, services created through the Docker API) and, once every task runs,
times ``GET /shoal/console/overview``, ``/shoal/console/services`` and ``/shoal/console/visualizer``
(``--samples`` calls each, over the daemon's unix socket, whole body received, each after a small
write so that no answer comes from the visualizer's per-revision cache) and reports the median, the
worst and the response size, then the visualizer again with nothing changed (its cached answer).
The server's own time per route is the mean of the daemon's ``shoal_api_request_duration_seconds``
histogram over those calls. Target: each under
300 ms at 100,000 tasks, so that the overview page is usable within 2 s.

Usage: bench/console.py [--nodes 1000] [--tasks 100000] [--services 10] [--samples 7]
Last line on stdout: console: nodes=N tasks=T overview_ms=<median>/<worst> services_ms=... visualizer_ms=...
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import signal
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from shoal.bench.scale import ScaleConfig, hollow_cluster  # noqa: E402

ROUTES = ("/shoal/console/overview", "/shoal/console/services", "/shoal/console/visualizer")


def server_seconds(client: object) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) of the API's request histogram per console route."""
    api = client.api  # type: ignore[attr-defined]
    text = api._get(api._url("/metrics")).text
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "shoal_api_request_duration_seconds":
            continue
        for s in family.samples:
            route = s.labels.get("route", "").removeprefix("/v{api_version}")
            if route in ROUTES and s.name.endswith(("_sum", "_count")):
                acc = out.setdefault(route, [0.0, 0.0])
                acc[0 if s.name.endswith("_sum") else 1] += s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def bump(client: object) -> None:
    """One small write (a label on the manager's node): the store's revision moves, so the next
    call computes its answer (the visualizer keeps its answer for an unchanged revision)."""
    api = client.api  # type: ignore[attr-defined]
    cur = api.inspect_node(api.info()["Swarm"]["NodeID"])
    spec = {**cur["Spec"], "Labels": {**(cur["Spec"].get("Labels") or {}), "bench.console": str(time.time_ns())}}
    api.update_node(cur["ID"], cur["Version"]["Index"], spec)


def time_route(client: object, path: str, samples: int, fresh: bool) -> tuple[list[float], int]:
    api = client.api  # type: ignore[attr-defined]
    times, size = [], 0
    for _ in range(samples):
        if fresh:
            bump(client)
        t0 = time.perf_counter()
        resp = api._get(api._url(path))
        resp.raise_for_status()
        size = len(resp.content)
        times.append((time.perf_counter() - t0) * 1000)
    return times, size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--samples", type=int, default=7)
    p.add_argument("--fleet-processes", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a killed run still stops its processes
    cfg = ScaleConfig(nodes=args.nodes, tasks=args.tasks, services=args.services)
    with hollow_cluster(cfg, args.fleet_processes, prefix="shoal-bench-console-") as (_, client):
        before = server_seconds(client)
        results: dict[str, tuple[list[float], int]] = {}
        for route in ROUTES:  # each call after a write: nothing is answered from a cache
            results[route] = time_route(client, route, args.samples, fresh=True)
        after = server_seconds(client)
        cached, _ = time_route(client, ROUTES[2], args.samples, fresh=False)
        print(f"console routes at {cfg.nodes} nodes / {cfg.tasks} tasks ({args.samples} calls each, unix socket):")
        fields = []
        for route, (times, size) in results.items():
            s0, c0 = before.get(route, (0.0, 0.0))
            s1, c1 = after.get(route, (0.0, 0.0))
            server_ms = (s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else float("nan")
            med, worst = statistics.median(times), max(times)
            print(f"  GET {route:28} median {med:7.1f} ms  worst {worst:7.1f} ms  server mean {server_ms:7.1f} ms  "
                  f"{size / 1024:8.1f} KiB")
            fields.append(f"{route.rsplit('/', 1)[1]}_ms={med:.0f}/{worst:.0f}")
        print(f"  GET {ROUTES[2]:28} median {statistics.median(cached):7.1f} ms  worst {max(cached):7.1f} ms  "
              "(unchanged revision: the cached answer)")
        print(f"console: nodes={cfg.nodes} tasks={cfg.tasks} " + " ".join(fields)
              + f" visualizer_cached_ms={statistics.median(cached):.0f}/{max(cached):.0f}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
