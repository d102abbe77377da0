"""Helpers the orchestrators share: making tasks, reading a service's mode, judging tasks and nodes.

Everything here is a pure function of store objects, so the replicated and global orchestrators,
the restart supervisor, the updater and the reaper agree on what "runnable", "stopped" and
"up to date" mean.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shoal.ids import new_id
from shoal.models import (
    NodeAvailability,
    NodeState,
    Service,
    Task,
    TaskState,
    TaskStatus,
    Version,
    now_ts,
)
from shoal.store import Action, Event

RUNNING_ORDER = TaskState.RUNNING.order
ASSIGNED_ORDER = TaskState.ASSIGNED.order


def new_task(service: Service, slot: int, node_id: str = "", *, ts: str | None = None) -> Task:
    """A fresh PENDING task for ``slot`` of ``service`` (global tasks: slot 0 and ``node_id`` preset).

    ``ts`` lets a reconcile pass that creates thousands of tasks format the timestamp once.
    The spec and endpoint objects are shared with the service, not copied: stored objects are
    immutable, and sharing keeps 100,000 tasks cheap.
    """
    spec = service.Spec
    return Task(
        ID=new_id(),
        Version=Version(),
        CreatedAt="",
        UpdatedAt="",
        Spec=spec.TaskTemplate,
        ServiceID=service.ID,
        Status=TaskStatus(
            Timestamp=ts or now_ts(), State=TaskState.PENDING, Message="pending task scheduling"
        ),
        DesiredState=TaskState.RUNNING,
        Labels=spec.Labels,
        Slot=slot,
        NodeID=node_id,
        SpecVersion=Version(service.Version.Index),
        Endpoint=service.Endpoint,
        ServiceAnnotations=_annotations(spec.Name, spec.Labels),
    )


_ANNOTATIONS: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}


def _annotations(name: str, labels: dict[str, str] | None) -> dict[str, Any]:
    """One ServiceAnnotations dict per (name, labels), shared by the service's tasks like their
    spec: 100,000 copies would be 200,000 more objects for the garbage collector to walk."""
    key = (name, tuple(sorted(labels.items())) if labels else ())
    ann = _ANNOTATIONS.get(key)
    if ann is None:
        if len(_ANNOTATIONS) > 10_000:
            _ANNOTATIONS.clear()  # a bound, not a cache policy: sharing is only an optimisation
        ann = _ANNOTATIONS[key] = {"Name": name, "Labels": dict(labels) if labels else {}}
    return ann


# --------------------------------------------------------------------------- service mode


def is_global(service: Service) -> bool:
    mode = service.Spec.Mode
    return mode is not None and mode.Global is not None


def is_replicated(service: Service) -> bool:
    """Replicated is Docker's default when ``Mode`` is absent; jobs are not handled here."""
    mode = service.Spec.Mode
    if mode is None:
        return True
    return mode.Global is None and mode.ReplicatedJob is None and mode.GlobalJob is None


def replicas(service: Service) -> int:
    mode = service.Spec.Mode
    if mode is None or mode.Replicated is None or mode.Replicated.Replicas is None:
        return 1
    return mode.Replicated.Replicas


# --------------------------------------------------------------------------- task predicates


def is_runnable(task: Task) -> bool:
    """The orchestrator still wants this task to run (DesiredState <= RUNNING)."""
    return task.DesiredState.order <= RUNNING_ORDER


def is_terminal(task: Task) -> bool:
    return task.Status.State.order > RUNNING_ORDER


def is_running(task: Task) -> bool:
    return task.Status.State is TaskState.RUNNING


def ended_while_wanted(task: Task, old: Task) -> bool:
    """This update is the moment a task still desired running reached a terminal state.

    Called for every task status update the orchestrators see, hence the inlined comparisons.
    """
    if task.DesiredState.order > RUNNING_ORDER or task.Status.State.order <= RUNNING_ORDER:
        return False
    return old.Status.State.order <= RUNNING_ORDER or old.DesiredState.order > RUNNING_ORDER


