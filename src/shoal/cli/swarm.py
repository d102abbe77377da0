"""`shoal swarm ...`: init, join, join-token, leave, inspect, update."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shoal.cli import format as fmt
from shoal.cli.client import Client, client_of
from shoal.cli.parse import flag, parse_choice, parse_duration
from shoal.extensions import CPU_OVERCOMMIT_LABEL, MEMORY_OVERCOMMIT_LABEL, PLACEMENT_STRATEGY_LABEL

app = typer.Typer(help="Manage Swarm.", no_args_is_help=True)

DEFAULT_LISTEN = "0.0.0.0:2377"


def join_instructions(c: Client, role: str, node_id: str | None = None) -> str:
    """"To add a worker to this swarm, run ..." with the token and this manager's address."""
    swarm = c.get("/swarm")
    token = (swarm.get("JoinTokens") or {}).get(role.capitalize(), "")
    node = c.get("/nodes/{0}", node_id or c.self_node_id())
    addr = (node.get("ManagerStatus") or {}).get("Addr", "")
    return (
        f"To add a {role} to this swarm, run the following command:\n\n"
        f"    shoal swarm join --token {token} {addr}\n"
    )


def _orchestration(limit: int | None) -> dict[str, Any] | None:
    return {"TaskHistoryRetentionLimit": limit} if limit is not None else None


@app.command()
def init(
    ctx: typer.Context,
    advertise_addr: Annotated[str | None, typer.Option(help="Advertised address: <ip|interface>[:port]")] = None,
    listen_addr: Annotated[str, typer.Option(help="Listen address (format: <ip|interface>[:port])")] = DEFAULT_LISTEN,
    force_new_cluster: Annotated[bool, typer.Option(help="Force create a new cluster from current state")] = False,
    availability: Annotated[str, typer.Option(parser=flag(parse_choice("active", "pause", "drain")))] = "active",
    task_history_limit: Annotated[int | None, typer.Option(help="Task history retention limit")] = None,
    ca_cert: Annotated[Path | None, typer.Option(help="Use this root CA certificate (PEM), not a new one")] = None,
    ca_key: Annotated[Path | None, typer.Option(help="The root CA's private key (PEM, EC)")] = None,
    store: Annotated[str | None, typer.Option(parser=flag(parse_choice("sqlite", "etcd")), help=(
        "Where the swarm's state lives: sqlite (one manager) or etcd (managers that fail over; "
        "Shoal runs an etcd member next to each manager unless --etcd-endpoints is given)"))] = None,
    etcd_endpoints: Annotated[str, typer.Option(
        help="An etcd cluster you run: URL[,URL...] (implies --store etcd)")] = "",
    etcd_port: Annotated[int, typer.Option(help="Client port of the etcd member Shoal runs (peer port: +1)")] = 0,
) -> None:
    """Initialize a swarm."""
    c = client_of(ctx)
    spec: dict[str, Any] = {}
    if task_history_limit is not None:
        spec["Orchestration"] = _orchestration(task_history_limit)
    if (ca_cert is None) != (ca_key is None):
        raise typer.BadParameter("--ca-cert and --ca-key go together")
    if ca_cert is not None and ca_key is not None:
        try:
            spec["CAConfig"] = {"SigningCACert": ca_cert.read_text(), "SigningCAKey": ca_key.read_text()}
        except OSError as e:
            raise typer.BadParameter(f"cannot read {e.filename}: {e.strerror}") from None
    body = {
        "ListenAddr": listen_addr,
        "AdvertiseAddr": advertise_addr or "",
        "ForceNewCluster": force_new_cluster,
        "Availability": availability,
        "Spec": spec,
    }
    endpoints = [e.strip() for e in etcd_endpoints.split(",") if e.strip()]
    if store or endpoints:
        body["Store"] = store or "etcd"
    if endpoints:
        body["EtcdEndpoints"] = endpoints
    if etcd_port:
        body["EtcdPort"] = etcd_port
    node_id = c.post("/swarm/init", body=body)
    print(f"Swarm initialized: current node ({node_id}) is now a manager.\n")
    print(join_instructions(c, "worker", str(node_id)))
    print("To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n")


