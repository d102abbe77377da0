"""Byte pipes from the manager to a remote node's engine (transport/tunnel.py) over the real cluster
port (mutual TLS): bytes both ways, a half-close, the agent's engine away, only managers relay, and
a node that goes away leaves no pipe to open."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.errors import Unavailable
from shoal.models import NodeDescription
from shoal.transport.bootstrap import join_cluster
from shoal.transport.client import GrpcDispatcherClient
from shoal.transport.rpc import secure_channel, split_addr
from shoal.transport.tunnel import open_relay
from tests.integration.test_transport_certs import wait_until
from tests.integration.transport_env import ManagerSide, manager_side


async def _shouting_engine(sock: Path) -> asyncio.Server:
    """Stands in for an engine socket: answers each line in capitals; at the client's EOF, says bye."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.write(b"bye\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, path=str(sock), limit=1 << 20)


@contextlib.asynccontextmanager
async def worker(mgr: ManagerSide, tmp: Path, engine_url: str) -> AsyncIterator[GrpcDispatcherClient]:
    creds = await join_cluster(mgr.addr, mgr.tokens.Worker, "host-2", "127.0.0.2", "active", tmp / "c")
    client = GrpcDispatcherClient(creds, tmp / "c")
    serving = asyncio.create_task(client.serve_tunnels(engine_url))
    try:
        await client.register(creds.node_id, NodeDescription(Hostname="host-2"), "127.0.0.2")
        await wait_until(lambda: mgr.server.engine(creds.node_id) is not None)
        yield client
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await client.close()


async def test_a_pipe_carries_bytes_both_ways_and_a_half_close(tmp_path: Path) -> None:
    server = await _shouting_engine(tmp_path / "engine.sock")
    async with manager_side(tmp_path) as mgr, worker(mgr, tmp_path, f"unix://{tmp_path}/engine.sock") as client:
        engine = mgr.server.engine(client.creds.node_id)
        assert engine is not None
        reader, writer = await engine.open()
        big = b"x" * 200_000 + b"\n"  # several chunks each way
        writer.write(b"hello\n" + big)
        await writer.drain()
        assert await reader.readline() == b"HELLO\n"
        assert await reader.readline() == big.upper()
        writer.write_eof()  # the far end sees EOF, answers, closes
        assert await asyncio.wait_for(reader.read(), 10) == b"bye\n"
        writer.close()

        # Two pipes at once are independent.
        (r1, w1), (r2, w2) = await asyncio.gather(engine.open(), engine.open())
        w1.write(b"one\n")
        w2.write(b"two\n")
        assert (await r2.readline(), await r1.readline()) == (b"TWO\n", b"ONE\n")
        w1.close()
        w2.close()
    server.close()


async def test_an_engine_that_does_not_answer_is_said(tmp_path: Path) -> None:
    async with manager_side(tmp_path) as mgr, worker(mgr, tmp_path, f"unix://{tmp_path}/nothing.sock") as client:
        engine = mgr.server.engine(client.creds.node_id)
        assert engine is not None
        with pytest.raises(Unavailable, match="does not answer"):
            await engine.open()


async def test_only_managers_relay_and_a_node_that_left_has_no_pipe(tmp_path: Path) -> None:
    server = await _shouting_engine(tmp_path / "engine.sock")
    async with manager_side(tmp_path) as mgr:
        async with worker(mgr, tmp_path, f"unix://{tmp_path}/engine.sock") as client:
            node_id = client.creds.node_id
            host, port = split_addr(mgr.addr)
            creds = client.creds
            channel = secure_channel(host, port, creds.root_pem, creds.key_pem, creds.cert_pem)
            try:  # a worker's certificate cannot reach another node's engine through the leader
                with pytest.raises(Unavailable, match="only the swarm's managers"):
                    await open_relay(channel, node_id)
            finally:
                await channel.close()
        # The agent's tunnel stream ended with it: nothing to open, and nothing waits.
        await wait_until(lambda: mgr.server.engine(node_id) is None)
    server.close()
