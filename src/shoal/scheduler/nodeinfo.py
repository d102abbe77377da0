"""Per-node bookkeeping for the scheduler, kept up to date incrementally from task events.

A task *occupies* a node from ASSIGNED until it ends (observed state past RUNNING): it reserves
its resources and host ports for all that time. It is *active* while its DesiredState is still
<= RUNNING too; active counts drive spreading and MaxReplicas (a task being shut down no longer
counts as a replica, but still holds its resources until it is gone), as in swarmkit's nodeinfo.
"""

from __future__ import annotations

from typing import Any

from shoal.models import GenericResource, Node, Task, TaskState

_RUNNING = TaskState.RUNNING.order
_ASSIGNED = TaskState.ASSIGNED.order

PortKey = tuple[str, int]  # (protocol, published port)
# Failures are counted per service *and spec version* (swarmkit's versionedService): an update that
# fixes the service starts with a clean slate everywhere.
FailureKey = tuple[str, int]

# Swarmkit's scheduler constants: a node where a service's tasks failed (or were rejected) this
# many times within this window goes behind every other node for that service.
MAX_FAILURES = 5
MONITOR_FAILURES_S = 300.0


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


def generic_reservations(task: Task) -> dict[str, int]:
    """Discrete generic resources (``gpu=2``) the task reserves, by kind."""
    res = task.Spec.Resources
    r = res.Reservations if res is not None else None
    if r is None or not r.GenericResources:
        return {}
    out: dict[str, int] = {}
    for g in r.GenericResources:
        d = g.DiscreteResourceSpec
        if d and d.get("Kind"):
            try:
                out[str(d["Kind"])] = out.get(str(d["Kind"]), 0) + int(d.get("Value", 0))
            except (TypeError, ValueError):
                continue
    return out


def node_generic(node: Node) -> dict[str, int]:
    """What a node offers by kind: discrete counts, plus one per named resource (a GPU by UUID)."""
    out: dict[str, int] = {}
    desc = node.Description
    for g in (desc.Resources.GenericResources if desc is not None else None) or ():
        if g.DiscreteResourceSpec and g.DiscreteResourceSpec.get("Kind"):
            d = g.DiscreteResourceSpec
            try:
                out[str(d["Kind"])] = out.get(str(d["Kind"]), 0) + int(d.get("Value", 0))
            except (TypeError, ValueError):
                continue
        elif g.NamedResourceSpec and g.NamedResourceSpec.get("Kind"):
            k = g.NamedResourceSpec["Kind"]
            out[k] = out.get(k, 0) + 1
    return out


def claim_generic(info: NodeInfo, task: Task) -> list[GenericResource] | None:
    """The generic resources a task placed on ``info`` is given (Task.GenericResources), as
    swarmkit's scheduler claims them: of a kind the node names (GPUs by UUID), particular free
    ones, in order; of a kind it counts, the count. The filters have checked that enough are free."""
    wanted = generic_reservations(task)
    if not wanted:
        return None
    desc = info.node.Description
    named: dict[str, list[str]] = {}
    for g in (desc.Resources.GenericResources if desc is not None else None) or ():
        if g.NamedResourceSpec and g.NamedResourceSpec.get("Kind"):
            named.setdefault(str(g.NamedResourceSpec["Kind"]), []).append(str(g.NamedResourceSpec.get("Value", "")))
    taken: set[tuple[str, str]] = set()
    if named:
        for t in info.tasks.values():
            for g in t.GenericResources or ():
                if g.NamedResourceSpec:
                    taken.add((str(g.NamedResourceSpec.get("Kind")), str(g.NamedResourceSpec.get("Value"))))
    out: list[GenericResource] = []
    for kind, n in sorted(wanted.items()):
        free = [v for v in named.get(kind, ()) if (kind, v) not in taken][:n]
        out.extend(GenericResource(NamedResourceSpec={"Kind": kind, "Value": v}) for v in free)
        if n > len(free):
            out.append(GenericResource(DiscreteResourceSpec={"Kind": kind, "Value": n - len(free)}))
    return out


def task_label_pairs(task: Task) -> list[tuple[str, str]]:
    """The labels a task's container carries that affinity rules look at (container + service)."""
    cs = task.Spec.ContainerSpec
    pairs = list((cs.Labels or {}).items()) if cs is not None else []
    if task.Labels:
        pairs.extend(task.Labels.items())
    return pairs


def task_image(task: Task) -> str:
    cs = task.Spec.ContainerSpec
    return cs.Image if cs is not None else ""


def task_service_name(task: Task) -> str:
    ann = task.ServiceAnnotations
    return str(ann.get("Name", "")) if ann else ""


