#!/usr/bin/env python3
"""Leader failover on a real lab: 3 managers on etcd (each running its etcd member) and 2 workers.

Each round finds the leader, SIGKILLs its Shoal daemon (its etcd member, a process of its own,
lives on, so etcd keeps its quorum of three), and times:

- ``elect_s``: loss → a surviving manager says it leads (`docker node ls` through it), and
- ``api_back_s``: loss → a write through a surviving manager succeeds (`service update`).

The old leader is then restored (it comes back as a follower) and the round waits until every slot
of the service runs exactly once again, checked on the five engines: ``tasks_lost`` counts slots
with no running container, ``tasks_duplicated`` slots running more than once, at that point.

Default timings: the election lease is 5 s (a dead leader's key expires 5 s after its last
keepalive), the dispatcher's heartbeat 5 s.

Usage (root): bench/leader_failover.py [--rounds 5] [--replicas 20]
Last line: leader_failover: managers=3 tasks=<n> elect_s=<median> api_back_s=<median> tasks_lost=<max>
tasks_duplicated=<max> (and the worst round of each time)
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from shoal.lab import Lab, missing_requirements  # noqa: E402

HOSTS, MANAGERS = 5, 3
SECOND = 1_000_000_000
STATE_DIR = "/run/shoal-lab-bench"
SERVICE = "leader-failover-bench"


def ask(fn: Any, default: Any = None) -> Any:
    try:
        return fn()
    except (docker.errors.APIError, docker.errors.DockerException, OSError):
        return default


def wait(predicate: Any, within: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + within
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"leader_failover bench: {what} not within {within}s")
        time.sleep(step)


def leader_of(lab: Lab, client: docker.DockerClient) -> int | None:
    """The host index of the leader as this manager sees it."""
    by_node = {lab.host(n).node_id: n for n in range(1, MANAGERS + 1)}
    for node in ask(lambda: client.nodes.list(), []):
        if (node.attrs.get("ManagerStatus") or {}).get("Leader"):
            return by_node.get(node.id)
    return None


def slot_counts(lab: Lab) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for h in lab.hosts:
        eng = docker.APIClient(base_url=h.engine, version="1.41", timeout=30)
        try:
            for c in eng.containers(filters={"label": f"com.docker.swarm.service.name={SERVICE}"}):
                out[c["Labels"].get("shoal.task.slot", "?")] += 1
        finally:
            eng.close()
    return out


def settled(lab: Lab, replicas: int) -> tuple[int, int] | None:
    """(lost, duplicated) once every slot runs exactly once; None while not yet."""
    slots = slot_counts(lab)
    lost = sum(1 for i in range(1, replicas + 1) if slots[str(i)] == 0)
    dup = sum(1 for n in slots.values() if n > 1)
    return (lost, dup) if not lost and not dup else None


def one_round(lab: Lab, clients: dict[int, docker.DockerClient], r: int, replicas: int
              ) -> tuple[float, float, int, int]:
    old = wait(lambda: leader_of(lab, clients[1 + r % MANAGERS]), 60, "a leader")
    survivors = [n for n in range(1, MANAGERS + 1) if n != old]
    t0 = time.monotonic()
    lab.kill(old)
    wait(lambda: any(leader_of(lab, clients[n]) == n for n in survivors), 60, "a new leader", 0.02)
    elect = time.monotonic() - t0

    def write() -> bool:
        svc = ask(lambda: clients[survivors[0]].services.get(SERVICE))
        return bool(svc is not None and ask(lambda: svc.update(labels={"round": str(r)}) or True, False))

    wait(write, 60, "a write through a surviving manager", 0.02)
    api_back = time.monotonic() - t0
    lab.restore(old)
    # Settled: every slot exactly once on the engines. Measured at the first moment it holds; a
    # slot lost or run twice for longer than 120 s fails the round.
    deadline = time.monotonic() + 120
    last = (replicas, 0)
    while time.monotonic() < deadline:
        slots = slot_counts(lab)
        last = (sum(1 for i in range(1, replicas + 1) if slots[str(i)] == 0),
                sum(1 for n in slots.values() if n > 1))
        if last == (0, 0):
            break
        time.sleep(0.5)
    return elect, api_back, last[0], last[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=20)
    args = ap.parse_args()
    why = missing_requirements()
    if why:
        raise SystemExit(f"leader_failover bench: {why}")
    lab = Lab(STATE_DIR, HOSTS, managers=MANAGERS)
    lab.up()
    try:
        clients = {n: docker.DockerClient(base_url=lab.host(n).api, version="1.41", timeout=30)
                   for n in range(1, HOSTS + 1)}
        clients[1].services.create("busybox:latest", command=["sleep", "3600"], name=SERVICE,
                                   mode=docker.types.ServiceMode("replicated", replicas=args.replicas),
                                   stop_grace_period=SECOND)
        wait(lambda: settled(lab, args.replicas), 180, "every replica running once", 0.5)
        rounds = []
        for r in range(args.rounds):
            rounds.append(one_round(lab, clients, r, args.replicas))
            e, a, lost, dup = rounds[-1]
            print(f"round {r + 1}: elect_s={e:.2f} api_back_s={a:.2f} tasks_lost={lost} tasks_duplicated={dup}",
                  flush=True)
        elect = [x[0] for x in rounds]
        back = [x[1] for x in rounds]
        print(f"leader_failover: managers={MANAGERS} tasks={args.replicas} elect_s={statistics.median(elect):.2f} "
              f"api_back_s={statistics.median(back):.2f} tasks_lost={max(x[2] for x in rounds)} "
              f"tasks_duplicated={max(x[3] for x in rounds)} worst_elect_s={max(elect):.2f} "
              f"worst_api_back_s={max(back):.2f}")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
