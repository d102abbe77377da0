#!/usr/bin/env python3
"""Failover time on a real 4-host lab: a host is lost, how long until every replica runs again?

Each round starts a 12-replica service on a fresh 4-host lab state, SIGKILLs one host's Shoal
daemon and takes its link down (the host is lost: no heartbeats, no reports), and times the moment
of loss → all 12 replicas running on the other hosts (as the manager's API reports them). The host
is then restored and the round waits until no slot runs twice before the next round.

The time is the heartbeat grace (the node is marked down after 3 missed heartbeats) plus
rescheduling and starting the replacements; ``--heartbeat`` sets the cluster's period (Swarm
mode's default is 5 s).

``--fault engine`` stops the host's dockerd instead (``shoal lab stop-engine``): its agent lives on
and reports the engine down, so the time is dockerd's own shutdown (it stops its containers
before it exits) plus rescheduling; the heartbeat period plays no part.

Usage (root): bench/failover.py [--rounds 5] [--heartbeat 5] [--replicas 12] [--fault host|engine]
Last line: failover: hosts=4 replicas=12 fault=<host|engine> median_s=<s> worst_s=<s>
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

HOSTS = 4
SECOND = 1_000_000_000
STATE_DIR = "/run/shoal-lab-bench"


def running(client: docker.DockerClient, service_id: str, exclude: str = "") -> int:
    tasks = client.api.tasks(filters={"service": service_id, "desired-state": "running"})
    return sum(1 for t in tasks if t["Status"]["State"] == "running" and t["NodeID"] != exclude)


def wait(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"failover bench: {what} not within {within}s")
        time.sleep(0.05)


def no_duplicates(lab: Lab, service_id: str, replicas: int) -> bool:
    slots: collections.Counter[str] = collections.Counter()
    for h in lab.hosts:
        engine = docker.APIClient(base_url=h.engine, version="1.41", timeout=30)
        try:
            for c in engine.containers(filters={"label": f"shoal.service.id={service_id}"}):
                slots[c["Labels"]["shoal.task.slot"]] += 1
        finally:
            engine.close()
    return sum(slots.values()) == replicas and set(slots.values()) == {1}


def one_round(lab: Lab, client: docker.DockerClient, victim: str, replicas: int, fault: str = "host") -> float:
    svc = client.services.create("busybox:latest", command=["sleep", "3600"], name="failover-bench",
                                 mode=docker.types.ServiceMode("replicated", replicas=replicas),
                                 stop_grace_period=SECOND)
    try:
        wait(lambda: running(client, svc.id) == replicas, 120, "all replicas running")
        node_id = lab.host(victim).node_id
        t0 = time.monotonic()
        if fault == "engine":
            lab.stop_engine(victim)
        else:
            lab.kill(victim)
            lab.cut(victim)
        wait(lambda: running(client, svc.id, exclude=node_id) == replicas, 120, "replicas running elsewhere")
        took = time.monotonic() - t0
        lab.restore(victim)
        wait(lambda: no_duplicates(lab, svc.id, replicas), 120, "no duplicate slot after the host returned")
        return took
    finally:
        svc.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--heartbeat", type=float, default=5.0, help="dispatcher heartbeat period, seconds")
    ap.add_argument("--replicas", type=int, default=12)
    ap.add_argument("--fault", choices=("host", "engine"), default="host",
                    help="host: kill the daemon and cut the link; engine: stop the host's dockerd")
    args = ap.parse_args()
    why = missing_requirements()
    if why:
        raise SystemExit(f"failover bench: {why}")

    lab = Lab(STATE_DIR, HOSTS)
    lab.up()
    try:
        client = docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)
        spec = client.swarm.attrs["Spec"]
        spec.setdefault("Dispatcher", {})["HeartbeatPeriod"] = int(args.heartbeat * SECOND)
        client.api.update_swarm(version=client.swarm.attrs["Version"]["Index"], swarm_spec=spec)
        # Agents learn a new period at their next heartbeat, up to one old period (5 s) away, and
        # each session's deadline follows: let every one of them move to it before the first loss.
        time.sleep(2 * 5.0)
        times = []
        for r in range(args.rounds):
            victim = f"host-{2 + r % (HOSTS - 1)}"
            times.append(one_round(lab, client, victim, args.replicas, args.fault))
            what = "the engine of" if args.fault == "engine" else "lost"
            print(f"round {r + 1}: {what} {victim}, all {args.replicas} running again after {times[-1]:.2f}s",
                  flush=True)
        print(f"heartbeat: {args.heartbeat:g}s (node marked down after 3 missed)")
        print(f"failover: hosts={HOSTS} replicas={args.replicas} fault={args.fault} "
              f"median_s={statistics.median(times):.2f} worst_s={max(times):.2f}")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
