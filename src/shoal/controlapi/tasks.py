"""Tasks: list with Docker's filters, served from the store's per-service and per-node indexes.

``_up-to-date`` (what the CLI polls while it shows a create/update's progress) compares the task's
spec with its service's current TaskTemplate and endpoint spec, as swarmkit's ``IsTaskDirty`` does,
rather than the task's SpecVersion with the service's Version: the service's Version bumps on every
write (status updates by the orchestrator included), so the index comparison would call fresh tasks
stale. The judgement is the rolling updater's own (:func:`shoal.orchestrator.task.is_up_to_date`),
so the CLI's progress display and the updater always agree on what is converged.
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.controlapi.filters import Filters, match_labels, match_prefix
from shoal.controlapi.resolve import get_node, get_service
from shoal.errors import InvalidArgument
from shoal.models import Service, Task, TaskState
from shoal.orchestrator.task import is_up_to_date as task_up_to_date
from shoal.store import MemoryStore

TASK_FILTERS = ("id", "name", "label", "service", "node", "desired-state", "_up-to-date", "runtime")


def task_name(task: Task, service_name: str | None = None) -> str:
    """``<service>.<slot>.<id>`` (global: ``<service>.<node>.<id>``), swarmkit's task name."""
    if service_name is None:
        service_name = (task.ServiceAnnotations or {}).get("Name", "")
    mid = task.Slot if task.Slot else task.NodeID
    return f"{service_name}.{mid}.{task.ID}"


def _desired_states(values: list[str]) -> set[TaskState]:
    out = set()
    for v in values:
        try:
            out.add(TaskState(v.lower()))
        except ValueError:
            raise InvalidArgument(f"Invalid desired-state filter: '{v}'") from None
    return out


def _truthy(values: list[str]) -> bool:
    return any(v.lower() not in ("", "0", "false", "no") for v in values)


def _candidates(store: MemoryStore, filters: Filters) -> Iterable[Task]:
    """The smallest indexed set the filters allow; the full scan only when nothing narrows it."""
    if "service" in filters:
        sids = {get_service(store, ref).ID for ref in filters["service"]}
        by_service = [t for sid in sids for t in store.tasks_of_service(sid)]
        if "node" not in filters:
            return by_service
        nids = {get_node(store, ref).ID for ref in filters["node"]}
        return [t for t in by_service if t.NodeID in nids]
    if "node" in filters:
        nids = {get_node(store, ref).ID for ref in filters["node"]}
        return [t for nid in nids for t in store.tasks_on_node(nid)]
    if "name" in filters:
        # Task names start with their service's name: only services whose name fits can match.
        prefixes = filters["name"]
        services = [
            s for s in store.list("service")
            if any(p.startswith(s.Spec.Name) or s.Spec.Name.startswith(p) for p in prefixes)
        ]
        return [t for s in services for t in store.tasks_of_service(s.ID)]
    return store.list("task")


def list_tasks(store: MemoryStore, filters: Filters | None = None) -> list[Task]:
    """Tasks matching Docker's filters. service/node are resolved by ID, name or prefix (404 if none)."""
    filters = filters or {}
    ids, names, labels = filters.get("id"), filters.get("name"), filters.get("label")
    runtimes = filters.get("runtime")
    desired = _desired_states(filters["desired-state"]) if "desired-state" in filters else None
    up_to_date = _truthy(filters["_up-to-date"]) if "_up-to-date" in filters else False
    services: dict[str, Service | None] = {}

    def service_of(t: Task) -> Service | None:
        if t.ServiceID not in services:
            services[t.ServiceID] = store.get("service", t.ServiceID)
        return services[t.ServiceID]

    out: list[Task] = []
    for t in _candidates(store, filters):
        if ids and not match_prefix(t.ID, ids):
            continue
        if desired is not None and t.DesiredState not in desired:
            continue
        if labels and not match_labels(t.Labels, labels):
            continue
        if runtimes and (t.Spec.Runtime or "container") not in runtimes:
            continue
        if names or up_to_date:
            svc = service_of(t)
            if names:
                sname = svc.Spec.Name if svc is not None else None
                if not match_prefix(task_name(t, sname), names):
                    continue
            if up_to_date and (svc is None or not task_up_to_date(t, svc)):
                continue
        out.append(t)
    return out
