#!/usr/bin/env python3
"""The manager's cost of a stack deploy: validation, diff, writes (sqlite, as a manager runs).

A stack of N services (3 replicas each, one overlay network) on a store with 20 nodes: a dry run
(diff + placement plan of every service), the first deploy (network + N services created), a
re-deploy of the same file (everything compared, nothing written) and a re-deploy changing every
service's image. The engine is not involved: this is the control-plane work behind
``shoal stack deploy``; tasks are then made by the orchestrator as for any service.

Usage: bench/stack_deploy.py [--services 100] [--rounds 5]
Last line: stack_deploy: services=N dry_run_ms=… create_ms=… unchanged_ms=… update_all_ms=…  (medians)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from shoal.controlapi import stacks
from shoal.models import (
    ContainerSpec,
    Driver,
    NetworkAttachmentConfig,
    NetworkSpec,
    ReplicatedService,
    ServiceMode,
    ServiceSpec,
    StackResources,
    StackSpec,
    TaskSpec,
)
from shoal.orchestrator.testutils import make_node
from shoal.store import MemoryStore, SqliteBackend


def stack(n: int, image: str) -> StackSpec:
    services = {
        f"s{i}": ServiceSpec(
            TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image=image),
                                  Networks=[NetworkAttachmentConfig(Target="big_default", Aliases=[f"s{i}"])]),
            Mode=ServiceMode(Replicated=ReplicatedService(Replicas=3)),
        )
        for i in range(n)
    }
    nets = {"big_default": NetworkSpec(DriverConfiguration=Driver(Name="overlay"))}
    return StackSpec(Name="big", Compose="", Resources=StackResources(Services=services, Networks=nets))


def ms(f: object) -> float:
    t = time.perf_counter()
    f()  # type: ignore[operator]
    return (time.perf_counter() - t) * 1000


def one_round(n: int, tmp: Path) -> tuple[float, float, float, float]:
    store = MemoryStore(SqliteBackend(tmp / "state.db"))
    for i in range(20):
        make_node(store, f"h{i}", node_id=f"n{i}")
    v1, v2 = stack(n, "busybox:1"), stack(n, "busybox:2")
    dry = ms(lambda: stacks.deploy_stack(store, v1, dry_run=True))
    create = ms(lambda: stacks.deploy_stack(store, v1))
    unchanged = ms(lambda: stacks.deploy_stack(store, v1))
    update = ms(lambda: stacks.deploy_stack(store, v2))
    return dry, create, unchanged, update


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            rows.append(one_round(args.services, Path(d)))
        print(f"round {r + 1}: dry_run_ms={rows[-1][0]:.1f} create_ms={rows[-1][1]:.1f} "
              f"unchanged_ms={rows[-1][2]:.1f} update_all_ms={rows[-1][3]:.1f}")
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(f"stack_deploy: services={args.services} dry_run_ms={med[0]:.1f} create_ms={med[1]:.1f} "
          f"unchanged_ms={med[2]:.1f} update_all_ms={med[3]:.1f}")


if __name__ == "__main__":
    main()
