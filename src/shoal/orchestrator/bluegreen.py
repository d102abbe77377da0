"""Blue-green releases: the new version runs beside the old at full scale, then traffic switches at once.

A replicated service labelled ``shoal.update-strategy=blue-green`` is not rolled slot by slot by the
:class:`~shoal.orchestrator.update.Updater`; the replicated orchestrator steps a :class:`BlueGreen`
instead, in the same reconcile pass and transaction. When the task template changes:

1. every slot still served by an older task gets a *standby* task of the new version beside it
   (swarmkit's start-first order, for all slots at once). Standby tasks carry the task label
   ``shoal.bluegreen=standby``: they run, but the service's records (dispatcher/netstate.py: the
   routing mesh, VIPs and DNS of every node) leave them out, so the old tasks keep all the traffic;
2. once every standby task is RUNNING (for a task with a health check, RUNNING means healthy), one
   transaction switches: the label goes (the service's records, so every node's kernel balancers,
   now point at the new tasks only) and the old tasks get DesiredState=SHUTDOWN. UpdateStatus: ``updating`` →
   ``completed``;
3. if a standby task ends on its own (failed, rejected, exited), or they are not all running within
   the deadline (``UpdateConfig.Monitor`` when set, else 60 s), the standby tasks are shut down
   (they stay in the task history), the old ones never stopped serving, and the spec goes back to
   ``PreviousSpec`` (as swarmkit's automatic rollback: PreviousSpec is then cleared; the strategy
   label is kept) with UpdateStatus ``rollback_completed`` and a message naming the failure. Rolling
   the spec back matters: the old tasks are then up to date again, so a restart of one of them
   brings back the old version, not the broken one. Without a PreviousSpec the release is
   ``paused`` instead, and is not tried again until the spec changes.

Why a label on the task, not a new field: the task is what the dispatcher sends the agent, and a
label needs no change to the agent protocol; the dispatcher forwards a task whose labels changed.

Slot accounting: during a release a slot holds two runnable tasks, the old and the standby one. The
replicated orchestrator counts slots, not tasks, so neither is an "extra" to kill; a scale-down
removes both. A task the orchestrator creates during a release (a restart, a new slot) is made from
the new template and is turned into a standby task in the same transaction, before any agent sees it.

State is mostly read back from the store (which tasks are standby, which are outdated), so a
restarted manager resumes a release; only the deadline and the set of tasks this release started
live in memory (a restarted manager gives a release a fresh deadline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal.extensions import BLUE_GREEN, STANDBY, STANDBY_LABEL, UPDATE_STRATEGY_LABEL, is_blue_green, is_standby
from shoal.models import SECOND, Service, Task, TaskSpec, TaskState, UpdateStatus
from shoal.orchestrator.restart import Schedule, SlotPart
from shoal.orchestrator.task import age_key, is_running, is_up_to_date, raise_desired
from shoal.orchestrator.update import (
    COMPLETED,
    PAUSED,
    ROLLBACK_COMPLETED,
    ROLLBACK_STARTED,
    UPDATING,
    previous_endpoint,
)
from shoal.store import Action, Event, MemoryStore, Tx

DEFAULT_DEADLINE_S = 60.0

# States in which a task ended on its own (SHUTDOWN is the orchestrator's doing, not a failure).
_ENDED = frozenset({TaskState.FAILED, TaskState.REJECTED, TaskState.COMPLETE, TaskState.ORPHANED})


def deadline_s(service: Service) -> float:
    uc = service.Spec.UpdateConfig
    if uc is not None and uc.Monitor > 0:
        return uc.Monitor / SECOND
    return DEFAULT_DEADLINE_S


@dataclass(slots=True)
class _Release:
    template: TaskSpec
    deadline: float  # clock seconds
    limit_s: float  # the deadline's length, for the message
    tasks: set[str] = field(default_factory=set)  # standby task IDs this release started or adopted
    timer: Any = None
    failed: bool = False  # could not roll the spec back: wait for the next spec change


class BlueGreen:
    """Blue-green release state for the replicated services of one orchestrator."""

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
        self._releases: dict[str, _Release] = {}

    # ------------------------------------------------------------------ queries

    def matters(self, e: Event) -> bool:
        """A task event that can move a release forward: a standby task changed state."""
        if e.kind != "task" or e.action is not Action.UPDATE:
            return False
        t, old = e.obj, e.old
        return is_standby(t) and (
            t.Status.State is not old.Status.State or t.DesiredState is not old.DesiredState
        )

    def releasing(self, service_id: str) -> bool:
        rel = self._releases.get(service_id)
        return rel is not None and not rel.failed

    # ------------------------------------------------------------------ lifecycle

    def forget(self, service_id: str) -> None:
        rel = self._releases.pop(service_id, None)
        if rel is not None and rel.timer is not None:
            rel.timer.cancel()

    def clear(self) -> None:
        for sid in list(self._releases):
            self.forget(sid)

    # ------------------------------------------------------------------ the step

    def step(
        self,
        tx: Tx,
        service: Service,
        slots: dict[SlotPart, list[Task]],
        make: Callable[[SlotPart], Task],
        *,
        ts: str,
    ) -> bool:
        """Advance the release of ``service``; False if the service is not blue-green (the rolling
        updater's turn). ``slots`` maps each live slot to its runnable tasks after this pass's
        other changes; ``make(slot)`` builds a fresh task of the current template."""
        sid = service.ID
        if not is_blue_green(service):
            if sid in self._releases:
                # The strategy changed mid-release: standby tasks become ordinary new tasks, which
                # the rolling updater then follows like start-first ones.
                self.forget(sid)
                for tasks in slots.values():
                    for t in tasks:
                        if is_standby(t):
                            _set_standby(tx, t, False)
            return False

        tmpl = service.Spec.TaskTemplate
        outdated: dict[SlotPart, list[Task]] = {}  # the serving (old) version
        new: dict[SlotPart, list[Task]] = {}  # up to date: standby, or already serving
        stale: list[Task] = []  # standby tasks of a superseded version
        for part, tasks in slots.items():
            for t in tasks:
                up = is_up_to_date(t, service)
                if is_standby(t):
                    if up:
                        new.setdefault(part, []).append(t)
                    else:
                        stale.append(t)
                elif up:
                    new.setdefault(part, []).append(t)
                else:
                    outdated.setdefault(part, []).append(t)
        for t in stale:
            raise_desired(tx, t, TaskState.SHUTDOWN)

        rel = self._releases.get(sid)
        if rel is not None and rel.template is not tmpl and rel.template != tmpl:
            self.forget(sid)  # superseded by a newer spec (or a manual rollback): start over
            rel = None

        if not outdated:
            # Nothing of an older version serves: whatever is new serves now.
            for tasks in new.values():
                for t in tasks:
                    if is_standby(t):
                        _set_standby(tx, t, False)
            if rel is not None:
                self.forget(sid)
                if not rel.failed:
                    _write_status(tx, service, COMPLETED, ts)
            return True

        if rel is not None and rel.failed:
            return True  # paused after a failure until the spec changes
        if rel is None and service.UpdateStatus is not None and service.UpdateStatus.State == PAUSED:
            # Failed before this manager (re)started: the stored status remembers it, and any
            # spec change clears it (the control API resets UpdateStatus on update).
            return True
        now = self._clock()
        if rel is None:
            limit = deadline_s(service)
            rel = self._releases[sid] = _Release(tmpl, now + limit, limit)
            rel.tasks.update(t.ID for tasks in new.values() for t in tasks if is_standby(t))
            self._arm(sid, rel, now)
            _write_status(tx, service, UPDATING, ts)

        why = self._failure(tx, rel, now)
        if why:
            self._fail(tx, service, rel, new, why, ts)
            return True

        # One standby task per slot: adopt what the orchestrator made this pass, fill the gaps.
        for part in sorted(outdated.keys() | new.keys(), key=str):
            tasks = new.get(part, [])
            serving = [t for t in tasks if not is_standby(t) and is_running(t)]
            if serving:
                continue  # a new-version task already serves this slot (from before the release)
            if not tasks:
                nt = _standby(make(part))
                tx.create("task", nt)
                rel.tasks.add(nt.ID)
                new[part] = [nt]
                continue
            keep = max(tasks, key=lambda t: (is_running(t), age_key(t)))
            for t in tasks:
                if t is not keep:
                    rel.tasks.discard(t.ID)
                    raise_desired(tx, t, TaskState.SHUTDOWN)
            if not is_standby(keep):
                keep = _set_standby(tx, keep, True)
            rel.tasks.add(keep.ID)
            new[part] = [keep]

        if all(is_running(t) for tasks in new.values() for t in tasks):
            # The switch: one transaction, so every node hears of both halves in one message.
            for tasks in new.values():
                for t in tasks:
                    if is_standby(t):
                        _set_standby(tx, t, False)
            for tasks in outdated.values():
                for t in tasks:
                    raise_desired(tx, t, TaskState.SHUTDOWN)
            self.forget(sid)
            _write_status(tx, service, COMPLETED, ts)
        return True

    # ------------------------------------------------------------------ internals

    def _arm(self, sid: str, rel: _Release, now: float) -> None:
        def due() -> None:
            rel.timer = None
            if self._releases.get(sid) is not rel:
                return
            if self.store.get("service", sid) is None:
                self.forget(sid)  # deleted meanwhile
                return
            self._on_due(sid)

        rel.timer = self._schedule(rel.deadline - now + 0.001, due)

    def _failure(self, tx: Tx, rel: _Release, now: float) -> str:
        """Why the release failed ('' if it has not): a new task ended, or time ran out."""
        waiting = 0
        for tid in sorted(rel.tasks):
            t: Task | None = tx.get("task", tid)
            if t is None or t.DesiredState is TaskState.REMOVE:
                continue
            if t.Status.State in _ENDED:
                detail = t.Status.Err or t.Status.Message or t.Status.State.value
                return f"task {t.ID} {t.Status.State.value}: {detail}"
            if not is_running(t) and t.DesiredState.order <= TaskState.RUNNING.order:
                waiting += 1
        if waiting and now >= rel.deadline:
            return f"{waiting} of {len(rel.tasks)} new tasks not running within {rel.limit_s:g}s"
        return ""

    def _fail(
        self, tx: Tx, service: Service, rel: _Release, new: dict[SlotPart, list[Task]], why: str, ts: str
    ) -> None:
        for tasks in new.values():
            for t in tasks:
                # Standby tasks, and new-version ones the orchestrator made this pass (restarts).
                if is_standby(t) or not is_running(t):
                    raise_desired(tx, t, TaskState.SHUTDOWN)
        for tid in rel.tasks:
            t = tx.get("task", tid)
            if t is not None:
                raise_desired(tx, t, TaskState.SHUTDOWN)
        cur: Service = tx.get("service", service.ID) or service
        started = cur.UpdateStatus.StartedAt if cur.UpdateStatus is not None else ts
        message = f"blue-green release failed: {why}"
        rolled = _rolled_back(self.store, cur)
        if rolled is not None:
            self.forget(service.ID)
            status = UpdateStatus(
                State=ROLLBACK_COMPLETED,
                StartedAt=started,
                CompletedAt=ts,
                Message=f"{message}; rolled back to the previous spec, the old tasks kept serving",
            )
            tx.update("service", msgspec.structs.replace(rolled, UpdateStatus=status))
            return
        rel.failed = True
        if rel.timer is not None:
            rel.timer.cancel()
            rel.timer = None
        status = UpdateStatus(
            State=PAUSED, StartedAt=started, Message=f"{message}; the old tasks keep serving"
        )
        tx.update("service", msgspec.structs.replace(cur, UpdateStatus=status))


def _rolled_back(store: MemoryStore, cur: Service) -> Service | None:
    """``cur`` with its PreviousSpec restored (keeping the strategy label), or None if impossible."""
    prev = cur.PreviousSpec
    endpoint = previous_endpoint(store, cur)
    if prev is None or endpoint is None:
        return None  # nothing to go back to, or its old ports are taken meanwhile: pause instead
    labels = dict(prev.Labels or {})
    labels[UPDATE_STRATEGY_LABEL] = BLUE_GREEN
    spec = msgspec.structs.replace(prev, Labels=labels)
    return msgspec.structs.replace(cur, Spec=spec, PreviousSpec=None, Endpoint=endpoint)


def _standby(task: Task) -> Task:
    return msgspec.structs.replace(task, Labels={**(task.Labels or {}), STANDBY_LABEL: STANDBY})


def _set_standby(tx: Tx, task: Task, on: bool) -> Task:
    """Add or remove the standby label on the task as this transaction sees it."""
    cur: Task = tx.get("task", task.ID) or task
    labels = dict(cur.Labels or {})
    if on:
        labels[STANDBY_LABEL] = STANDBY
    else:
        labels.pop(STANDBY_LABEL, None)
    new = msgspec.structs.replace(cur, Labels=labels or None)
    tx.update("task", new)
    return new


def _write_status(tx: Tx, service: Service, state: str, ts: str) -> None:
    """Swarm's UpdateStatus for the release; a rollback the control API started keeps its wording."""
    cur: Service = tx.get("service", service.ID) or service
    st = cur.UpdateStatus
    rollback = st is not None and st.State == ROLLBACK_STARTED
    if state == COMPLETED:
        if st is None or st.State not in (UPDATING, ROLLBACK_STARTED):
            return
        new = UpdateStatus(
            State=ROLLBACK_COMPLETED if rollback else COMPLETED,
            StartedAt=st.StartedAt,
            CompletedAt=ts,
            Message="rollback completed" if rollback else "update completed (blue-green switch)",
        )
    else:
        if rollback:
            return
        new = UpdateStatus(State=UPDATING, StartedAt=ts, Message="blue-green release in progress")
    tx.update("service", msgspec.structs.replace(cur, UpdateStatus=new))