@app.command()
def join(
    ctx: typer.Context,
    remote: Annotated[str, typer.Argument(metavar="HOST:PORT")],
    token: Annotated[str, typer.Option("--token", help="Token for entry into the swarm")],
    advertise_addr: Annotated[str | None, typer.Option(help="Advertised address")] = None,
    listen_addr: Annotated[str, typer.Option(help="Listen address")] = DEFAULT_LISTEN,
    availability: Annotated[str, typer.Option(parser=flag(parse_choice("active", "pause", "drain")))] = "active",
    etcd_port: Annotated[int, typer.Option(
        help="A manager of a swarm on etcd: client port of the etcd member Shoal runs here (peer port: +1)")] = 0,
) -> None:
    """Join a swarm as a node and/or manager."""
    c = client_of(ctx)
    body: dict[str, Any] = {
        "ListenAddr": listen_addr, "AdvertiseAddr": advertise_addr or "", "RemoteAddrs": [remote],
        "JoinToken": token, "Availability": availability,
    }
    if etcd_port:
        body["EtcdPort"] = etcd_port
    c.post("/swarm/join", body=body)
    manager = c.info().get("Swarm", {}).get("ControlAvailable", False)
    print(f"This node joined a swarm as a {'manager' if manager else 'worker'}.")


@app.command("join-token")
def join_token(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(metavar="(worker|manager)", parser=flag(parse_choice("worker", "manager")))],
    rotate: Annotated[bool, typer.Option("--rotate", help="Rotate join token")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only display token")] = False,
) -> None:
    """Manage join tokens."""
    c = client_of(ctx)
    if rotate:
        swarm = c.get("/swarm")
        c.post("/swarm/update", body=swarm["Spec"], params={
            "version": swarm["Version"]["Index"],
            "rotateWorkerToken": role == "worker",
            "rotateManagerToken": role == "manager",
        })
        if not quiet:
            print(f"Successfully rotated {role} join token.\n")
    if quiet:
        print((c.get("/swarm").get("JoinTokens") or {}).get(role.capitalize(), ""))
        return
    print(join_instructions(c, role))


@app.command()
def leave(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", "-f", help="Force this node to leave the swarm")] = False,
) -> None:
    """Leave the swarm."""
    client_of(ctx).post("/swarm/leave", params={"force": force})
    print("Node left the swarm.")


@app.command()
def inspect(ctx: typer.Context) -> None:
    """Display detailed information on the swarm."""
    fmt.print_json([client_of(ctx).get("/swarm")])


@app.command()
def update(
    ctx: typer.Context,
    task_history_limit: Annotated[int | None, typer.Option(min=-1, help="Task history retention limit")] = None,
    dispatcher_heartbeat: Annotated[
        int | None, typer.Option(parser=flag(parse_duration), metavar="DURATION", help="Dispatcher heartbeat period")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(parser=flag(parse_choice("spread", "binpack", "random")), help="Placement strategy")
    ] = None,
    cpu_overcommit: Annotated[float | None, typer.Option(min=1.0, help="CPU overcommit ratio (>= 1)")] = None,
    memory_overcommit: Annotated[float | None, typer.Option(min=1.0, help="Memory overcommit ratio (>= 1)")] = None,
) -> None:
    """Update the swarm."""
    c = client_of(ctx)
    swarm = c.get("/swarm")
    spec = swarm["Spec"]
    labels = dict(spec.get("Labels") or {})
    for key, value in ((PLACEMENT_STRATEGY_LABEL, strategy), (CPU_OVERCOMMIT_LABEL, cpu_overcommit),
                       (MEMORY_OVERCOMMIT_LABEL, memory_overcommit)):
        if value is not None:
            labels[key] = f"{value:g}" if isinstance(value, float) else value
    spec["Labels"] = labels
    if task_history_limit is not None:
        spec["Orchestration"] = {**(spec.get("Orchestration") or {}), "TaskHistoryRetentionLimit": task_history_limit}
    if dispatcher_heartbeat is not None:
        spec["Dispatcher"] = {**(spec.get("Dispatcher") or {}), "HeartbeatPeriod": dispatcher_heartbeat}
    c.post("/swarm/update", body=spec, params={"version": swarm["Version"]["Index"]})
    print("Swarm updated.")


@app.command()
def ca(
    ctx: typer.Context,
    rotate: Annotated[bool, typer.Option("--rotate", help="Rotate the swarm CA")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Suppress progress output")] = False,
) -> None:
    """Display and rotate the root CA."""
    c = client_of(ctx)
    swarm = c.get("/swarm")
    if rotate:
        spec = swarm["Spec"]
        ca_config = dict(spec.get("CAConfig") or {})
        ca_config["ForceRotate"] = int(ca_config.get("ForceRotate") or 0) + 1
        spec["CAConfig"] = ca_config
        c.post("/swarm/update", body=spec, params={"version": swarm["Version"]["Index"]})
        swarm = c.get("/swarm")
        if not quiet:
            print("Root CA rotated; nodes move to it as they renew their certificates.", file=sys.stderr)
    print((swarm.get("TLSInfo") or {}).get("TrustRoot", ""), end="")
