"""Engine health (issue 10, item 9): the filter, the dispatcher's bookkeeping, the wire messages,
and the scheduler's back-off from nodes where a service keeps failing (swarmkit's)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import pytest

from shoal.dispatcher.dispatcher import Dispatcher
from shoal.dispatcher.protocol import EngineHealth
from shoal.models import (
    ContainerSpec,
    NodeAvailability,
    NodeDescription,
    NodeState,
    RestartPolicy,
    Task,
    TaskSpec,
    TaskState,
    Version,
    engine_unavailable,
)
from shoal.orchestrator import GlobalOrchestrator, ReplicatedOrchestrator
from shoal.orchestrator.task import new_task
from shoal.orchestrator.testutils import (
    make_node,
    make_service,
    make_store,
    running,
    set_task_state,
    update_node,
    update_service,
    wait_for,
)
from shoal.scheduler import Scheduler
from shoal.scheduler.filters import EngineFilter, Pipeline, default_filters
from shoal.scheduler.nodeinfo import MAX_FAILURES, MONITOR_FAILURES_S, NodeInfo, failure_key
from shoal.store import MemoryStore
from shoal.transport import messages as m

DOWN = EngineHealth(up=False, reason="cannot connect to unix:///run/e.sock: Connection refused")
UP = EngineHealth(up=True)


def engine_down(store: MemoryStore, node_id: str, reason: str = "x") -> None:
    node = store.get("node", node_id)
    status = msgspec.structs.replace(node.Status, State=NodeState.DOWN, Message=f"engine unavailable: {reason}")
    with store.tx() as tx:
        tx.update("node", msgspec.structs.replace(node, Status=status))


# --------------------------------------------------------------------------- filter


def test_engine_filter_refuses_engine_down_nodes_and_says_so() -> None:
    store = make_store()
    ok, gone, lost = (make_node(store, f"h{i}") for i in range(3))
    engine_down(store, gone.ID, "socket missing")
    update_node(store, lost.ID, state=NodeState.DOWN)  # heartbeat failure: another reason
    assert [f.name for f in default_filters()][:2] == ["engine", "ready"]
    f = EngineFilter()
    assert f.set_task(_task(store))
    infos = {n.ID: NodeInfo(store.get("node", n.ID)) for n in (ok, gone, lost)}
    assert f.check(infos[ok.ID]) and not f.check(infos[gone.ID]) and f.check(infos[lost.ID])

    p = Pipeline()
    p.set_task(_task(store))
    assert [p.process(i) for i in infos.values()] == [True, False, False]
    assert p.explain() == "engine unavailable on 1 node; 1 node not available for new tasks"


def test_engine_unavailable_is_about_the_message_of_a_down_node_only() -> None:
    store = make_store()
    n = make_node(store, "h")
    assert not engine_unavailable(n)
    engine_down(store, n.ID)
    assert engine_unavailable(store.get("node", n.ID))
    # "ready" with a stale message is not down.
    ready = msgspec.structs.replace(store.get("node", n.ID).Status, State=NodeState.READY)
    assert not engine_unavailable(msgspec.structs.replace(n, Status=ready))


async def test_pending_tasks_say_engine_unavailable_and_go_when_it_is_back() -> None:
    store = make_store()
    only = make_node(store, "h1")
    engine_down(store, only.ID)
    svc = make_service(store, "web", replicas=2)
    async with running(ReplicatedOrchestrator(store), Scheduler(store)):
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 2 and all(
            t.Status.Err == "no suitable node (engine unavailable on 1 node)" for t in store.tasks_of_service(svc.ID)))
        update_node(store, only.ID, state=NodeState.READY)
        await wait_for(lambda: all(t.Status.State is TaskState.ASSIGNED for t in store.tasks_of_service(svc.ID)))


# --------------------------------------------------------------------------- dispatcher


@pytest.fixture
async def dispatcher() -> AsyncIterator[tuple[MemoryStore, Dispatcher]]:
    store = make_store()
    d = Dispatcher(store, heartbeat_period_s=2.0)
    runner = asyncio.create_task(d.run())
    yield store, d
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner


async def test_register_with_the_engine_down_keeps_the_node_down_and_its_description(dispatcher) -> None:
    store, d = dispatcher
    node = make_node(store, "real-name", nano_cpus=8_000_000_000)
    await d.register(node.ID, NodeDescription(Hostname="placeholder"), "10.0.0.9", DOWN)
    n = store.get("node", node.ID)
    assert n.Status.State is NodeState.DOWN
    assert n.Status.Message == f"engine unavailable: {DOWN.reason}"
    assert n.Status.Addr == "10.0.0.9"
    assert n.Description.Hostname == "real-name" and n.Description.Resources.NanoCPUs == 8_000_000_000
    # An up engine (or an agent that does not say: older ones) registers ready, with its description.
    for engine in (UP, None):
        await d.register(node.ID, NodeDescription(Hostname="new"), "10.0.0.9", engine)
        n = store.get("node", node.ID)
        assert (n.Status.State, n.Status.Message, n.Description.Hostname) == (NodeState.READY, "", "new")


async def test_heartbeats_flip_the_node_and_steady_ones_write_nothing(dispatcher) -> None:
    store, d = dispatcher
    node = make_node(store, "h")
    sess = await d.register(node.ID, NodeDescription(Hostname="h"), "10.0.0.1", UP)
    rev = store.revision
    for engine in (UP, None, UP):
        await d.heartbeat(sess.session_id, engine)
    assert store.revision == rev  # nothing changed: no transaction

    await d.heartbeat(sess.session_id, DOWN)
    n = store.get("node", node.ID)
    assert (n.Status.State, n.Status.Message) == (NodeState.DOWN, f"engine unavailable: {DOWN.reason}")
    rev = store.revision
    await d.heartbeat(sess.session_id, DOWN)
    await d.heartbeat(sess.session_id, None)  # says nothing: stays down
    assert store.revision == rev and store.get("node", node.ID).Status.State is NodeState.DOWN

    other = EngineHealth(up=False, reason="http://e did not answer within 5 s")
    await d.heartbeat(sess.session_id, other)
    assert store.get("node", node.ID).Status.Message == f"engine unavailable: {other.reason}"

    await d.heartbeat(sess.session_id, UP)
    n = store.get("node", node.ID)
    assert (n.Status.State, n.Status.Message, n.Status.Addr) == (NodeState.READY, "", "10.0.0.1")


async def test_an_up_engine_does_not_revive_a_node_down_for_another_reason(dispatcher) -> None:
    store, d = dispatcher
    node = make_node(store, "h")
    sess = await d.register(node.ID, NodeDescription(Hostname="h"), "10.0.0.1", UP)
    update_node(store, node.ID, state=NodeState.DOWN)  # e.g. marked down by the expiry, message not ours
    await d.heartbeat(sess.session_id, UP)
    assert store.get("node", node.ID).Status.State is NodeState.DOWN


async def test_tasks_on_a_node_whose_engine_goes_down_are_orphaned_and_refilled_elsewhere(dispatcher) -> None:
    store, d = dispatcher
    a, b = make_node(store, "a"), make_node(store, "b")
    sess = await d.register(a.ID, NodeDescription(Hostname="a"), "10.0.0.1", UP)
    await d.register(b.ID, NodeDescription(Hostname="b"), "10.0.0.2", UP)
    svc = make_service(store, "web", replicas=4)
    async with running(ReplicatedOrchestrator(store), Scheduler(store)):
        await wait_for(lambda: sum(t.Status.State is TaskState.ASSIGNED for t in store.tasks_of_service(svc.ID)) == 4)
        set_task_state(store, [t.ID for t in store.tasks_of_service(svc.ID)], TaskState.RUNNING)
        on_a = {t.ID for t in store.tasks_of_service(svc.ID) if t.NodeID == a.ID}
        assert len(on_a) == 2
        await d.heartbeat(sess.session_id, DOWN)

        def moved() -> bool:
            tasks = store.tasks_of_service(svc.ID)
            live = [t for t in tasks if t.DesiredState is TaskState.RUNNING]
            return len(live) == 4 and all(t.NodeID == b.ID for t in live)

        await wait_for(moved)
        lost = [store.get("task", tid) for tid in on_a]
        assert all(t.Status.State is TaskState.ORPHANED and t.DesiredState is TaskState.SHUTDOWN for t in lost)
        # Refilled at once: no restart delay, no restart attempt on the replacements' record.
        assert all(t.Status.Message == "task orphaned: node down" for t in lost)

        await d.heartbeat(sess.session_id, UP)
        await wait_for(lambda: store.get("node", a.ID).Status.State is NodeState.READY)
        update_service(store, svc.ID, replicas=6)
        await wait_for(lambda: Counter(t.NodeID for t in store.tasks_of_service(svc.ID)
                                       if t.DesiredState is TaskState.RUNNING) == {a.ID: 2, b.ID: 4})


# --------------------------------------------------------------------------- wire compatibility


def test_heartbeat_and_register_messages_stay_compatible_both_ways() -> None:
    enc = msgspec.msgpack.encode
    # An older agent's heartbeat (a bare SessionRequest) decodes as a heartbeat saying nothing.
    old = msgspec.msgpack.decode(enc(m.SessionRequest("s1")), type=m.HeartbeatRequest)
    assert old == m.HeartbeatRequest("s1", None)
    # An older manager reads a new heartbeat as the session it names.
    assert msgspec.msgpack.decode(enc(m.HeartbeatRequest("s1", DOWN)), type=m.SessionRequest) == m.SessionRequest("s1")
    new = msgspec.msgpack.decode(enc(m.HeartbeatRequest("s1", DOWN)), type=m.HeartbeatRequest)
    assert new.engine == DOWN

    class OldRegister(msgspec.Struct):  # RegisterRequest as it was before engine health
        node_id: str
        description: NodeDescription
        addr: str

    req = m.RegisterRequest("n1", NodeDescription(Hostname="h"), "10.0.0.1", DOWN)
    assert msgspec.msgpack.decode(enc(req), type=OldRegister).node_id == "n1"
    older = msgspec.msgpack.decode(enc(OldRegister("n1", NodeDescription(), "a")), type=m.RegisterRequest)
    assert older.engine is None


# --------------------------------------------------------------------------- back-off


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _task(store: MemoryStore) -> Task:
    svc = make_service(store, "probe", replicas=0)
    return new_task(svc, 1)


def test_nodeinfo_counts_failures_per_service_version_within_the_window() -> None:
    store = make_store()
    info = NodeInfo(make_node(store, "h"))
    t = _task(store)
    t1 = msgspec.structs.replace(t, SpecVersion=Version(Index=1))
    t2 = msgspec.structs.replace(t, SpecVersion=Version(Index=2))
    key1 = (t.ServiceID, 1)
    for i in range(4):
        assert info.task_failed(t1, 100.0 + i) == i + 1
    assert info.recent_failures(key1, 110.0) == 4
    assert info.recent_failures((t.ServiceID, 2), 110.0) == 0  # another version: a clean slate
    info.task_failed(t2, 110.0)
    # The window slides: the first failures age out one by one.
    assert info.recent_failures(key1, 100.0 + MONITOR_FAILURES_S + 1.5) == 2
    assert info.recent_failures(key1, 104.0 + MONITOR_FAILURES_S) == 0
    # Old entries are dropped when counting a new failure, and whole services after a window.
    assert info.task_failed(t1, 500.0) == 1
    info.task_failed(t1, 500.0 + MONITOR_FAILURES_S)
    assert (t.ServiceID, 2) not in info.failures
    # A clone (the dry-run plan) has its own copy.
    c = info.clone()
    c.task_failed(t1, 900.0)
    assert info.recent_failures(key1, 900.0) != c.recent_failures(key1, 900.0)


def _crashy_template() -> TaskSpec:
    return TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest"),
                    RestartPolicy=RestartPolicy(Condition="any", Delay=0))  # type: ignore[arg-type]


class CrashyAgent:
    """Plays every node's agent: tasks of services named ``crashy*`` fail at once on ``bad`` (as
    ``state``) and run elsewhere; other services run everywhere."""

    def __init__(self, store: MemoryStore, bad: str, state: TaskState = TaskState.FAILED) -> None:
        self.store, self.bad, self.state = store, bad, state
        self.failed: Counter[str] = Counter()

    async def run(self) -> None:
        w = self.store.watch("task")
        try:
            while True:
                fail, run, stop = [], [], []
                for t in self.store.list("task"):
                    if t.Status.State is not TaskState.ASSIGNED and t.Status.State is not TaskState.RUNNING:
                        continue
                    if t.DesiredState.order > TaskState.RUNNING.order:
                        stop.append(t.ID)
                    elif t.Status.State is TaskState.ASSIGNED:
                        crashy = (t.ServiceAnnotations or {}).get("Name", "").startswith("crashy")
                        (fail if t.NodeID == self.bad and crashy else run).append(t.ID)
                if fail:
                    self.failed.update(self.store.get("task", tid).NodeID for tid in fail)
                    set_task_state(self.store, fail, self.state, exit_code=1, err="task: non-zero exit (1)")
                if run:
                    set_task_state(self.store, run, TaskState.RUNNING)
                if stop:
                    set_task_state(self.store, stop, TaskState.SHUTDOWN)
                await w.get()
                w.drain()
        finally:
            w.close()


def live_by_node(store: MemoryStore, service_id: str) -> Counter[str]:
    return Counter(t.NodeID for t in store.tasks_of_service(service_id)
                   if t.Status.State is TaskState.RUNNING and t.DesiredState is TaskState.RUNNING)


@pytest.mark.parametrize("how", [TaskState.FAILED, TaskState.REJECTED])
async def test_a_node_where_the_service_failed_five_times_goes_behind_the_others(how: TaskState) -> None:
    store = make_store()
    bad, b, c = (make_node(store, f"h{i}") for i in range(3))
    clock = Clock()
    agent = CrashyAgent(store, bad.ID, how)
    svc = make_service(store, "crashy", replicas=3, template=_crashy_template())
    async with running(ReplicatedOrchestrator(store), Scheduler(store, clock=clock), agent):
        # Spread sends the slot back to the empty node every time, until the back-off kicks in.
        await wait_for(lambda: sum(live_by_node(store, svc.ID).values()) == 3, within=5)
        assert agent.failed == {bad.ID: MAX_FAILURES}
        assert set(live_by_node(store, svc.ID)) == {b.ID, c.ID}

        # Only for this service: another one still spreads onto the node.
        other = make_service(store, "other", replicas=3)
        await wait_for(lambda: live_by_node(store, other.ID) == {bad.ID: 1, b.ID: 1, c.ID: 1})

        # Behind, not excluded: when the others cannot take it (drained), it goes there again.
        update_node(store, b.ID, availability=NodeAvailability.DRAIN)
        update_node(store, c.ID, availability=NodeAvailability.DRAIN)
        await wait_for(lambda: agent.failed[bad.ID] >= MAX_FAILURES + 3)
        update_node(store, b.ID, availability=NodeAvailability.ACTIVE)
        update_node(store, c.ID, availability=NodeAvailability.ACTIVE)
        await wait_for(lambda: sum(live_by_node(store, svc.ID).values()) == 3, within=5)
        assert bad.ID not in live_by_node(store, svc.ID)


async def test_the_back_off_ends_after_the_window() -> None:
    store = make_store()
    bad, b = make_node(store, "h0"), make_node(store, "h1")
    clock = Clock()
    agent = CrashyAgent(store, bad.ID)
    svc = make_service(store, "crashy", replicas=2, template=_crashy_template())
    async with running(ReplicatedOrchestrator(store), Scheduler(store, clock=clock), agent):
        await wait_for(lambda: sum(live_by_node(store, svc.ID).values()) == 2, within=5)
        assert agent.failed[bad.ID] == MAX_FAILURES and live_by_node(store, svc.ID) == {b.ID: 2}

        clock.now += MONITOR_FAILURES_S + 1  # five minutes on: the node is in good standing again
        agent.bad = ""
        update_service(store, svc.ID, replicas=3)
        await wait_for(lambda: live_by_node(store, svc.ID) == {bad.ID: 1, b.ID: 2})


async def test_fewer_failures_than_the_limit_change_nothing() -> None:
    store = make_store()
    bad, b = make_node(store, "h0"), make_node(store, "h1")
    clock = Clock()
    agent = CrashyAgent(store, bad.ID)
    svc = make_service(store, "crashy", replicas=2, template=_crashy_template())
    sched = Scheduler(store, clock=clock)
    async with running(ReplicatedOrchestrator(store), sched, agent):
        await wait_for(lambda: agent.failed[bad.ID] >= 1)
        agent.bad = ""  # it works after one failure
        await wait_for(lambda: live_by_node(store, svc.ID) == {bad.ID: 1, b.ID: 1})
        assert agent.failed[bad.ID] == 1
        task = store.tasks_of_service(svc.ID)[0]
        assert sched.nodes[bad.ID].recent_failures(failure_key(task), clock.now) == 1


async def test_failures_of_global_tasks_are_not_counted() -> None:
    store = make_store()
    bad, _b = make_node(store, "h0"), make_node(store, "h1")
    clock = Clock()
    agent = CrashyAgent(store, bad.ID)
    svc = make_service(store, "crashy-agent", global_=True, template=_crashy_template())
    sched = Scheduler(store, clock=clock)
    async with running(GlobalOrchestrator(store), sched, agent):
        await wait_for(lambda: agent.failed[bad.ID] >= MAX_FAILURES + 1, within=5)
        assert not sched.nodes[bad.ID].failures  # the scheduler did not choose the node
        assert all(t.NodeID == bad.ID for t in store.tasks_of_service(svc.ID) if t.Status.State is TaskState.FAILED)
