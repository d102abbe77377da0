#!/usr/bin/env python3
"""What sampling task stats costs the agent: its own CPU per 100 containers (issue 14).

Starts ``--containers`` busybox containers (``sleep``) on the machine's dockerd, then runs the
agent's collector (agent/stats.py, the code the daemon runs, with its DockerExecutor) over them for
``--rounds`` rounds back to back, and measures this process's CPU time (user + system) per round.
dockerd's own work (it reads the cgroups) is not the agent's and is not counted; the round's wall
time is printed (the engine answers one-shot samples at its next collection tick, about 1 s).

Prints per-round medians and the worst round, scaled to 100 containers, and what that is as a
share of one CPU at the default interval (10 s); the last line on stdout:
stats_cost: cpu_ms_per_100=<median> (worst <w>) cpu_percent_at_10s=<p> round_s=<wall median>

Usage: bench/stats_cost.py [--containers 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import time

import docker

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from shoal.agent.executor.docker import DockerExecutor  # noqa: E402
from shoal.agent.stats import INTERVAL_S, StatsCollector  # noqa: E402
from shoal.models import ContainerSpec, Task, TaskSpec, TaskStatus, Version  # noqa: E402

PREFIX = "bench-stats-"


def cpu_s() -> float:
    return time.process_time()  # this process's user + system CPU, finer than os.times' ticks


def task(i: int) -> Task:
    return Task(ID=f"task{i}", Version=Version(), CreatedAt="", UpdatedAt="", ServiceID="svc", NodeID="node",
                Slot=i + 1, Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")),
                Status=TaskStatus(State="running"), DesiredState="running")


async def measure(ids: list[str], rounds: int) -> tuple[list[float], list[float]]:
    executor = DockerExecutor()
    targets = [(task(i), cid) for i, cid in enumerate(ids)]

    async def send(_: object) -> None:
        return None

    collector = StatsCollector(executor, lambda: targets, send)
    try:
        await collector.sample()  # primes every container (two samples each): not a steady round
        cpu, wall = [], []
        for _ in range(rounds):
            c0, w0 = cpu_s(), time.monotonic()
            out = await collector.sample()
            cpu.append(cpu_s() - c0)
            wall.append(time.monotonic() - w0)
            assert len(out) == len(ids), f"{len(out)} samples for {len(ids)} containers"
        return cpu, wall
    finally:
        await executor.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    client = docker.from_env(timeout=120)
    for c in client.containers.list(all=True, filters={"name": PREFIX}):
        c.remove(force=True)
    ids = []
    try:
        for i in range(args.containers):
            ids.append(client.containers.run("busybox:latest", ["sleep", "3600"], name=f"{PREFIX}{i}",
                                             detach=True, init=False).id)
        cpu, wall = asyncio.run(measure(ids, args.rounds))
    finally:
        for cid in ids:
            try:
                client.containers.get(cid).remove(force=True)
            except docker.errors.NotFound:
                pass
    per100 = [c * 1000 * 100 / args.containers for c in cpu]
    med, worst = statistics.median(per100), max(per100)
    print(f"{args.containers} containers, {args.rounds} rounds")
    print("agent CPU per round, per 100 containers (ms): " + " ".join(f"{x:.0f}" for x in per100))
    print("round wall time (s): " + " ".join(f"{x:.2f}" for x in wall))
    share = med / 1000 / INTERVAL_S * 100
    print(f"stats_cost: cpu_ms_per_100={med:.0f} (worst {worst:.0f}) cpu_percent_at_10s={share:.2f} "
          f"round_s={statistics.median(wall):.2f}")


if __name__ == "__main__":
    main()
