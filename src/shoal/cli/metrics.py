"""`shoal metrics targets`: the swarm's nodes as Prometheus file_sd targets (deploy/prometheus/)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli.client import CLIError, client_of
from shoal.metrics import DEFAULT_METRICS_PORT, scrape_target_groups

app = typer.Typer(help="Prometheus metrics of the swarm.", no_args_is_help=True)


@app.command("targets")
def targets(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(
        "--port", "-p", min=1, max=65535, help="The port of every daemon's --metrics-addr")] = DEFAULT_METRICS_PORT,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the file here (replaced atomically, as file_sd wants) instead of stdout")] = None,
) -> None:
    """Print the swarm's nodes as Prometheus file_sd targets (one group per node, labelled)."""
    nodes = client_of(ctx).get("/nodes")
    text = json.dumps(scrape_target_groups(nodes, port), indent=2) + "\n"
    if output is None:
        print(text, end="")
        return
    # Prometheus re-reads the file whenever it changes: it must never see half of one.
    try:
        fd, tmp = tempfile.mkstemp(dir=output.parent or Path("."), prefix=f".{output.name}.")
    except OSError as e:
        raise CLIError(f"cannot write {output}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CLIError(f"cannot write {output}: {e.strerror or e}") from None
