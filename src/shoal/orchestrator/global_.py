"""The global orchestrator: one runnable task per qualifying node for each global service.

A node qualifies when it is not drained, not down, and satisfies the service's placement
constraints; new tasks are only created on nodes that are ready and active (a paused or
still-unknown node keeps what it runs but gets nothing new). Tasks on nodes that stop qualifying
are stopped: drained or down nodes get DesiredState=SHUTDOWN (history stays with the node),
deleted nodes and nodes that no longer meet the constraints get REMOVE.

The "slot" of a global task is its node: restarts, updates and the reaper's history are per
(service, node). Tasks are created with ``NodeID`` preset; the scheduler only confirms the node.
"""

from __future__ import annotations

from shoal.models import (
    Node,
    NodeAvailability,
    NodeState,
    Service,
    Task,
    TaskState,
    now_ts,
)
from shoal.orchestrator.base import ServiceOrchestrator
from shoal.orchestrator.restart import SlotPart
from shoal.orchestrator.task import (
    age_key,
    evacuate,
    is_global,
    is_runnable,
    is_terminal,
    is_up_to_date,
    new_task,
    node_changed,
    node_unusable,
    raise_desired,
)
from shoal.scheduler.constraints import constraints_of, node_matches
from shoal.store import Action, Event, Tx


