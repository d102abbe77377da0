"""``shoal bench``: benchmarks against a real manager started for the occasion."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli.parse import flag, parse_choice

app = typer.Typer(help="Benchmark a Shoal manager.", no_args_is_help=True)


@app.command()
def scale(
    nodes: Annotated[int, typer.Option(help="Hollow nodes to join")] = 1000,
    tasks: Annotated[int, typer.Option(help="Replicas in all")] = 100_000,
    services: Annotated[int, typer.Option(help="Services the replicas are split over")] = 10,
    manager_data: Annotated[Path | None, typer.Option(help="Manager's data root (kept afterwards)")] = None,
    start_delay: Annotated[float, typer.Option(help="Hollow engine's container start time (s)")] = 0.5,
    join_batch: Annotated[int, typer.Option(help="Nodes joining at once")] = 50,
    timeout: Annotated[float, typer.Option(help="Seconds allowed for all tasks to run")] = 900.0,
    heartbeat: Annotated[float | None, typer.Option(help="Swarm heartbeat period (s); default 5")] = None,
    profile: Annotated[Path | None, typer.Option(help="py-spy the manager into this file (.svg or raw)")] = None,
    store: Annotated[str, typer.Option(parser=flag(parse_choice("sqlite", "etcd")),
                                       help="The swarm's store: sqlite, or etcd (a member per manager)")] = "sqlite",
    managers: Annotated[int, typer.Option(help="Managers, with --store etcd (the others follow)")] = 1,
    log_level: Annotated[str, typer.Option(help="The managers' log level (logs kept with --manager-data)")] = "warning",
) -> None:
    """Start a manager, join hollow nodes, run TASKS replicas, and print what it took."""
    from shoal.bench.scale import ScaleConfig, run_scale  # the agent and transport: load only here

    logging.basicConfig(level=logging.ERROR)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # cleanup runs: no manager left behind
    result = run_scale(ScaleConfig(nodes=nodes, tasks=tasks, services=services, manager_data=manager_data,
                                   start_delay_s=start_delay, join_batch=join_batch, timeout_s=timeout,
                                   heartbeat_s=heartbeat, profile=profile, store=store, managers=managers,
                                   log_level=log_level))
    print(result.report())
    print(result.line(), flush=True)