def container_names(task: Task) -> tuple[str, str]:
    """``<service>.<slot>`` and the full container name ``<service>.<slot>.<taskid>``."""
    svc = task_service_name(task)
    mid = str(task.Slot) if task.Slot else task.NodeID
    return f"{svc}.{mid}", f"{svc}.{mid}.{task.ID}"


def failure_key(task: Task) -> FailureKey:
    return (task.ServiceID, task.SpecVersion.Index if task.SpecVersion is not None else 0)


def _bump(d: dict[Any, int], key: Any, sign: int) -> None:
    n = d.get(key, 0) + sign
    if n > 0:
        d[key] = n
    else:
        d.pop(key, None)


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

    __slots__ = (
        "active",
        "active_by_service",
        "capacity_generic",
        "failures",
        "failures_cleaned",
        "id",
        "images",
        "label_pairs",
        "names",
        "node",
        "ports",
        "reserved_cpu",
        "reserved_generic",
        "reserved_mem",
        "service_names",
        "tasks",
    )

    def __init__(self, node: Node) -> None:
        self.id: str = node.ID
        self.node: Node = node
        self.tasks: dict[str, Task] = {}
        self.active_by_service: dict[str, int] = {}
        self.active = 0
        self.reserved_cpu = 0
        self.reserved_mem = 0
        self.ports: dict[PortKey, int] = {}  # refcount: two ended-but-not-removed tasks may share one
        self.capacity_generic: dict[str, int] = node_generic(node)
        self.reserved_generic: dict[str, int] = {}
        # What affinity rules look at, over active tasks: refcounts kept incrementally.
        self.label_pairs: dict[tuple[str, str], int] = {}
        self.images: dict[str, int] = {}
        self.service_names: dict[str, int] = {}
        self.names: dict[str, int] = {}
        # Times (monotonic seconds) of recent failures here, oldest first, by service version.
        self.failures: dict[FailureKey, list[float]] = {}
        self.failures_cleaned = 0.0

    def set_node(self, node: Node) -> None:
        self.node = node
        self.capacity_generic = node_generic(node)

    def clone(self) -> NodeInfo:
        """An independent copy (for dry-run planning): counters copied, task objects shared."""
        c = NodeInfo.__new__(NodeInfo)
        c.id, c.node, c.tasks = self.id, self.node, dict(self.tasks)
        c.active, c.reserved_cpu, c.reserved_mem = self.active, self.reserved_cpu, self.reserved_mem
        c.active_by_service, c.ports = dict(self.active_by_service), dict(self.ports)
        c.capacity_generic, c.reserved_generic = self.capacity_generic, dict(self.reserved_generic)
        c.label_pairs, c.images = dict(self.label_pairs), dict(self.images)
        c.service_names, c.names = dict(self.service_names), dict(self.names)
        c.failures, c.failures_cleaned = {k: list(v) for k, v in self.failures.items()}, self.failures_cleaned
        return c

    # ------------------------------------------------------------------ capacity

    @property
    def available_cpu(self) -> int:
        return self.node.Description.Resources.NanoCPUs - self.reserved_cpu

    @property
    def available_mem(self) -> int:
        return self.node.Description.Resources.MemoryBytes - self.reserved_mem

    def available_generic(self, kind: str) -> int:
        return self.capacity_generic.get(kind, 0) - self.reserved_generic.get(kind, 0)

    def has_name(self, match: Any) -> bool:
        """Whether an active task here has a container name for which ``match(name)`` holds."""
        return any(match(n) for n in self.names)

    def service_count(self, service_id: str) -> int:
        return self.active_by_service.get(service_id, 0)

    # ------------------------------------------------------------------ failures (back-off)

    def task_failed(self, task: Task, now: float) -> int:
        """Record that ``task`` failed or was rejected here; returns the service version's failures
        within the window, this one included."""
        if now - self.failures_cleaned >= MONITOR_FAILURES_S:
            # Now and then, forget services that stopped failing, so the map does not grow forever.
            self.failures = {k: v for k, v in self.failures.items() if now - v[-1] < MONITOR_FAILURES_S}
            self.failures_cleaned = now
        key = failure_key(task)
        times = [t for t in self.failures.get(key, ()) if now - t < MONITOR_FAILURES_S]
        times.append(now)
        self.failures[key] = times
        return len(times)

    def recent_failures(self, key: FailureKey, now: float) -> int:
        """Failures of that service version here within the window."""
        times = self.failures.get(key)
        if not times:
            return 0
        return sum(1 for t in times if now - t < MONITOR_FAILURES_S)

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
            for pair in task_label_pairs(t):
                _bump(self.label_pairs, pair, sign)
            _bump(self.images, task_image(t), sign)
            _bump(self.service_names, task_service_name(t), sign)
            for name in container_names(t):
                _bump(self.names, name, sign)
        for kind, n in generic_reservations(t).items():
            _bump(self.reserved_generic, kind, sign * n)
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
