"""Choosing nodes for a group of identical tasks: strategy, placement preferences, soft rules.

Nodes that pass the filters are ranked by a key (smallest first):

- soft rules (classic ``==~``/``!=~``, Rancher ``_soft``): fewest unsatisfied first;
- recent failures: a node where this service version failed ``MAX_FAILURES`` times within
  ``MONITOR_FAILURES_S`` goes behind all others, the most failures last (swarmkit's back-off from
  nodes where a service crash-loops); fewer failures than that do not count;
- the strategy: **spread** (fewest tasks of the service, then fewest tasks), **binpack** (most
  reserved CPU+memory as a share of capacity, then most tasks), **random**.

Placement preferences (``spread=node.labels.zone``) come before the key, with Swarm's semantics:
nodes are grouped by the label's value (nodes without the label form their own group) and each
task goes to the group holding the fewest tasks of the service, recursively for several
preferences, then to the best node inside it.

Every level is a heap and the node chosen is always at the top of each heap on its path, so
after an assignment only that node is re-checked and re-keyed: a group of T tasks over N nodes
costs O(N + T log N). That holds because every rule here depends only on the node's own contents.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from shoal.extensions import task_priority
from shoal.models import Task, TaskState
from shoal.scheduler.expressions import Rule, rules_of
from shoal.scheduler.filters import Pipeline
from shoal.scheduler.nodeinfo import MAX_FAILURES, NodeInfo, failure_key, reservations

Key = tuple[Any, ...]
_RUNNING_ORDER = TaskState.RUNNING.order


def preference_labels(task: Task) -> list[str]:
    """The ``Spread`` descriptors of the task's placement preferences, in order."""
    placement = task.Spec.Placement
    prefs = placement.Preferences if placement is not None else None
    out = []
    for p in prefs or ():
        d = (p.Spread or {}).get("SpreadDescriptor", "")
        if d:
            out.append(d)
    return out


def descriptor_value(info: NodeInfo, descriptor: str) -> str | None:
    """The node's value for ``node.labels.x`` / ``engine.labels.x`` (None: the node lacks it)."""
    node = info.node
    if descriptor.startswith("node.labels."):
        return (node.Spec.Labels or {}).get(descriptor[len("node.labels.") :])
    if descriptor.startswith("engine.labels."):
        engine = node.Description.Engine if node.Description is not None else None
        return ((engine.Labels if engine is not None else None) or {}).get(descriptor[len("engine.labels.") :])
    return None


def make_key(
    strategy: str,
    service_id: str,
    soft: Sequence[Rule],
    rng: random.Random,
    failures: Callable[[NodeInfo], int] | None = None,
) -> Callable[[NodeInfo], Key]:
    """The ranking key for one group (smaller is better). ``failures``: the node's back-off count
    (0 for a node in good standing), ranked before everything else."""
    if strategy == "binpack":

        def base(info: NodeInfo) -> Key:
            res = info.node.Description.Resources
            used = (info.reserved_cpu / res.NanoCPUs if res.NanoCPUs else 0.0) + (
                info.reserved_mem / res.MemoryBytes if res.MemoryBytes else 0.0
            )
            return (-used, -info.active)

    elif strategy == "random":
        # Each node a Poisson clock: its key is its next "tick" (last tick + an exponential draw). A
        # node is re-keyed only when picked, at its own tick, and memorylessness makes every pick
        # uniformly random over the nodes that can take a task — in O(log n), like the others.
        # (A fresh uniform key per pick would not: a node that drew a high key first almost never
        # comes up again.)
        ticks: dict[str, float] = {}

        def base(info: NodeInfo) -> Key:
            t = ticks[info.id] = ticks.get(info.id, 0.0) + rng.expovariate(1.0)
            return (t,)

    else:

        def base(info: NodeInfo) -> Key:
            return (info.service_count(service_id), info.active)

    ranked = base
    if soft:

        def ranked(info: NodeInfo) -> Key:
            return (sum(not r.test(info) for r in soft), *base(info))

    if failures is None:
        return ranked

    def key(info: NodeInfo) -> Key:
        return (failures(info), *ranked(info))

    return key


def backoff(task: Task, nodes: Iterable[NodeInfo], now: float) -> Callable[[NodeInfo], int] | None:
    """The failure count by which a node is ranked for ``task``'s group, or None when no node has
    failed it ``MAX_FAILURES`` times (the usual case: the ranking key stays as it was)."""
    fkey = failure_key(task)

    def count(info: NodeInfo) -> int:
        n = info.recent_failures(fkey, now)
        return n if n >= MAX_FAILURES else 0

    if not any(fkey in info.failures and count(info) for info in nodes):
        return None
    return count


class _Leaf:
    __slots__ = ("count", "heap")

    def __init__(self) -> None:
        self.heap: list[tuple[Key, int, NodeInfo]] = []
        self.count = 0


class _Branch:
    __slots__ = ("children", "count", "heap")

    def __init__(self) -> None:
        self.children: dict[str | None, _Leaf | _Branch] = {}
        self.heap: list[tuple[int, int, _Leaf | _Branch]] = []
        self.count = 0


