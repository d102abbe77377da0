"""An agent's connection outlives a manager restart: calls fail with Unavailable, then work again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from shoal.dispatcher.protocol import SessionInfo
from shoal.errors import Unavailable
from shoal.models import NodeDescription
from shoal.transport.bootstrap import join_cluster
from shoal.transport.client import GrpcDispatcherClient
from shoal.transport.server import ClusterServer
from tests.integration.transport_env import manager_side


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
