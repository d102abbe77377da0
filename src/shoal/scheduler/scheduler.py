"""The scheduler: assigns PENDING tasks to nodes through the filter pipeline and the spread strategy.

Work comes in batches: the watcher is drained after every wake-up and everything pending is placed
in one pass, written in one transaction. Tasks of one service made from one spec version form a
*group*: the filters run once per node per group, then the spread strategy hands the group's tasks
out one at a time from a heap ordered by (tasks of this service on the node, tasks on the node), so
a 10,000-task group on 1,000 nodes costs one filter pass plus O(log nodes) per task. After each
assignment only that node is re-checked (its resources, ports and replica count changed).

Unplaceable tasks stay PENDING with ``Status.Err`` saying why ("no suitable node (insufficient
resources on 2 nodes)"). They are retried when capacity may have appeared: a node changed or a task
stopped holding resources. New pending tasks alone never re-run the old unplaceable ones.

Global tasks arrive with ``NodeID`` preset: only that node is checked.

Not yet: placement preferences (spread over labels), generic resources, preferring nodes where the
service has not failed recently; a later issue adds them as strategy/filters.
"""

from __future__ import annotations

import heapq
import logging

import msgspec

from shoal.models import Node, Task, TaskState, TaskStatus, now_ts
from shoal.orchestrator.base import ReconcileLoop
from shoal.scheduler.filters import Pipeline
from shoal.scheduler.nodeinfo import NodeInfo, occupies
from shoal.store import Action, Event, MemoryStore

log = logging.getLogger(__name__)

ASSIGNED_MESSAGE = "scheduler assigned task to node"
_RUNNING = TaskState.RUNNING.order
_ASSIGNED = TaskState.ASSIGNED.order


class Scheduler(ReconcileLoop):
    """Places pending tasks on nodes. ``pipeline``: a custom filter pipeline (default: registry)."""

    kinds = ("task", "node")

    def __init__(self, store: MemoryStore, *, pipeline: Pipeline | None = None) -> None:
        super().__init__(store)
        self.pipeline = pipeline or Pipeline()
        self.nodes: dict[str, NodeInfo] = {}
        self._where: dict[str, str] = {}  # task ID -> node it is counted on
        self._pending: dict[str, Task] = {}

    # ------------------------------------------------------------------ loop hooks

    def reconcile_all(self) -> None:
        self.nodes = {n.ID: NodeInfo(n) for n in self.store.list("node")}
        self._where.clear()
        self._pending.clear()
        for t in self.store.list("task"):
            self._track(t)
        self._schedule(list(self._pending.values()))

    def stopped(self) -> None:
        self.nodes.clear()
        self._where.clear()
        self._pending.clear()

    def handle(self, events: list[Event]) -> None:
        retry_all = False
        fresh: dict[str, Task] = {}
        for e in events:
            if e.kind == "node":
                retry_all |= self._node_event(e)
            elif e.action is Action.DELETE:
                retry_all |= self._forget(e.old.ID)
                self._pending.pop(e.old.ID, None)
                fresh.pop(e.old.ID, None)
            else:
                was_pending = e.obj.ID in self._pending
                retry_all |= self._track(e.obj)
                if not was_pending and e.obj.ID in self._pending:
                    fresh[e.obj.ID] = e.obj
        todo = list(self._pending.values()) if retry_all else [t for t in fresh.values() if t.ID in self._pending]
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
        info.node = node
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
            freed |= self._forget(t.ID)
        if t.Status.State is TaskState.PENDING and t.DesiredState.order <= _RUNNING:
            self._pending[t.ID] = t
        else:
            self._pending.pop(t.ID, None)
        return freed

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
        for t in preassigned:
            self._place_preassigned(t, ts, assigned, failed)
        for group in groups.values():
            group.sort(key=lambda t: (t.Slot, t.ID))
            self._place_group(group, ts, assigned, failed)
        try:
            with self.store.tx() as tx:
                for nt in assigned:
                    tx.update("task", nt)
                for t, err in failed:
                    if t.Status.Err != err:
                        status = msgspec.structs.replace(t.Status, Err=err, Timestamp=ts)
                        tx.update("task", msgspec.structs.replace(t, Status=status))
        except Exception:
            # The node counts already include this batch's assignments: start over from the store.
            log.exception("scheduler: writing assignments failed; rebuilding state")
            self.reconcile_all()
            return
        for nt in assigned:
            self._pending.pop(nt.ID, None)

    def _assign(self, t: Task, info: NodeInfo, ts: str) -> Task:
        nt = msgspec.structs.replace(
            t,
            NodeID=info.id,
            Status=TaskStatus(Timestamp=ts, State=TaskState.ASSIGNED, Message=ASSIGNED_MESSAGE),
        )
        info.add_task(nt)
        self._where[nt.ID] = info.id
        return nt

    def _place_group(self, group: list[Task], ts: str, assigned: list[Task], failed: list[tuple[Task, str]]) -> None:
        p = self.pipeline
        p.set_task(group[0])
        sid = group[0].ServiceID
        heap = [
            (info.service_count(sid), info.active, seq, info)
            for seq, info in enumerate(self.nodes.values())
            if p.process(info)
        ]
        heapq.heapify(heap)
        placed = 0
        for t in group:
            if not heap:
                break
            _, _, seq, info = heap[0]
            assigned.append(self._assign(t, info, ts))
            placed += 1
            if p.process(info):
                heapq.heapreplace(heap, (info.service_count(sid), info.active, seq, info))
            else:
                heapq.heappop(heap)
        if placed < len(group):
            err = self._explain(p)
            failed.extend((t, err) for t in group[placed:])

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
        failed.append((t, f"no suitable node ({explanation})" if explanation else "no suitable node"))

    def _explain(self, p: Pipeline) -> str:
        """Why the rest of a group found no node: every node through the pipeline, counted afresh."""
        p.reset_counts()
        for info in self.nodes.values():
            p.process(info)
        explanation = p.explain()
        return f"no suitable node ({explanation})" if explanation else "no suitable node"
