"""Rolling updates: stop-first / start-first, parallelism, delay, UpdateStatus, ForceUpdate."""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec

from shoal.models import SECOND, ContainerSpec, TaskSpec, TaskState, UpdateConfig
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
    update_service,
    wait_for,
)
from shoal.scheduler import Scheduler

MON = SECOND // 100  # a short Monitor (the default, 5 s, would make every test wait)


def image(store, sid, img):
    svc = store.get("service", sid)
    cs = msgspec.structs.replace(svc.Spec.TaskTemplate.ContainerSpec, Image=img)
    return update_service(store, sid, TaskTemplate=msgspec.structs.replace(svc.Spec.TaskTemplate, ContainerSpec=cs))


def n_running(store, sid, img=None) -> int:
    return sum(
        t.Status.State is TaskState.RUNNING and (img is None or t.Spec.ContainerSpec.Image == img)
        for t in runnable_tasks(store, sid)
    )


class Monitor:
    """Records, after every commit, how many tasks of a service run, and when new ones appear."""

    def __init__(self, store, sid):
        self.store, self.sid = store, sid
        self.min_running = None
        self.created: dict[str, float] = {}

    async def run(self):
        w = self.store.watch("task")
        try:
            while True:
                for e in await w.get():
                    if e.action.value == "create" and e.obj.ServiceID == self.sid:
                        self.created[e.obj.ID] = time.monotonic()
                n = n_running(self.store, self.sid)
                self.min_running = n if self.min_running is None else min(self.min_running, n)
        finally:
            w.close()


async def start(store, svc, n):
    await wait_for(lambda: n_running(store, svc.ID) == n, what=f"{n} running")


async def test_stop_first_one_at_a_time():
    store = make_store()
    make_node(store, "n1")
    make_node(store, "n2")
    svc = make_service(store, "web", replicas=3, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=1))
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await start(store, svc, 3)
        agent.paused = True
        mon = Monitor(store, svc.ID)
        async with running(mon):
            image(store, svc.ID, "busybox:v2")
            await wait_for(lambda: store.get("service", svc.ID).UpdateStatus is not None)
            st = store.get("service", svc.ID).UpdateStatus
            assert (st.State, st.Message) == ("updating", "update in progress") and st.StartedAt
            await settle()
            shut = [t for t in store.tasks_of_service(svc.ID) if t.DesiredState is TaskState.SHUTDOWN]
            assert len(shut) == 1, "parallelism 1: one old task stopped"
            assert len(store.tasks_of_service(svc.ID)) == 3, "stop-first: no new task before the old one stops"
            agent.paused = False
            agent.step()
            await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 3, what="all updated")
            await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")
        assert mon.min_running == 2, "never more than one slot down at a time"
    st = store.get("service", svc.ID).UpdateStatus
    assert st.Message == "update completed" and st.CompletedAt >= st.StartedAt
    tasks = store.tasks_of_service(svc.ID)
    assert len(tasks) == 6
    assert sorted(t.Slot for t in runnable_tasks(store, svc.ID)) == [1, 2, 3]
    assert all(t.DesiredState is TaskState.SHUTDOWN for t in tasks if t.Spec.ContainerSpec.Image != "busybox:v2")


async def test_start_first_keeps_capacity():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(
        store, "web", replicas=2, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=1, Order="start-first")
    )
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await start(store, svc, 2)
        agent.paused = True
        mon = Monitor(store, svc.ID)
        async with running(mon):
            image(store, svc.ID, "busybox:v2")
            await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 3, what="one new task")
            await settle()
            assert len(store.tasks_of_service(svc.ID)) == 3
            assert all(t.DesiredState is TaskState.RUNNING for t in store.tasks_of_service(svc.ID))
            agent.paused = False
            agent.step()
            await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 2, what="all updated")
            await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 2)
            await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")
        assert mon.min_running >= 2, "start-first never drops below the replica count"


async def test_parallelism_zero_replaces_all_at_once():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=3, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=0))
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await start(store, svc, 3)
        agent.paused = True
        image(store, svc.ID, "busybox:v2")
        await wait_for(
            lambda: sum(t.DesiredState is TaskState.SHUTDOWN for t in store.tasks_of_service(svc.ID)) == 3,
            what="all old tasks stopped together",
        )
        agent.paused = False
        agent.step()
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 3)


async def test_parallelism_two_with_delay_between_batches():
    store = make_store()
    make_node(store, "n1")
    delay = SECOND // 4
    svc = make_service(store, "web", replicas=4, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=2, Delay=delay))
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await start(store, svc, 4)
        mon = Monitor(store, svc.ID)
        async with running(mon):
            image(store, svc.ID, "busybox:v2")
            await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 4, within=5)
        times = sorted(mon.created.values())
    assert len(times) == 4
    assert times[1] - times[0] < 0.1, "first batch of two together"
    assert times[2] - times[1] >= 0.24, "the delay separates batches"
    assert mon.min_running >= 2