def has_stopped(task: Task, node: Any | None) -> bool:
    """True once ``task`` can no longer be running anywhere.

    Terminal, never assigned, or on a node that is gone or down (its agent is not there to stop it,
    so waiting would block an update forever).
    """
    if task.Status.State.order > RUNNING_ORDER or task.Status.State.order < ASSIGNED_ORDER:
        return True
    return not task.NodeID or node_unusable(node)


def node_unusable(node: Any | None) -> bool:
    """Tasks on this node must move: it is deleted, drained or down (swarmkit's InvalidNode)."""
    return (
        node is None
        or node.Spec.Availability is NodeAvailability.DRAIN
        or node.Status.State is NodeState.DOWN
    )


def is_up_to_date(task: Task, service: Service) -> bool:
    """The task was made from the service's current template (ForceUpdate included) and endpoint."""
    tmpl = service.Spec.TaskTemplate
    if task.Spec is not tmpl and task.Spec != tmpl:
        return False
    ep = task.Endpoint
    if ep is not None and _endpoint_key(ep.Spec) != _endpoint_key(service.Spec.EndpointSpec):
        # Published ports changed: swarmkit rolls the tasks so that the agents republish them.
        return False
    return True


def _endpoint_key(spec: Any | None) -> tuple[str, tuple[Any, ...]]:
    """An endpoint spec with Docker's defaults filled in, so absent and empty compare equal."""
    if spec is None:
        return ("vip", ())
    return (spec.Mode or "vip", tuple(spec.Ports or ()))


def age_key(task: Task) -> tuple[str, int]:
    """Orders tasks of one slot oldest first (creation time, then store revision)."""
    return (task.CreatedAt, task.Version.Index)


def with_desired(task: Task, state: TaskState) -> Task:
    return msgspec.structs.replace(task, DesiredState=state)


def preempted(task: Task, old: Task) -> bool:
    """The scheduler just stopped this task to make room for a higher-priority one: its slot
    (or node, for a global service) wants a new task, placed by the usual rules."""
    return (
        old.DesiredState.order <= TaskState.RUNNING.order < task.DesiredState.order
        and task.Status.Message.startswith("preempted by")
    )


def evacuate(tx: Any, task: Task, node: Any | None) -> None:
    """Move a task off a node that can no longer run it (drained, down, removed).

    On a *down* node nothing can report the task's end, so it is marked ``orphaned`` here, as
    swarmkit does: its slot is refilled elsewhere, and since a task never moves backwards, a
    container still running there when the node returns can never report it running again; the
    agent stops it on seeing the desired state ``shutdown``.
    """
    raise_desired(tx, task, TaskState.SHUTDOWN)
    cur = tx.get("task", task.ID)
    if cur is None or cur.Status.State.terminal:
        return
    if node is None or node.Status.State is NodeState.DOWN:
        why = "node removed" if node is None else "node down"
        status = msgspec.structs.replace(
            cur.Status, State=TaskState.ORPHANED, Message=f"task orphaned: {why}", Timestamp=now_ts()
        )
        tx.update("task", msgspec.structs.replace(cur, Status=status))


def raise_desired(tx: Any, task: Task, state: TaskState) -> None:
    """Raise a task's desired state within ``tx`` (it never goes backwards), seeing the batch's writes."""
    cur = tx.get("task", task.ID)
    if cur is not None and cur.DesiredState.order < state.order:
        tx.update("task", with_desired(cur, state))


def node_changed(e: Event) -> bool:
    """Whether a node event can change where tasks may run (heartbeats do not): a node came or
    went, or its spec, state, address or description (labels, resources) changed."""
    if e.action is not Action.UPDATE:
        return True
    new, old = e.obj, e.old
    return (
        new.Spec != old.Spec
        or new.Status.State is not old.Status.State
        or new.Status.Addr != old.Status.Addr
        or new.Description != old.Description
    )
