"""Job orchestrator: replicated and global jobs run to completion, one run per JobIteration."""

from __future__ import annotations

from collections import Counter, defaultdict

import msgspec

from shoal import controlapi
from shoal.models import (
    ContainerSpec,
    GlobalJob,
    NodeState,
    ReplicatedJob,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskState,
)
from shoal.orchestrator import GlobalOrchestrator, ReplicatedOrchestrator, TaskReaper
from shoal.orchestrator.jobs import JobOrchestrator
from shoal.orchestrator.testutils import (
    FakeAgent,
    make_node,
    make_store,
    running,
    set_task_state,
    settle,
    update_node,
    wait_for,
)
from shoal.scheduler import Scheduler
from shoal.store import Action, MemoryStore, Watcher

RUNNING = TaskState.RUNNING.order


def job_spec(name: str = "job", *, concurrent: int | None = 2, total: int | None = 4,
             glob: bool = False, restart: RestartPolicy | None = None) -> ServiceSpec:
    mode = (ServiceMode(GlobalJob=GlobalJob()) if glob
            else ServiceMode(ReplicatedJob=ReplicatedJob(MaxConcurrent=concurrent, TotalCompletions=total)))
    task = TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest"),
                    RestartPolicy=restart or RestartPolicy(Delay=0))
    return ServiceSpec(Name=name, TaskTemplate=task, Mode=mode)


def rerun(store: MemoryStore, sid: str) -> Service:
    """What `docker service update --force` and the cron scheduler do: ForceUpdate+1."""
    svc = store.get("service", sid)
    tmpl = msgspec.structs.replace(svc.Spec.TaskTemplate, ForceUpdate=svc.Spec.TaskTemplate.ForceUpdate + 1)
    new_spec = msgspec.structs.replace(svc.Spec, TaskTemplate=tmpl)
    return controlapi.update_service(store, sid, svc.Version.Index, new_spec)


def iteration(store: MemoryStore, sid: str) -> int:
    return store.get("service", sid).JobStatus.JobIteration.Index


def of_run(store: MemoryStore, sid: str, it: int | None = None) -> list[Task]:
    it = iteration(store, sid) if it is None else it
    return [t for t in store.tasks_of_service(sid) if t.JobIteration is not None and t.JobIteration.Index == it]


def live(store: MemoryStore, sid: str) -> list[Task]:
    return [t for t in of_run(store, sid) if t.Status.State.order <= RUNNING and t.DesiredState.order <= RUNNING]


def in_state(store: MemoryStore, sid: str, state: TaskState) -> list[Task]:
    return [t for t in of_run(store, sid) if t.Status.State is state]


class InFlightMonitor:
    """Replays every committed task write in order and records, per job run, the most tasks that
    were not finished at once: the limit must hold after every commit, not just at the end."""

    def __init__(self, store: MemoryStore) -> None:
        self.watcher: Watcher = store.watch("task")
        self.tasks: dict[str, Task] = {}

    def peak(self, service_id: str) -> dict[int, int]:
        peak: dict[int, int] = defaultdict(int)
        while not self.watcher.queue.empty():
            for e in self.watcher.queue.get_nowait():
                if e.action is Action.DELETE:
                    self.tasks.pop(e.old.ID, None)
                else:
                    self.tasks[e.obj.ID] = e.obj
            counts: Counter[int] = Counter(
                t.JobIteration.Index for t in self.tasks.values()
                if t.ServiceID == service_id and t.JobIteration is not None and t.Status.State.order <= RUNNING
            )
            for it, n in counts.items():
                peak[it] = max(peak[it], n)
        return dict(peak)


def components(store: MemoryStore) -> tuple[object, ...]:
    # The service orchestrators run too: they must leave job services alone.
    return (JobOrchestrator(store), ReplicatedOrchestrator(store), GlobalOrchestrator(store),
            Scheduler(store), FakeAgent(store), TaskReaper(store))


async def complete_all_running(store: MemoryStore, sid: str, want: int) -> None:
    await wait_for(lambda: len(in_state(store, sid, TaskState.RUNNING)) == want, what=f"{want} running")
    set_task_state(store, [t.ID for t in in_state(store, sid, TaskState.RUNNING)], TaskState.COMPLETE)


# --------------------------------------------------------------------------- replicated jobs


async def test_replicated_job_completes_within_max_concurrent_at_every_commit() -> None:
    store = make_store()
    for i in range(3):
        make_node(store, f"n{i}")
    monitor = InFlightMonitor(store)
    svc = controlapi.create_service(store, job_spec(concurrent=2, total=5))
    async with running(*components(store)):
        for want in (2, 2, 1):
            await complete_all_running(store, svc.ID, want)
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.COMPLETE)) == 5, what="5 completions")
        await settle()
        tasks = store.tasks_of_service(svc.ID)
        assert len(tasks) == 5  # nothing more was started, by any orchestrator
        assert sorted(t.Slot for t in tasks) == [0, 1, 2, 3, 4]  # swarmkit's slots, 0 .. total-1
        assert {t.DesiredState for t in tasks} == {TaskState.COMPLETE}
        status = controlapi.service_status(store, store.get("service", svc.ID))
        assert (status.RunningTasks, status.DesiredTasks, status.CompletedTasks) == (0, 2, 5)
    assert monitor.peak(svc.ID) == {0: 2}


