"""`shoal store`: where a manager's swarm state lives (`migrate`: from its sqlite file to etcd) and
the data key that seals its secrets, configs and join tokens (`rotate-key`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli.client import CLIError
from shoal.errors import ShoalError

app = typer.Typer(help="Manage the manager's store", no_args_is_help=True)


@app.command()
def migrate(
    data_root: Annotated[Path, typer.Option(help="The stopped daemon's data root")] = Path("/var/lib/shoal"),
    etcd_endpoints: Annotated[str, typer.Option(
        help="An etcd cluster you run: URL[,URL...]; none: Shoal runs a member in <data-root>/etcd")] = "",
    etcd_port: Annotated[int, typer.Option(help="Client port of the member Shoal runs (peer: +1)")] = 0,
) -> None:
    """Move a single manager's swarm from its sqlite file to etcd (stop its daemon first); then
    start the daemon again, and join more managers with the manager token."""
    from shoal.ha import migrate_to_etcd  # pulls in the store and etcd client: load it only here

    endpoints = [e.strip() for e in etcd_endpoints.split(",") if e.strip()]
    try:
        settings, n = asyncio.run(migrate_to_etcd(data_root, endpoints, etcd_port))
    except ShoalError as e:
        raise CLIError(f"Error: {e.message}") from None
    where = settings.client_url + " (run by Shoal)" if settings.managed else ",".join(settings.endpoints)
    print(f"Moved {n} objects to etcd at {where}; the sqlite file is kept as state.db.migrated.")
    print("Start the daemon again: it now holds the swarm in etcd.")


@app.command("rotate-key")
def rotate_key(
    data_root: Annotated[Path, typer.Option(help="The stopped daemon's data root")] = Path("/var/lib/shoal"),
) -> None:
    """Make a new data key (<data-root>/store.key) and seal every secret, config and the cluster's
    join tokens with it (stop the daemon first). On etcd, only a swarm with one manager."""
    from shoal.store.rotate import rotate_store_key  # pulls in the store: load it only here

    try:
        kid, n = asyncio.run(rotate_store_key(data_root))
    except ShoalError as e:
        raise CLIError(f"Error: {e.message}") from None
    print(f"Sealed {n} stored values with the new data key {kid}; the old key is gone from "
          f"{data_root / 'store.key'}. Start the daemon again.")
