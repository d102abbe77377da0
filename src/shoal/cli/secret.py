"""`shoal secret ...` and `shoal config ...`: create, ls, inspect, rm, as the docker CLI has them.

The two are the same commands over ``/secrets`` and ``/configs``; they differ only in that a
config's data can be shown back (``inspect --pretty``) and a secret's never is.
"""

from __future__ import annotations

import base64
import sys
from typing import Annotated, Any

import typer

from shoal.cli import format as fmt
from shoal.cli.client import CLIError, client_of, delete_each
from shoal.cli.parse import flag, parse_filter, parse_label
from shoal.models import ConfigReference, SecretReference

MAX_READ = 1000 * 1024 + 1  # more than either limit: the daemon says which limit was passed


def _read_data(source: str, kind: str) -> bytes:
    """The object's content from FILE, or from stdin for ``-`` (as `docker secret create`)."""
    try:
        if source == "-":
            return sys.stdin.buffer.read(MAX_READ)
        with open(source, "rb") as f:
            return f.read(MAX_READ)
    except OSError as e:
        raise CLIError(f"Error reading content from \"{source}\": {e.strerror or e}") from None


def _labels(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def _pretty(obj: dict[str, Any], kind: str) -> str:
    spec = obj.get("Spec", {})
    lines = [f"ID:\t{obj['ID']}", f"Name:\t{spec.get('Name', '')}"]
    labels = spec.get("Labels") or {}
    if labels:
        lines.append("Labels:")
        lines += [f" - {k}={v}" for k, v in labels.items()]
    if kind == "secret":
        lines.append(f"Driver:\t{(spec.get('Driver') or {}).get('Name', '')}")
    lines += [f"Created at:\t{obj.get('CreatedAt', '')}", f"Updated at:\t{obj.get('UpdatedAt', '')}"]
    if kind == "config":
        data = base64.b64decode(spec.get("Data") or "").decode(errors="replace")
        lines += ["Data:", data.rstrip("\n")]
    return fmt.align("\n".join(lines), 16)


def _create(ctx: typer.Context, kind: str, name: str, source: str, labels: list[str] | None) -> None:
    data = _read_data(source, kind)
    spec = {"Name": name, "Labels": _labels(labels), "Data": base64.b64encode(data).decode()}
    print(client_of(ctx).post(f"/{kind}s/create", body=spec)["ID"])


def _ls(ctx: typer.Context, kind: str, quiet: bool, filter_: list[Any] | None) -> None:
    filters: dict[str, list[str]] = {}
    for k, v in filter_ or []:
        filters.setdefault(k, []).append(v)
    objs = client_of(ctx).get(f"/{kind}s", params={"filters": filters or None})
    objs.sort(key=lambda o: (o.get("Spec", {}).get("Name", ""), o["ID"]))
    if quiet:
        for o in objs:
            print(o["ID"])
        return
    headers = ["ID", "NAME", *(["DRIVER"] if kind == "secret" else []), "CREATED", "UPDATED"]
    rows = []
    for o in objs:
        spec = o.get("Spec", {})
        driver = [(spec.get("Driver") or {}).get("Name", "")] if kind == "secret" else []
        rows.append((o["ID"], spec.get("Name", ""), *driver, fmt.ago(o.get("CreatedAt", "")),
                     fmt.ago(o.get("UpdatedAt", ""))))
    fmt.print_table(headers, rows)


def _inspect(ctx: typer.Context, kind: str, refs: list[str], pretty: bool) -> None:
    c = client_of(ctx)
    found = [c.get(f"/{kind}s/{{0}}", ref) for ref in refs]
    if pretty:
        print("\n\n".join(_pretty(o, kind) for o in found))
    else:
        fmt.print_json(found)


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only display IDs")]
Filter = Annotated[list[Any] | None, typer.Option("--filter", "-f", parser=flag(parse_filter),
                                                  help="Filter output based on conditions provided")]
Labels = Annotated[list[str] | None, typer.Option("--label", "-l", parser=flag(parse_label), help="Labels")]
Source = Annotated[str, typer.Argument(metavar="FILE|-", help="File to read the content from, - for stdin")]
Pretty = Annotated[bool, typer.Option("--pretty", help="Print the information in a human friendly format")]

secret_app = typer.Typer(help="Manage Swarm secrets.", no_args_is_help=True)
config_app = typer.Typer(help="Manage Swarm configs.", no_args_is_help=True)


@secret_app.command("create")
def secret_create(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="SECRET")], source: Source,
                  label: Labels = None) -> None:
    """Create a secret from a file or STDIN as content."""
    _create(ctx, "secret", name, source, label)


