"""A replica moved off a drained node starts only once its old task has stopped.

Why: draining a node moves its replicas, and the replacement of a replica that is still running
(it has its stop grace period to finish) would otherwise run beside it for that time — two
writers on a shared volume, two holders of one lock. Swarm's restart supervisor does the same
(``DelayStart`` with ``waitStop``): the replacement is created at once with DesiredState READY, so
it is placed and its image pulled and container created while the old task stops, and it is raised
to RUNNING when the old task has ended, its node is down or gone, or a minute has passed (a task
that will not stop must not keep its slot empty for ever). A replica moved off a *down* node does
not wait: nothing there can report its end (it is orphaned, see task.evacuate).

State is in memory, as swarmkit's is: a new leader finds a READY replacement it does not track and
starts it at once (it cannot tell how long the old task has had).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from shoal.models import NodeState, Task, TaskState
from shoal.orchestrator.task import ASSIGNED_ORDER, RUNNING_ORDER, raise_desired, with_desired
from shoal.store import MemoryStore, Tx

OLD_TASK_TIMEOUT_S = 60.0  # swarmkit's defaultOldTaskTimeout


@dataclass
class _Wait:
    new_id: str
    old_id: str
    deadline: float


class Handovers:
    """The replacements waiting for their old task to stop, per service and slot."""

    def __init__(self, store: MemoryStore, *, schedule: Callable[[float, Callable[[], None]], asyncio.TimerHandle],
                 on_due: Callable[[str], None], clock: Callable[[], float]) -> None:
        self.store = store
        self._schedule = schedule
        self._on_due = on_due
        self._clock = clock
        self._waits: dict[str, dict[int, _Wait]] = {}
        self._old: dict[str, str] = {}  # old task ID -> service ID: its end wakes the service

    @staticmethod
    def must_wait(old: Task) -> bool:
        """Whether a replica moved off its node (``old``, as evacuate left it) may still run there:
        assigned or running, and not orphaned (a down node's tasks are)."""
        return ASSIGNED_ORDER <= old.Status.State.order <= RUNNING_ORDER

    def hold(self, new: Task, old: Task) -> Task:
        """``new`` (about to be created) replaces ``old``: it is made READY, and started later."""
        wait = _Wait(new.ID, old.ID, self._clock() + OLD_TASK_TIMEOUT_S)
        self._waits.setdefault(new.ServiceID, {})[new.Slot] = wait
        self._old[old.ID] = new.ServiceID
        service_id = new.ServiceID
        self._schedule(OLD_TASK_TIMEOUT_S, lambda: self._on_due(service_id))
        return with_desired(new, TaskState.READY)

    def watches(self, task_id: str) -> str | None:
        """The service to reconcile when task ``task_id`` changes, if it is an old task waited for."""
        return self._old.get(task_id)

    def services(self) -> set[str]:
        return set(self._waits)

    def holds(self, task_id: str, service_id: str) -> bool:
        return any(w.new_id == task_id for w in self._waits.get(service_id, {}).values())

    def step(self, tx: Tx, service_id: str) -> None:
        """Start each replacement of ``service_id`` whose old task has stopped (or may no longer be
        waited for); forget those that went meanwhile (scaled down, service updated)."""
        waits = self._waits.get(service_id)
        if not waits:
            return
        now = self._clock()
        for slot, w in list(waits.items()):
            new = tx.get("task", w.new_id)
            if new is None or new.DesiredState is not TaskState.READY:
                self._drop(service_id, slot)
                continue
            old = tx.get("task", w.old_id)
            node = self.store.get("node", old.NodeID) if old is not None and old.NodeID else None
            if (old is None or old.Status.State.order > RUNNING_ORDER or node is None
                    or node.Status.State is NodeState.DOWN or now >= w.deadline):
                raise_desired(tx, new, TaskState.RUNNING)
                self._drop(service_id, slot)

    def _drop(self, service_id: str, slot: int) -> None:
        waits = self._waits.get(service_id, {})
        w = waits.pop(slot, None)
        if w is not None:
            self._old.pop(w.old_id, None)
        if not waits:
            self._waits.pop(service_id, None)

    def forget_service(self, service_id: str) -> None:
        for slot in list(self._waits.get(service_id, {})):
            self._drop(service_id, slot)

    def clear(self) -> None:
        self._waits.clear()
        self._old.clear()

