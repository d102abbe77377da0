"""The scheduler's filter pipeline (swarmkit's, after Nova's): each filter rules nodes in or out.

A filter is told the task once (:meth:`Filter.set_task` answers whether it applies at all) and then
checks nodes (:meth:`Filter.check`). The pipeline stops at a node's first failing filter and counts
failures per filter, so an unplaceable task can say why: ``explain(n)`` turns a count into text
("insufficient resources on 3 nodes"), and the pipeline joins them, most failures first.

New filters plug in with :func:`register_filter`; the scheduler builds its pipeline from the
registry and never names a filter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from shoal.extensions import ClusterSettings
from shoal.models import NodeAvailability, NodeState, Task, engine_unavailable
from shoal.scheduler.constraints import Constraint, constraints_of, node_matches, parse_constraints
from shoal.scheduler.expressions import rules_of
from shoal.scheduler.nodeinfo import NodeInfo, PortKey, generic_reservations, host_ports, reservations

__all__ = [
    "CPUFilter",
    "ConstraintFilter",
    "EngineFilter",
    "ExpressionFilter",
    "Filter",
    "GenericResourceFilter",
    "HostPortFilter",
    "MaxReplicasFilter",
    "MemoryFilter",
    "Pipeline",
    "PlatformFilter",
    "ReadyNodeFilter",
    "ResourceFilter",
    "default_filters",
    "parse_constraints",
    "register_filter",
]


class Filter(Protocol):
    name: str

    def set_task(self, task: Task) -> bool:
        """Prepare for ``task``; False if this filter has nothing to say about it."""
        ...

    def check(self, info: NodeInfo) -> bool:
        """Whether the task set by :meth:`set_task` may run on this node."""
        ...

    def explain(self, nodes: int) -> str:
        """Why the task cannot run on ``nodes`` nodes that failed this filter."""
        ...


def _on(nodes: int) -> str:
    return "1 node" if nodes == 1 else f"{nodes} nodes"


class ReadyNodeFilter:
    """The node is up and accepts new tasks (ready, availability active)."""

    name = "ready"

    def set_task(self, task: Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        node = info.node
        return node.Status.State is NodeState.READY and node.Spec.Availability is NodeAvailability.ACTIVE

    def explain(self, nodes: int) -> str:
        return f"{_on(nodes)} not available for new tasks"


class EngineFilter:
    """The node's engine answers its agent. A node reporting its engine down is also ``down`` (so
    the ready filter would refuse it too); this filter runs first to say why."""

    name = "engine"

    def set_task(self, task: Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        return not engine_unavailable(info.node)

    def explain(self, nodes: int) -> str:
        return f"engine unavailable on {_on(nodes)}"


class CPUFilter:
    """The node has the task's reserved CPU left over (capacity x the cluster's CPU overcommit)."""

    name = "cpu"

    def __init__(self) -> None:
        self.cpu = 0
        self.factor = 1.0

    def configure(self, settings: ClusterSettings) -> None:
        self.factor = settings.cpu_overcommit

    def set_task(self, task: Task) -> bool:
        self.cpu = reservations(task)[0]
        return bool(self.cpu)

    def check(self, info: NodeInfo) -> bool:
        cap = info.node.Description.Resources.NanoCPUs * self.factor
        return info.reserved_cpu + self.cpu <= cap

    def explain(self, nodes: int) -> str:
        return f"insufficient cpu on {_on(nodes)}"


class MemoryFilter:
    """The node has the task's reserved memory left over (capacity x memory overcommit)."""

    name = "memory"

    def __init__(self) -> None:
        self.mem = 0
        self.factor = 1.0

    def configure(self, settings: ClusterSettings) -> None:
        self.factor = settings.memory_overcommit

    def set_task(self, task: Task) -> bool:
        self.mem = reservations(task)[1]
        return bool(self.mem)

    def check(self, info: NodeInfo) -> bool:
        cap = info.node.Description.Resources.MemoryBytes * self.factor
        return info.reserved_mem + self.mem <= cap

    def explain(self, nodes: int) -> str:
        return f"insufficient memory on {_on(nodes)}"


