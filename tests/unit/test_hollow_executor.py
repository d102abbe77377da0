"""Hollow executor: the real Agent, over the in-process dispatcher, running simulated containers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from shoal.agent.agent import Agent
from shoal.agent.executor.base import ContainerNotFound
from shoal.agent.executor.hollow import HollowExecutor
from shoal.dispatcher.dispatcher import Dispatcher
from shoal.dispatcher.inprocess import InProcessClient
from shoal.ids import new_id
from shoal.models import SECOND, ContainerSpec, Task, TaskSpec, TaskState, TaskStatus, Version
from shoal.orchestrator import ReplicatedOrchestrator
from shoal.orchestrator.reaper import TaskReaper
from shoal.orchestrator.testutils import make_node, make_service, make_store, update_service, wait_for
from shoal.scheduler import Scheduler
from shoal.store import MemoryStore


class Cluster:
    def __init__(self, store: MemoryStore, agents: list[Agent], executors: list[HollowExecutor]) -> None:
        self.store, self.agents, self.executors = store, agents, executors

    def states(self, service_id: str) -> Counter[TaskState]:
        return Counter(t.Status.State for t in self.store.tasks_of_service(service_id))


@contextlib.asynccontextmanager
async def hollow_cluster(n: int, start_delay_s: float = 0.0, **executor_args: object) -> AsyncIterator[Cluster]:
    store = make_store()
    dispatcher = Dispatcher(store, heartbeat_period_s=5.0)
    components = [dispatcher, ReplicatedOrchestrator(store), Scheduler(store), TaskReaper(store)]
    agents, executors = [], []
    for i in range(n):
        node = make_node(store, f"placeholder-{i}")
        ex = HollowExecutor(hostname=f"hollow-{i}", start_delay_s=start_delay_s, **executor_args)  # type: ignore[arg-type]
        executors.append(ex)
        agents.append(Agent(InProcessClient(dispatcher), ex, node.ID, "127.0.0.1", report_interval_s=0.01))
    runners = [asyncio.create_task(c.run()) for c in (*components, *agents)]
    try:
        await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in agents)), 3)
        yield Cluster(store, agents, executors)
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        for a in agents:
            await a.close()


async def test_describe_reports_the_configured_node() -> None:
    ex = HollowExecutor(hostname="hollow-7", nano_cpus=2 * SECOND, memory_bytes=1 << 30, labels={"zone": "a"})
    d = await ex.describe()
    assert d.Hostname == "hollow-7"
    assert d.Resources.NanoCPUs == 2 * SECOND and d.Resources.MemoryBytes == 1 << 30
    assert d.Engine.Labels == {"zone": "a"} and d.Engine.EngineVersion == "hollow"
    assert d.Platform.OS == "linux"


async def test_registration_publishes_the_hollow_description() -> None:
    async with hollow_cluster(2, nano_cpus=3 * SECOND) as c:
        names = sorted(n.Description.Hostname for n in c.store.list("node"))
        assert names == ["hollow-0", "hollow-1"]
        assert {n.Description.Resources.NanoCPUs for n in c.store.list("node")} == {3 * SECOND}


async def test_replicas_run_spread_then_scale_down_removes_containers() -> None:
    async with hollow_cluster(3) as c:
        svc = make_service(c.store, "web", replicas=6)
        await wait_for(lambda: c.states(svc.ID) == Counter({TaskState.RUNNING: 6}), what="6 running")
        assert [ex.running for ex in c.executors] == [2, 2, 2]
        task = c.store.tasks_of_service(svc.ID)[0]
        cs = task.Status.ContainerStatus
        assert cs is not None and cs.ContainerID.startswith("hollow")

        update_service(c.store, svc.ID, replicas=2)
        await wait_for(lambda: sum(len(ex.containers) for ex in c.executors) == 2, what="containers removed")
        await wait_for(lambda: len(c.store.tasks_of_service(svc.ID)) == 2, what="tasks reaped")
        assert sum(ex.running for ex in c.executors) == 2


async def test_start_delay_keeps_the_task_starting() -> None:
    async with hollow_cluster(1, start_delay_s=0.3) as c:
        svc = make_service(c.store, "slow", replicas=1)
        await wait_for(lambda: c.states(svc.ID) == Counter({TaskState.STARTING: 1}), what="starting")
        assert c.executors[0].running == 0
        await wait_for(lambda: c.states(svc.ID) == Counter({TaskState.RUNNING: 1}), what="running")


async def test_crash_fails_the_task_and_missing_image_rejects() -> None:
    async with hollow_cluster(1, fail_images=frozenset({"missing:1"})) as c:
        ex = c.executors[0]
        svc = make_service(c.store, "web", replicas=1)
        await wait_for(lambda: ex.running == 1)
        (cid,) = ex.containers
        ex.crash(cid, exit_code=3)
        await wait_for(lambda: c.states(svc.ID)[TaskState.FAILED] == 1, what="failed")
        failed = next(t for t in c.store.tasks_of_service(svc.ID) if t.Status.State is TaskState.FAILED)
        assert failed.Status.Err == "task: non-zero exit (3)"

        bad = make_service(c.store, "bad", replicas=1,
                           template=TaskSpec(ContainerSpec=ContainerSpec(Image="missing:1")))
        await wait_for(lambda: c.states(bad.ID)[TaskState.REJECTED] >= 1, what="rejected")
        rejected = next(t for t in c.store.tasks_of_service(bad.ID) if t.Status.State is TaskState.REJECTED)
        assert "No such image" in rejected.Status.Err


async def test_stop_resolves_wait_exit_and_remove_is_idempotent() -> None:
    ex = HollowExecutor(start_delay_s=0)
    task = Task(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="",
                Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")), ServiceID="s",
                Status=TaskStatus(State=TaskState.ASSIGNED), DesiredState=TaskState.RUNNING, NodeID="n1", Slot=1)
    cid = await ex.create(task)
    info = await ex.start(task, cid)
    assert info.running
    waiter = asyncio.ensure_future(ex.wait_exit(cid))
    await asyncio.sleep(0)
    assert not waiter.done()
    await ex.stop(cid, 10)
    assert (await waiter).exit_code == 0
    assert [c.id for c in await ex.list_task_containers("n1")] == [cid]
    await ex.remove(cid)
    await ex.remove(cid)
    assert await ex.list_task_containers("n1") == []
    with pytest.raises(ContainerNotFound, match="No such container"):
        await ex.inspect(cid)


async def test_a_new_session_reports_every_task_again() -> None:
    """Status reports are acknowledged before they are durable: a manager that comes back with an
    older state (a restart, a new leader) learns the current one from the agents' next session."""
    import msgspec

    async with hollow_cluster(1) as c:
        svc = make_service(c.store, "web", replicas=3)
        await wait_for(lambda: c.states(svc.ID) == Counter({TaskState.RUNNING: 3}), what="3 running")
        with c.store.tx() as tx:  # what a manager restored from an older durable state would hold
            for t in c.store.tasks_of_service(svc.ID):
                tx.update("task", msgspec.structs.replace(t, Status=TaskStatus(State=TaskState.ASSIGNED)))
        dispatcher = c.agents[0].client.dispatcher  # type: ignore[attr-defined]
        for sess in list(dispatcher._sessions.values()):
            dispatcher._close(sess)  # the session ends: the agent registers again
        await wait_for(lambda: c.states(svc.ID) == Counter({TaskState.RUNNING: 3}), what="3 running again")