async def test_completing_one_task_starts_exactly_one_more() -> None:
    store = make_store()
    make_node(store, "n1")
    svc = controlapi.create_service(store, job_spec(concurrent=3, total=4))
    async with running(*components(store)):
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 3)
        first = min(in_state(store, svc.ID, TaskState.RUNNING), key=lambda t: t.Slot)
        set_task_state(store, first.ID, TaskState.COMPLETE)
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 4, what="the fourth task")
        await settle()
        assert len(live(store, svc.ID)) == 3
        assert {t.Slot for t in store.tasks_of_service(svc.ID)} == {0, 1, 2, 3}


async def test_failed_task_is_retried_in_its_slot_and_success_is_never_rerun() -> None:
    store = make_store()
    make_node(store, "n1")
    # Condition "any" would restart a success of a service; for a job a success is final.
    svc = controlapi.create_service(
        store, job_spec(concurrent=1, total=2, restart=RestartPolicy(Condition=RestartCondition.ANY, Delay=0)))
    async with running(*components(store)):
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 1)
        (t0,) = in_state(store, svc.ID, TaskState.RUNNING)
        set_task_state(store, t0.ID, TaskState.FAILED, exit_code=1, err="task: non-zero exit (1)")
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 1, what="the retry")
        (retry,) = in_state(store, svc.ID, TaskState.RUNNING)
        assert retry.ID != t0.ID and retry.Slot == t0.Slot
        set_task_state(store, retry.ID, TaskState.COMPLETE)
        await complete_all_running(store, svc.ID, 1)
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.COMPLETE)) == 2)
        await settle()
        assert len(store.tasks_of_service(svc.ID)) == 3
        assert Counter(t.Slot for t in store.tasks_of_service(svc.ID)) == {0: 2, 1: 1}


async def test_restart_policy_none_leaves_the_slot_failed() -> None:
    store = make_store()
    make_node(store, "n1")
    svc = controlapi.create_service(
        store, job_spec(concurrent=2, total=2, restart=RestartPolicy(Condition=RestartCondition.NONE)))
    async with running(*components(store)):
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 2)
        a, b = sorted(in_state(store, svc.ID, TaskState.RUNNING), key=lambda t: t.Slot)
        set_task_state(store, a.ID, TaskState.FAILED, exit_code=2)
        set_task_state(store, b.ID, TaskState.COMPLETE)
        await settle(50)
        assert len(store.tasks_of_service(svc.ID)) == 2  # no retry, no extra slot
        status = controlapi.service_status(store, store.get("service", svc.ID))
        assert (status.RunningTasks, status.CompletedTasks) == (0, 1)


async def test_update_starts_a_new_iteration_and_stops_the_old_run() -> None:
    store = make_store()
    make_node(store, "n1")
    monitor = InFlightMonitor(store)
    svc = controlapi.create_service(store, job_spec(concurrent=2, total=3))
    started0 = svc.JobStatus.LastExecution
    async with running(*components(store)):
        await complete_all_running(store, svc.ID, 2)
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 1, what="third task")
        (old_running,) = in_state(store, svc.ID, TaskState.RUNNING)
        new = rerun(store, svc.ID)  # mid-run: the old run is abandoned
        assert new.JobStatus.JobIteration.Index == 1 and new.JobStatus.LastExecution > started0
        await wait_for(lambda: store.get("task", old_running.ID).Status.State is TaskState.SHUTDOWN,
                       what="old run's task stopped")
        assert store.get("task", old_running.ID).DesiredState is TaskState.SHUTDOWN
        for want in (2, 1):
            await complete_all_running(store, svc.ID, want)
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.COMPLETE)) == 3, what="run 1 complete")
        await settle()
        assert sorted(t.Slot for t in of_run(store, svc.ID, 1)) == [0, 1, 2]
        assert len(in_state(store, svc.ID, TaskState.COMPLETE)) == 3  # counted from zero
        assert [t.Status.State for t in of_run(store, svc.ID, 0)].count(TaskState.COMPLETE) == 2
        rerun(store, svc.ID)  # after completion: runs again in full
        await wait_for(lambda: len(live(store, svc.ID)) == 2, what="run 2 started")
        status = controlapi.service_status(store, store.get("service", svc.ID))
        assert status.CompletedTasks == 0
    assert all(n <= 2 for n in monitor.peak(svc.ID).values())


async def test_task_on_a_node_that_goes_down_is_replaced_elsewhere() -> None:
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = controlapi.create_service(store, job_spec(concurrent=2, total=2))
    async with running(*components(store)):
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 2)
        on_n1 = [t for t in live(store, svc.ID) if t.NodeID == n1.ID]
        update_node(store, n1.ID, state=NodeState.DOWN)
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 2
                       and all(t.NodeID == n2.ID for t in live(store, svc.ID)), what="moved to n2")
        assert all(store.get("task", t.ID).Status.State is TaskState.ORPHANED for t in on_n1)


