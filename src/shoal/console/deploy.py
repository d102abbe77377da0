"""``POST /shoal/console/deploy?name=<stack>[&dryRun=1][&prune=1][&team=<team>]``, the body a Compose file.

The browser has no Compose loader, so the manager runs the one ``shoal stack deploy`` runs in the
client (compose/), on the pasted text alone: written to an empty private folder and loaded from
there with an empty environment, so a file cannot read the manager's files (``env_file``, a secret's
``file``: anything but the file itself is absent, and paths outside the folder are refused) nor its
environment (``${HOME}`` is unset, with the loader's warning). Then the stack deploy of
controlapi/stacks.py, whose dry run answers the changes and each service's placement plan.

Errors are 400 ``{"message", "line", "column"}``: the loader names the line of the offending key
(YAML marks, JSON-schema paths mapped back to their node); an error the deploy finds in a service
("service web: ...") points at that service's key.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from shoal import compose
from shoal.api.common import json_response, query_bool, swarm_manager
from shoal.compose.files import OUTSIDE_HINT
from shoal.compose.source import parse
from shoal.controlapi import stacks, users
from shoal.controlapi.users import TEAM_LABEL
from shoal.errors import ShoalError

# A pasted Compose file: real ones are some KiB to some hundred KiB. Loading is memory-hungry (a dense
# 1 MiB file takes over a GiB to load and convert, compose/files.py), so the manager takes far less
# than the CLI's 4 MiB, and one file at a time.
MAX_BODY = 512 * 1024
_ONE_AT_A_TIME = asyncio.Semaphore(1)
_SERVICE_ERROR = re.compile(r"^service ([^:\s]+): ")


class ComposeRejected(Exception):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message, self.line = message, line


def _load(text: str, name: str) -> tuple[Any, list[str], dict[tuple[Any, ...], int]]:
    """(StackSpec, warnings, key lines) of ``text``; ComposeRejected with the line for a bad file."""
    with tempfile.TemporaryDirectory(prefix="shoal-console-") as tmp:
        path = Path(tmp) / "docker-compose.yml"
        path.write_text(text)
        try:
            project = compose.load([path], project_dir=Path(tmp), env={}, project_name=name)
            spec, warnings = compose.to_stack_spec(project, name)
            lines = parse(path).lines
        except compose.ComposeError as e:
            key = f"{e.key}: " if e.key else ""
            # The CLI's advice (--allow-outside-files) does not apply: the manager reads no other file.
            message = e.message.replace(f"is outside the project folder {Path(tmp).resolve()}: {OUTSIDE_HINT}",
                                        "cannot be read: a Compose file deployed from the console can name no "
                                        "other file (paste its content instead)")
            raise ComposeRejected(f"{key}{message}".replace(tmp + "/", "").replace(tmp, "."), e.line) from None
    return spec, warnings, lines


async def deploy(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    name = request.query.get("name", "")
    stacks.check_stack_name(name)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return json_response({"message": f"the Compose file is larger than {MAX_BODY // 1024} KiB"}, status=413)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _error("the Compose file is not UTF-8 text", None, "")
    if not text.strip():
        return _error("the Compose file is empty", None, "")
    try:
        async with _ONE_AT_A_TIME:
            spec, warnings, lines = await asyncio.to_thread(_load, text, name)
    except ComposeRejected as e:
        return _error(e.message, e.line, text)
    team = request.query.get("team")
    if team:
        spec = _with_team(spec, team)
    try:
        result = stacks.deploy_stack(manager.store, spec, prune=query_bool(request, "prune"),
                                     dry_run=query_bool(request, "dryRun"),
                                     live_scheduler=getattr(manager, "scheduler", None))
    except ShoalError as e:
        if e.status != 400:
            raise
        m = _SERVICE_ERROR.match(e.message)
        return _error(e.message, lines.get(("services", m.group(1))) if m else None, text)
    out = result.to_json()
    out["Warnings"] = [*warnings, *out.get("Warnings", [])]
    out["DryRun"] = query_bool(request, "dryRun")
    return json_response(out)


def _with_team(spec: Any, team: str) -> Any:
    users.check_teams([team])
    return msgspec.structs.replace(spec, Labels={**(spec.Labels or {}), TEAM_LABEL: team})


def _error(message: str, line: int | None, text: str) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if line is not None:
        body["line"] = line
        # The loader keeps lines only; a key starts its line, after the indent (and a list's "- ").
        rows = text.splitlines()
        row = rows[line - 1] if 0 < line <= len(rows) else ""
        body["column"] = len(row) - len(row.lstrip(" -")) + 1
    return json_response(body, status=400)
