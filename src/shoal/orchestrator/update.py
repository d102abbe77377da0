"""Rolling updates and rollbacks: replace tasks made from an older spec, a few slots at a time.

The updater is a state machine stepped by the owning orchestrator's reconcile pass (it never
blocks), modelled on swarmkit's ``orchestrator/update`` Updater: each step advances slots in
flight, starts new ones while fewer than ``Parallelism`` are in flight or cooling down for
``Delay``, watches the tasks it made for failures, and keeps ``Service.UpdateStatus`` in step.

- stop-first (default): the old task gets DesiredState=SHUTDOWN; the new task is created in the
  same slot once the old one has stopped. Until then the slot is *held* (counts as occupied).
- start-first: the new task is created at once; the old one is shut down when the new one runs.

A slot's update is finished when its new task is RUNNING (for a task with a health check the agent
reports RUNNING only once the container is healthy, so an update waits for health) or has ended.
``Delay`` is then waited before that worker takes the next slot.

Failures: a task the updater created that ends before RUNNING, or within ``Monitor`` after it got
there, is a failure of the update. Once failures / slots to update (swarmkit's ratio: the
denominator is every slot that was outdated when the update started) exceeds
``MaxFailureRatio``, ``FailureAction`` applies: ``pause`` stops taking new slots (UpdateStatus
``paused``; the slots in flight still finish) until the next ``service update`` resets the
status; ``rollback`` puts ``PreviousSpec`` back and rolls it out with ``RollbackConfig``
(UpdateStatus ``rollback_started``); a rollback that fails pauses (``rollback_paused``), it is
never rolled back. ``continue`` ignores failures. After the last slot, the update stays open for
one more ``Monitor`` before it is ``completed`` (or ``rollback_completed``).

Unset settings take swarmkit's defaults: no UpdateConfig at all means parallelism 1, pause,
monitor 5 s, stop-first (the same for RollbackConfig); an UpdateConfig with ``Monitor`` 0 gets
5 s (Docker's API cannot say "zero"), ``Parallelism`` 0 means all slots at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal.errors import ShoalError
from shoal.models import (
    SECOND,
    Endpoint,
    Node,
    Service,
    ServiceSpec,
    Task,
    TaskState,
    UpdateConfig,
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

log = logging.getLogger(__name__)

UPDATING = "updating"
PAUSED = "paused"
COMPLETED = "completed"
ROLLBACK_STARTED = "rollback_started"  # also written by the control API on ``docker service rollback``
ROLLBACK_PAUSED = "rollback_paused"
ROLLBACK_COMPLETED = "rollback_completed"

PAUSE, CONTINUE, ROLLBACK = "pause", "continue", "rollback"
DEFAULT_MONITOR_S = 5.0
_ROLLING_BACK = (ROLLBACK_STARTED, ROLLBACK_PAUSED)
_PAUSED = (PAUSED, ROLLBACK_PAUSED)


@dataclass(frozen=True, slots=True)
class Policy:
    """An UpdateConfig (or RollbackConfig) with swarmkit's defaults filled in."""

    parallelism: int = 1
    delay_s: float = 0.0
    failure_action: str = PAUSE
    monitor_s: float = DEFAULT_MONITOR_S
    max_failure_ratio: float = 0.0
    start_first: bool = False


def policy_of(uc: UpdateConfig | None, default_monitor_s: float = DEFAULT_MONITOR_S) -> Policy:
    if uc is None:
        return Policy(monitor_s=default_monitor_s)
    return Policy(
        parallelism=uc.Parallelism,
        delay_s=uc.Delay / SECOND,
        failure_action=uc.FailureAction or PAUSE,
        monitor_s=uc.Monitor / SECOND if uc.Monitor else default_monitor_s,
        max_failure_ratio=uc.MaxFailureRatio,
        start_first=uc.Order == "start-first",
    )