class GenericResourceFilter:
    """The node has the task's discrete generic resources (``gpu=2``) free. Never overcommitted."""

    name = "generic"

    def __init__(self) -> None:
        self.wanted: list[tuple[str, int]] = []

    def set_task(self, task: Task) -> bool:
        self.wanted = sorted(generic_reservations(task).items())
        return bool(self.wanted)

    def check(self, info: NodeInfo) -> bool:
        return all(info.available_generic(k) >= n for k, n in self.wanted)

    def explain(self, nodes: int) -> str:
        return f"insufficient generic resources ({', '.join(k for k, _ in self.wanted)}) on {_on(nodes)}"


# The name the first scheduler used for the CPU filter; kept for plugins that register before it.
ResourceFilter = CPUFilter


class _ConstraintRule:
    """One Swarm-mode constraint as its own filter, so explanations name the constraint."""

    name = "constraint"

    def __init__(self, c: Constraint) -> None:
        self.c = c

    def set_task(self, task: Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        return self.c.matches(info.node)

    def explain(self, nodes: int) -> str:
        op = "==" if self.c.equal else "!="
        return f"constraint {self.c.key}{op}{self.c.value} not satisfied on {_on(nodes)}"


class ConstraintFilter:
    """The node satisfies the task's placement constraints."""

    name = "constraints"

    def __init__(self) -> None:
        self.constraints: tuple[Constraint, ...] = ()

    def set_task(self, task: Task) -> bool:
        self.constraints = constraints_of(task.Spec)
        return bool(self.constraints)

    def expand(self, task: Task) -> list[Filter]:
        """One filter per constraint (the pipeline explains each on its own)."""
        return [_ConstraintRule(c) for c in constraints_of(task.Spec)]

    def check(self, info: NodeInfo) -> bool:
        return node_matches(self.constraints, info.node)

    def explain(self, nodes: int) -> str:
        return f"scheduling constraints not satisfied on {_on(nodes)}"


_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64"}


def _arch(a: str) -> str:
    return _ARCH_ALIASES.get(a, a)


class ExpressionFilter:
    """Classic Swarm / Rancher hard rules (see :mod:`shoal.scheduler.expressions`), one filter each."""

    name = "expressions"

    def set_task(self, task: Task) -> bool:
        return any(not r.soft for r in rules_of(task))

    def check(self, info: NodeInfo) -> bool:  # pragma: no cover - always expanded
        return True

    def explain(self, nodes: int) -> str:  # pragma: no cover - always expanded
        return ""

    def expand(self, task: Task) -> list[Filter]:
        return [r for r in rules_of(task) if not r.soft]


class PlatformFilter:
    """The node's OS/architecture is one the task's image supports (Placement.Platforms)."""

    name = "platform"

    def __init__(self) -> None:
        self.platforms: list[tuple[str, str]] = []

    def set_task(self, task: Task) -> bool:
        placement = task.Spec.Placement
        plats = placement.Platforms if placement is not None else None
        self.platforms = [(_arch(p.Architecture), p.OS) for p in plats or ()]
        return bool(self.platforms)

    def check(self, info: NodeInfo) -> bool:
        plat = info.node.Description.Platform
        arch, os_ = _arch(plat.Architecture), plat.OS
        return any((not a or a == arch) and (not o or o == os_) for a, o in self.platforms)

    def explain(self, nodes: int) -> str:
        return f"unsupported platform on {_on(nodes)}"


class HostPortFilter:
    """No other task on the node holds one of the task's host-mode published ports."""

    name = "hostports"

    def __init__(self) -> None:
        self.ports: list[PortKey] = []
        self.taken: dict[PortKey, None] = {}  # the task's ports found held, in the order met (for explain)

    def set_task(self, task: Task) -> bool:
        self.ports = host_ports(task)
        self.taken = {}
        return bool(self.ports)

    def check(self, info: NodeInfo) -> bool:
        used = info.ports
        if not any(p in used for p in self.ports):
            return True
        for p in self.ports:
            if p in used:
                self.taken[p] = None
        return False

    def explain(self, nodes: int) -> str:
        # Swarm says "host-mode port already in use on N nodes"; naming the port tells which to change.
        ports = list(self.taken) or self.ports
        shown = ", ".join(f"{port}/{proto}" for proto, port in ports)
        return f"host-mode port{'s' if len(ports) > 1 else ''} {shown} already in use on {_on(nodes)}"


class MaxReplicasFilter:
    """The node runs fewer than Placement.MaxReplicas tasks of the service."""

    name = "maxreplicas"

    def __init__(self) -> None:
        self.service_id = ""
        self.limit = 0

    def set_task(self, task: Task) -> bool:
        placement = task.Spec.Placement
        self.limit = placement.MaxReplicas if placement is not None else 0
        self.service_id = task.ServiceID
        return self.limit > 0

    def check(self, info: NodeInfo) -> bool:
        return info.service_count(self.service_id) < self.limit

    def explain(self, nodes: int) -> str:
        return "max replicas per node limit exceed"  # Docker's wording, count-free


# --------------------------------------------------------------------------- registry

FilterFactory = Callable[[], Filter]
_REGISTRY: list[tuple[str, FilterFactory]] = [
    # Readiness first: it is the cheapest and rules out the most nodes in a degraded cluster. The
    # engine check is part of it, ahead only to name the cause.
    ("engine", EngineFilter),
    ("ready", ReadyNodeFilter),
    ("cpu", CPUFilter),
    ("memory", MemoryFilter),
    ("generic", GenericResourceFilter),
    ("constraints", ConstraintFilter),
    ("expressions", ExpressionFilter),
    ("platform", PlatformFilter),
    ("hostports", HostPortFilter),
    ("maxreplicas", MaxReplicasFilter),
]


# "resources" was one filter before CPU and memory were explained separately.
_ALIASES = {"resources": "cpu"}


def register_filter(name: str, factory: FilterFactory, *, before: str | None = None) -> None:
    """Add a filter to every pipeline built from now on (at the end, or before filter ``before``)."""
    global _REGISTRY
    before = _ALIASES.get(before or "", before)
    entries = [(n, f) for n, f in _REGISTRY if n != name]
    idx = next((i for i, (n, _) in enumerate(entries) if n == before), len(entries))
    entries.insert(idx, (name, factory))
    _REGISTRY = entries


def unregister_filter(name: str) -> None:
    global _REGISTRY
    _REGISTRY = [(n, f) for n, f in _REGISTRY if n != name]


def default_filters() -> list[Filter]:
    return [factory() for _, factory in _REGISTRY]


# --------------------------------------------------------------------------- pipeline


class Pipeline:
    """Runs the filters that apply to one task against nodes, counting who failed where."""

    def __init__(self, filters: Sequence[Filter] | None = None) -> None:
        self.filters: list[Filter] = list(filters) if filters is not None else default_filters()
        self._enabled: list[Filter] = []
        self._failures: list[int] = []

    def configure(self, settings: ClusterSettings) -> None:
        """Pass cluster-wide settings (overcommit ratios) to the filters that take them."""
        for f in self.filters:
            conf = getattr(f, "configure", None)
            if conf is not None:
                conf(settings)

    def set_task(self, task: Task) -> None:
        enabled: list[Filter] = []
        for f in self.filters:
            if f.set_task(task):
                expand = getattr(f, "expand", None)
                enabled.extend(expand(task) if expand is not None else (f,))
        self._enabled = enabled
        self._failures = [0] * len(self._enabled)

    def process(self, info: NodeInfo) -> bool:
        for i, f in enumerate(self._enabled):
            if not f.check(info):
                self._failures[i] += 1
                return False
        return True

    def reset_counts(self) -> None:
        self._failures = [0] * len(self._enabled)

    def explain(self) -> str:
        """The failures since :meth:`set_task` / :meth:`reset_counts`, most frequent first."""
        counted = [(n, i) for i, n in enumerate(self._failures) if n]
        counted.sort(key=lambda x: (-x[0], x[1]))
        return "; ".join(self._enabled[i].explain(n) for n, i in counted)
