"""Waiting for a service to converge, with a Rich progress bar (the non-`--detach` path of create,
update and scale)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shoal.cli.client import Client, CLIError
from shoal.cli.format import stderr

POLL_SECONDS = 0.5
# A global service with no task yet may simply have no eligible node: stop waiting after this long.
GLOBAL_EMPTY_GRACE = 5.0


@dataclass
class Snapshot:
    """What one poll saw: how many slots (or nodes) run, how many should, and why others don't."""

    running: int
    desired: int
    converged: bool
    note: str = ""
    errors: list[str] = field(default_factory=list)


def snapshot(service: dict[str, Any], tasks: list[dict[str, Any]], old_ids: frozenset[str]) -> Snapshot:
    """Judge convergence from the service and its tasks whose desired state is running.

    Tasks in ``old_ids`` existed before an update that changed the task template; they count as not
    yet updated, so an update converges only when every slot runs a new task."""
    mode = service["Spec"].get("Mode") or {"Replicated": {}}
    status = service.get("UpdateStatus") or {}
    if status.get("State") in ("paused", "rollback_paused"):
        what = "update" if status["State"] == "paused" else "rollback"
        raise CLIError(f"{what} paused: {status.get('Message', '')}".rstrip(": "))
    if status.get("State") == "rollback_completed" and status.get("Message", "").startswith("blue-green"):
        raise CLIError(status["Message"])  # a failed blue-green release: the old tasks kept serving
    running_keys: set[Any] = set()
    errors = []
    for t in tasks:
        st = t.get("Status", {})
        key = t.get("Slot") or t.get("NodeID")
        if st.get("State") == "running" and t["ID"] not in old_ids:
            running_keys.add(key)
        elif st.get("Err"):
            errors.append(str(st["Err"]))
    current = [t for t in tasks if t["ID"] not in old_ids]
    if "Global" in mode:
        desired = len({t.get("NodeID") for t in tasks})
        converged = len(running_keys) == desired and len(current) == len(tasks)
    else:
        desired = (mode.get("Replicated") or {}).get("Replicas", 1)
        if desired is None:
            desired = 1
        converged = len(running_keys) == desired and len(tasks) == desired
    updating = status.get("State") in ("updating", "rollback_started")
    note = status.get("Message", "") if updating else ""
    return Snapshot(len(running_keys), desired, converged and not updating, note, errors)


def wait_converged(client: Client, service_id: str, old_ids: frozenset[str] = frozenset()) -> None:
    """Poll the service's tasks until every slot runs; show a progress bar on stderr meanwhile."""
    filters = {"service": [service_id], "desired-state": ["running"]}
    start = time.monotonic()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}", style="yellow"),
        console=stderr(),
        transient=False,
    ) as bar:
        job = bar.add_task("overall progress", total=None, note="")
        while True:
            service = client.get("/services/{0}", service_id)
            mode = service["Spec"].get("Mode") or {}
            if "ReplicatedJob" in mode or "GlobalJob" in mode:
                return  # jobs complete rather than converge; nothing to wait for here
            tasks = client.get("/tasks", params={"filters": filters})
            snap = snapshot(service, tasks, old_ids)
            note = snap.note or (snap.errors[-1] if snap.errors and not snap.converged else "")
            bar.update(job, total=max(snap.desired, 1) if snap.desired else 0, completed=snap.running, note=note)
            if snap.converged and (snap.desired or time.monotonic() - start > GLOBAL_EMPTY_GRACE):
                bar.update(job, description="verify: service converged", note="")
                return
            time.sleep(POLL_SECONDS)