async def test_deleting_a_job_removes_its_tasks() -> None:
    store = make_store()
    make_node(store, "n1")
    svc = controlapi.create_service(store, job_spec(concurrent=2, total=4))
    async with running(*components(store)):
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 2)
        controlapi.remove_service(store, svc.ID)
        await wait_for(lambda: not store.tasks_of_service(svc.ID), what="tasks reaped")


async def test_restarted_manager_resumes_the_run() -> None:
    store = make_store()
    make_node(store, "n1")
    svc = controlapi.create_service(store, job_spec(concurrent=1, total=3))
    async with running(*components(store)):
        await complete_all_running(store, svc.ID, 1)
        await wait_for(lambda: len(live(store, svc.ID)) == 1)
    async with running(*components(store)):  # fresh in-memory state, same store
        await complete_all_running(store, svc.ID, 1)
        await complete_all_running(store, svc.ID, 1)
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.COMPLETE)) == 3)
        await settle()
        assert len(store.tasks_of_service(svc.ID)) == 3


# --------------------------------------------------------------------------- global jobs


async def test_global_job_runs_once_per_node_and_a_late_node_waits_for_the_next_run() -> None:
    store = make_store()
    nodes = [make_node(store, f"n{i}") for i in range(7)]
    svc = controlapi.create_service(store, job_spec(glob=True))
    async with running(*components(store)):
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 7)
        assert Counter(t.NodeID for t in of_run(store, svc.ID)) == {n.ID: 1 for n in nodes}
        set_task_state(store, [t.ID for t in of_run(store, svc.ID)], TaskState.COMPLETE)
        late = make_node(store, "late")  # joined after the run started (swarmkit: not part of it)
        await settle(50)
        # Seven completed tasks on seven nodes, more than the history limit (5) of one slot: the
        # reaper keeps history per node for global jobs and never drops a completion of this run.
        assert len(in_state(store, svc.ID, TaskState.COMPLETE)) == 7
        assert len(store.tasks_of_service(svc.ID)) == 7
        status = controlapi.service_status(store, store.get("service", svc.ID))
        assert (status.RunningTasks, status.DesiredTasks, status.CompletedTasks) == (0, 0, 7)
        rerun(store, svc.ID)
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 8, what="run 1 on 8 nodes")
        assert late.ID in {t.NodeID for t in of_run(store, svc.ID)}
        status = controlapi.service_status(store, store.get("service", svc.ID))
        assert (status.RunningTasks, status.DesiredTasks, status.CompletedTasks) == (8, 8, 0)


async def test_global_job_retries_a_failure_on_the_same_node() -> None:
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = controlapi.create_service(store, job_spec(glob=True))
    async with running(*components(store)):
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 2)
        (on_n1,) = [t for t in of_run(store, svc.ID) if t.NodeID == n1.ID]
        set_task_state(store, on_n1.ID, TaskState.FAILED, exit_code=1)
        await wait_for(lambda: len([t for t in live(store, svc.ID) if t.NodeID == n1.ID]) == 1
                       and len(in_state(store, svc.ID, TaskState.RUNNING)) == 2, what="retry on n1")
        assert Counter(t.NodeID for t in of_run(store, svc.ID)) == {n1.ID: 2, n2.ID: 1}


async def test_global_run_stamped_by_a_test_clock_still_runs_on_existing_nodes() -> None:
    store = make_store()
    nodes = [make_node(store, f"n{i}") for i in range(2)]
    svc = controlapi.create_service(store, job_spec(glob=True))
    async with running(*components(store)):
        await complete_all_running(store, svc.ID, 2)
        cur = rerun(store, svc.ID)
        # The cron scheduler stamps LastExecution from its own (here: far behind) clock.
        stamped = msgspec.structs.replace(cur.JobStatus, LastExecution="2001-01-01T00:00:00.000000000Z")
        with store.tx() as tx:
            tx.update("service", msgspec.structs.replace(cur, JobStatus=stamped))
        await wait_for(lambda: len(in_state(store, svc.ID, TaskState.RUNNING)) == 2, what="run 1 on both nodes")
        assert {t.NodeID for t in of_run(store, svc.ID, 1)} == {n.ID for n in nodes}


async def test_a_scheduled_job_waits_for_its_first_scheduled_run() -> None:
    """Creating a job with a schedule starts nothing (cron semantics); the first trigger does."""
    store = make_store()
    make_node(store, "n0")
    spec = msgspec.structs.replace(job_spec(concurrent=1, total=1), Labels={"shoal.schedule": "0 3 * * *"})
    svc = controlapi.create_service(store, spec)
    async with running(*components(store)):
        await settle()
        assert store.tasks_of_service(svc.ID) == []
        rerun(store, svc.ID)  # what the cron scheduler does when the time comes
        await wait_for(lambda: len(of_run(store, svc.ID)) == 1, what="the scheduled run's task")
