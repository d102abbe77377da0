"""The job orchestrator: tasks of replicated-job and global-job services, run to completion.

A job runs in *iterations* (``Service.JobStatus.JobIteration``): the control API starts one when the
job is created and a new one on every update (``--force``, a scale, the cron scheduler's trigger),
and stamps ``LastExecution``. Every task carries the iteration it was made for; tasks of an older
iteration are stopped and left as history, and the counts start again from zero. As in swarmkit
(manager/orchestrator/jobs), one loop serves both job modes:

- **replicated job**: at most ``MaxConcurrent`` tasks of the iteration in flight, until
  ``TotalCompletions`` of them have completed. Each task gets its own slot, ``0 .. total-1`` (the
  docker CLI's progress bars count on it), so a failed task is retried *in its slot* by the restart
  supervisor, and a slot whose task completed is done.
- **global job**: one task per node that was eligible when the iteration started (constraints
  met, ready, active, and created before ``LastExecution``: a node that joins later waits for the
  next run, as in swarmkit); each node runs it once.

Task states stay Shoal's: a job task is *desired running* while it should run (the scheduler, the
dispatcher and the agent need nothing special), and once it has completed with exit code 0 the
orchestrator raises its desired state to ``complete``, Swarm's mark for a job task of record, so it
no longer counts as active on its node. A task that failed is retried per its RestartPolicy (jobs
default to on-failure: a success is never restarted, whatever the condition); when the policy
gives up (condition none, attempts exhausted) its slot stays failed and the run cannot complete.
Concurrency is strict: a task that is still stopping (drained node, preempted) keeps its place
until it has stopped, so ``MaxConcurrent`` holds at every moment, not just between passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from shoal.extensions import SCHEDULE_LABEL
from shoal.models import (
    DEFAULT_RESTART_DELAY,
    Node,
    NodeAvailability,
    NodeState,
    Service,
    Task,
    TaskState,
    Version,
    now_ts,
    parse_ts,
)
from shoal.orchestrator.base import RestartingLoop
from shoal.orchestrator.restart import SlotPart, task_failed
from shoal.orchestrator.task import (
    RUNNING_ORDER,
    age_key,
    evacuate,
    is_terminal,
    new_task,
    node_changed,
    node_unusable,
    raise_desired,
)
from shoal.scheduler.constraints import constraints_of, node_matches
from shoal.store import Action, Event, MemoryStore, Tx


def is_job(service: Service) -> bool:
    return service.Spec.Mode is not None and service.Spec.Mode.is_job


def job_iteration(service: Service) -> int:
    """The run the service is on (0 until its first update)."""
    return service.JobStatus.JobIteration.Index if service.JobStatus is not None else 0


def of_iteration(task: Task, iteration: int) -> bool:
    return task.JobIteration is not None and task.JobIteration.Index == iteration


def succeeded(task: Task) -> bool:
    """Completed with exit code 0: one completion of the job."""
    return task.Status.State is TaskState.COMPLETE and not task_failed(task)


def job_limits(service: Service) -> tuple[int, int]:
    """(MaxConcurrent, TotalCompletions) with moby's defaults (1; MaxConcurrent)."""
    mode = service.Spec.Mode
    job = mode.ReplicatedJob if mode is not None else None
    if job is None:
        return (0, 0)
    concurrent = 1 if job.MaxConcurrent is None else job.MaxConcurrent
    total = concurrent if job.TotalCompletions is None else job.TotalCompletions
    return concurrent, total


@dataclass(slots=True)
class _Slots:
    """Where each slot (replicated: number, global: node ID) of the current run stands."""

    completed: set[SlotPart] = field(default_factory=set)
    active: set[SlotPart] = field(default_factory=set)  # a task that runs or will run
    stopping: set[SlotPart] = field(default_factory=set)  # no longer wanted but not stopped yet
    failed: set[SlotPart] = field(default_factory=set)  # the restart policy gave up

    def taken(self) -> set[SlotPart]:
        return self.completed | self.active | self.stopping | self.failed


