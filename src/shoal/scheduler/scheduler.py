"""The scheduler: assigns PENDING tasks to nodes through the filter pipeline and a strategy.

Work comes in batches: the watcher is drained after every wake-up and everything pending is placed
in one pass, written in one transaction. Tasks of one service made from one spec version form a
*group*: the filters run once per node per group, then :class:`GroupPlacer` hands the group's tasks
out one at a time from heaps (placement preferences, soft rules, then the strategy: spread, binpack
or random), so a 10,000-task group on 1,000 nodes costs one filter pass plus O(log nodes) per task.
After each assignment only that node is re-checked (its resources, ports and replica count changed).
Groups of higher ``shoal.priority`` are placed first.

A task of priority P that fits nowhere may preempt tasks of lower priority on one node (the node
needing the fewest evictions): they get DesiredState SHUTDOWN and a "preempted by ..." message,
their reservations count as released at once, and the preemptor is assigned in the same
transaction. The orchestrator then replaces the victims as usual.

Unplaceable tasks stay PENDING with ``Status.Err`` saying why ("no suitable node (insufficient
resources on 2 nodes)"). They are retried when capacity may have appeared: a node changed or a task
stopped holding resources. New pending tasks alone never re-run the old unplaceable ones.

Global tasks arrive with ``NodeID`` preset: only that node is checked.

Back-off (swarmkit's): each failure or rejection of a task the scheduler placed is counted on its
node, per service version; a node with ``MAX_FAILURES`` of them within ``MONITOR_FAILURES_S`` is
ranked behind the others for that service (see :mod:`.placement`), so a service that crash-loops
on one host (a bad volume, a missing device) moves to hosts where it may work. Preassigned
(global) tasks are not counted: the scheduler did not choose their node. The counts live in
memory, as in swarmkit: a restarted manager starts them afresh.

Cluster settings (strategy, overcommit) come from the swarm spec labels (:mod:`.settings`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import msgspec

from shoal.extensions import ClusterSettings, task_priority, task_strategy
from shoal.models import Node, Task, TaskState, TaskStatus, now_ts, parse_ts
from shoal.orchestrator.base import ReconcileLoop
from shoal.scheduler.filters import Pipeline
from shoal.scheduler.nodeinfo import MAX_FAILURES, MONITOR_FAILURES_S, NodeInfo, claim_generic, occupies
from shoal.scheduler.placement import GroupPlacer, find_preemption, preemption_message
from shoal.store import Action, Event, MemoryStore

if TYPE_CHECKING:
    from shoal.allocator import NetworkAllocator

log = logging.getLogger(__name__)

ASSIGNED_MESSAGE = "scheduler assigned task to node"
# Tasks one pass places; the rest wait for the next pass, so heartbeats and the API get the loop
# in between (a pass costs ~40 us a task: 2,000 keep it under ~100 ms on this class of machine).
MAX_PLACEMENTS_PER_PASS = 2_000
_RUNNING = TaskState.RUNNING.order
_ASSIGNED = TaskState.ASSIGNED.order
_FAILURES = (TaskState.FAILED, TaskState.REJECTED)


def _waits(assigned: list[Task]) -> list[float]:
    """Seconds from each task's creation to now. The tasks of one commit share its timestamp, so
    each distinct one is parsed once (strptime costs ~10 us: 2,000 a pass would add 20 ms)."""
    now = time.time()
    created: dict[str, float] = {}
    out = []
    for t in assigned:
        ts = t.CreatedAt
        at = created.get(ts)
        if at is None:
            at = created[ts] = parse_ts(ts) if ts else now
        out.append(now - at)
    return out


class Scheduler(ReconcileLoop):
    """Places pending tasks on nodes. ``pipeline``: a custom filter pipeline (default: registry)."""

    kinds = ("task", "node", "cluster")

    def __init__(
        self,
        store: MemoryStore,
        *,
        pipeline: Pipeline | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(store)
        self.clock = clock  # for the failure back-off window
        self.pipeline = pipeline or Pipeline()
        self.rng = rng or random.Random()
        self.settings = ClusterSettings()
        self.nodes: dict[str, NodeInfo] = {}
        self._where: dict[str, str] = {}  # task ID -> node it is counted on
        self._pending: dict[str, Task] = {}
        self._deferred: set[str] = set()  # pending tasks a full pass left for the next one
        self._preassigned: set[str] = set()  # global tasks: their failures say nothing of our choices
        # Preempted tasks whose resources count as free although their containers still stop.
        self._released: set[str] = set()
        self._victims: list[Task] = []  # preemptions of the pass being built
        self.preempted_by: dict[str, list[str]] = {}  # preemptor task ID -> victim IDs (this pass)
        # Gives assigned tasks their network addresses in the commit (the manager sets it; the
        # dry-run plan never does, so planning allocates nothing).
        self.allocator: NetworkAllocator | None = None
        # Told, after each commit, how long each assigned task waited since its creation (seconds):
        # the daemon's metrics set it (shoal/metrics.py).
        self.observe_placement: Callable[[list[float]], None] | None = None

    def _load_settings(self) -> bool:
        new = ClusterSettings.of_cluster(self.store.cluster())
        changed = new != self.settings
        self.settings = new
        self.pipeline.configure(new)
        return changed

    # ------------------------------------------------------------------ loop hooks

    def reconcile_all(self) -> None:
        self._load_settings()
        self.nodes = {n.ID: NodeInfo(n) for n in self.store.list("node")}
        self._where.clear()
        self._pending.clear()
        self._preassigned.clear()
        self._released.clear()
        for t in self.store.list("task"):
            self._track(t)
        self._schedule(list(self._pending.values()))

    def stopped(self) -> None:
        self.nodes.clear()
        self._where.clear()
        self._pending.clear()
        self._preassigned.clear()
        self._released.clear()

    def handle(self, events: list[Event]) -> None:
        retry_all = False
        fresh: dict[str, Task] = {}
        for e in events:
            if e.kind == "cluster":
                retry_all |= self._load_settings()
            elif e.kind == "node":
                retry_all |= self._node_event(e)
            elif e.action is Action.DELETE:
                self._released.discard(e.old.ID)
                retry_all |= self._forget(e.old.ID)
                self._pending.pop(e.old.ID, None)
                self._preassigned.discard(e.old.ID)
                fresh.pop(e.old.ID, None)
            else:
                was_pending = e.obj.ID in self._pending
                retry_all |= self._track(e.obj)
                if not was_pending and e.obj.ID in self._pending:
                    fresh[e.obj.ID] = e.obj
        if retry_all:
            todo = list(self._pending.values())
        else:
            deferred = [self._pending[tid] for tid in self._deferred if tid in self._pending and tid not in fresh]
            todo = deferred + [t for t in fresh.values() if t.ID in self._pending]
        self._deferred = set()
        if todo:
            self._schedule(todo)

    # ------------------------------------------------------------------ bookkeeping

    def _node_event(self, e: Event) -> bool:
        """Apply a node event; True if it may have made room for pending tasks."""
        node: Node = e.obj
        if e.action is Action.DELETE:
            info = self.nodes.pop(node.ID, None)
            if info is not None:
                for tid in info.tasks:
                    self._where.pop(tid, None)
            return False
        info = self.nodes.get(node.ID)
        if info is None:
            info = self.nodes[node.ID] = NodeInfo(node)
            for t in self.store.tasks_on_node(node.ID):
                self._track(t)
            return True
        old = info.node
        info.set_node(node)
        return (
            node.Spec != old.Spec
            or node.Status.State is not old.Status.State
            or node.Description != old.Description
        )

    def _track(self, t: Task) -> bool:
        """Update the node counts and the pending set for a new version of ``t``.

        Returns True if the change frees capacity (a task left a node or stopped being active).
        """
        freed = False
        if t.ID in self._released:
            # Preempted: already counted as gone. Forget it for good once it stops occupying.
            if not occupies(t):
                self._released.discard(t.ID)
            self._pending.pop(t.ID, None)
            return False
        where = self._where.get(t.ID)
        state = t.Status.State
        if where is not None and where == t.NodeID and _ASSIGNED <= state.order <= _RUNNING:
            # Fast path for status updates of a task already counted on its node.
            info = self.nodes.get(where)
            if info is not None:
                prev = info.tasks.get(t.ID)
                info.add_task(t)
                self._pending.pop(t.ID, None)
                return prev is not None and prev.DesiredState.order <= _RUNNING < t.DesiredState.order
        if occupies(t):
            if where is not None and where != t.NodeID:
                freed |= self._forget(t.ID)
            info = self.nodes.get(t.NodeID)
            if info is not None:
                prev = info.tasks.get(t.ID)
                info.add_task(t)
                self._where[t.ID] = t.NodeID
                if prev is not None and prev.DesiredState.order <= _RUNNING < t.DesiredState.order:
                    freed = True
        elif where is not None:
            if t.Status.State in _FAILURES:
                self._count_failure(t, where)
            freed |= self._forget(t.ID)
        if t.Status.State.terminal:
            self._preassigned.discard(t.ID)
        if t.Status.State is TaskState.PENDING and t.DesiredState.order <= _RUNNING:
            self._pending[t.ID] = t
            if t.NodeID:
                self._preassigned.add(t.ID)
        else:
            self._pending.pop(t.ID, None)
        return freed

    def _count_failure(self, t: Task, node_id: str) -> None:
        """``t`` just failed or was rejected on ``node_id`` (where it was counted until now)."""
        info = self.nodes.get(node_id)
        if info is None or t.ID in self._preassigned or t.NodeID != node_id:
            return
        prev = info.tasks.get(t.ID)
        if prev is None or prev.Status.State in _FAILURES:
            return  # not a transition we saw: counted already, or never ours
        n = info.task_failed(t, self.clock())
        if n == MAX_FAILURES:
            log.warning("scheduler: ranking node %s last for service %s: %d failures or rejections within %.0f s",
                        node_id, t.ServiceID, n, MONITOR_FAILURES_S)

    def _forget(self, task_id: str) -> bool:
        where = self._where.pop(task_id, None)
        info = self.nodes.get(where) if where is not None else None
        return info.remove_task(task_id) if info is not None else False

    # ------------------------------------------------------------------ placement

    def _schedule(self, tasks: list[Task]) -> None:
        groups: dict[tuple[str, int | str], list[Task]] = {}
        preassigned: list[Task] = []
        for t in tasks:
            if self.store.get("task", t.ID) is not t:
                continue  # a newer version is on its way through the watcher
            if t.NodeID:
                preassigned.append(t)
            else:
                key = (t.ServiceID, t.SpecVersion.Index if t.SpecVersion is not None else t.ID)
                groups.setdefault(key, []).append(t)
        if not groups and not preassigned:
            return
        ts = now_ts()
        assigned: list[Task] = []
        failed: list[tuple[Task, str]] = []
        self._victims = []
        self.preempted_by = {}
        budget = MAX_PLACEMENTS_PER_PASS
        deferred: list[Task] = []
        preassigned.sort(key=lambda t: -task_priority(t.Labels))
        deferred.extend(preassigned[budget:])
        for t in preassigned[:budget]:
            self._place_preassigned(t, ts, assigned, failed)
        budget -= min(len(preassigned), budget)
        # Higher priority first, so it takes free capacity before anything has to be preempted.
        for group in sorted(groups.values(), key=lambda g: -task_priority(g[0].Labels)):
            group.sort(key=lambda t: (t.Slot, t.ID))
            deferred.extend(group[budget:])
            group = group[:budget]
            budget -= len(group)
            if group:
                self._place_group(group, ts, assigned, failed)
        if deferred:
            self._deferred = {t.ID for t in deferred}
            self.wake()
        net_updates: list = []
        if self.allocator is not None and assigned:
            # Addresses are chosen now that the node is known (its own address on the network too).
            assigned, unaddressed, net_updates = self.allocator.attach_tasks(assigned)
            for tid, err in unaddressed:
                self._forget(tid)
                failed.append((self.store.get("task", tid), err))
            if unaddressed:
                gone = {tid for tid, _ in unaddressed}
                assigned = [nt for nt in assigned if nt.ID not in gone]
        try:
            with self.store.tx() as tx:
                for net in net_updates:
                    tx.update("network", net)
                evicted = {v.ID for v in self._victims}
                for v in self._victims:
                    tx.update("task", v)
                for nt in assigned:
                    # Assigned earlier in this pass and then preempted: the victim version wins
                    # (it was made from this one).
                    if nt.ID not in evicted:
                        tx.update("task", nt)
                for t, err in failed:
                    if t.Status.Err != err:
                        status = msgspec.structs.replace(t.Status, Err=err, Timestamp=ts)
                        tx.update("task", msgspec.structs.replace(t, Status=status))
        except Exception:
            # The node counts already include this batch's assignments, and the allocator its
            # addresses: forget them, and let the loop retry a full pass with back-off (never a
            # retry from in here: with a write that keeps failing, that recursed without end).
            if self.allocator is not None:
                self.allocator.rebuild()
            self.stopped()
            raise
        for nt in assigned:
            self._pending.pop(nt.ID, None)
        if self.observe_placement is not None and assigned:
            self.observe_placement(_waits(assigned))

    def _assign(self, t: Task, info: NodeInfo, ts: str) -> Task:
        nt = msgspec.structs.replace(
            t,
            NodeID=info.id,
            GenericResources=claim_generic(info, t),
            Status=TaskStatus(Timestamp=ts, State=TaskState.ASSIGNED, Message=ASSIGNED_MESSAGE),
        )
        info.add_task(nt)
        self._where[nt.ID] = info.id
        return nt

    def _place_group(self, group: list[Task], ts: str, assigned: list[Task], failed: list[tuple[Task, str]]) -> None:
        p = self.pipeline
        p.set_task(group[0])
        strategy = task_strategy(group[0].Labels, self.settings.strategy)
        remaining = group
        now = self.clock()
        while remaining:
            placer = GroupPlacer(self.nodes.values(), p, group[0], strategy, self.rng, now)
            placed = 0
            for t in remaining:
                info = placer.pick()
                if info is None:
                    break
                assigned.append(self._assign(t, info, ts))
                placer.placed(info)
                placed += 1
            remaining = remaining[placed:]
            if not remaining:
                return
            err = self._explain(p)
            if not self._preempt_for(remaining[0], self.nodes.values(), ts, assigned):
                failed.extend((t, err) for t in remaining)
                return
            # The victims may have freed more than one task needs: place the rest normally again.
            remaining = remaining[1:]

    def _preempt_for(self, t: Task, nodes: Iterable[NodeInfo], ts: str, assigned: list[Task]) -> bool:
        """Evict lower-priority tasks so that ``t`` fits (pipeline set for ``t``); True if assigned."""
        found = find_preemption(nodes, self.pipeline, t)
        if found is None:
            return False
        info, victims = found
        msg = preemption_message(t, task_priority(t.Labels))
        for v in victims:
            status = msgspec.structs.replace(v.Status, Err=msg, Message=msg, Timestamp=ts)
            nv = msgspec.structs.replace(v, DesiredState=TaskState.SHUTDOWN, Status=status)
            self._forget(v.ID)
            self._released.add(v.ID)
            self._victims.append(nv)
            log.info("scheduler: %s", f"task {v.ID} {msg}")
        self.preempted_by[t.ID] = [v.ID for v in victims]
        assigned.append(self._assign(t, info, ts))
        return True

    def _place_preassigned(self, t: Task, ts: str, assigned: list[Task], failed: list[tuple[Task, str]]) -> None:
        p = self.pipeline
        p.set_task(t)
        info = self.nodes.get(t.NodeID)
        if info is not None and p.process(info):
            assigned.append(self._assign(t, info, ts))
            return
        p.reset_counts()
        if info is not None:
            p.process(info)
        explanation = p.explain()
        if info is not None and self._preempt_for(t, [info], ts, assigned):
            return
        failed.append((t, f"no suitable node ({explanation})" if explanation else "no suitable node"))

    def _explain(self, p: Pipeline) -> str:
        """Why the rest of a group found no node: every node through the pipeline, counted afresh."""
        p.reset_counts()
        for info in self.nodes.values():
            p.process(info)
        explanation = p.explain()
        return f"no suitable node ({explanation})" if explanation else "no suitable node"
