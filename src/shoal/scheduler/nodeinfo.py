"""Per-node bookkeeping for the scheduler, kept up to date incrementally from task events.

A task *occupies* a node from ASSIGNED until it ends (observed state past RUNNING): it reserves
its resources and host ports for all that time. It is *active* while its DesiredState is still
<= RUNNING too; active counts drive spreading and MaxReplicas (a task being shut down no longer
counts as a replica, but still holds its resources until it is gone), as in swarmkit's nodeinfo.
"""

from __future__ import annotations

from typing import Any

from shoal.models import Node, Task, TaskState

_RUNNING = TaskState.RUNNING.order
_ASSIGNED = TaskState.ASSIGNED.order

PortKey = tuple[str, int]  # (protocol, published port)


def occupies(task: Task) -> bool:
    """Whether the task holds resources on its node."""
    return bool(task.NodeID) and _ASSIGNED <= task.Status.State.order <= _RUNNING


def reservations(task: Task) -> tuple[int, int]:
    """(NanoCPUs, MemoryBytes) the task reserves."""
    res = task.Spec.Resources
    r = res.Reservations if res is not None else None
    if r is None:
        return 0, 0
    return r.NanoCPUs, r.MemoryBytes


def host_ports(task: Task) -> list[PortKey]:
    """Host-mode published ports of a task (from its endpoint, as allocated or as specified)."""
    ep = task.Endpoint
    if ep is None:
        return []
    ports = ep.Ports if ep.Ports else (ep.Spec.Ports if ep.Spec is not None else None)
    if not ports:
        return []
    return [(p.Protocol or "tcp", p.PublishedPort) for p in ports if p.PublishMode == "host" and p.PublishedPort]


class NodeInfo:
    """A node plus what the scheduler knows runs on it."""

    __slots__ = ("active", "active_by_service", "id", "node", "ports", "reserved_cpu", "reserved_mem", "tasks")

    def __init__(self, node: Node) -> None:
        self.id: str = node.ID
        self.node: Node = node
        self.tasks: dict[str, Task] = {}
        self.active_by_service: dict[str, int] = {}
        self.active = 0
        self.reserved_cpu = 0
        self.reserved_mem = 0
        self.ports: dict[PortKey, int] = {}  # refcount: two ended-but-not-removed tasks may share one

    # ------------------------------------------------------------------ capacity

    @property
    def available_cpu(self) -> int:
        return self.node.Description.Resources.NanoCPUs - self.reserved_cpu

    @property
    def available_mem(self) -> int:
        return self.node.Description.Resources.MemoryBytes - self.reserved_mem

    def service_count(self, service_id: str) -> int:
        return self.active_by_service.get(service_id, 0)

    # ------------------------------------------------------------------ updates

    def add_task(self, task: Task) -> None:
        """Count ``task`` on this node (replacing an older version of it)."""
        old = self.tasks.get(task.ID)
        self.tasks[task.ID] = task
        if old is not None:
            if (
                old.Spec is task.Spec
                and old.Endpoint is task.Endpoint
                and old.ServiceID == task.ServiceID
                and (old.DesiredState.order <= _RUNNING) == (task.DesiredState.order <= _RUNNING)
            ):
                return  # a status update: nothing counted changed (the common case by far)
            self._account(old, -1)
        self._account(task, +1)

    def remove_task(self, task_id: str) -> bool:
        old = self.tasks.pop(task_id, None)
        if old is None:
            return False
        self._account(old, -1)
        return True

    def _account(self, t: Task, sign: int) -> None:
        if t.DesiredState.order <= _RUNNING:
            self.active += sign
            n = self.active_by_service.get(t.ServiceID, 0) + sign
            if n:
                self.active_by_service[t.ServiceID] = n
            else:
                self.active_by_service.pop(t.ServiceID, None)
        cpu, mem = reservations(t)
        self.reserved_cpu += sign * cpu
        self.reserved_mem += sign * mem
        for key in host_ports(t):
            n = self.ports.get(key, 0) + sign
            if n > 0:
                self.ports[key] = n
            else:
                self.ports.pop(key, None)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"NodeInfo({self.id}, active={self.active}, cpu={self.reserved_cpu}, mem={self.reserved_mem})"


def describe(info: NodeInfo) -> dict[str, Any]:
    """A plain summary (for debugging and the web console later)."""
    return {
        "ID": info.id,
        "ActiveTasks": info.active,
        "ReservedNanoCPUs": info.reserved_cpu,
        "ReservedMemoryBytes": info.reserved_mem,
        "HostPorts": sorted(info.ports),
    }