class JobOrchestrator(RestartingLoop):
    """Creates, retries and retires the tasks of job services (both modes)."""

    def __init__(
        self,
        store: MemoryStore,
        *,
        default_restart_delay_ns: int = DEFAULT_RESTART_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(store, default_restart_delay_ns=default_restart_delay_ns, clock=clock)
        self._iteration: dict[str, int] = {}

    # ------------------------------------------------------------------ loop hooks

    def stopped(self) -> None:
        super().stopped()
        self._iteration.clear()

    def reconcile_all(self) -> None:
        ts = now_ts()
        with self.store.tx() as tx:
            for svc in self.store.list("service"):
                if is_job(svc):
                    self._reconcile(tx, svc, ts)

    def handle(self, events: list[Event]) -> None:
        dirty = self._poked
        self._poked = set()
        deleted: list[str] = []
        nodes_changed = False
        get = self.store.get
        for e in events:
            if e.kind == "task":
                t = e.old if e.action is Action.DELETE else e.obj
                if _task_matters(e):
                    svc = get("service", t.ServiceID)
                    if svc is not None and is_job(svc):
                        dirty.add(svc.ID)
            elif e.kind == "service":
                if e.action is Action.DELETE:
                    if is_job(e.old):
                        deleted.append(e.old.ID)
                elif is_job(e.obj):
                    dirty.add(e.obj.ID)
            elif e.kind == "node" and node_changed(e):
                nodes_changed = True
        if nodes_changed:
            # A node came, went, drained or returned: every job may have a task to move or to start.
            # The jobs are the services this loop has reconciled (_iteration), not a scan of all.
            dirty.update(self._iteration)
        if not dirty and not deleted:
            return
        ts = now_ts()
        with self.store.tx() as tx:
            for sid in deleted:
                self.restarts.forget_service(sid)
                self._iteration.pop(sid, None)
                for t in self.store.tasks_of_service(sid):
                    raise_desired(tx, t, TaskState.REMOVE)
            for sid in sorted(dirty):
                svc = get("service", sid)
                if svc is not None and is_job(svc):
                    self._reconcile(tx, svc, ts)

    # ------------------------------------------------------------------ one job

    def _reconcile(self, tx: Tx, svc: Service, ts: str) -> None:
        it = job_iteration(svc)
        if self._iteration.get(svc.ID, it) != it:
            # A new run: retries booked for the old one must not leak into it.
            self.restarts.forget_service(svc.ID)
        self._iteration[svc.ID] = it
        current: dict[SlotPart, list[Task]] = {}
        glob = svc.Spec.Mode is not None and svc.Spec.Mode.GlobalJob is not None
        for t in self.store.tasks_of_service(svc.ID):
            if not of_iteration(t, it):
                # An older run: stop what still runs of it; what ended stays as history.
                if t.DesiredState.order <= RUNNING_ORDER:
                    raise_desired(tx, t, TaskState.COMPLETE if succeeded(t) else TaskState.SHUTDOWN)
                continue
            current.setdefault(t.NodeID if glob else t.Slot, []).append(t)
        if it == 0 and SCHEDULE_LABEL in (svc.Spec.Labels or {}):
            return  # a scheduled job waits for its first scheduled time, as cron (and CronJobs) do
        slots = self._classify(tx, svc, current)
        if glob:
            self._start_global(tx, svc, it, slots, ts)
        else:
            self._start_replicated(tx, svc, it, slots, ts)

    def _classify(self, tx: Tx, svc: Service, current: dict[SlotPart, list[Task]]) -> _Slots:
        """Sort the run's slots; hand failed tasks to the restart supervisor, move tasks off lost nodes."""
        out = _Slots()
        get = self.store.get
        for part, tasks in current.items():
            retried = False
            for t in tasks:
                if succeeded(t):
                    out.completed.add(part)
                    if t.DesiredState.order <= RUNNING_ORDER:
                        raise_desired(tx, t, TaskState.COMPLETE)
                elif t.DesiredState.order > RUNNING_ORDER:
                    if _may_still_run(t, get("node", t.NodeID) if t.NodeID else None):
                        out.stopping.add(part)
                elif is_terminal(t):
                    if self.restarts.restart(tx, svc, t, part):
                        retried = True
                    else:
                        out.failed.add(part)
                elif t.NodeID and node_unusable(node := get("node", t.NodeID)):
                    evacuate(tx, t, node)  # not the task's fault: no attempt spent
                    if _may_still_run(t, node):
                        out.stopping.add(part)  # drained: refilled once the container has stopped
                else:
                    out.active.add(part)
            if part in out.completed:
                out.active.discard(part)
                out.failed.discard(part)
                self.restarts.done(svc.ID, part)
            elif not retried and part not in out.active and part not in out.stopping and part not in out.failed:
                # A restarted manager: the last task failed earlier and its policy said no more.
                newest = max(tasks, key=age_key)
                if (
                    newest.DesiredState.order > RUNNING_ORDER
                    and task_failed(newest)
                    and newest.Status.State is not TaskState.ORPHANED
                    and not self.restarts.is_booked(svc.ID, part)
                    and self.restarts.declined(newest)
                ):
                    out.failed.add(part)
        return out

    def _start_replicated(self, tx: Tx, svc: Service, it: int, slots: _Slots, ts: str) -> None:
        sid = svc.ID
        concurrent, total = job_limits(svc)
        waiting = self.restarts.waiting(sid)
        due = [p for p in self.restarts.due(sid) if p not in slots.active and p not in slots.completed]
        for p in self.restarts.due(sid):
            if p not in due:
                self.restarts.done(sid, p)
        in_flight = slots.active | slots.stopping | waiting | set(due)
        taken = slots.taken() | waiting | set(due)
        room = concurrent - len(in_flight)
        remaining = total - len(slots.completed | slots.failed | in_flight)
        fill: list[SlotPart] = list(due)  # booked retries were counted in flight when they were booked
        n = min(room, remaining)
        slot = 0
        while n > 0 and slot < total:
            if slot not in taken:
                fill.append(slot)
                n -= 1
            slot += 1
        for part in fill:
            tx.create("task", _job_task(svc, int(part), "", it, ts))
            self.restarts.done(sid, part)

    def _start_global(self, tx: Tx, svc: Service, it: int, slots: _Slots, ts: str) -> None:
        sid = svc.ID
        started = _run_started(svc)
        constraints = constraints_of(svc.Spec.TaskTemplate)
        waiting = self.restarts.waiting(sid)
        due = set(self.restarts.due(sid))
        taken = slots.taken() | waiting
        for node in self.store.list("node"):
            nid = node.ID
            if nid in taken:
                continue
            eligible = (
                _accepts_new_tasks(node)
                and node_matches(constraints, node)
                and parse_ts(node.CreatedAt) < started
            )
            if eligible:
                tx.create("task", _job_task(svc, 0, nid, it, ts))
            self.restarts.done(sid, nid)
        for nid in due - {n.ID for n in self.store.list("node")}:
            self.restarts.done(sid, nid)  # the node is gone: nothing to retry there


def _job_task(svc: Service, slot: int, node_id: str, iteration: int, ts: str) -> Task:
    return msgspec.structs.replace(new_task(svc, slot, node_id, ts=ts), JobIteration=Version(iteration))


def _run_started(svc: Service) -> float:
    """When the current run started, in the store's (real) time, to compare with nodes' CreatedAt.

    LastExecution, as swarmkit, when it is a real-time stamp: between the service's creation and its
    last write (the cron scheduler may stamp it from an accelerated test clock). Otherwise the
    service's last write, which the update that started the run was (or closely preceded).
    """
    created = parse_ts(svc.CreatedAt) if svc.CreatedAt else 0.0
    updated = parse_ts(svc.UpdatedAt) if svc.UpdatedAt else time.time()
    if svc.JobStatus is not None and svc.JobStatus.LastExecution:
        started = parse_ts(svc.JobStatus.LastExecution)
        if created - 1.0 <= started <= updated + 1.0:
            return started
    return updated


def _may_still_run(task: Task, node: Node | None) -> bool:
    """The container may still be running: placed, not ended, on a node that is there and up
    (a down node's tasks are orphaned; nothing there can report, and the slot must move on)."""
    return (
        bool(task.NodeID)
        and TaskState.ASSIGNED.order <= task.Status.State.order <= RUNNING_ORDER
        and node is not None
        and node.Status.State is not NodeState.DOWN
    )


def _accepts_new_tasks(node: Node) -> bool:
    return node.Status.State is NodeState.READY and node.Spec.Availability is NodeAvailability.ACTIVE


def _task_matters(e: Event) -> bool:
    """A task event that can change a job's picture: a task ended, was deleted, or was stopped by
    someone else (preemption, node drain). Status churn before the end and our own raises of
    finished tasks do not need a pass."""
    if e.action is Action.DELETE:
        return True
    if e.action is not Action.UPDATE:
        return False
    t, old = e.obj, e.old
    if (t.Status.State.order > RUNNING_ORDER) != (old.Status.State.order > RUNNING_ORDER):
        return True
    return old.DesiredState.order <= RUNNING_ORDER < t.DesiredState.order and not is_terminal(t)
