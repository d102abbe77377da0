"""An agent's connection outlives a manager restart: calls fail with Unavailable, then work again."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import pytest

from shoal.agent.reporter import StatusReporter
from shoal.dispatcher.protocol import SessionInfo, TaskStatusUpdate
from shoal.errors import Unavailable
from shoal.models import NodeDescription, TaskState, TaskStatus
from shoal.transport.bootstrap import join_cluster
from shoal.transport.client import GrpcDispatcherClient
from shoal.transport.server import ClusterServer
from tests.integration.test_transport_agent import echo_task
from tests.integration.test_transport_certs import wait_until
from tests.integration.transport_env import free_port_pair, manager_side


async def test_client_reconnects_after_the_manager_restarts(tmp_path: Path) -> None:
    async with manager_side(tmp_path) as mgr:
        creds = await join_cluster(mgr.addr, mgr.tokens.Worker, "host-2", "127.0.0.2", "active", tmp_path / "c")
        client = GrpcDispatcherClient(creds, tmp_path / "c", rpc_timeout_s=2.0)
        desc = NodeDescription(Hostname="host-2")
        try:
            await client.register(creds.node_id, desc, "127.0.0.2")
            port, bport = mgr.server.port, mgr.server.bootstrap_port
            await mgr.server.stop(0)
            with pytest.raises(Unavailable, match=rf"^could not reach the manager at 127.0.0.1:{port}: "):
                await client.register(creds.node_id, desc, "127.0.0.2")

            mgr.server = ClusterServer(mgr.dispatcher, mgr.ca, "127.0.0.1", port, node_id_of_manager=mgr.node_id,
                                       bootstrap_port=bport)
            await mgr.server.start()
            started = time.monotonic()
            info: SessionInfo | None = None
            while info is None:  # what the Agent's back-off loop does
                try:
                    info = await client.register(creds.node_id, desc, "127.0.0.2")
                except Unavailable:
                    assert time.monotonic() - started < 5, "did not reconnect within 5 s"
                    await asyncio.sleep(0.1)
            assert await client.heartbeat(info.session_id) > 0
        finally:
            await client.close()


async def test_listening_on_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    async with manager_side(tmp_path) as mgr:
        other = ClusterServer(mgr.dispatcher, mgr.ca, "127.0.0.1", mgr.server.port, node_id_of_manager=mgr.node_id)
        with pytest.raises(Unavailable, match=rf"cannot listen on 127.0.0.1:{mgr.server.port}"):
            await other.start()


async def test_a_report_in_flight_when_the_node_changes_manager_is_sent_again(tmp_path: Path) -> None:
    """Moving to another manager closes the channel under any call still running. grpc.aio raises
    CancelledError in its caller then; the status reporter took that for its own cancellation and
    stopped, so the node's tasks stayed "assigned" forever (the etcd scale benchmark stalled at ~94 %)."""
    async with manager_side(tmp_path) as mgr:
        creds = await join_cluster(mgr.addr, mgr.tokens.Worker, "host-2", "127.0.0.2", "active", tmp_path / "c")
        down = f"127.0.0.1:{free_port_pair()}"  # a manager that does not answer
        client = GrpcDispatcherClient(dataclasses.replace(creds, managers=(mgr.addr, down)), tmp_path / "c",
                                      rpc_timeout_s=5.0)
        reporter = StatusReporter(client, interval_s=0.01)
        reporting = asyncio.create_task(reporter.run())
        task = echo_task(creds.node_id)
        with mgr.store.tx() as tx:
            tx.create("task", task)
        entered, release = asyncio.Event(), asyncio.Event()
        real_update = mgr.dispatcher.update_task_status

        async def held(session_id: str, updates: list[TaskStatusUpdate]) -> None:
            entered.set()
            await release.wait()  # the manager is slow: the report is in flight when the node moves
            await real_update(session_id, updates)

        mgr.dispatcher.update_task_status = held  # type: ignore[method-assign]
        try:
            info = await client.register(creds.node_id, NodeDescription(Hostname="host-2"), "127.0.0.2")
            reporter.set_session(info.session_id)
            reporter.report(task.ID, TaskStatus(State=TaskState.RUNNING, Message="started"))
            await asyncio.wait_for(entered.wait(), 5)

            direct = asyncio.create_task(client.update_task_status(info.session_id, []))
            await asyncio.sleep(0.1)
            await client._next_remote()  # what a failed register does: the channel closes under both calls
            with pytest.raises(Unavailable, match="was closed under the call"):
                await direct
            await asyncio.sleep(0.2)
            assert not reporting.done(), "the reporter stopped"
            assert reporter.pending == 1  # kept for the next session

            release.set()
            await client._next_remote()  # back to the manager that answers, and a new session
            info = await client.register(creds.node_id, NodeDescription(Hostname="host-2"), "127.0.0.2")
            reporter.set_session(info.session_id)
            await wait_until(lambda: mgr.store.get("task", task.ID).Status.State == TaskState.RUNNING, within=10)
        finally:
            reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporting
            await client.close()
