"""Rolling updates: replace tasks made from an older TaskTemplate, a few slots at a time.

The updater is a state machine stepped by the owning orchestrator's reconcile pass (it never
blocks): each step advances slots in flight, starts new ones while fewer than ``Parallelism`` are
in flight or cooling down for ``Delay``, and keeps ``Service.UpdateStatus`` in step.

- stop-first (default): the old task gets DesiredState=SHUTDOWN; the new task is created in the
  same slot once the old one has stopped. Until then the slot is *held* (counts as occupied).
- start-first: the new task is created at once; the old one is shut down when the new one runs.

A slot's update is finished when its new task is running (or has ended: the restart supervisor
takes it from there). ``Delay`` is then waited before that worker takes the next slot, as in
swarmkit's updater with ``Parallelism`` workers.

Not yet (a later issue): FailureAction (pause/continue/rollback), Monitor, MaxFailureRatio and
automatic rollback. A failing update therefore never blocks; it just rolls on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal.models import (
    SECOND,
    Node,
    Service,
    Task,
    TaskSpec,
    TaskState,
    UpdateStatus,
)
from shoal.orchestrator.restart import Schedule, SlotPart
from shoal.orchestrator.task import (
    RUNNING_ORDER,
    age_key,
    has_stopped,
    is_runnable,
    is_running,
    is_up_to_date,
    raise_desired,
)
from shoal.store import MemoryStore, Tx

UPDATING = "updating"
COMPLETED = "completed"
ROLLBACK_STARTED = "rollback_started"  # written by the control API on ``docker service rollback``
ROLLBACK_COMPLETED = "rollback_completed"


@dataclass(slots=True)
class _Rollout:
    template: TaskSpec
    stopping: dict[SlotPart, list[str]] = field(default_factory=dict)  # stop-first: old tasks to stop
    starting: dict[SlotPart, str] = field(default_factory=dict)  # new task waiting to run
    cooldowns: list[float] = field(default_factory=list)  # monotonic times workers free up
    timer: Any = None
    tracked: set[str] = field(default_factory=set)  # every task ID above, for O(1) event filtering

    def start(self, part: SlotPart, task_id: str) -> None:
        self.starting[part] = task_id
        self.tracked.add(task_id)

    def stop(self, part: SlotPart, task_ids: list[str]) -> None:
        self.stopping[part] = task_ids
        self.tracked.update(task_ids)

    def drop(self, part: SlotPart) -> None:
        tid = self.starting.pop(part, None)
        if tid is not None:
            self.tracked.discard(tid)
        self.tracked.difference_update(self.stopping.pop(part, ()))


class Updater:
    """Rolling-update state for the services of one orchestrator."""

    def __init__(
        self,
        store: MemoryStore,
        *,
        schedule: Schedule,
        on_due: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._schedule = schedule
        self._on_due = on_due
        self._clock = clock
        self._rollouts: dict[str, _Rollout] = {}

    # ------------------------------------------------------------------ queries

    def holds(self, service_id: str) -> set[SlotPart]:
        """Slots emptied by a stop-first update and waiting for the old task to stop."""
        ro = self._rollouts.get(service_id)
        return set(ro.stopping) if ro else set()

    def tracks(self, task: Task) -> bool:
        """Whether a change to ``task`` can move an update forward (so the service needs a pass)."""
        if not self._rollouts:
            return False
        ro = self._rollouts.get(task.ServiceID)
        return ro is not None and task.ID in ro.tracked

    def updating(self, service_id: str) -> bool:
        return service_id in self._rollouts

    # ------------------------------------------------------------------ lifecycle

    def forget(self, service_id: str, part: SlotPart | None = None) -> None:
        """Drop a slot (scaled down, node gone) or the whole service from the rollout."""
        ro = self._rollouts.get(service_id)
        if ro is None:
            return
        if part is not None:
            ro.drop(part)
            return
        if ro.timer is not None:
            ro.timer.cancel()
        del self._rollouts[service_id]

    def clear(self) -> None:
        for sid in list(self._rollouts):
            self.forget(sid)

    # ------------------------------------------------------------------ the step

    def step(
        self,
        tx: Tx,
        service: Service,
        slots: dict[SlotPart, list[Task]],
        make: Callable[[SlotPart], Task],
        *,
        skip: set[SlotPart] | None = None,
        ts: str,
    ) -> None:
        """Advance the update of ``service``.

        ``slots`` maps each live slot to its runnable tasks (after this pass's other changes);
        ``make(part)`` builds a fresh task for a slot; ``skip`` are slots another mechanism is
        refilling (a booked restart), which the updater leaves alone.
        """
        sid = service.ID
        skip = skip or set()
        tmpl = service.Spec.TaskTemplate
        ro = self._rollouts.get(sid)
        if ro is not None and ro.template is not tmpl and ro.template != tmpl:
            # A newer update supersedes the one in flight: keep in-flight slots, restart the clock.
            ro.template = tmpl
            self._write_status(tx, service, UPDATING, ts, force=True)
        now = self._clock()

        if ro is not None:
            self._advance(tx, ro, slots, make, now, service)

        dirty: list[SlotPart] = []
        pairs: dict[SlotPart, Task] = {}
        blocked = False  # an outdated slot is waiting for a booked restart: the update is not over
        for part, tasks in slots.items():
            if part in skip:
                blocked = blocked or not all(is_up_to_date(t, service) for t in tasks)
                continue
            if ro is not None and (part in ro.stopping or part in ro.starting):
                continue
            fresh: list[Task] = []
            old: list[Task] = []
            for t in tasks:
                (fresh if is_up_to_date(t, service) else old).append(t)
            if not old:
                continue
            if not fresh:
                dirty.append(part)
            elif any(is_running(t) for t in fresh):
                _shutdown(tx, old)  # start-first: the new task runs, the old one may go
            else:
                # A new task is on its way (start-first, a restart, or from before a manager
                # restart): follow it like one we started.
                pairs[part] = max(fresh, key=age_key)

        if ro is None:
            if not dirty and not pairs and not blocked:
                self._write_status(tx, service, COMPLETED, ts)
                return
            ro = self._rollouts[sid] = _Rollout(tmpl)
            # Not forced: after a manager restart the update in progress keeps its StartedAt.
            self._write_status(tx, service, UPDATING, ts)
        for part, t in pairs.items():
            ro.start(part, t.ID)

        uc = service.Spec.UpdateConfig
        parallelism = 1 if uc is None else uc.Parallelism
        start_first = uc is not None and uc.Order == "start-first"
        ro.cooldowns = [c for c in ro.cooldowns if c > now]
        busy = len(ro.stopping) + len(ro.starting) + len(ro.cooldowns)
        room = len(dirty) if parallelism == 0 else max(0, parallelism - busy)
        dirty.sort()
        for part in dirty[:room]:
            tasks = slots[part]
            if start_first:
                ro.start(part, _create(tx, make(part)))
                continue
            _shutdown(tx, tasks)
            if all(has_stopped(t, self._node(t)) for t in tasks):
                ro.start(part, _create(tx, make(part)))
            else:
                ro.stop(part, [t.ID for t in tasks])
        waiting = len(dirty) > room

        if not (waiting or blocked or ro.stopping or ro.starting):
            self.forget(sid)
            self._write_status(tx, service, COMPLETED, ts)
            return
        if waiting and ro.cooldowns and ro.timer is None:
            # Every worker is cooling down: come back when the first one is free.
            def due() -> None:
                ro.timer = None
                self._on_due(sid)

            ro.timer = self._schedule(min(ro.cooldowns) - now + 0.001, due)

    # ------------------------------------------------------------------ internals

    def _advance(
        self,
        tx: Tx,
        ro: _Rollout,
        slots: dict[SlotPart, list[Task]],
        make: Callable[[SlotPart], Task],
        now: float,
        service: Service,
    ) -> None:
        uc = service.Spec.UpdateConfig
        delay_s = 0.0 if uc is None else uc.Delay / SECOND
        for part, old_ids in list(ro.stopping.items()):
            olds = [tx.get("task", i) for i in old_ids]
            if all(t is None or has_stopped(t, self._node(t)) for t in olds):
                ro.drop(part)
                if not slots.get(part):
                    nt = make(part)
                    ro.start(part, _create(tx, nt))
                    slots[part] = [nt]
        for part, tid in list(ro.starting.items()):
            t = tx.get("task", tid)
            if t is None or not is_runnable(t) or t.Status.State.order >= RUNNING_ORDER:
                ro.drop(part)
                if delay_s > 0:
                    ro.cooldowns.append(now + delay_s)

    def _node(self, task: Task) -> Node | None:
        return self.store.get("node", task.NodeID) if task.NodeID else None

    def _write_status(self, tx: Tx, service: Service, state: str, ts: str, *, force: bool = False) -> None:
        cur: Service = tx.get("service", service.ID) or service
        st = cur.UpdateStatus
        if state == COMPLETED:
            if st is None or st.State not in (UPDATING, ROLLBACK_STARTED):
                return
            if st.State == ROLLBACK_STARTED:
                new = UpdateStatus(
                    State=ROLLBACK_COMPLETED, StartedAt=st.StartedAt, CompletedAt=ts, Message="rollback completed"
                )
            else:
                new = UpdateStatus(
                    State=COMPLETED, StartedAt=st.StartedAt, CompletedAt=ts, Message="update completed"
                )
        else:
            if st is not None and st.State == ROLLBACK_STARTED:
                return  # the control API started a rollback: this rollout is it, keep its wording
            if not force and st is not None and st.State == UPDATING:
                return
            new = UpdateStatus(State=UPDATING, StartedAt=ts, Message="update in progress")
        tx.update("service", msgspec.structs.replace(cur, UpdateStatus=new))


def _create(tx: Tx, task: Task) -> str:
    tx.create("task", task)
    return task.ID


def _shutdown(tx: Tx, tasks: list[Task]) -> None:
    for t in tasks:
        raise_desired(tx, t, TaskState.SHUTDOWN)
