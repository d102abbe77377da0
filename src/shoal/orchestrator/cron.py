"""The cron scheduler: starts a new iteration of each scheduled job at its scheduled times.

A scheduled job is a job-mode service with ``shoal.schedule*`` labels (shoal/extensions.py).
A run is what ``docker service update --force`` does to a Swarm job: the task template's
ForceUpdate goes up by one through ``controlapi.update_service``, which starts a new JobIteration,
and the jobs orchestrator runs it. So the scheduler writes nothing the API could not write, and a
run it starts looks exactly like a hand-started one.

State that must outlive the manager is the time of the last run, and it lives where Docker already
keeps it: ``Service.JobStatus.LastExecution``. The update that starts a run stamps it, in the
scheduler's own clock (one write), which needs no new store kind, is persisted with the service, and is what
`docker service inspect` shows. A restarted manager takes the first scheduled time after it (or
after the service's creation) as the next one; if that time has passed by more than
``MISSED_AFTER_S``, runs were missed and ``shoal.schedule.missed`` decides (run once, or skip).
What does *not* survive a restart: a run skipped by ``forbid`` just before an outage counts as
missed afterwards (the skip left no trace), and an ``allow`` run waiting for the previous
iteration is recomputed from LastExecution the same way.

Time comes from an injectable clock (epoch seconds) so the unit tests run years of schedule in
milliseconds; :func:`clock_from_env` gives the daemon a test-only accelerated clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from shoal.extensions import MISSED_AFTER_S, Schedule, parse_schedule
from shoal.models import Service, Task, TaskState, parse_ts
from shoal.orchestrator.base import ReconcileLoop
from shoal.store import Action, Event, MemoryStore

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Trigger = Callable[[MemoryStore, Service, str], None]

SPEED_ENV = "SHOAL_TEST_CRON_SPEED"
_RUNNING = TaskState.RUNNING.order
_COMPLETE = TaskState.COMPLETE.order
_ASSIGNED = TaskState.ASSIGNED.order
RETRY_S = 1.0


class FastClock:
    """Epoch seconds that run ``speed`` times faster than real time from the clock's creation."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._start = time.time()

    def __call__(self) -> float:
        return self._start + (time.time() - self._start) * self.speed


def clock_from_env(env: dict[str, str] | None = None) -> Clock:
    """``time.time``, or with ``SHOAL_TEST_CRON_SPEED=N`` (tests only) a clock that runs N times
    faster than real time from now on, so ``* * * * *`` fires every 60/N real seconds. Only the cron
    scheduler uses it: task timestamps, restart delays and heartbeats stay real."""
    raw = (env if env is not None else os.environ).get(SPEED_ENV, "")
    if not raw:
        return time.time
    speed = float(raw)
    if speed <= 0:
        raise ValueError(f"{SPEED_ENV} must be > 0")
    log.warning("cron clock runs %gx faster than real time (%s, for tests only)", speed, SPEED_ENV)
    return FastClock(speed)


