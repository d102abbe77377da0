"""`shoal logs query` and `shoal logs sink add|ls|rm`: collected logs (``aliyun.log_store_*``) and sinks.

Times are converted here, as ``docker logs --since`` does on the client: ``10m`` means ten minutes
before this machine's clock, not the daemon's.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from shoal.cli import format as fmt
from shoal.cli.client import CLIError, client_of
from shoal.logstore.query import parse_time

app = typer.Typer(help="Query collected logs (aliyun.log_store_* labels) and manage log sinks.",
                  no_args_is_help=True)
sink_app = typer.Typer(help="Manage where collected logs are sent besides the managers' files.",
                       no_args_is_help=True)
app.add_typer(sink_app, name="sink")


def _ts(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    try:
        return f"{parse_time(value):.6f}"
    except ValueError as e:
        raise CLIError(f"{flag}: {e}") from None


@app.command("query")
def query(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option("--service", help="Only this service's lines")] = None,
    store: Annotated[str | None, typer.Option("--store", help="Only this log store (aliyun.log_store_<name>)")] = None,
    since: Annotated[str | None, typer.Option("--since", help="From (RFC 3339, Unix time or e.g. 10m ago)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Until (same forms as --since)")] = None,
    grep: Annotated[str | None, typer.Option("--grep", help="Only lines containing TEXT")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="The last N matching lines")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record a line")] = False,
) -> None:
    """Collected log lines, oldest first."""
    params: dict[str, Any] = {"service": service, "store": store, "since": _ts(since, "--since"),
                              "until": _ts(until, "--until"), "grep": grep, "limit": limit}
    records = client_of(ctx).get("/shoal/logs/query", params={k: v for k, v in params.items() if v is not None})
    for r in records:
        if as_json:
            print(json.dumps(r))
        else:
            print(f"{r.get('time', '')} {r.get('service', '')}.{str(r.get('task', ''))[:12]} "
                  f"{r.get('store', '')} {r.get('source', '')}: {r.get('line', '')}")


@sink_app.command("add")
def sink_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    type_: Annotated[str, typer.Option("--type", help="loki, elasticsearch or file")],
    url: Annotated[str, typer.Option("--url", help="The receiver's base URL (a directory for file)")],
    index: Annotated[str, typer.Option("--index", help="Elasticsearch index (default shoal-logs)")] = "",
) -> None:
    """Send collected logs to a Loki, an Elasticsearch or a directory on the leading manager."""
    body: dict[str, Any] = {"Name": name, "Type": type_, "URL": url}
    if index:
        body["Index"] = index
    print(client_of(ctx).post("/shoal/logs/sinks", body=body)["ID"])


@sink_app.command("ls")
def sink_ls(ctx: typer.Context) -> None:
    """List log sinks (the built-in file sink is always on and not listed)."""
    sinks = client_of(ctx).get("/shoal/logs/sinks")
    rows = [(s["ID"][:12], s["Spec"]["Name"], s["Spec"]["Type"], s["Spec"]["URL"], s["Spec"].get("Index", ""))
            for s in sinks]
    fmt.print_table(["ID", "NAME", "TYPE", "URL", "INDEX"], rows)


@sink_app.command("rm")
def sink_rm(ctx: typer.Context, names: Annotated[list[str], typer.Argument(metavar="NAME...")]) -> None:
    """Remove log sinks."""
    c = client_of(ctx)
    for name in names:
        c.delete("/shoal/logs/sinks/{0}", name)
        print(name)