class GroupPlacer:
    """Hands out nodes for the tasks of one group, best first. Call :meth:`pick`, then :meth:`placed`.

    The pipeline must already be set for the group's task (its failure counts are reused to
    explain what is left unplaced).
    """

    def __init__(
        self,
        nodes: Iterable[NodeInfo],
        pipeline: Pipeline,
        task: Task,
        strategy: str,
        rng: random.Random | None = None,
        now: float | None = None,
    ) -> None:
        """``now`` (monotonic seconds): rank nodes by their recent failures for this group too."""
        self.pipeline = pipeline
        self.service_id = task.ServiceID
        soft = [r for r in rules_of(task) if r.soft]
        if now is not None:
            nodes = list(nodes)
            failures = backoff(task, nodes, now)
        else:
            failures = None
        self.key = make_key(strategy, task.ServiceID, soft, rng or random.Random(), failures)
        self.prefs = preference_labels(task)
        self._seq = 0
        root: _Leaf | _Branch = _Branch() if self.prefs else _Leaf()
        for info in nodes:
            if pipeline.process(info):
                self._insert(root, info)
        if isinstance(root, _Branch):
            self._heapify(root)
        else:
            heapq.heapify(root.heap)
        self.root = root
        self._path: list[_Leaf | _Branch] = []

    def _insert(self, root: _Leaf | _Branch, info: NodeInfo) -> None:
        n = info.service_count(self.service_id)
        level: _Leaf | _Branch = root
        for depth, d in enumerate(self.prefs):
            assert isinstance(level, _Branch)
            level.count += n
            v = descriptor_value(info, d)
            child = level.children.get(v)
            if child is None:
                child = level.children[v] = _Branch() if depth + 1 < len(self.prefs) else _Leaf()
            level = child
        assert isinstance(level, _Leaf)
        level.count += n
        self._seq += 1
        level.heap.append((self.key(info), self._seq, info))

    def _heapify(self, b: _Branch) -> None:
        for _value, child in sorted(b.children.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
            if isinstance(child, _Branch):
                self._heapify(child)
            else:
                heapq.heapify(child.heap)
            self._seq += 1
            b.heap.append((child.count, self._seq, child))
        heapq.heapify(b.heap)

    def pick(self) -> NodeInfo | None:
        """The best node for the next task, or None if no node can take one more."""
        level = self.root
        path: list[_Leaf | _Branch] = [level]
        while isinstance(level, _Branch):
            if not level.heap:
                return None
            level = level.heap[0][2]
            path.append(level)
        self._path = path
        return level.heap[0][2] if level.heap else None

    def placed(self, info: NodeInfo) -> None:
        """The node from :meth:`pick` took a task: re-check it and re-rank it (and its groups)."""
        path = self._path
        leaf = path[-1]
        assert isinstance(leaf, _Leaf)
        leaf.count += 1
        seq = leaf.heap[0][1]
        if self.pipeline.process(info):
            heapq.heapreplace(leaf.heap, (self.key(info), seq, info))
        else:
            heapq.heappop(leaf.heap)
        empty = not leaf.heap
        for level in reversed(path[:-1]):
            assert isinstance(level, _Branch)
            level.count += 1
            _, cseq, child = level.heap[0]
            if empty:
                heapq.heappop(level.heap)
            else:
                heapq.heapreplace(level.heap, (child.count, cseq, child))
            empty = not level.heap


# --------------------------------------------------------------------------- preemption


def preemption_message(task: Task, priority: int) -> str:
    name = (task.ServiceAnnotations or {}).get("Name") or task.ServiceID
    return f"preempted by {name} (priority {priority})"


def find_preemption(nodes: Iterable[NodeInfo], pipeline: Pipeline, task: Task) -> tuple[NodeInfo, list[Task]] | None:
    """The node where evicting the fewest lower-priority tasks lets ``task`` fit, and those tasks.

    Victims are taken lowest priority first (then largest reservation, so fewer are needed). The
    NodeInfos are left as they were. The pipeline must be set for ``task``.
    """
    prio = task_priority(task.Labels)
    if prio <= 0:
        return None
    best: tuple[tuple[int, int], NodeInfo, list[Task]] | None = None
    for info in nodes:
        cands = [
            t for t in info.tasks.values() if t.DesiredState.order <= _RUNNING_ORDER and task_priority(t.Labels) < prio
        ]
        if not cands:
            continue
        cands.sort(key=lambda t: (task_priority(t.Labels), tuple(-x for x in reservations(t)), t.ID))
        removed: list[Task] = []
        try:
            # Cheap rejection first: even evicting every candidate would not help.
            for t in cands:
                info.remove_task(t.ID)
            ok = pipeline.process(info)
            for t in cands:
                info.add_task(t)
            if not ok:
                continue
            for t in cands:
                if pipeline.process(info):
                    break
                info.remove_task(t.ID)
                removed.append(t)
        finally:
            for t in removed:
                info.add_task(t)
        score = (len(removed), sum(task_priority(t.Labels) for t in removed))
        if best is None or score < best[0]:
            best = (score, info, removed)
    return (best[1], best[2]) if best is not None else None