def format_ts(ts: float) -> str:
    """Epoch seconds as Docker's RFC 3339 timestamp (what ``models.parse_ts`` reads back)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def force_run(store: MemoryStore, svc: Service, started_at: str) -> None:
    """Start a new iteration of a job as ``docker service update --force`` does (ForceUpdate+1),
    stamping ``started_at`` (the scheduler's clock) as its LastExecution in the same write."""
    from shoal.controlapi.services import update_service  # controlapi imports the orchestrator side

    tt = svc.Spec.TaskTemplate
    spec = msgspec.structs.replace(
        svc.Spec, TaskTemplate=msgspec.structs.replace(tt, ForceUpdate=tt.ForceUpdate + 1)
    )
    update_service(store, svc.ID, svc.Version.Index, spec, job_started_at=started_at)


def is_live(t: Task) -> bool:
    """A task of the job still wanted and not finished (pending, assigned ... running)."""
    return t.Status.State.order <= _RUNNING and t.DesiredState.order <= _COMPLETE


def iteration_of(t: Task) -> int:
    return t.JobIteration.Index if t.JobIteration is not None else -1


@dataclass
class Entry:
    """What the scheduler knows of one scheduled job (rebuilt from the store at start)."""

    schedule: Schedule
    next_at: float
    waiting: bool = False  # an ``allow`` run waits for the previous iteration to end
    retry: bool = False  # the last start failed; try again while still on time
    last_outcome: str = ""  # "started", "skipped: ...", "missed", "failed: ..." (for logs and tests)
    outcomes: list[tuple[float, str]] = field(default_factory=list)


class CronScheduler(ReconcileLoop):
    """Runs on the leader with the other reconcilers; one timer wakes it at the earliest due time."""

    kinds = ("service", "task")

    def __init__(self, store: MemoryStore, *, clock: Clock = time.time, trigger: Trigger = force_run) -> None:
        super().__init__(store)
        self.clock = clock
        self.trigger = trigger
        self.entries: dict[str, Entry] = {}
        self._timer_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ loop hooks

    def stopped(self) -> None:
        self.entries.clear()
        self._timer_at = None
        self._timer = None

    def reconcile_all(self) -> None:
        self.entries.clear()
        for svc in self.store.list("service"):
            self._track(svc, resumed=True)
        self.tick()
        for sid in list(self.entries):
            self._trim_history(sid)

    def handle(self, events: list[Event]) -> None:
        dirty: set[str] = set()
        for e in events:
            if e.kind == "service":
                if e.action is Action.DELETE:
                    self.entries.pop(e.old.ID, None)
                    continue
                old_labels = e.old.Spec.Labels if e.old is not None else None
                if e.obj.ID not in self.entries or old_labels != e.obj.Spec.Labels:
                    self._track(e.obj, resumed=False)
            else:
                t = e.obj if e.obj is not None else e.old
                if t.ServiceID in self.entries:
                    dirty.add(t.ServiceID)
        for sid in dirty:
            entry = self.entries.get(sid)
            if entry is not None and entry.waiting and not self._live_tasks(sid):
                entry.waiting = False
                self._start(sid, entry, "started (waited for the previous run)")
            self._trim_history(sid)
        self.tick()

    # ------------------------------------------------------------------ schedule

    def _track(self, svc: Service, *, resumed: bool) -> None:
        """(Re)compute a service's entry. At start (``resumed``) the next time follows the last run,
        so times missed while no manager ran are due at once; a changed schedule starts from now."""
        try:
            sched = parse_schedule(svc.Spec.Labels) if svc.Spec.Mode is not None and svc.Spec.Mode.is_job else None
        except ValueError as e:  # only possible for a spec stored before validation existed
            log.warning("service %s: ignoring its schedule: %s", svc.Spec.Name, e)
            sched = None
        if sched is None:
            self.entries.pop(svc.ID, None)
            return
        old = self.entries.get(svc.ID)
        if old is not None and old.schedule == sched:
            return
        anchor = self._last_run(svc) if resumed else max(self._last_run(svc), self.clock())
        self.entries[svc.ID] = Entry(schedule=sched, next_at=sched.next_after(anchor))

    @staticmethod
    def _last_run(svc: Service) -> float:
        js = svc.JobStatus
        last = parse_ts(js.LastExecution) if js is not None and js.LastExecution else 0.0
        return max(last, parse_ts(svc.CreatedAt))

    def tick(self) -> None:
        """Start what is due now and set the timer for the earliest next time."""
        now = self.clock()
        for sid, entry in list(self.entries.items()):
            if entry.next_at > now:
                continue
            sched = entry.schedule
            on_time = sched.is_due_within(now - MISSED_AFTER_S, now)
            retry, entry.retry = entry.retry, False
            entry.next_at = sched.next_after(now)
            if retry and not on_time:
                continue  # it failed while on time; the next scheduled time will try again
            if not on_time and sched.missed == "skip":
                self._note(entry, now, "missed")
                log.info("scheduled job %s: missed run skipped (shoal.schedule.missed=skip)", sid)
                continue
            self._due(sid, entry, "started" if on_time else "started (missed run)")
        self._arm(now)

    def _due(self, sid: str, entry: Entry, outcome: str) -> None:
        live = self._live_tasks(sid)
        policy = entry.schedule.concurrency
        if live and policy == "forbid":
            self._note(entry, self.clock(), "skipped: the previous run is still running")
            log.info("scheduled job %s: run skipped, the previous one is still running", sid)
            return
        if live and policy == "allow":
            entry.waiting = True
            self._note(entry, self.clock(), "waiting for the previous run")
            return
        if live and policy == "replace":
            # The new iteration does it: the job orchestrator shuts down what runs of older ones.
            outcome = "started (replaced the previous run)"
        self._start(sid, entry, outcome)

    def _start(self, sid: str, entry: Entry, outcome: str) -> None:
        svc = self.store.get("service", sid)
        if svc is None:
            return
        now = self.clock()
        try:
            self.trigger(self.store, svc, format_ts(now))
        except Exception as e:
            # A concurrent writer (409) or a refused spec: try again shortly, while still on time.
            log.warning("scheduled job %s: could not start a run: %s", svc.Spec.Name, e)
            self._note(entry, now, f"failed: {e}")
            entry.next_at = min(entry.next_at, now + RETRY_S)
            entry.retry = True
            return
        self._note(entry, now, outcome)
        log.info("scheduled job %s: %s", svc.Spec.Name, outcome)

    @staticmethod
    def _note(entry: Entry, at: float, outcome: str) -> None:
        entry.last_outcome = outcome
        entry.outcomes.append((at, outcome))
        del entry.outcomes[:-20]

    def _arm(self, now: float) -> None:
        """One timer, at the earliest next time (re-armed when that changes)."""
        if not self.entries:
            return
        at = min(e.next_at for e in self.entries.values())
        if self._timer_at == at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        try:
            speed = float(getattr(self.clock, "speed", 1.0))
            self._timer = self.call_later(min(at - now, 3600.0) / speed, self._fire)
        except RuntimeError:  # no running event loop (unit tests that drive tick() by hand)
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self.wake()

    # ------------------------------------------------------------------ tasks

    def _live_tasks(self, sid: str) -> list[Task]:
        return [t for t in self.store.tasks_of_service(sid) if is_live(t)]

    def _trim_history(self, sid: str) -> None:
        """Delete the tasks of finished iterations beyond ``shoal.schedule.history``.

        An iteration with a live task is not finished and never trimmed. A task is only deleted
        once stopped (deleting it is what makes the agent remove its container)."""
        entry = self.entries.get(sid)
        if entry is None:
            return
        by_iter: dict[int, list[Task]] = {}
        for t in self.store.tasks_of_service(sid):
            by_iter.setdefault(iteration_of(t), []).append(t)
        finished = sorted((i for i, ts in by_iter.items() if not any(is_live(t) for t in ts)), reverse=True)
        doomed = [
            t for i in finished[entry.schedule.history:] for t in by_iter[i] if self._stopped(t)
        ]
        if doomed:
            with self.store.tx() as tx:
                for t in doomed:
                    tx.delete("task", t.ID)

    def _stopped(self, t: Task) -> bool:
        order = t.Status.State.order
        if order > _RUNNING or order < _ASSIGNED or not t.NodeID:
            return True
        return self.store.get("node", t.NodeID) is None