class GlobalOrchestrator(ServiceOrchestrator):
    """Creates, replaces and removes the tasks of global services."""

    # ------------------------------------------------------------------ loop hooks

    def reconcile_all(self) -> None:
        ts = now_ts()
        with self.store.tx() as tx:
            for t in self.store.list("task"):
                # (A network attachment task has no service by design: api/attach.py.)
                orphan = self.store.get("service", t.ServiceID) is None
                if not t.Slot and t.Spec.NetworkAttachmentSpec is None and orphan:
                    raise_desired(tx, t, TaskState.REMOVE)
            for svc in self.store.list("service"):
                if is_global(svc):
                    self._reconcile(tx, svc, ts)

    def handle(self, events: list[Event]) -> None:
        dirty = self._poked
        self._poked = set()
        deleted: list[str] = []
        changed_nodes: set[str] = set()
        for e in events:
            if e.kind == "service":
                if e.action is Action.DELETE:
                    if is_global(e.old):
                        deleted.append(e.old.ID)
                elif is_global(e.obj):
                    dirty.add(e.obj.ID)
            elif e.kind == "task":
                if self._task_matters(e):
                    dirty.add(e.obj.ServiceID)
            elif e.kind == "node" and node_changed(e):
                changed_nodes.add(e.obj.ID)
        node_only: list[Service] = []
        if changed_nodes:
            # A node came, went or changed: only that node needs a look, for each global service.
            node_only = [s for s in self.store.list("service") if is_global(s) and s.ID not in dirty]
        if not dirty and not deleted and not node_only:
            return
        ts = now_ts()
        with self.store.tx() as tx:
            for sid in deleted:
                self.restarts.forget_service(sid)
                self.updater.forget(sid)
                for t in self.store.tasks_of_service(sid):
                    raise_desired(tx, t, TaskState.REMOVE)
            for sid in sorted(dirty):
                svc = self.store.get("service", sid)
                if svc is not None and is_global(svc):
                    self._reconcile(tx, svc, ts)
            for svc in node_only:
                self._reconcile_nodes(tx, svc, changed_nodes, ts)

    # ------------------------------------------------------------------ one service

    def _reconcile(self, tx: Tx, svc: Service, ts: str) -> None:
        """Every node for one service, then the rolling update (which needs the whole picture)."""
        sid = svc.ID
        by_node: dict[str, list[Task]] = {}
        for t in self.store.tasks_of_service(sid):
            if t.DesiredState is not TaskState.REMOVE:
                by_node.setdefault(t.NodeID, []).append(t)
        nodes: dict[str, Node] = {n.ID: n for n in self.store.list("node")}
        for node_id, tasks in by_node.items():
            if node_id not in nodes:  # node deleted: its tasks go
                self._drop(tx, sid, node_id, tasks, TaskState.REMOVE)
        ctx = _Pass(self, svc, ts)
        for node in nodes.values():
            self._reconcile_node(tx, ctx, node.ID, node, by_node.get(node.ID, []))
        self.updater.step(
            tx,
            svc,
            ctx.slots,
            lambda nid: new_task(svc, 0, str(nid), ts=ts),
            skip=self.restarts.refilling(sid),
            ts=ts,
        )

    def _reconcile_nodes(self, tx: Tx, svc: Service, node_ids: set[str], ts: str) -> None:
        """Only the given nodes for one service: what a node event needs, O(changed nodes).

        The updater is not stepped: tasks made here are up to date, and tasks dropped here leave
        the rollout through :meth:`_drop`.
        """
        ctx = _Pass(self, svc, ts)
        for nid in node_ids:
            tasks = [
                t
                for t in self.store.tasks_on_node(nid)
                if t.ServiceID == svc.ID and t.DesiredState is not TaskState.REMOVE
            ]
            self._reconcile_node(tx, ctx, nid, self.store.get("node", nid), tasks)

    def _reconcile_node(self, tx: Tx, ctx: _Pass, nid: str, node: Node | None, tasks: list[Task]) -> None:
        svc, sid = ctx.svc, ctx.svc.ID
        runnable = [t for t in tasks if is_runnable(t)]
        if node is None:
            self._drop(tx, sid, nid, tasks, TaskState.REMOVE)
            return
        if node_unusable(node):
            self._drop(tx, sid, nid, [], TaskState.SHUTDOWN)
            for t in runnable:
                evacuate(tx, t, node)
            return
        if not node_matches(ctx.constraints, node):
            self._drop(tx, sid, nid, runnable, TaskState.REMOVE)
            return
        keep: list[Task] = []
        declined = False
        for t in runnable:
            if is_terminal(t):
                declined |= not self.restarts.restart(tx, svc, t, nid)
            else:
                keep.append(t)
        if keep:
            ctx.slots[nid] = _dedupe(tx, svc, keep)
            self.restarts.done(sid, nid)
            return
        if nid in ctx.waiting or nid in ctx.held or declined:
            return
        if not _accepts_new_tasks(node):
            return  # a due restart stays booked until the node is active again
        if nid not in ctx.due and tasks and self._done(svc, tasks):
            return
        nt = new_task(svc, 0, nid, ts=ctx.ts)
        tx.create("task", nt)
        ctx.slots[nid] = [nt]
        self.restarts.done(sid, nid)

    def _drop(self, tx: Tx, sid: str, node_id: str, tasks: list[Task], state: TaskState) -> None:
        self.restarts.done(sid, node_id)
        self.updater.forget(sid, node_id)
        for t in tasks:
            raise_desired(tx, t, state)

    def _done(self, svc: Service, tasks: list[Task]) -> bool:
        """The node's last task ended and its restart policy leaves it ended."""
        newest = max(tasks, key=age_key)
        return (
            is_terminal(newest)
            and newest.DesiredState is TaskState.SHUTDOWN
            and is_up_to_date(newest, svc)
            and self.restarts.declined(newest)
        )


class _Pass:
    """What one reconcile pass of one service reads once and shares across its nodes."""

    def __init__(self, orch: GlobalOrchestrator, svc: Service, ts: str) -> None:
        self.svc = svc
        self.ts = ts
        self.constraints = constraints_of(svc.Spec.TaskTemplate)
        self.waiting = orch.restarts.waiting(svc.ID)
        self.due = set(orch.restarts.due(svc.ID))
        self.held = orch.updater.holds(svc.ID)
        self.slots: dict[SlotPart, list[Task]] = {}


def _dedupe(tx: Tx, svc: Service, tasks: list[Task]) -> list[Task]:
    """At most one up-to-date and one outdated runnable task per node (the pair is an update)."""
    if len(tasks) == 1:
        return tasks
    best: dict[bool, Task] = {}
    for t in sorted(tasks, key=lambda t: (t.Status.State.order, age_key(t)), reverse=True):
        fresh = is_up_to_date(t, svc)
        if fresh in best:
            raise_desired(tx, t, TaskState.REMOVE)
        else:
            best[fresh] = t
    return list(best.values())


def _accepts_new_tasks(node: Node) -> bool:
    return node.Status.State is NodeState.READY and node.Spec.Availability is NodeAvailability.ACTIVE
