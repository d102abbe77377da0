"""Task reaper: deleting REMOVE tasks once stopped, and trimming each slot's history."""

from __future__ import annotations

import msgspec

from shoal.ids import new_id
from shoal.models import (
    Cluster,
    ContainerSpec,
    OrchestrationConfig,
    RestartPolicy,
    SwarmSpec,
    TaskSpec,
    TaskState,
    Version,
)
from shoal.orchestrator import GlobalOrchestrator, ReplicatedOrchestrator, TaskReaper
from shoal.orchestrator.testutils import (
    FakeAgent,
    delete_service,
    make_node,
    make_service,
    make_store,
    runnable_tasks,
    running,
    set_task_state,
    settle,
    update_service,
    wait_for,
)
from shoal.scheduler import Scheduler

NO_DELAY = TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest"), RestartPolicy=RestartPolicy(Delay=0))


def set_history_limit(store, limit):
    cluster = store.cluster()
    spec = SwarmSpec(Orchestration=OrchestrationConfig(TaskHistoryRetentionLimit=limit))
    with store.tx() as tx:
        if cluster is None:
            tx.create("cluster", Cluster(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec))
        else:
            tx.update("cluster", msgspec.structs.replace(cluster, Spec=spec))


async def crash_loop(store, sid, times, node_id=None, slot=None):
    """Fail a running task of a service ``times`` times, waiting for each replacement to run."""

    def victims():
        return [
            t
            for t in runnable_tasks(store, sid)
            if t.Status.State is TaskState.RUNNING
            and (node_id is None or t.NodeID == node_id)
            and (slot is None or t.Slot == slot)
        ]

    for _ in range(times):
        await wait_for(lambda: bool(victims()), what="a running task")
        t = victims()[0]
        set_task_state(store, t.ID, TaskState.FAILED, exit_code=1)
        await wait_for(lambda t=t: store.get("task", t.ID) is None or store.get("task", t.ID).DesiredState
                       is TaskState.SHUTDOWN)


async def test_remove_tasks_deleted_once_stopped_or_never_assigned():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=3)
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent, TaskReaper(store)):
        await wait_for(lambda: sum(t.Status.State is TaskState.RUNNING for t in runnable_tasks(store, svc.ID)) == 3)
        agent.paused = True
        update_service(store, svc.ID, replicas=1)
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 1)
        await settle()
        assert len(store.tasks_of_service(svc.ID)) == 3, "running REMOVE tasks wait for the agent"
        agent.paused = False
        agent.step()
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 1, what="stopped tasks reaped")

        # Never-assigned tasks go at once: a service nothing can run.
        nowhere = make_service(store, "nowhere", replicas=2)
        with store.tx() as tx:
            tx.delete("node", store.list("node")[0].ID)
        await wait_for(lambda: len(store.tasks_of_service(nowhere.ID)) == 2)
        delete_service(store, nowhere.ID)
        await wait_for(lambda: not store.tasks_of_service(nowhere.ID), what="unassigned tasks reaped")


async def test_service_removal_reaps_everything_after_stop():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=2, template=NO_DELAY)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store), TaskReaper(store)):
        await crash_loop(store, svc.ID, 2)
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 4)
        delete_service(store, svc.ID)
        await wait_for(lambda: not store.tasks_of_service(svc.ID), what="all reaped")


async def test_history_is_trimmed_to_default_limit_per_slot():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=2, template=NO_DELAY)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store), TaskReaper(store)):
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 2)
        first_ids = {t.ID for t in store.tasks_of_service(svc.ID)}
        await crash_loop(store, svc.ID, 7, slot=1)
        await wait_for(lambda: sum(t.Status.State is TaskState.RUNNING for t in runnable_tasks(store, svc.ID)) == 2)
        await settle()
    by_slot: dict[int, list] = {}
    for t in store.tasks_of_service(svc.ID):
        by_slot.setdefault(t.Slot, []).append(t)
    assert set(by_slot) == {1, 2}
    assert len(by_slot[1]) == 5, "running task + 4 old"
    assert len(by_slot[2]) == 1
    for tasks in by_slot.values():
        assert sum(t.DesiredState is TaskState.RUNNING for t in tasks) == 1
    assert not first_ids & {t.ID for t in by_slot[1]}, "the oldest task of the slot went first"


async def test_cluster_limit_change_trims_existing_history():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=1, template=NO_DELAY)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store), TaskReaper(store)):
        await crash_loop(store, svc.ID, 4)
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 5)
        set_history_limit(store, 2)
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 2, what="trimmed to 2")
        newest = max(store.tasks_of_service(svc.ID), key=lambda t: t.CreatedAt)
        assert newest.DesiredState is TaskState.RUNNING
        set_history_limit(store, -1)  # negative: keep everything
        await crash_loop(store, svc.ID, 3)
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 5)
        await settle()
        assert len(store.tasks_of_service(svc.ID)) == 5


async def test_global_history_is_per_node_and_deleted_node_tasks_go():
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    set_history_limit(store, 3)
    svc = make_service(store, "agent", global_=True, template=NO_DELAY)
    agent = FakeAgent(store)
    async with running(GlobalOrchestrator(store), Scheduler(store), agent, TaskReaper(store)):
        await crash_loop(store, svc.ID, 5, node_id=n1.ID)
        await wait_for(lambda: len(store.tasks_on_node(n1.ID)) == 3, what="n1 history trimmed")
        assert len(store.tasks_on_node(n2.ID)) == 1
        agent.paused = True
        with store.tx() as tx:
            tx.delete("node", n2.ID)
        await wait_for(lambda: not store.tasks_on_node(n2.ID), what="tasks of the deleted node reaped")


async def test_reaper_started_late_cleans_up_existing_state():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=1, template=NO_DELAY)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await crash_loop(store, svc.ID, 7)
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 8)
    async with running(TaskReaper(store)):
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 5)
