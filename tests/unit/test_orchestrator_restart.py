"""Restart supervisor through the orchestrators: conditions, delay, max attempts within a window."""

from __future__ import annotations

import asyncio
import time

from shoal.models import SECOND, ContainerSpec, RestartCondition, RestartPolicy, TaskSpec, TaskState
from shoal.orchestrator import GlobalOrchestrator, ReplicatedOrchestrator
from shoal.orchestrator.testutils import (
    FakeAgent,
    make_node,
    make_service,
    make_store,
    runnable_tasks,
    running,
    set_task_state,
    settle,
    wait_for,
)
from shoal.scheduler import Scheduler


def template(**policy) -> TaskSpec:
    return TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest"), RestartPolicy=RestartPolicy(**policy))


def running_task(store, sid):
    tasks = [t for t in runnable_tasks(store, sid) if t.Status.State is TaskState.RUNNING]
    assert len(tasks) == 1, tasks
    return tasks[0]


async def wait_running(store, sid, n=1):
    await wait_for(
        lambda: sum(t.Status.State is TaskState.RUNNING for t in runnable_tasks(store, sid)) == n,
        what=f"{n} running",
    )


async def test_any_restarts_in_same_slot_after_delay():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=1, template=template(Delay=SECOND // 4))
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await wait_running(store, svc.ID)
        first = running_task(store, svc.ID)
        set_task_state(store, first.ID, TaskState.COMPLETE)  # "any" restarts even a clean exit
        t0 = time.monotonic()
        await wait_for(lambda: store.get("task", first.ID).DesiredState is TaskState.SHUTDOWN)
        await asyncio.sleep(0.1)
        assert len(store.tasks_of_service(svc.ID)) == 1, "replacement created before the delay"
        await wait_running(store, svc.ID)
        assert time.monotonic() - t0 >= 0.24
        second = running_task(store, svc.ID)
    assert second.ID != first.ID and second.Slot == first.Slot == 1
    assert len(store.tasks_of_service(svc.ID)) == 2


async def test_default_delay_is_five_seconds_and_does_not_block_other_services():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=1)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await wait_running(store, svc.ID)
        set_task_state(store, running_task(store, svc.ID).ID, TaskState.FAILED, exit_code=1)
        await settle()
        # Meanwhile, other work proceeds at once.
        other = make_service(store, "other", replicas=3)
        await wait_running(store, other.ID, 3)
        assert not runnable_tasks(store, svc.ID), "replacement must wait for the 5 s default delay"


async def test_on_failure_restarts_failures_only():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=2, template=template(Condition=RestartCondition.ON_FAILURE, Delay=0))
    orch = ReplicatedOrchestrator(store)
    async with running(orch, Scheduler(store), FakeAgent(store)):
        await wait_running(store, svc.ID, 2)
        a, b = sorted(runnable_tasks(store, svc.ID), key=lambda t: t.Slot)
        set_task_state(store, a.ID, TaskState.COMPLETE, exit_code=0)
        set_task_state(store, b.ID, TaskState.FAILED, exit_code=2)
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 3, what="one replacement")
        await wait_running(store, svc.ID, 1)
        await settle()
        replacement = running_task(store, svc.ID)
        assert replacement.Slot == b.Slot
        assert store.get("task", a.ID).DesiredState is TaskState.SHUTDOWN
    # A new orchestrator must not resurrect the finished slot either.
    async with running(ReplicatedOrchestrator(store)):
        await settle()
    assert len(store.tasks_of_service(svc.ID)) == 3


async def test_none_never_restarts():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=1, template=template(Condition=RestartCondition.NONE, Delay=0))
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await wait_running(store, svc.ID)
        t = running_task(store, svc.ID)
        set_task_state(store, t.ID, TaskState.FAILED, exit_code=1)
        await wait_for(lambda: store.get("task", t.ID).DesiredState is TaskState.SHUTDOWN)
        await asyncio.sleep(0.05)
        assert len(store.tasks_of_service(svc.ID)) == 1
    async with running(ReplicatedOrchestrator(store)):
        await settle()
    assert len(store.tasks_of_service(svc.ID)) == 1


async def test_max_attempts_within_window():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(
        store, "web", replicas=1, template=template(Delay=0, MaxAttempts=1, Window=SECOND // 5)
    )
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await wait_running(store, svc.ID)
        set_task_state(store, running_task(store, svc.ID).ID, TaskState.FAILED, exit_code=1)
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 2)  # attempt 1
        await wait_running(store, svc.ID)
        await asyncio.sleep(0.25)  # attempt 1 leaves the window
        set_task_state(store, running_task(store, svc.ID).ID, TaskState.FAILED, exit_code=1)
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 3)  # attempt 2 allowed again
        await wait_running(store, svc.ID)
        set_task_state(store, running_task(store, svc.ID).ID, TaskState.FAILED, exit_code=1)
        await asyncio.sleep(0.05)
        await settle()
        assert len(store.tasks_of_service(svc.ID)) == 3, "second attempt inside the window is refused"
        assert not runnable_tasks(store, svc.ID)


async def test_max_attempts_without_window_counts_forever():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=1, template=template(Delay=0, MaxAttempts=2))
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        for expected in (2, 3):
            await wait_running(store, svc.ID)
            set_task_state(store, running_task(store, svc.ID).ID, TaskState.REJECTED, err="boom")
            await wait_for(lambda n=expected: len(store.tasks_of_service(svc.ID)) == n)
        await wait_running(store, svc.ID)
        set_task_state(store, running_task(store, svc.ID).ID, TaskState.FAILED, exit_code=1)
        await asyncio.sleep(0.05)
        await settle()
    assert len(store.tasks_of_service(svc.ID)) == 3
    assert all(t.DesiredState is TaskState.SHUTDOWN for t in store.tasks_of_service(svc.ID))


async def test_global_restart_stays_on_its_node():
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = make_service(store, "agent", global_=True, template=template(Delay=0))
    async with running(GlobalOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await wait_running(store, svc.ID, 2)
        victim = next(t for t in runnable_tasks(store, svc.ID) if t.NodeID == n2.ID)
        set_task_state(store, victim.ID, TaskState.FAILED, exit_code=137)
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 3)
        await wait_running(store, svc.ID, 2)
    on_n2 = [t for t in runnable_tasks(store, svc.ID) if t.NodeID == n2.ID]
    assert len(on_n2) == 1 and on_n2[0].ID != victim.ID and on_n2[0].Slot == 0
    assert {t.NodeID for t in runnable_tasks(store, svc.ID)} == {n1.ID, n2.ID}
