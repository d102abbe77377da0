"""`shoal user ...` and `shoal audit`: API users, their certificates and tokens, and the audit log.

``shoal user cert NAME --role operator --team web -o DIR`` makes the key here (it never leaves this
host), has the swarm's CA sign it, and writes DIR/{key,cert,ca}.pem — the files the docker CLI
reads with ``--tlsverify`` (or DOCKER_CERT_PATH=DIR DOCKER_TLS_VERIFY=1).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import docker.errors
import typer

from shoal.ca.certs import generate_key_and_csr, write_private
from shoal.cli import format as fmt
from shoal.cli.client import CLIError, client_of

app = typer.Typer(help="Manage the API's users, their certificates and tokens.", no_args_is_help=True)

Role = Annotated[str | None, typer.Option("--role", help="admin, operator or viewer")]
Teams = Annotated[list[str] | None, typer.Option("--team", help="A team the user works in (repeatable)")]
Name = Annotated[str, typer.Argument(metavar="NAME")]


def _put(ctx: typer.Context, name: str, role: str | None, teams: list[str] | None) -> dict[str, Any]:
    """Create the user or change its role/teams; an existing user keeps what is not given."""
    c = client_of(ctx)
    spec: dict[str, Any] = {"Name": name, "Role": role or "viewer"}
    if role is None or teams is None:
        try:
            cur = c.get("/shoal/users/{0}", name)
        except docker.errors.NotFound:  # a new user, with the defaults
            cur = None
        if cur is not None:
            spec["Role"] = role or cur["Spec"].get("Role", "viewer")
            if teams is None and cur["Spec"].get("Teams"):
                spec["Teams"] = cur["Spec"]["Teams"]
    if teams is not None:
        spec["Teams"] = teams
    out: dict[str, Any] = c.post("/shoal/users", body=spec)
    return out


@app.command("create")
def create(ctx: typer.Context, name: Name, role: Role = None, team: Teams = None) -> None:
    """Create a user (or change its role and teams)."""
    user = _put(ctx, name, role, team)
    print(user["ID"])


@app.command("ls")
def ls(ctx: typer.Context) -> None:
    """List users."""
    users = client_of(ctx).get("/shoal/users")
    rows = [(u["ID"][:12], u["Spec"]["Name"], u["Spec"].get("Role", ""), ",".join(u["Spec"].get("Teams") or []),
             str(len(u.get("Tokens") or [])), fmt.ago(u.get("CreatedAt", ""))) for u in users]
    fmt.print_table(["ID", "NAME", "ROLE", "TEAMS", "TOKENS", "CREATED"], rows)


@app.command("inspect")
def inspect(ctx: typer.Context, names: Annotated[list[str], typer.Argument(metavar="NAME...")]) -> None:
    """Display a user's details (tokens without their secrets)."""
    c = client_of(ctx)
    fmt.print_json([c.get("/shoal/users/{0}", n) for n in names])


@app.command("rm")
def rm(ctx: typer.Context, names: Annotated[list[str], typer.Argument(metavar="NAME...")]) -> None:
    """Remove users: their tokens and certificates stop working at once."""
    c = client_of(ctx)
    for n in names:
        c.delete("/shoal/users/{0}", n)
        print(n)


@app.command("cert")
def cert(
    ctx: typer.Context,
    name: Name,
    role: Role = None,
    team: Teams = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for key.pem, cert.pem and ca.pem")] =
    Path("."),
) -> None:
    """Issue a client certificate for NAME (creating the user with --role/--team if needed)."""
    c = client_of(ctx)
    if role is not None or team is not None:
        _put(ctx, name, role, team)
    key_pem, csr_pem = generate_key_and_csr()
    resp = c.post("/shoal/users/{0}/cert", name, body={"CSR": csr_pem})
    try:
        output.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(output / "key.pem", key_pem)
        (output / "cert.pem").write_text(resp["Cert"])
        # ca.pem verifies the daemon: its own API CA, or the operator's; the swarm's root otherwise.
        (output / "ca.pem").write_text(resp.get("CA") or resp["ClusterCA"])
    except OSError as e:
        raise CLIError(f"cannot write the certificate to {output}: {e.strerror or e}") from None
    print(f"wrote {output / 'key.pem'}, {output / 'cert.pem'} and {output / 'ca.pem'}")
    if not resp.get("CA"):
        print("note: this daemon serves no TLS; ca.pem is the swarm's root CA", file=sys.stderr)


@app.command("token")
def token(
    ctx: typer.Context,
    name: Name,
    team: Annotated[list[str] | None, typer.Option("--team", help="Limit the token to this team (repeatable)")] =
    None,
    role: Annotated[str, typer.Option("--role", help="Limit the token to this role")] = "",
    description: Annotated[str, typer.Option("--description", help="What the token is for")] = "",
) -> None:
    """Create an API token for NAME and print it (it is shown only once). Use it with
    SHOAL_TOKEN=... shoal ..., or the docker CLI's config.json HttpHeaders
    {"Authorization": "Bearer <token>"}."""
    body: dict[str, Any] = {"Description": description, "Role": role}
    if team is not None:
        body["Teams"] = team
    resp = client_of(ctx).post("/shoal/users/{0}/tokens", name, body=body)
    print(resp["Token"])


@app.command("revoke")
def revoke(ctx: typer.Context, name: Name, token_id: Annotated[str, typer.Argument(metavar="TOKEN-ID")]) -> None:
    """Revoke one of NAME's API tokens (IDs: shoal user inspect NAME)."""
    client_of(ctx).delete("/shoal/users/{0}/tokens/{1}", name, token_id)
    print(token_id)


@app.command("whoami")
def whoami(ctx: typer.Context) -> None:
    """Who the daemon takes you for, and what you may do."""
    me = client_of(ctx).get("/shoal/whoami")
    teams = ",".join(me.get("Teams") or []) or "-"
    print(f"{me['Name']} (role {me['Role']}, teams {teams}, via {me['Via']})")


def audit(
    ctx: typer.Context,
    user: Annotated[str, typer.Option("--user", help="Only this user's entries")] = "",
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many of the latest entries")] = 50,
) -> None:
    """Show this manager's audit log: every write and every refused call (admins only)."""
    entries = client_of(ctx).get("/shoal/audit", params={"user": user or None, "limit": limit})
    rows = [(e.get("time", ""), e.get("user", ""), e.get("role", ""), e.get("method", ""), e.get("path", ""),
             str(e.get("status", ""))) for e in entries]
    fmt.print_table(["TIME", "USER", "ROLE", "METHOD", "PATH", "STATUS"], rows)