@dataclass(slots=True)
class _Rollout:
    spec: ServiceSpec  # the spec this rollout works towards; another one supersedes it
    total: int = 0  # slots outdated when it started: the failure ratio's denominator
    failures: int = 0
    stopping: dict[SlotPart, list[str]] = field(default_factory=dict)  # stop-first: old tasks to stop
    starting: dict[SlotPart, str] = field(default_factory=dict)  # new task waiting to run
    cooldowns: list[float] = field(default_factory=list)  # clock times workers free up
    # Tasks this rollout created → clock time they were seen RUNNING (None: not yet). A failure
    # among them counts against the update until Monitor has passed since they started.
    monitored: dict[str, float | None] = field(default_factory=dict)
    settle_at: float | None = None  # everything done: completes at this time (Monitor after the end)
    timer: Any = None
    timer_due: float = 0.0

    tracked: set[str] = field(default_factory=set)  # task IDs in stopping/starting, for O(1) look-ups
    # Slots a booked restart refills after a task of the old spec failed: the restart's task has
    # the new spec, and the update is not complete until it runs.
    refills: set[SlotPart] = field(default_factory=set)
    refill_tasks: set[str] = field(default_factory=set)  # their tasks, watched like tracked ones

    def start(self, part: SlotPart, task_id: str, *, ours: bool = True) -> None:
        self.starting[part] = task_id
        self.tracked.add(task_id)
        if ours:
            self.monitored[task_id] = None

    def stop(self, part: SlotPart, task_ids: list[str]) -> None:
        self.stopping[part] = task_ids
        self.tracked.update(task_ids)

    def drop(self, part: SlotPart) -> None:
        tid = self.starting.pop(part, None)
        if tid is not None:
            self.tracked.discard(tid)
        self.tracked.difference_update(self.stopping.pop(part, ()))

    def watches(self, task_id: str) -> bool:
        return task_id in self.tracked or task_id in self.monitored or task_id in self.refill_tasks


