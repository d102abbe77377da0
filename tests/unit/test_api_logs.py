"""Service and task logs: stdcopy framing, details prefix, options, follow and disconnect."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal import controlapi
from shoal.api import create_app
from shoal.api import events as api_events
from shoal.api import logs as api_logs
from shoal.api.testing import FakeManager, add_task
from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.models import ContainerSpec, InitRequest, Service, ServiceSpec, Task, TaskSpec, TaskState

TS = "2024-05-01T10:00:00.123456789Z"


class TrackingManager(FakeManager):
    """Counts log streams that were closed, to prove a disconnect ends them."""

    def __init__(self) -> None:
        super().__init__()
        self.closed_streams = 0

    async def logs(self, tasks: list[Task], options: LogOptions) -> AsyncIterator[LogMessage]:
        try:
            async for msg in super().logs(tasks, options):
                yield msg
        finally:
            self.closed_streams += 1


@pytest.fixture
async def manager() -> TrackingManager:
    m = TrackingManager()
    await m.init_swarm(InitRequest())
    return m


@pytest.fixture
async def client(manager: FakeManager) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(manager))) as c:
        yield c


def make_service(manager: FakeManager, name: str = "web", tty: bool = False) -> Service:
    spec = ServiceSpec(Name=name, TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox", TTY=tty)))
    return controlapi.create_service(manager.store, spec)


def msg(task: Task, data: bytes, stream: int = 1) -> LogMessage:
    return LogMessage(task_id=task.ID, service_id=task.ServiceID, node_id=task.NodeID, stream=stream,
                      timestamp=TS, data=data)


def parse_frames(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        stream, zero1, zero2, zero3, size = struct.unpack(">BBBBI", body[:8])
        assert (zero1, zero2, zero3) == (0, 0, 0)
        out.append((stream, body[8 : 8 + size]))
        body = body[8 + size :]
    return out


def details(task: Task) -> bytes:
    return (
        f"com.docker.swarm.node.id={task.NodeID},com.docker.swarm.service.id={task.ServiceID},"
        f"com.docker.swarm.task.id={task.ID}"
    ).encode()


async def test_service_logs_frames(client: TestClient, manager: TrackingManager) -> None:
    svc = make_service(manager)
    t1 = add_task(manager.store, svc, slot=1, node_id=manager.node_id, container_id="c1")
    t2 = add_task(manager.store, svc, slot=2, node_id=manager.node_id, state=TaskState.RUNNING)
    never_ran = add_task(manager.store, svc, slot=3, state=TaskState.PENDING)
    manager.log_messages = [msg(t1, b"hello\n"), msg(t2, b"oops\n", stream=2), msg(t1, b"a\nb\n")]
    resp = await client.get(
        f"/v1.41/services/{svc.ID}/logs",
        params={"stdout": "1", "stderr": "1", "details": "true", "timestamps": "true", "tail": "10"},
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/vnd.docker.raw-stream"
    frames = parse_frames(await resp.read())
    assert frames == [
        (1, TS.encode() + b" " + details(t1) + b" hello\n"),
        (2, TS.encode() + b" " + details(t2) + b" oops\n"),
        (1, TS.encode() + b" " + details(t1) + b" a\n"),
        (1, TS.encode() + b" " + details(t1) + b" b\n"),
    ]
    # One call for the tasks that ran (never the pending one), with the options asked for.
    ((task_ids, opts),) = manager.log_calls
    assert set(task_ids) == {t1.ID, t2.ID} and never_ran.ID not in task_ids
    assert (opts.tail, opts.follow, opts.timestamps) == (10, False, True)


async def test_stream_selection_and_plain_lines(client: TestClient, manager: TrackingManager) -> None:
    svc = make_service(manager)
    t1 = add_task(manager.store, svc, slot=1, node_id=manager.node_id, container_id="c1")
    manager.log_messages = [msg(t1, b"out\n"), msg(t1, b"err\n", stream=2), msg(t1, b"no newline")]
    resp = await client.get("/services/web/logs?stdout=1&since=1700000000.5&tail=all")
    frames = parse_frames(await resp.read())
    assert frames == [(1, b"out\n"), (1, b"no newline\n")]
    assert manager.log_calls[0][1].since == 1700000000.5 and manager.log_calls[0][1].tail == -1


async def test_task_logs_and_tty(client: TestClient, manager: TrackingManager) -> None:
    svc = make_service(manager, "tty", tty=True)
    t = add_task(manager.store, svc, slot=1, node_id=manager.node_id, container_id="c1")
    manager.log_messages = [msg(t, b"line\n")]
    resp = await client.get(f"/tasks/{t.ID}/logs?stdout=1&stderr=1&details=1")
    assert await resp.read() == details(t) + b" line\n"  # a TTY service's logs are not multiplexed


async def test_bad_parameters(client: TestClient, manager: TrackingManager) -> None:
    svc = make_service(manager)
    resp = await client.get(f"/services/{svc.ID}/logs")
    assert resp.status == 400
    assert await resp.json() == {"message": "Bad parameters: you must choose at least one stream"}
    assert (await client.get(f"/services/{svc.ID}/logs?stdout=1&tail=lots")).status == 400
    assert (await client.get(f"/services/{svc.ID}/logs?stdout=1&since=yesterday")).status == 400
    assert (await client.get("/services/nope/logs?stdout=1")).status == 404
    assert manager.log_calls == []


async def test_follow_picks_up_new_tasks_and_ends_on_disconnect(
    client: TestClient, manager: TrackingManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_logs, "_DISCONNECT_POLL_S", 0.05)
    svc = make_service(manager)
    t1 = add_task(manager.store, svc, slot=1, node_id=manager.node_id, container_id="c1")
    manager.log_messages = [msg(t1, b"first\n")]
    resp = await client.get(f"/services/{svc.ID}/logs?stdout=1&follow=1&details=1")
    head = await asyncio.wait_for(resp.content.readexactly(8), 5)
    _, size = struct.unpack(">B3xI", head)
    assert await resp.content.readexactly(size) == details(t1) + b" first\n"

    # A replacement task starts after the request: its lines join the stream.
    pending = add_task(manager.store, svc, slot=2, node_id=manager.node_id, state=TaskState.PENDING)
    manager.log_messages.append(msg(pending, b"second\n"))
    with manager.store.tx() as tx:
        started = msgspec.structs.replace(
            pending, Status=msgspec.structs.replace(pending.Status, State=TaskState.RUNNING)
        )
        tx.update("task", started)
    head = await asyncio.wait_for(resp.content.readexactly(8), 5)
    _, size = struct.unpack(">B3xI", head)
    assert await resp.content.readexactly(size) == details(pending) + b" second\n"
    assert len(manager.log_calls) == 2 and manager.log_calls[1][1].tail == -1

    resp.close()
    for _ in range(100):
        if manager.closed_streams == 2:
            break
        await asyncio.sleep(0.02)
    assert manager.closed_streams == 2
    # The follow watcher is gone too (the app's own log of swarm events, api/events.py, stays).
    assert all(set(w.kinds or ()) == set(api_events.SWARM_KINDS) for w in manager.store._watchers)
