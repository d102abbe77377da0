"""The replicated orchestrator: keep exactly ``Replicas`` runnable slots per replicated service.

A *slot* is a replica's identity (``Task.Slot`` 1..n); its tasks over time are its history. A slot
is *occupied* when it has a runnable task (DesiredState <= RUNNING), a restart booked by the
restart supervisor, a stop-first update waiting for its old task to stop, or when it is *done*: its
last task ended and its restart policy says to leave it (condition none, attempts exhausted).

Each pass, per dirty service (one transaction for the whole pass):
1. tasks that ended go to the restart supervisor; tasks on drained/down/deleted nodes are shut down
   and their slot refilled at once (evacuation is not the task's fault: no delay, no attempt spent);
2. scale: fill missing slots (slots just vacated and dead slots first, then the lowest free numbers)
   or pick victims and set their tasks to REMOVE (not-running slots first, then slots on the nodes
   holding the most tasks of the service, then the highest slot numbers);
3. history of dead slots (no longer part of the service) is marked REMOVE for the reaper;
4. the rolling updater steps.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

from shoal.models import NodeState, Service, Task, TaskState, now_ts
from shoal.orchestrator.base import ServiceOrchestrator
from shoal.orchestrator.bluegreen import BlueGreen
from shoal.orchestrator.handover import Handovers
from shoal.orchestrator.task import (
    age_key,
    evacuate,
    is_replicated,
    is_runnable,
    is_running,
    is_terminal,
    is_up_to_date,
    new_task,
    node_unusable,
    raise_desired,
    replicas,
)
from shoal.store import Action, Event, MemoryStore, Tx

# New tasks one pass may create; more wait for the next pass (after the loop served others).
MAX_NEW_TASKS_PER_PASS = 2_000


class ReplicatedOrchestrator(ServiceOrchestrator):
    """Creates, replaces and removes the tasks of replicated services."""

    def __init__(self, store: MemoryStore, **kwargs: Any) -> None:
        super().__init__(store, **kwargs)
        self._budget = MAX_NEW_TASKS_PER_PASS  # new tasks left in this pass
        # Blue-green releases (orchestrator/bluegreen.py) take the rolling updater's place for
        # services labelled shoal.update-strategy=blue-green; standby tasks' changes wake the loop.
        self.bluegreen = BlueGreen(
            store, schedule=self.call_later, on_due=self._poke, clock=kwargs.get("clock", time.monotonic)
        )
        # Replicas moved off a drained node start once the old task stopped (orchestrator/handover.py).
        self.handovers = Handovers(
            store, schedule=self.call_later, on_due=self._poke, clock=kwargs.get("clock", time.monotonic)
        )

    def _task_matters(self, e: Event) -> bool:
        return super()._task_matters(e) or self.bluegreen.matters(e)

    def stopped(self) -> None:
        super().stopped()
        self.bluegreen.clear()
        self.handovers.clear()

    # ------------------------------------------------------------------ loop hooks

    def reconcile_all(self) -> None:
        self._budget = MAX_NEW_TASKS_PER_PASS
        ts = now_ts()
        with self.store.tx() as tx:
            # Tasks of services deleted while no orchestrator ran (global tasks have slot 0).
            for t in self.store.list("task"):
                if t.Slot and self.store.get("service", t.ServiceID) is None:
                    raise_desired(tx, t, TaskState.REMOVE)
            for svc in self.store.list("service"):
                if is_replicated(svc):
                    self._reconcile(tx, svc, ts)

    def handle(self, events: list[Event]) -> None:
        dirty = self._poked
        self._poked = set()
        deleted: list[Service] = []
        for e in events:
            if e.kind == "service":
                if e.action is Action.DELETE:
                    if is_replicated(e.old):
                        deleted.append(e.old)
                elif is_replicated(e.obj):
                    dirty.add(e.obj.ID)
            elif e.kind == "task":
                t = e.old if e.action is Action.DELETE else e.obj
                if self._task_matters(e) or self.handovers.watches(t.ID):
                    dirty.add(t.ServiceID)
            elif e.kind == "node":
                if _node_lost(e):
                    for t in self.store.tasks_on_node(e.obj.ID if e.obj is not None else e.old.ID):
                        if is_runnable(t):
                            dirty.add(t.ServiceID)
                if e.action is Action.DELETE or e.obj.Status.State is NodeState.DOWN:
                    dirty |= self.handovers.services()  # an old task waited for may be on that node
        if not dirty and not deleted:
            return
        self._budget = MAX_NEW_TASKS_PER_PASS
        ts = now_ts()
        with self.store.tx() as tx:
            for svc in deleted:
                self._remove_service(tx, svc.ID)
            for sid in sorted(dirty):
                svc = self.store.get("service", sid)
                if svc is not None and is_replicated(svc):
                    self._reconcile(tx, svc, ts)

    # ------------------------------------------------------------------ one service

    def _remove_service(self, tx: Tx, service_id: str) -> None:
        self.restarts.forget_service(service_id)
        self.handovers.forget_service(service_id)
        self.updater.forget(service_id)
        for t in self.store.tasks_of_service(service_id):
            raise_desired(tx, t, TaskState.REMOVE)

    def _reconcile(self, tx: Tx, svc: Service, ts: str) -> None:
        sid = svc.ID
        store = self.store
        self.handovers.step(tx, sid)
        by_slot: dict[int, list[Task]] = {}
        runnable: dict[int, list[Task]] = {}
        for t in store.tasks_of_service(sid):
            if t.DesiredState is TaskState.REMOVE:
                continue
            if t.DesiredState is TaskState.READY and not self.handovers.holds(t.ID, sid):
                raise_desired(tx, t, TaskState.RUNNING)  # held by an earlier leader: start it now
            by_slot.setdefault(t.Slot, []).append(t)
            if is_runnable(t):
                runnable.setdefault(t.Slot, []).append(t)

        # 1. Ended tasks and tasks on nodes that can no longer run them.
        refill: list[int] = []
        done: set[int] = set()
        moved_from: dict[int, Task] = {}  # evacuated replicas that may still run where they were
        for slot in list(runnable):
            keep: list[Task] = []
            moved = False
            for t in runnable[slot]:
                if is_terminal(t):
                    if not self.restarts.restart(tx, svc, t, slot):
                        done.add(slot)
                elif t.NodeID and node_unusable(node := store.get("node", t.NodeID)):
                    evacuate(tx, t, node)
                    moved = True
                    if (left := tx.get("task", t.ID)) is not None and self.handovers.must_wait(left):
                        moved_from[slot] = left
                else:
                    keep.append(t)
            if keep:
                runnable[slot] = keep
                done.discard(slot)
                continue
            del runnable[slot]
            if moved and not self.restarts.is_booked(sid, slot):
                done.discard(slot)
                refill.append(slot)

        waiting = self.restarts.waiting(sid)
        due = set(self.restarts.due(sid))
        held = self.updater.holds(sid)
        for slot, tasks in by_slot.items():
            if slot in runnable or slot in waiting or slot in due or slot in held or slot in refill:
                continue
            newest = max(tasks, key=age_key)
            if (
                is_terminal(newest)
                and newest.DesiredState is TaskState.SHUTDOWN
                and is_up_to_date(newest, svc)
                and self.restarts.declined(newest)
            ):
                done.add(slot)
        occupied = set(runnable) | waiting | due | held | done

        # 2. Scale.
        want = replicas(svc)
        missing = want - len(occupied)
        fill: list[int] = []
        if missing > 0:
            fill = _pick_free(missing, occupied, refill, by_slot)
        elif missing < 0:
            for slot in self._pick_victims(-missing, occupied, runnable):
                occupied.discard(slot)
                due.discard(slot)
                runnable.pop(slot, None)
                self.restarts.done(sid, slot)
                self.updater.forget(sid, slot)
                for t in by_slot.get(slot, ()):
                    raise_desired(tx, t, TaskState.REMOVE)
        for slot in sorted(due):
            # A booked restart came due: its replacement, unless an up-to-date task already runs there.
            if not any(is_up_to_date(t, svc) for t in runnable.get(slot, ())):
                fill.append(slot)
            self.restarts.done(sid, slot)
        if len(fill) > self._budget:
            # A bounded pass: the rest of the slots are filled in the next one, so heartbeats and
            # the API get the loop in between (10,000 new replicas are five passes, not one).
            fill = sorted(fill)[: max(self._budget, 0)]
            self._poke(sid)
        self._budget -= len(fill)
        for slot in fill:
            nt = new_task(svc, slot, ts=ts)
            if (old := moved_from.get(slot)) is not None:
                nt = self.handovers.hold(nt, old)
            tx.create("task", nt)
            runnable.setdefault(slot, []).append(nt)

        # 3. Dead slots: their history no longer belongs to a replica.
        for slot, tasks in by_slot.items():
            if slot not in occupied and slot not in runnable:
                for t in tasks:
                    raise_desired(tx, t, TaskState.REMOVE)

        # 4. Rolling update; a blue-green service's release instead (the updater lets it go).
        if self.bluegreen.step(tx, svc, runnable, lambda slot: new_task(svc, int(slot), ts=ts), ts=ts):
            self.updater.forget(sid)
            return
        self.updater.step(
            tx,
            svc,
            runnable,
            lambda slot: new_task(svc, int(slot), ts=ts),
            skip=self.restarts.refilling(sid),
            ts=ts,
        )

    def _pick_victims(self, n: int, occupied: set[int], runnable: dict[int, list[Task]]) -> list[int]:
        """Slots to remove on scale-down; see the module docstring for the order."""
        not_running: list[tuple[int, int]] = []
        per_node: dict[str, list[int]] = {}
        for slot in occupied:
            tasks = runnable.get(slot)
            running = [t for t in tasks or () if is_running(t)]
            if not running:
                # Rank: 0 = nothing placed yet (idle slot or unassigned), 1 = assigned, not running.
                assigned = any(t.NodeID for t in tasks or ())
                not_running.append((1 if assigned else 0, -slot))
            else:
                per_node.setdefault(running[0].NodeID, []).append(slot)
        not_running.sort()
        victims = [-neg for _, neg in not_running[:n]]
        n -= len(victims)
        if n <= 0:
            return victims
        heap = []
        for node_id, slots in per_node.items():
            slots.sort()
            heap.append((-len(slots), -slots[-1], node_id))
        heapq.heapify(heap)
        while n > 0 and heap:
            _, _, node_id = heapq.heappop(heap)
            slots = per_node[node_id]
            victims.append(slots.pop())
            n -= 1
            if slots:
                heapq.heappush(heap, (-len(slots), -slots[-1], node_id))
        return victims


def _pick_free(n: int, occupied: set[int], refill: list[int], by_slot: dict[int, list[Task]]) -> list[int]:
    """``n`` slot numbers to fill: just-vacated slots, then dead slots, then the lowest free numbers."""
    out: list[int] = []
    taken = set(occupied)
    for slot in [*refill, *sorted(by_slot)]:
        if len(out) == n:
            return out
        if slot not in taken:
            out.append(slot)
            taken.add(slot)
    slot = 0
    while len(out) < n:
        slot += 1
        if slot not in taken:
            out.append(slot)
            taken.add(slot)
    return out


def _node_lost(e: Event) -> bool:
    """A node event after which tasks on the node must move (deleted, drained, or down)."""
    if e.action is Action.DELETE:
        return True
    if e.action is Action.CREATE:
        return node_unusable(e.obj)
    return node_unusable(e.obj) and not node_unusable(e.old)

