"""Dispatcher: registration, heartbeats, assignments (full then deltas), batched status updates."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from shoal.dispatcher.dispatcher import Dispatcher, SessionInvalid
from shoal.dispatcher.inprocess import InProcessClient
from shoal.dispatcher.protocol import Assignments, LogMessage, LogOptions, TaskStatusUpdate
from shoal.errors import NotFound, Unavailable
from shoal.ids import new_id
from shoal.models import (
    ContainerSpec,
    Node,
    NodeDescription,
    NodeSpec,
    NodeState,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    Version,
)
from shoal.store import MemoryStore, NullBackend


def make_node(store: MemoryStore) -> str:
    nid = new_id()
    with store.tx() as tx:
        tx.create("node", Node(ID=nid, Version=Version(), CreatedAt="", UpdatedAt="", Spec=NodeSpec()))
    return nid


def make_task(node_id: str, state: TaskState = TaskState.ASSIGNED, service: str = "svc") -> Task:
    return Task(
        ID=new_id(),
        Version=Version(),
        CreatedAt="",
        UpdatedAt="",
        Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")),
        ServiceID=service,
        Status=TaskStatus(State=state, Message="scheduler assigned task to node"),
        DesiredState=TaskState.RUNNING,
        NodeID=node_id,
        Slot=1,
    )


def add_tasks(store: MemoryStore, *tasks: Task) -> None:
    with store.tx() as tx:
        for t in tasks:
            tx.create("task", t)


def update_task(store: MemoryStore, task_id: str, **changes: object) -> None:
    with store.tx() as tx:
        tx.update("task", msgspec.structs.replace(store.get("task", task_id), **changes))


@pytest.fixture
async def env() -> AsyncIterator[tuple[MemoryStore, Dispatcher]]:
    store = MemoryStore(NullBackend())
    d = Dispatcher(store, heartbeat_period_s=2.0)  # long: these tests send no heartbeats
    runner = asyncio.create_task(d.run())
    yield store, d
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner


class Reader:
    """Reads an assignments stream in the background so a test can also assert that nothing came."""

    def __init__(self, stream: AsyncIterator[Assignments]) -> None:
        self.queue: asyncio.Queue[Assignments | BaseException] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump(stream))

    async def _pump(self, stream: AsyncIterator[Assignments]) -> None:
        try:
            async for msg in stream:
                self.queue.put_nowait(msg)
        except Exception as exc:  # handed to the test
            self.queue.put_nowait(exc)

    async def next(self, wait: float = 1.0) -> Assignments:
        item = await asyncio.wait_for(self.queue.get(), wait)
        if isinstance(item, BaseException):
            raise item
        return item

    async def nothing(self, wait: float = 0.1) -> None:
        await asyncio.sleep(wait)
        assert self.queue.empty(), self.queue.get_nowait()


async def test_register_unknown_node_is_not_found(env: tuple[MemoryStore, Dispatcher]) -> None:
    _, d = env
    with pytest.raises(NotFound):
        await d.register("nope", NodeDescription(), "10.0.0.1")
    with pytest.raises(NotFound):
        await d.register(None, NodeDescription(), "10.0.0.1")


async def test_register_marks_node_ready_with_description(env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = env
    nid = make_node(store)
    info = await d.register(nid, NodeDescription(Hostname="h1"), "10.0.0.7")
    assert info.node_id == nid and info.session_id and info.heartbeat_period_s == 2.0
    node = store.get("node", nid)
    assert node.Status.State == NodeState.READY
    assert node.Status.Addr == "10.0.0.7"
    assert node.Description.Hostname == "h1"


async def test_reregister_ends_previous_session(env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = env
    nid = make_node(store)
    first = await d.register(nid, NodeDescription(), "a")
    stream = Reader(d.assignments(first.session_id))
    await stream.next()
    await d.register(nid, NodeDescription(), "a")
    with pytest.raises(SessionInvalid):
        await stream.next()
    with pytest.raises(SessionInvalid):
        await d.heartbeat(first.session_id)


async def test_full_then_delta_assignments(env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = env
    nid, other = make_node(store), make_node(store)
    mine = make_task(nid)
    pending = make_task(nid, state=TaskState.PENDING)
    theirs = make_task(other)
    add_tasks(store, mine, pending, theirs)
    info = await d.register(nid, NodeDescription(), "a")
    stream = Reader(d.assignments(info.session_id))

    full = await stream.next()
    assert full.full is True
    assert [t.ID for t in full.tasks] == [mine.ID]  # not the pending one, not another node's

    # 200 tasks assigned in one commit go out as one message.
    batch = [make_task(nid) for _ in range(200)]
    add_tasks(store, *batch)
    delta = await stream.next()
    assert delta.full is False
    assert {t.ID for t in delta.tasks} == {t.ID for t in batch}

    # Assigning the pending task (scheduler) is a first assignment: it goes out.
    update_task(store, pending.ID, Status=TaskStatus(State=TaskState.ASSIGNED))
    delta = await stream.next()
    assert [t.ID for t in delta.tasks] == [pending.ID]

    # Another node's task never shows up here.
    update_task(store, theirs.ID, DesiredState=TaskState.SHUTDOWN)
    await stream.nothing()

    # A desired-state change goes out; deletion goes out as `removed`.
    update_task(store, mine.ID, DesiredState=TaskState.SHUTDOWN)
    delta = await stream.next()
    assert [(t.ID, t.DesiredState) for t in delta.tasks] == [(mine.ID, TaskState.SHUTDOWN)]
    with store.tx() as tx:
        tx.delete("task", mine.ID)
    delta = await stream.next()
    assert delta.tasks == [] and delta.removed == [mine.ID]


async def test_own_status_writes_are_not_echoed(env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = env
    nid = make_node(store)
    t = make_task(nid)
    add_tasks(store, t)
    info = await d.register(nid, NodeDescription(), "a")
    stream = Reader(d.assignments(info.session_id))
    await stream.next()
    await d.update_task_status(info.session_id, [TaskStatusUpdate(t.ID, TaskStatus(State=TaskState.RUNNING))])
    assert store.get("task", t.ID).Status.State == TaskState.RUNNING
    await stream.nothing()


async def test_status_updates_batched_in_one_transaction(env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = env
    nid = make_node(store)
    tasks = [make_task(nid) for _ in range(50)]
    add_tasks(store, *tasks)
    info = await d.register(nid, NodeDescription(), "a")
    rev = store.revision
    # Concurrent calls (as from many nodes, or a burst from one) coalesce too.
    await asyncio.gather(
        *(
            d.update_task_status(info.session_id, [TaskStatusUpdate(t.ID, TaskStatus(State=TaskState.ACCEPTED))])
            for t in tasks
        )
    )
    assert store.revision == rev + 1
    assert all(store.get("task", t.ID).Status.State == TaskState.ACCEPTED for t in tasks)
    assert all(store.get("task", t.ID).Status.Timestamp for t in tasks)


async def test_status_never_moves_backwards(env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = env
    nid = make_node(store)
    t = make_task(nid)
    add_tasks(store, t)
    info = await d.register(nid, NodeDescription(), "a")
    sid = info.session_id
    await d.update_task_status(sid, [TaskStatusUpdate(t.ID, TaskStatus(State=TaskState.RUNNING, Message="started"))])
    await d.update_task_status(sid, [TaskStatusUpdate(t.ID, TaskStatus(State=TaskState.PREPARING))])
    assert store.get("task", t.ID).Status.State == TaskState.RUNNING
    # Within one batch, the later state wins even if it was sent first.
    await asyncio.gather(
        d.update_task_status(sid, [TaskStatusUpdate(t.ID, TaskStatus(State=TaskState.FAILED, Err="boom"))]),
        d.update_task_status(sid, [TaskStatusUpdate(t.ID, TaskStatus(State=TaskState.RUNNING))]),
    )
    status = store.get("task", t.ID).Status
    assert status.State == TaskState.FAILED and status.Err == "boom"


async def test_wrong_node_and_deleted_updates_ignored(env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = env
    nid, other = make_node(store), make_node(store)
    theirs = make_task(other)
    add_tasks(store, theirs)
    info = await d.register(nid, NodeDescription(), "a")
    rev = store.revision
    await d.update_task_status(
        info.session_id,
        [
            TaskStatusUpdate(theirs.ID, TaskStatus(State=TaskState.RUNNING)),
            TaskStatusUpdate("gone", TaskStatus(State=TaskState.RUNNING)),
        ],
    )
    assert store.get("task", theirs.ID).Status.State == TaskState.ASSIGNED
    assert store.revision == rev  # nothing written


@pytest.fixture
async def fast_env() -> AsyncIterator[tuple[MemoryStore, Dispatcher]]:
    """A dispatcher with a 50 ms heartbeat, for the tests about expiry."""
    store = MemoryStore(NullBackend())
    d = Dispatcher(store, heartbeat_period_s=0.05)
    runner = asyncio.create_task(d.run())
    yield store, d
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner


async def test_heartbeat_keeps_session_and_expiry_marks_node_down(fast_env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = fast_env
    nid = make_node(store)
    info = await d.register(nid, NodeDescription(), "a")
    stream = Reader(d.assignments(info.session_id))
    await stream.next()
    for _ in range(8):  # 0.4 s, well past the 0.15 s grace: heartbeats keep it alive
        assert await d.heartbeat(info.session_id) == 0.05
        await asyncio.sleep(0.05)
    assert store.get("node", nid).Status.State == NodeState.READY
    await asyncio.sleep(0.3)  # silence
    node = store.get("node", nid)
    assert node.Status.State == NodeState.DOWN
    assert node.Status.Message == "heartbeat failure"
    with pytest.raises(SessionInvalid):
        await stream.next()
    with pytest.raises(SessionInvalid):
        await d.heartbeat(info.session_id)
    with pytest.raises(SessionInvalid):
        await d.update_task_status(info.session_id, [])


async def test_restarted_dispatcher_marks_silent_ready_nodes_down() -> None:
    store = MemoryStore(NullBackend())
    nid, back = make_node(store), make_node(store)
    with store.tx() as tx:
        for n in (nid, back):
            node = store.get("node", n)
            status = msgspec.structs.replace(node.Status, State=NodeState.READY)
            tx.update("node", msgspec.structs.replace(node, Status=status))
    d = Dispatcher(store, heartbeat_period_s=0.05)
    runner = asyncio.create_task(d.run())
    try:
        await asyncio.sleep(0.01)
        info = await d.register(back, NodeDescription(), "a")
        for _ in range(6):
            await d.heartbeat(info.session_id)
            await asyncio.sleep(0.05)
        assert store.get("node", nid).Status.State == NodeState.DOWN
        assert store.get("node", back).Status.State == NodeState.READY
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_inprocess_client_round_trip(env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = env
    nid = make_node(store)
    t = make_task(nid)
    add_tasks(store, t)
    client = InProcessClient(d)
    info = await client.register(nid, NodeDescription(), "a")
    assert await client.heartbeat(info.session_id) == 2.0
    full = await Reader(client.assignments(info.session_id)).next()
    assert [x.ID for x in full.tasks] == [t.ID]
    await client.update_task_status(info.session_id, [TaskStatusUpdate(t.ID, TaskStatus(State=TaskState.ACCEPTED))])
    assert store.get("task", t.ID).Status.State == TaskState.ACCEPTED


class _FakeSource:
    def __init__(self, node_id: str, lines: int) -> None:
        self.node_id = node_id
        self.lines = lines

    async def task_logs(self, tasks: list[Task], options: LogOptions) -> AsyncIterator[LogMessage]:
        for t in tasks:
            for i in range(self.lines):
                yield LogMessage(t.ID, t.ServiceID, self.node_id, 1, "2024-01-01T00:00:00Z", f"{i}\n".encode())


async def test_logs_merge_sources_of_the_tasks_nodes(env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = env
    a, b, c = make_node(store), make_node(store), make_node(store)
    ta, tb, tc = make_task(a), make_task(b), make_task(c)
    d.register_log_source(a, _FakeSource(a, 3))
    d.register_log_source(b, _FakeSource(b, 2))  # c has no source: skipped
    got = [m async for m in d.logs([ta, tb, tc], LogOptions())]
    assert sorted((m.node_id, m.data) for m in got) == sorted(
        [(a, b"0\n"), (a, b"1\n"), (a, b"2\n"), (b, b"0\n"), (b, b"1\n")]
    )


async def test_stopped_dispatcher_ends_sessions_and_refuses_new_ones() -> None:
    store = MemoryStore(NullBackend())
    nid = make_node(store)
    d = Dispatcher(store, heartbeat_period_s=0.05)
    runner = asyncio.create_task(d.run())
    info = await d.register(nid, NodeDescription(), "a")
    stream = Reader(d.assignments(info.session_id))
    await stream.next()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    with pytest.raises(SessionInvalid):
        await stream.next()
    with pytest.raises(Unavailable):
        await d.register(nid, NodeDescription(), "a")


async def test_a_manager_stall_does_not_mark_nodes_down(fast_env: tuple[MemoryStore, Dispatcher]) -> None:
    store, d = fast_env
    nid = make_node(store)
    info = await d.register(nid, NodeDescription(), "a")
    await d.heartbeat(info.session_id)
    await asyncio.sleep(0.06)  # let the expiry loop go to sleep
    time.sleep(0.6)  # noqa: ASYNC251 - the point: the whole manager blocks, 4x the 0.15 s grace
    await asyncio.sleep(0.06)  # the loop wakes late and sees the lag
    await d.heartbeat(info.session_id)  # the heartbeat that waited during the stall
    assert store.get("node", nid).Status.State == NodeState.READY


async def test_a_mass_expiry_is_taken_for_the_manager_falling_behind() -> None:
    """Heartbeats that queued in the transport while the manager was busy look, from the expiry loop,
    like most nodes going silent together: that is put off (up to three grace periods), while one
    node going silent among live ones is declared down at once."""
    store = MemoryStore(NullBackend())
    d = Dispatcher(store, heartbeat_period_s=1.0)
    nodes = [make_node(store) for _ in range(40)]
    sessions = {nid: (await d.register(nid, NodeDescription(), "10.0.0.1")).session_id for nid in nodes}
    t0 = time.monotonic()
    # One silent node among 39 that heartbeat: down at the first check past its deadline.
    for nid in nodes[1:]:
        await d.heartbeat(sessions[nid])
    d._sessions[sessions[nodes[0]]].deadline = t0 - 0.1
    d._expire(t0)
    assert store.get("node", nodes[0]).Status.State == NodeState.DOWN
    assert d.marked_down == {nodes[0]: 1}
    # Then 20 of the remaining 39 (>= 20 %, >= 10) late at once: deferred, nobody down ...
    for nid in nodes[1:21]:
        d._sessions[sessions[nid]].deadline = t0 - 0.1
    for i in range(3):
        d._expire(t0 + i * 10)
        assert all(store.get("node", nid).Status.State != NodeState.DOWN for nid in nodes[1:])
        for nid in nodes[1:21]:  # still silent
            d._sessions[sessions[nid]].deadline = t0 - 0.1
    # ... but not for ever: the fourth time in a row they are declared down (the others heartbeat).
    for nid in nodes[21:]:
        d._sessions[sessions[nid]].deadline = t0 + 100
    d._expire(t0 + 40)
    down = {nid for nid in nodes if store.get("node", nid).Status.State == NodeState.DOWN}
    assert down == {nodes[0], *nodes[1:21]}
    await asyncio.sleep(0)


async def test_grace_grows_by_how_late_live_nodes_heartbeats_are_handled() -> None:
    """When the manager handles every node's heartbeats seconds late (queued in the transport while
    it was busy), a node is declared down only once it is later than its peers by the grace."""
    store = MemoryStore(NullBackend())
    d = Dispatcher(store, heartbeat_period_s=1.0)
    nodes = [make_node(store) for _ in range(30)]
    sessions = {nid: (await d.register(nid, NodeDescription(), "10.0.0.1")).session_id for nid in nodes}
    assert d.heartbeat_slack() == 0.0
    for nid in nodes:  # every heartbeat handled 4 s after its period
        d._sessions[sessions[nid]].last_seen -= 5.0
        await d.heartbeat(sessions[nid])
    assert 3.9 < d.heartbeat_slack() < 4.1
    now = time.monotonic()
    d._sessions[sessions[nodes[0]]].deadline = now - 2.0  # late, but less than its peers are
    d._sessions[sessions[nodes[1]]].deadline = now - 10.0  # really silent
    d._expire(now)
    assert store.get("node", nodes[0]).Status.State != NodeState.DOWN
    assert store.get("node", nodes[1]).Status.State == NodeState.DOWN
    # The slack is bounded: a manager that is always late still declares silent nodes down.
    for _ in range(3):
        for nid in nodes[2:]:
            d._sessions[sessions[nid]].last_seen -= 1000.0
            await d.heartbeat(sessions[nid])
    assert d.heartbeat_slack() == 3 * 1.0 * 3