class Updater:
    """Rolling-update state for the services of one orchestrator.

    :meth:`step` is the one entry point, called once per reconcile pass per service; a service
    that another mechanism updates (say, blue-green) is skipped by not stepping it.
    """

    def __init__(
        self,
        store: MemoryStore,
        *,
        schedule: Schedule,
        on_due: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        default_monitor_s: float = DEFAULT_MONITOR_S,
    ) -> None:
        self.store = store
        self._schedule = schedule
        self._on_due = on_due
        self._clock = clock
        self.default_monitor_s = default_monitor_s
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
        return ro is not None and ro.watches(task.ID)

    def updating(self, service_id: str) -> bool:
        return service_id in self._rollouts

    def policy(self, service: Service) -> Policy:
        """The settings in force: RollbackConfig while rolling back, UpdateConfig otherwise."""
        st = service.UpdateStatus
        rolling_back = st is not None and st.State in _ROLLING_BACK
        uc = service.Spec.RollbackConfig if rolling_back else service.Spec.UpdateConfig
        return policy_of(uc, self.default_monitor_s)

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
        skip: Mapping[SlotPart, str] | None = None,
        ts: str,
    ) -> None:
        """Advance the update of ``service``.

        ``slots`` maps each live slot to its runnable tasks (after this pass's other changes);
        ``make(part)`` builds a fresh task for a slot; ``skip`` maps the slots another mechanism is
        refilling (a booked restart) to the failed task it replaces; the updater leaves them alone.
        """
        sid = service.ID
        skip = skip or {}
        service = tx.get("service", sid) or service
        status = service.UpdateStatus
        ro = self._rollouts.get(sid)
        if ro is not None and (status is None or (ro.spec is not service.Spec and ro.spec != service.Spec)):
            # A newer spec (or the control API reset the status): a new update, as swarmkit
            # cancels its updater and starts another. Slots in flight stay tracked (a held slot
            # must not be refilled early); failures count afresh.
            ro = self._restart(ro, service)
            service = self._write_status(tx, service, UPDATING, ts, restart=True)
            status = service.UpdateStatus
        paused = status is not None and status.State in _PAUSED
        pol = self.policy(service)
        now = self._clock()

        if ro is not None:
            self._advance(tx, ro, slots, make, now, pol)
            if not paused:
                failed = self._failures(tx, ro, now, pol)
                if failed is not None:
                    self._fail(tx, ro, service, failed, ts)
                    return

        dirty: list[SlotPart] = []
        pairs: dict[SlotPart, Task] = {}
        # A slot waiting for a booked restart (its task failed, so it may have no runnable task
        # at all) is left to the restart. If the failed task had the old spec, the update is not
        # over until the restart's task (made from the new spec, followed from the next pass like
        # one of ours) runs; if it had the new spec, that failure was the update's to count.
        refills: set[SlotPart] = set()
        for part, failed_id in skip.items():
            failed = tx.get("task", failed_id)
            if failed is not None and not is_up_to_date(failed, service):
                if not any(is_up_to_date(t, service) and is_running(t) for t in slots.get(part, ())):
                    refills.add(part)
        blocked = bool(refills)
        if ro is not None:
            ro.refills = (ro.refills & (slots.keys() | skip.keys())) | refills
        for part, tasks in slots.items():
            if part in skip:
                continue
            if ro is not None and (part in ro.stopping or part in ro.starting):
                continue
            fresh: list[Task] = []
            old: list[Task] = []
            for t in tasks:
                (fresh if is_up_to_date(t, service) else old).append(t)
            if not old:
                if ro is not None and part in ro.refills:
                    if any(is_running(t) for t in fresh):
                        ro.refills.discard(part)
                    else:
                        blocked = True  # the restart's task, with the new spec, is on its way
                        ro.refill_tasks.update(t.ID for t in fresh)  # its RUNNING wakes the service
                continue
            if not fresh:
                dirty.append(part)
            elif any(is_running(t) for t in fresh):
                _shutdown(tx, old)  # start-first: the new task runs, the old one may go
            else:
                # A new task is on its way (start-first, a restart, or from before a manager
                # restart): follow it like one we started.
                pairs[part] = max(fresh, key=age_key)

        if ro is not None and ro.total == 0:
            # A restarted rollout: its denominator is what is outdated now, in flight included.
            ro.total = len(dirty) + len(pairs) + len(ro.stopping) + len(ro.starting)
        if paused:
            # Nothing new until the next `service update`; the slots in flight still finish.
            if ro is not None:
                for part, t in pairs.items():
                    ro.start(part, t.ID, ours=False)
            return
        if ro is None:
            if not dirty and not pairs and not blocked:
                self._write_status(tx, service, COMPLETED, ts)
                return
            ro = self._rollouts[sid] = _Rollout(service.Spec, total=len(dirty) + len(pairs))
            # Not a restart: after a manager restart the update in progress keeps its StartedAt.
            self._write_status(tx, service, UPDATING, ts)
        for part, t in pairs.items():
            ro.start(part, t.ID, ours=False)
        ro.refills |= refills

        ro.cooldowns = [c for c in ro.cooldowns if c > now]
        busy = len(ro.stopping) + len(ro.starting) + len(ro.cooldowns)
        room = len(dirty) if pol.parallelism == 0 else max(0, pol.parallelism - busy)
        dirty.sort(key=str)
        for part in dirty[:room]:
            tasks = slots[part]
            if pol.start_first:
                ro.start(part, _create(tx, make(part)))
                continue
            _shutdown(tx, tasks)
            if all(has_stopped(t, self._node(t)) for t in tasks):
                ro.start(part, _create(tx, make(part)))
            else:
                ro.stop(part, [t.ID for t in tasks])
        waiting = len(dirty) > room

        if waiting or blocked or ro.stopping or ro.starting:
            ro.settle_at = None
            if waiting and ro.cooldowns:
                self._wake_at(ro, sid, min(ro.cooldowns), now)  # every worker is cooling down
            return
        # Every slot is done: keep watching the new tasks for one more Monitor, as swarmkit does
        # (after the last worker's Delay), then the update is complete.
        if ro.settle_at is None:
            ro.settle_at = max([now, *ro.cooldowns]) + pol.monitor_s
        if now >= ro.settle_at:
            self.forget(sid)
            self._write_status(tx, service, COMPLETED, ts)
            return
        self._wake_at(ro, sid, ro.settle_at, now)

    # ------------------------------------------------------------------ internals

    def _restart(self, old: _Rollout, service: Service) -> _Rollout:
        if old.timer is not None:
            old.timer.cancel()  # it would wake the old rollout; the new one sets its own
        ro = _Rollout(service.Spec)
        ro.stopping, ro.starting, ro.tracked = old.stopping, old.starting, old.tracked
        ro.refills, ro.refill_tasks = old.refills, old.refill_tasks
        self._rollouts[service.ID] = ro
        return ro

    def _advance(
        self,
        tx: Tx,
        ro: _Rollout,
        slots: dict[SlotPart, list[Task]],
        make: Callable[[SlotPart], Task],
        now: float,
        pol: Policy,
    ) -> None:
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
                if pol.delay_s > 0:
                    ro.cooldowns.append(now + pol.delay_s)
        for tid, started in list(ro.monitored.items()):
            if started is None:
                t = tx.get("task", tid)
                if t is not None and t.Status.State is TaskState.RUNNING:
                    ro.monitored[tid] = now

    def _failures(self, tx: Tx, ro: _Rollout, now: float, pol: Policy) -> str | None:
        """Count new failures among the tasks this rollout made; the task ID that tips the ratio.

        A failure is a task that reached a terminal state while still desired running (per the
        committed store: this pass may already have shut it down for a restart), before RUNNING
        or within Monitor after it.
        """
        tipped: str | None = None
        for tid, started in list(ro.monitored.items()):
            t = self.store.get("task", tid)
            if t is None:
                if tx.get("task", tid) is None:
                    del ro.monitored[tid]  # deleted (created in this pass: not committed yet)
                continue
            if t.Status.State.order > RUNNING_ORDER:
                del ro.monitored[tid]
                if t.DesiredState.order > RUNNING_ORDER:
                    continue  # stopped on purpose (scale-down, node drained): not the update's fault
                if started is not None and now - started > pol.monitor_s:
                    continue
                ro.failures += 1
                if pol.failure_action != CONTINUE and ro.failures / max(ro.total, 1) > pol.max_failure_ratio:
                    tipped = tipped or tid
            elif started is not None and now - started > pol.monitor_s:
                del ro.monitored[tid]  # survived its Monitor
        return tipped

    def _fail(self, tx: Tx, ro: _Rollout, service: Service, task_id: str, ts: str) -> None:
        """Apply FailureAction (pause or rollback) after the failure of ``task_id``."""
        st = service.UpdateStatus or UpdateStatus(State=UPDATING, StartedAt=ts)
        action = self.policy(service).failure_action
        rolling_back = st.State in _ROLLING_BACK
        endpoint = previous_endpoint(self.store, service) if action == ROLLBACK and not rolling_back else None
        if endpoint is not None:
            # Put the previous spec back; the next pass sees a new spec and rolls it out with
            # RollbackConfig. StartedAt stays: it is still the same update, turned around.
            new = msgspec.structs.replace(
                service,
                Spec=service.PreviousSpec,
                PreviousSpec=None,
                Endpoint=endpoint,
                UpdateStatus=UpdateStatus(
                    State=ROLLBACK_STARTED,
                    StartedAt=st.StartedAt,
                    Message=f"update rolled back due to failure or early termination of task {task_id}",
                ),
            )
            tx.update("service", new)
            return
        if action == ROLLBACK and rolling_back:
            message = f"rollback paused due to failure or early termination of task {task_id}"
        else:
            if action == ROLLBACK:
                log.warning("service %s: cannot roll back (no previous spec, or its ports are taken)", service.ID)
            message = f"update paused due to failure or early termination of task {task_id}"
        state = ROLLBACK_PAUSED if rolling_back else PAUSED
        ro.settle_at = None
        if ro.timer is not None:
            ro.timer.cancel()
            ro.timer = None
        tx.update(
            "service",
            msgspec.structs.replace(
                service, UpdateStatus=UpdateStatus(State=state, StartedAt=st.StartedAt, Message=message)
            ),
        )

    def _wake_at(self, ro: _Rollout, sid: str, due: float, now: float) -> None:
        """Make sure a pass runs at ``due`` (one timer per rollout; an earlier need replaces it)."""
        if ro.timer is not None and ro.timer_due <= due:
            return
        if ro.timer is not None:
            ro.timer.cancel()

        def fire() -> None:
            if self._rollouts.get(sid) is ro:
                ro.timer = None
                self._on_due(sid)

        ro.timer_due = due
        ro.timer = self._schedule(due - now + 0.001, fire)

    def _node(self, task: Task) -> Node | None:
        return self.store.get("node", task.NodeID) if task.NodeID else None

    def _write_status(self, tx: Tx, service: Service, state: str, ts: str, *, restart: bool = False) -> Service:
        cur: Service = tx.get("service", service.ID) or service
        st = cur.UpdateStatus
        if state == COMPLETED:
            if st is None or st.State not in (UPDATING, ROLLBACK_STARTED):
                return cur
            if st.State == ROLLBACK_STARTED:
                new = UpdateStatus(
                    State=ROLLBACK_COMPLETED, StartedAt=st.StartedAt, CompletedAt=ts, Message="rollback completed"
                )
            else:
                new = UpdateStatus(
                    State=COMPLETED, StartedAt=st.StartedAt, CompletedAt=ts, Message="update completed"
                )
        else:
            if st is not None and st.State in (ROLLBACK_STARTED, *_PAUSED):
                # A rollback keeps its wording; a paused update stays paused until the control API
                # resets the status (the next `service update`).
                return cur
            if not restart and st is not None and st.State == UPDATING:
                return cur
            new = UpdateStatus(State=UPDATING, StartedAt=ts, Message="update in progress")
        out = msgspec.structs.replace(cur, UpdateStatus=new)
        tx.update("service", out)
        return out


def previous_endpoint(store: MemoryStore, service: Service) -> Endpoint | None:
    """The Endpoint for ``service.PreviousSpec`` (its ports and VIPs, by the control API's rules, as a
    manual rollback gets them); None without a previous spec or when its ports are taken meanwhile."""
    if service.PreviousSpec is None:
        return None
    from shoal.controlapi.ports import allocate_endpoint  # controlapi imports the orchestrator side

    try:
        return allocate_endpoint(store, service.PreviousSpec, service)
    except ShoalError:
        return None


def _create(tx: Tx, task: Task) -> str:
    tx.create("task", task)
    return task.ID


def _shutdown(tx: Tx, tasks: list[Task]) -> None:
    for t in tasks:
        raise_desired(tx, t, TaskState.SHUTDOWN)
