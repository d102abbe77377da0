"""`shoal lab ...`: N Shoal hosts on this machine (network namespaces on a bridge, each with its own
dockerd and Shoal daemon), and fault injection against them. Needs root. See shoal.lab."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Annotated

import typer

from shoal.cli import format as fmt
from shoal.cli.client import CLIError
from shoal.lab import DEFAULT_PRELOAD, DEFAULT_STATE_DIR, Lab, LabError

app = typer.Typer(
    help="A multi-host lab on this machine: hosts in network namespaces, each with dockerd and Shoal.",
    no_args_is_help=True,
)

StateDir = Annotated[
    str, typer.Option("--state-dir", metavar="DIR", envvar="SHOAL_LAB_STATE", help="Where the lab keeps its state")
]
Host = Annotated[str, typer.Argument(metavar="HOST", help="host-N, hN or N")]


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except LabError as e:
        raise CLIError(str(e)) from None


def _say(msg: str) -> None:
    print(msg, flush=True)


def _attach(state_dir: str) -> Lab:
    return Lab.attach(state_dir, progress=_say)


@app.command()
def up(
    hosts: Annotated[int, typer.Option("--hosts", "-n", help="Number of hosts")] = 4,
    preload: Annotated[
        list[str] | None,
        typer.Option("--preload", metavar="IMAGE", help="Image every host gets (repeatable; default busybox:latest)"),
    ] = None,
    no_join: Annotated[bool, typer.Option("--no-join", help="Start the daemons but form no swarm")] = False,
    managers: Annotated[int, typer.Option(
        "--managers", help="Hosts 1..N are managers; more than one puts the swarm's store on etcd (failover)")] = 1,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Build the lab; the last line printed is DOCKER_HOST=<the manager's API>."""
    started = time.monotonic()
    with _errors():
        lab = Lab(state_dir, hosts, preload or DEFAULT_PRELOAD, join=not no_join, managers=managers,
                  progress=_say)
        lab.up()
    _say(f"lab up: {hosts} host(s) in {time.monotonic() - started:.1f}s")
    _say(f"DOCKER_HOST={lab.docker_host}")


@app.command()
def status(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Hosts, addresses, links, and whether their processes are alive."""
    with _errors():
        lab = _attach(state_dir)
        rows = [
            (s.name, s.addr, s.link,
             f"{s.dockerd_pid or '-'} ({'running' if s.engine_running else 'stopped'})",
             f"{s.daemon_pid or '-'} ({'running' if s.daemon_running else 'stopped'})",
             s.node_id or "-", s.api)
            for s in lab.status()
        ]
        fmt.print_table(["HOST", "ADDRESS", "LINK", "DOCKERD", "SHOAL DAEMON", "NODE ID", "API"], rows)
        _say(f"registry {lab.registry} ({'running' if lab.registry_running() else 'stopped'})")
        _say(f"DOCKER_HOST={lab.docker_host}")


@app.command()
def kill(host: Host, state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """SIGKILL the host's Shoal daemon."""
    with _errors():
        lab = _attach(state_dir)
        lab.kill(host)
        _say(f"{lab.host(host).name}: shoal daemon killed")


@app.command("stop-engine")
def stop_engine(host: Host, state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Stop the host's dockerd (SIGTERM) and wait for it to exit."""
    with _errors():
        lab = _attach(state_dir)
        lab.stop_engine(host)
        _say(f"{lab.host(host).name}: dockerd stopped")


@app.command()
def cut(host: Host, state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Take the host's network link down."""
    with _errors():
        lab = _attach(state_dir)
        lab.cut(host)
        _say(f"{lab.host(host).name}: link down")


@app.command()
def restore(host: Host, state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Bring the host's link up and restart its dockerd and Shoal daemon if they are stopped."""
    with _errors():
        lab = _attach(state_dir)
        lab.restore(host)
        _say(f"{lab.host(host).name}: restored")


@app.command()
def down(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Stop everything the lab started and remove what it made (also after a failed `up`)."""
    with _errors():
        Lab(state_dir, progress=_say).down()
    _say("lab down")
