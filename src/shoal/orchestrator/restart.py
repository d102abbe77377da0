"""The restart supervisor: what happens to a slot when its task stops on its own.

Shared by the replicated and global orchestrators (each owns one instance). When a task whose
DesiredState is RUNNING reaches a terminal state, :meth:`RestartSupervisor.restart` shuts it down
(DesiredState=SHUTDOWN, it stays as history) and, if the task's RestartPolicy allows, books a
replacement for the same slot after the policy's delay. The replacement itself is created by the
orchestrator in its next reconcile pass, so that a burst of restarts due at the same moment is
written in one transaction; until then the slot counts as occupied (:meth:`waiting`), which is what
stops a reconcile from creating a second task for it.

Restart history (for MaxAttempts within Window) lives in memory per slot, as in swarmkit; a
restarted manager starts counting again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shoal.models import (
    DEFAULT_RESTART_DELAY,
    SECOND,
    RestartCondition,
    Service,
    Task,
    TaskSpec,
    TaskState,
)
from shoal.orchestrator.task import raise_desired
from shoal.store import MemoryStore, Tx

# A slot within a service: the slot number (replicated) or the node ID (global).
SlotPart = int | str
Schedule = Callable[[float, Callable[[], None]], Any]

_FAILED_STATES = frozenset({TaskState.FAILED, TaskState.REJECTED, TaskState.ORPHANED})


@dataclass(slots=True)
class PendingRestart:
    old_task_id: str
    due: float  # monotonic seconds
    ready: bool = False
    handle: Any = None  # timer handle, cancelled if the slot goes away first


@dataclass(slots=True)
class _History:
    spec: TaskSpec
    times: deque[float] = field(default_factory=deque)  # monotonic times of restarts
    total: int = 0


def task_failed(task: Task) -> bool:
    """What ``on-failure`` restarts: failed, rejected, orphaned, or completed with a non-zero code."""
    state = task.Status.State
    if state in _FAILED_STATES:
        return True
    cs = task.Status.ContainerStatus
    return state is TaskState.COMPLETE and cs is not None and cs.ExitCode != 0


def restart_condition(task: Task) -> RestartCondition:
    policy = task.Spec.RestartPolicy
    if policy is None or policy.Condition is None:
        return RestartCondition.ANY
    return policy.Condition


class RestartSupervisor:
    """Applies RestartPolicy to tasks that ended while desired running.

    ``schedule(delay_s, callback)`` starts a timer (the owning loop passes its own, so timers die
    with it); ``on_ready(service_id)`` is called when a delay has elapsed and a replacement is due.
    """

    def __init__(
        self,
        store: MemoryStore,
        *,
        schedule: Schedule | None = None,
        on_ready: Callable[[str], None] | None = None,
        default_delay_ns: int = DEFAULT_RESTART_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._schedule = schedule or self._loop_call_later
        self._on_ready = on_ready
        self.default_delay_ns = default_delay_ns
        self._clock = clock
        self._pending: dict[str, dict[SlotPart, PendingRestart]] = {}
        self._history: dict[str, dict[SlotPart, _History]] = {}
        # Per service, tasks whose restart was refused because attempts ran out: their slot is done.
        self._exhausted: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ decisions

    def restart(self, tx: Tx, service: Service, task: Task, part: SlotPart) -> bool:
        """Shut ``task`` down and book a replacement if its policy allows; True if one is booked."""
        raise_desired(tx, task, TaskState.SHUTDOWN)
        if not self.should_restart(task, part):
            if self._attempts_limited(task):
                self._exhausted.setdefault(service.ID, set()).add(task.ID)
            return False
        self._record(service.ID, part, task)
        policy = task.Spec.RestartPolicy
        delay_ns = policy.Delay if policy is not None and policy.Delay is not None else self.default_delay_ns
        self.book(service.ID, part, task.ID, delay_ns / SECOND)
        return True

    def should_restart(self, task: Task, part: SlotPart) -> bool:
        cond = restart_condition(task)
        if cond is RestartCondition.NONE:
            return False
        if cond is RestartCondition.ON_FAILURE and not task_failed(task):
            return False
        policy = task.Spec.RestartPolicy
        if policy is None or not policy.MaxAttempts:
            return True
        max_attempts = policy.MaxAttempts
        hist = self._history.get(task.ServiceID, {}).get(part)
        if hist is None or (hist.spec is not task.Spec and hist.spec != task.Spec):
            return True  # new spec: attempts count afresh, as swarmkit does
        window_ns = policy.Window or 0
        if window_ns == 0:
            return hist.total < max_attempts
        horizon = self._clock() - window_ns / SECOND
        while hist.times and hist.times[0] <= horizon:
            hist.times.popleft()
        return len(hist.times) < max_attempts

    def declined(self, task: Task) -> bool:
        """True if this finished task was (or would be) left alone: its slot is done, not empty.

        Condition ``none``, ``on-failure`` after a success, or attempts exhausted. Computed from the
        task where possible so that a restarted manager does not resurrect finished slots.
        """
        cond = restart_condition(task)
        if cond is RestartCondition.NONE:
            return True
        if cond is RestartCondition.ON_FAILURE and not task_failed(task):
            return True
        return task.ID in self._exhausted.get(task.ServiceID, ())

    # ------------------------------------------------------------------ booked replacements

    def book(self, service_id: str, part: SlotPart, old_task_id: str, delay_s: float) -> None:
        """Reserve ``part`` for a replacement due in ``delay_s`` (0: due now)."""
        slots = self._pending.setdefault(service_id, {})
        prev = slots.pop(part, None)
        if prev is not None and prev.handle is not None:
            prev.handle.cancel()
        p = PendingRestart(old_task_id, self._clock() + delay_s, ready=delay_s <= 0)
        if not p.ready:
            p.handle = self._schedule(delay_s, lambda: self._fire(service_id, part, p))
        slots[part] = p

    def waiting(self, service_id: str) -> set[SlotPart]:
        """Slots whose replacement is booked but not due yet: they count as occupied."""
        return {k for k, p in self._pending.get(service_id, {}).items() if not p.ready}

    def refilling(self, service_id: str) -> dict[SlotPart, str]:
        """:meth:`waiting`'s slots, each with the ID of the failed task its restart replaces."""
        return {k: p.old_task_id for k, p in self._pending.get(service_id, {}).items() if not p.ready}

    def due(self, service_id: str) -> list[SlotPart]:
        """Slots whose replacement is due now; the orchestrator creates it and calls :meth:`done`."""
        return sorted((k for k, p in self._pending.get(service_id, {}).items() if p.ready), key=str)

    def is_booked(self, service_id: str, part: SlotPart) -> bool:
        return part in self._pending.get(service_id, {})

    def done(self, service_id: str, part: SlotPart) -> None:
        """The replacement exists (or the slot went away): drop the booking."""
        slots = self._pending.get(service_id)
        if not slots:
            return
        p = slots.pop(part, None)
        if p is not None and p.handle is not None:
            p.handle.cancel()
        if not slots:
            del self._pending[service_id]

    def forget_service(self, service_id: str) -> None:
        for p in self._pending.pop(service_id, {}).values():
            if p.handle is not None:
                p.handle.cancel()
        self._history.pop(service_id, None)
        self._exhausted.pop(service_id, None)

    def clear(self) -> None:
        for sid in list(self._pending):
            self.forget_service(sid)
        self._history.clear()
        self._exhausted.clear()

    # ------------------------------------------------------------------ internals

    def _attempts_limited(self, task: Task) -> bool:
        policy = task.Spec.RestartPolicy
        return (
            policy is not None
            and bool(policy.MaxAttempts)
            and (restart_condition(task) is RestartCondition.ANY or task_failed(task))
        )

    def _record(self, service_id: str, part: SlotPart, task: Task) -> None:
        slots = self._history.setdefault(service_id, {})
        hist = slots.get(part)
        if hist is None or (hist.spec is not task.Spec and hist.spec != task.Spec):
            hist = slots[part] = _History(task.Spec)
        hist.times.append(self._clock())
        hist.total += 1

    def _fire(self, service_id: str, part: SlotPart, p: PendingRestart) -> None:
        if self._pending.get(service_id, {}).get(part) is not p:
            return  # cancelled or superseded
        p.ready = True
        p.handle = None
        if self._on_ready is not None:
            self._on_ready(service_id)

    @staticmethod
    def _loop_call_later(delay_s: float, cb: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay_s, cb)