async def test_force_update_replaces_and_scale_alone_does_not():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=2, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=0))
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await start(store, svc, 2)
        update_service(store, svc.ID, replicas=3)
        await start(store, svc, 3)
        await settle()
        assert store.get("service", svc.ID).UpdateStatus is None, "scaling is not an update"
        old = {t.ID for t in store.tasks_of_service(svc.ID)}
        tmpl = store.get("service", svc.ID).Spec.TaskTemplate
        update_service(store, svc.ID, TaskTemplate=msgspec.structs.replace(tmpl, ForceUpdate=1))
        await wait_for(
            lambda: n_running(store, svc.ID) == 3 and not old & {t.ID for t in runnable_tasks(store, svc.ID)},
            what="all tasks replaced",
        )
        await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")


async def test_global_rolling_update():
    store = make_store()
    nodes = [make_node(store, f"n{i}") for i in range(3)]
    svc = make_service(store, "agent", global_=True, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=1))
    async with running(GlobalOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await start(store, svc, 3)
        mon = Monitor(store, svc.ID)
        async with running(mon):
            image(store, svc.ID, "busybox:v2")
            await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 3, what="all updated")
        assert mon.min_running == 2
        assert {t.NodeID for t in runnable_tasks(store, svc.ID)} == {n.ID for n in nodes}
        await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")


async def test_update_never_runs_two_tasks_for_a_slot_when_new_task_fails():
    store = make_store()
    make_node(store, "n1")
    tmpl = TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest"))
    uc = UpdateConfig(Monitor=MON, Order="start-first")
    svc = make_service(store, "web", replicas=1, template=tmpl, UpdateConfig=uc)
    agent = FakeAgent(store)
    orch = ReplicatedOrchestrator(store, default_restart_delay_ns=SECOND // 10)
    async with running(orch, Scheduler(store), agent):
        await start(store, svc, 1)
        agent.paused = True
        image(store, svc.ID, "busybox:v2")
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 2)
        new = next(t for t in store.tasks_of_service(svc.ID) if t.Spec.ContainerSpec.Image == "busybox:v2")
        await wait_for(lambda: store.get("task", new.ID).Status.State is TaskState.ASSIGNED)
        set_task_state(store, new.ID, TaskState.FAILED, exit_code=1)
        await asyncio.sleep(0.2)
        agent.paused = False
        agent.step()
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 1)
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 1)
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: len(store.tasks_of_service(svc.ID)) > 3, within=0.2)
    # old + failed new + its restart: exactly three tasks, never a duplicate for slot 1
    assert len(store.tasks_of_service(svc.ID)) == 3


async def test_update_survives_orchestrator_restart_without_duplicates():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=3, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=1))
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await start(store, svc, 3)
        agent.paused = True
        image(store, svc.ID, "busybox:v2")
        await wait_for(lambda: any(t.DesiredState is TaskState.SHUTDOWN for t in store.tasks_of_service(svc.ID)))
        started = store.get("service", svc.ID).UpdateStatus.StartedAt
    # The manager restarts mid-update: the old task is still stopping.
    agent.paused = False
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 3, what="update finished")
        await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")
        await settle()
    assert len(store.tasks_of_service(svc.ID)) == 6
    assert sorted(t.Slot for t in runnable_tasks(store, svc.ID)) == [1, 2, 3]
    assert store.get("service", svc.ID).UpdateStatus.StartedAt == started


async def test_manual_rollback_keeps_rollback_wording():
    store = make_store()
    make_node(store, "n1")
    fast = UpdateConfig(Monitor=MON, Parallelism=0)
    svc = make_service(store, "web", replicas=2, UpdateConfig=fast, RollbackConfig=fast)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await start(store, svc, 2)
        image(store, svc.ID, "busybox:v2")
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 2)
        await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")
        # What the control API writes for `docker service rollback`.
        cur = store.get("service", svc.ID)
        status = msgspec.structs.replace(
            cur.UpdateStatus, State="rollback_started", Message="manually requested rollback", CompletedAt=""
        )
        with store.tx() as tx:
            tx.update("service", msgspec.structs.replace(cur, Spec=cur.PreviousSpec or svc.Spec, UpdateStatus=status))
        await wait_for(lambda: n_running(store, svc.ID, "busybox:latest") == 2)
        await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "rollback_completed")
    assert store.get("service", svc.ID).UpdateStatus.Message == "rollback completed"
