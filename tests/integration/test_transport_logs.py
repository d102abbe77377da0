"""Logs of tasks on a remote node reach ``Dispatcher.logs()`` through the LogSubscriptions/PublishLogs streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.models import NodeDescription, Task
from shoal.transport.bootstrap import join_cluster
from shoal.transport.client import GrpcDispatcherClient
from tests.integration.test_transport_certs import wait_until
from tests.integration.test_transport_join import assigned_task
from tests.integration.transport_env import manager_side


class FakeLogSource:
    """Three lines per task; with ``follow``, one more line every 50 ms until the reader goes away."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.open_streams = 0

    async def task_logs(self, tasks: list[Task], options: LogOptions) -> AsyncIterator[LogMessage]:
        self.open_streams += 1
        try:
            for t in tasks:
                for i in range(3):
                    yield self._line(t, i, options)
            n = 3
            while options.follow:
                await asyncio.sleep(0.05)
                yield self._line(tasks[0], n, options)
                n += 1
        finally:
            self.open_streams -= 1

    def _line(self, t: Task, i: int, options: LogOptions) -> LogMessage:
        return LogMessage(task_id=t.ID, service_id=t.ServiceID, node_id=self.node_id, stream=1 + i % 2,
                          timestamp="2024-01-01T00:00:00Z", data=f"{t.ID} line {i} tail={options.tail}\n".encode())


async def test_logs_of_a_remote_node_reach_the_dispatcher(tmp_path: Path) -> None:
    async with manager_side(tmp_path) as mgr:
        creds = await join_cluster(mgr.addr, mgr.tokens.Worker, "host-2", "127.0.0.2", "active", tmp_path / "c")
        client = GrpcDispatcherClient(creds, tmp_path / "c")
        source = FakeLogSource(creds.node_id)
        serving = asyncio.create_task(client.serve_logs(source))
        try:
            await client.register(creds.node_id, NodeDescription(Hostname="host-2"), "127.0.0.2")
            await wait_until(lambda: creds.node_id in mgr.dispatcher._log_sources)
            t1, t2 = assigned_task(creds.node_id), assigned_task(creds.node_id)

            lines = [m async for m in mgr.dispatcher.logs([t1, t2], LogOptions(tail=7))]
            assert sorted(m.data.decode() for m in lines) == sorted(
                f"{t.ID} line {i} tail=7\n" for t in (t1, t2) for i in range(3))
            assert {m.node_id for m in lines} == {creds.node_id} and {m.stream for m in lines} == {1, 2}

            # Following: the reader stops after a few lines, and the agent's stream is closed.
            follow = mgr.dispatcher.logs([t1], LogOptions(follow=True))
            got = [await asyncio.wait_for(anext(follow), 5) for _ in range(6)]
            assert got[5].data.startswith(f"{t1.ID} line 5".encode())
            await follow.aclose()
            await wait_until(lambda: source.open_streams == 0)

            # The agent goes away: its log source is unregistered on the manager.
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await wait_until(lambda: creds.node_id not in mgr.dispatcher._log_sources)
            assert [m async for m in mgr.dispatcher.logs([t1], LogOptions())] == []
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await client.close()
