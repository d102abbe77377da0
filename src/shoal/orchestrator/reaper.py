"""The task reaper: deletes tasks that are no longer wanted and no longer running.

Two jobs, as swarmkit's taskreaper:
- tasks with DesiredState=REMOVE (scale-down, service removed) are deleted once they ended, were
  never assigned, or their node is gone; deleting the task object is what makes the agent remove
  the container;
- each slot's history (per service+slot; per service+node for global services) is trimmed to the
  cluster's TaskHistoryRetentionLimit (default 5), the current task included: with 5, the running
  task and 4 old ones stay. The oldest deletable tasks go first; a task still wanted running is
  never deleted. A negative limit disables trimming.

The reaper keeps its own index of task IDs per slot (updated on task create/delete only, so the
flood of status updates costs a couple of comparisons each), and trimming a slot costs the size
of that slot, not of the service. Deletes of one event batch go in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shoal.models import DEFAULT_TASK_HISTORY, Task, TaskState
from shoal.orchestrator.base import ReconcileLoop
from shoal.orchestrator.task import ASSIGNED_ORDER, RUNNING_ORDER, is_global
from shoal.store import Action, Event, MemoryStore

SlotKey = tuple[str, int | str]


class TaskReaper(ReconcileLoop):
    kinds = ("task", "node", "cluster")

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self._slots: dict[SlotKey, set[str]] = {}
        self._key_of: dict[str, SlotKey] = {}

    # ------------------------------------------------------------------ loop hooks

    def stopped(self) -> None:
        self._slots.clear()
        self._key_of.clear()

    def reconcile_all(self) -> None:
        self._slots.clear()
        self._key_of.clear()
        doomed: set[str] = set()
        tasks = self.store.list("task")
        for t in tasks:
            self._index(t)
            if self._removable(t):
                doomed.add(t.ID)
        self._trim(list(self._slots), doomed)
        self._delete(doomed)

    def handle(self, events: list[Event]) -> None:
        doomed: set[str] = set()
        dirty: set[SlotKey] = set()
        trim_all = False
        for e in events:
            if e.kind == "task":
                if e.action is Action.DELETE:
                    self._unindex(e.old)
                    continue
                t: Task = e.obj
                if e.action is Action.CREATE:
                    dirty.add(self._index(t))
                if self._removable(t):
                    doomed.add(t.ID)
                elif e.action is Action.UPDATE and _became_history(t, e.old):
                    dirty.add(self._key_of.get(t.ID) or self._index(t))
            elif e.kind == "node" and e.action is Action.DELETE:
                for t in self.store.tasks_on_node(e.old.ID):
                    if self._removable(t):
                        doomed.add(t.ID)
            elif e.kind == "cluster" and e.action is not Action.DELETE:
                old = e.old.Spec.Orchestration if e.old is not None else None
                trim_all |= old != e.obj.Spec.Orchestration
        self._trim(list(self._slots) if trim_all else dirty, doomed)
        self._delete(doomed)

    # ------------------------------------------------------------------ decisions

    def _removable(self, t: Task) -> bool:
        """DesiredState REMOVE and nothing left to stop."""
        return t.DesiredState is TaskState.REMOVE and self._stopped(t)

    def _stopped(self, t: Task) -> bool:
        order = t.Status.State.order
        if order > RUNNING_ORDER or order < ASSIGNED_ORDER or not t.NodeID:
            return True
        return self.store.get("node", t.NodeID) is None

    def _limit(self) -> int:
        cluster = self.store.cluster()
        orch = cluster.Spec.Orchestration if cluster is not None else None
        if orch is None or orch.TaskHistoryRetentionLimit is None:
            return DEFAULT_TASK_HISTORY
        return orch.TaskHistoryRetentionLimit

    def _trim(self, keys: Iterable[SlotKey], doomed: set[str]) -> None:
        limit = self._limit()
        if limit < 0:
            return
        get = self.store.get
        for key in keys:
            ids = self._slots.get(key)
            if not ids or len(ids) <= limit:
                continue
            tasks = [t for t in (get("task", i) for i in ids) if t is not None]
            excess = len(tasks) - limit
            # Oldest first by last status change, as swarmkit sorts its history.
            for t in sorted(tasks, key=lambda t: (t.Status.Timestamp, t.CreatedAt)):
                if excess <= 0:
                    break
                if t.ID in doomed:
                    excess -= 1
                    continue
                if t.DesiredState.order > RUNNING_ORDER and self._stopped(t) and not self._counted(t):
                    doomed.add(t.ID)
                    excess -= 1

    def _counted(self, t: Task) -> bool:
        """A completed task of a job's current run: the job orchestrator counts completions from
        these, so deleting one would make the job run that slot again (whatever the history limit)."""
        if t.DesiredState is not TaskState.COMPLETE or t.JobIteration is None:
            return False
        svc = self.store.get("service", t.ServiceID)
        return (
            svc is not None
            and svc.JobStatus is not None
            and svc.JobStatus.JobIteration.Index == t.JobIteration.Index
        )

    def _delete(self, doomed: set[str]) -> None:
        if not doomed:
            return
        with self.store.tx() as tx:
            for tid in doomed:
                tx.delete("task", tid)

    # ------------------------------------------------------------------ slot index

    def _slot_key(self, t: Task) -> SlotKey:
        svc = self.store.get("service", t.ServiceID)
        # Global jobs keep history per node too (their tasks have slot 0, like global ones).
        glob = (is_global(svc) or _is_global_job(svc)) if svc is not None else not t.Slot
        return (t.ServiceID, t.NodeID if glob else t.Slot)

    def _index(self, t: Task) -> SlotKey:
        key = self._key_of.get(t.ID)
        if key is None:
            key = self._key_of[t.ID] = self._slot_key(t)
        self._slots.setdefault(key, set()).add(t.ID)
        return key

    def _unindex(self, t: Task) -> None:
        key = self._key_of.pop(t.ID, None)
        if key is None:
            return
        slot = self._slots.get(key)
        if slot is not None:
            slot.discard(t.ID)
            if not slot:
                del self._slots[key]


def _is_global_job(svc: Any) -> bool:
    mode = svc.Spec.Mode
    return mode is not None and mode.GlobalJob is not None


def _became_history(t: Task, old: Task | None) -> bool:
    """A task turned into history: no longer wanted, or it ended."""
    if old is None:
        return True
    return (t.DesiredState.order > RUNNING_ORDER) != (old.DesiredState.order > RUNNING_ORDER) or (
        t.Status.State.order > RUNNING_ORDER
    ) != (old.Status.State.order > RUNNING_ORDER)