@secret_app.command("ls")
def secret_ls(ctx: typer.Context, quiet: Quiet = False, filter_: Filter = None) -> None:
    """List secrets."""
    _ls(ctx, "secret", quiet, filter_)


@secret_app.command("inspect")
def secret_inspect(ctx: typer.Context, refs: Annotated[list[str], typer.Argument(metavar="SECRET...")],
                   pretty: Pretty = False) -> None:
    """Display detailed information on one or more secrets."""
    _inspect(ctx, "secret", refs, pretty)


@secret_app.command("rm")
def secret_rm(ctx: typer.Context, refs: Annotated[list[str], typer.Argument(metavar="SECRET...")]) -> None:
    """Remove one or more secrets."""
    delete_each(client_of(ctx), "/secrets/{0}", refs)


@config_app.command("create")
def config_create(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="CONFIG")], source: Source,
                  label: Labels = None) -> None:
    """Create a config from a file or STDIN."""
    _create(ctx, "config", name, source, label)


@config_app.command("ls")
def config_ls(ctx: typer.Context, quiet: Quiet = False, filter_: Filter = None) -> None:
    """List configs."""
    _ls(ctx, "config", quiet, filter_)


@config_app.command("inspect")
def config_inspect(ctx: typer.Context, refs: Annotated[list[str], typer.Argument(metavar="CONFIG...")],
                   pretty: Pretty = False) -> None:
    """Display detailed information on one or more configs."""
    _inspect(ctx, "config", refs, pretty)


@config_app.command("rm")
def config_rm(ctx: typer.Context, refs: Annotated[list[str], typer.Argument(metavar="CONFIG...")]) -> None:
    """Remove one or more configs."""
    delete_each(client_of(ctx), "/configs/{0}", refs)


# --------------------------------------------------------------------------- service create --secret/--config


def _parse_reference(value: str, what: str) -> tuple[str, dict[str, Any]]:
    """docker's ``--secret``/``--config`` value: ``NAME`` or ``source=NAME[,target=T,uid=U,gid=G,mode=0400]``
    → (name, File target). The daemon resolves the name (and fills defaults of its own)."""
    if "=" not in value and "," not in value:
        if not value:
            raise ValueError(f"invalid {what} reference: empty name")
        return value, {"Name": value, "UID": "0", "GID": "0", "Mode": 0o444}
    source, target, uid, gid, mode = "", "", "0", "0", 0o444
    for part in value.split(","):
        key, eq, val = part.partition("=")
        key = key.strip().lower()
        if not eq:
            raise ValueError(f"invalid field '{part}' must be a key=value pair")
        if key in ("source", "src"):
            source = val
        elif key == "target":
            target = val
        elif key == "uid":
            uid = val
        elif key == "gid":
            gid = val
        elif key == "mode":
            try:
                mode = int(val, 8)
            except ValueError:
                raise ValueError(f"invalid mode specified: {val!r}") from None
        else:
            raise ValueError(f"invalid field in {what} request: {key}")
    if not source:
        raise ValueError(f"source is required in {what} reference '{value}'")
    return source, {"Name": target or source, "UID": uid, "GID": gid, "Mode": mode}


def parse_secret_ref(value: str) -> SecretReference:
    name, file = _parse_reference(value, "secret")
    return SecretReference(SecretName=name, File=file)


def parse_config_ref(value: str) -> ConfigReference:
    name, file = _parse_reference(value, "config")
    return ConfigReference(ConfigName=name, File=file)
