"""`shoal node ...`: ls, inspect, update, rm."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shoal.cli import format as fmt
from shoal.cli.client import Client, client_of, delete_each
from shoal.cli.parse import flag, parse_choice, parse_filter, parse_label

app = typer.Typer(help="Manage Swarm nodes.", no_args_is_help=True)


def manager_status(node: dict[str, Any]) -> str:
    ms = node.get("ManagerStatus")
    if not ms:
        return ""
    return "Leader" if ms.get("Leader") else fmt.pretty_state(str(ms.get("Reachability", "")))


def node_rows(nodes: list[dict[str, Any]], self_id: str) -> list[tuple[str, ...]]:
    """`docker node ls` rows, by hostname, with `*` beside the node the daemon runs on."""
    nodes = sorted(nodes, key=lambda n: (n.get("Description", {}).get("Hostname", ""), n["ID"]))
    return [
        (
            n["ID"] + (" *" if n["ID"] == self_id else ""),
            n.get("Description", {}).get("Hostname", ""),
            fmt.pretty_state(str(n.get("Status", {}).get("State", ""))),
            fmt.pretty_state(str(n.get("Spec", {}).get("Availability", ""))),
            manager_status(n),
            n.get("Description", {}).get("Engine", {}).get("EngineVersion", ""),
        )
        for n in nodes
    ]


@app.command("ls")
def ls(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only display IDs")] = False,
    filter_: Annotated[list[Any] | None, typer.Option("--filter", "-f", parser=flag(parse_filter))] = None,
) -> None:
    """List nodes in the swarm."""
    c = client_of(ctx)
    filters: dict[str, list[str]] = {}
    for k, v in filter_ or []:
        filters.setdefault(k, []).append(v)
    nodes = c.get("/nodes", params={"filters": filters or None})
    if quiet:
        for n in nodes:
            print(n["ID"])
        return
    self_id = c.info().get("Swarm", {}).get("NodeID", "")
    headers = ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"]
    fmt.print_table(headers, node_rows(nodes, self_id))


def _resolve(c: Client, ref: str) -> str:
    return c.self_node_id() if ref == "self" else ref


def pretty_node(n: dict[str, Any]) -> str:
    desc, spec, status = n.get("Description", {}), n.get("Spec", {}), n.get("Status", {})
    lines = [f"ID:\t\t\t{n['ID']}"]
    if spec.get("Name"):
        lines.append(f"Name:\t\t\t{spec['Name']}")
    if spec.get("Labels"):
        lines.append("Labels:")
        lines += [f" - {k}={v}" for k, v in spec["Labels"].items()]
    lines += [
        f"Hostname:\t\t{desc.get('Hostname', '')}",
        f"Joined at:\t\t{n.get('CreatedAt', '')}",
        "Status:",
        f" State:\t\t\t{fmt.pretty_state(str(status.get('State', '')))}",
        f" Availability:\t\t{fmt.pretty_state(str(spec.get('Availability', '')))}",
        f" Address:\t\t{status.get('Addr', '')}",
    ]
    ms = n.get("ManagerStatus")
    if ms:
        lines += ["Manager Status:", f" Address:\t\t{ms.get('Addr', '')}",
                  f" Raft Status:\t\t{fmt.pretty_state(str(ms.get('Reachability', '')))}",
                  f" Leader:\t\t{'Yes' if ms.get('Leader') else 'No'}"]
    plat, res = desc.get("Platform", {}), desc.get("Resources", {})
    lines += [
        "Platform:",
        f" Operating System:\t{plat.get('OS', '')}",
        f" Architecture:\t\t{plat.get('Architecture', '')}",
        "Resources:",
        f" CPUs:\t\t\t{fmt.cpus(res.get('NanoCPUs', 0))}",
        f" Memory:\t\t{fmt.size(res.get('MemoryBytes', 0))}",
        f"Engine Version:\t\t{desc.get('Engine', {}).get('EngineVersion', '')}",
    ]
    return fmt.align("\n".join(lines), 24)


@app.command()
def inspect(
    ctx: typer.Context,
    nodes: Annotated[list[str], typer.Argument(metavar="self|NODE...")],
    pretty: Annotated[bool, typer.Option("--pretty", help="Print the information in a human friendly format")] = False,
) -> None:
    """Display detailed information on one or more nodes."""
    c = client_of(ctx)
    found = [c.get("/nodes/{0}", _resolve(c, ref)) for ref in nodes]
    if pretty:
        print("\n\n".join(pretty_node(n) for n in found))
    else:
        fmt.print_json(found)


@app.command()
def update(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(metavar="NODE")],
    availability: Annotated[
        str | None, typer.Option(parser=flag(parse_choice("active", "pause", "drain")))
    ] = None,
    role: Annotated[str | None, typer.Option(parser=flag(parse_choice("worker", "manager")))] = None,
    label_add: Annotated[list[str] | None, typer.Option(parser=flag(parse_label))] = None,
    label_rm: Annotated[list[str] | None, typer.Option()] = None,
) -> None:
    """Update a node."""
    c = client_of(ctx)
    current = c.get("/nodes/{0}", _resolve(c, node))
    spec = dict(current.get("Spec", {}))
    if availability:
        spec["Availability"] = availability
    if role:
        spec["Role"] = role
    labels = dict(spec.get("Labels") or {})
    for key in label_rm or []:
        if key not in labels:
            # docker refuses to remove a label that is not there rather than silently doing nothing
            raise typer.BadParameter(f"key {key} doesn't exist in node's labels", param_hint="'--label-rm'")
        del labels[key]
    for item in label_add or []:
        k, _, v = item.partition("=")
        labels[k] = v
    spec["Labels"] = labels
    c.post("/nodes/{0}/update", current["ID"], body=spec, params={"version": current["Version"]["Index"]})
    print(node)


@app.command("rm")
def rm(
    ctx: typer.Context,
    nodes: Annotated[list[str], typer.Argument(metavar="NODE...")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Force remove a node from the swarm")] = False,
) -> None:
    """Remove one or more nodes from the swarm."""
    delete_each(client_of(ctx), "/nodes/{0}", nodes, params={"force": force})


def _set_role(ctx: typer.Context, nodes: list[str], role: str) -> None:
    """`node promote` / `node demote`: a role change per node, as `docker node promote` does it."""
    c = client_of(ctx)
    for n in nodes:
        current = c.get("/nodes/{0}", _resolve(c, n))
        spec = dict(current.get("Spec", {}))
        if spec.get("Role") == role:
            print(f"Node {n} is already a {role} in the swarm.")
            continue
        spec["Role"] = role
        c.post("/nodes/{0}/update", current["ID"], body=spec, params={"version": current["Version"]["Index"]})
        print(f"Node {n} {'promoted to a manager' if role == 'manager' else 'demoted'} in the swarm.")


@app.command()
def promote(ctx: typer.Context, nodes: Annotated[list[str], typer.Argument(metavar="NODE...")]) -> None:
    """Promote one or more nodes to manager in the swarm."""
    _set_role(ctx, nodes, "manager")


@app.command()
def demote(ctx: typer.Context, nodes: Annotated[list[str], typer.Argument(metavar="NODE...")]) -> None:
    """Demote one or more nodes from manager in the swarm."""
    _set_role(ctx, nodes, "worker")
