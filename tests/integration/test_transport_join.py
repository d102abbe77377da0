"""Joining over the network (real TLS on 127.0.0.1), then an agent's session over mutual TLS.

No engine is needed: the agent side is driven through GrpcDispatcherClient as the Agent drives it,
and tasks are written into the store as the scheduler would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.ca.rootca import create_root_ca
from shoal.ca.tokens import generate_join_token
from shoal.controlapi.cluster import update_cluster
from shoal.dispatcher.protocol import TaskStatusUpdate
from shoal.errors import Conflict, InvalidArgument, Unavailable
from shoal.ids import new_id
from shoal.models import (
    ContainerSpec,
    NodeAvailability,
    NodeDescription,
    NodeRole,
    NodeState,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    Version,
)
from shoal.transport.bootstrap import join_cluster, load_credentials
from shoal.transport.client import GrpcDispatcherClient
from tests.integration.transport_env import ManagerSide, manager_side


@pytest.fixture
async def mgr(tmp_path: Path) -> AsyncIterator[ManagerSide]:
    async with manager_side(tmp_path) as side:
        yield side


def assigned_task(node_id: str) -> Task:
    return Task(
        ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="",
        Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")),
        ServiceID="svc", Slot=1, NodeID=node_id, DesiredState=TaskState.RUNNING,
        Status=TaskStatus(State=TaskState.ASSIGNED, Message="scheduler assigned task to node"),
    )


async def test_worker_joins_registers_and_runs_a_session(mgr: ManagerSide, tmp_path: Path) -> None:
    cert_dir = tmp_path / "host-2"
    creds = await join_cluster(mgr.addr, mgr.tokens.Worker, "host-2", "127.0.0.2", "active", cert_dir)
    node = mgr.store.get("node", creds.node_id)
    assert creds.role == NodeRole.WORKER and node.Spec.Role == NodeRole.WORKER
    assert node.Description.Hostname == "host-2" and node.Status.State == NodeState.UNKNOWN
    assert load_credentials(cert_dir) == creds
    assert stat.S_IMODE((cert_dir / "node.key").stat().st_mode) == 0o600

    client = GrpcDispatcherClient(creds, cert_dir)
    try:
        session = await client.register(creds.node_id, NodeDescription(Hostname="host-2"), "127.0.0.2")
        assert session.node_id == creds.node_id and session.heartbeat_period_s == pytest.approx(0.5)
        assert mgr.store.get("node", creds.node_id).Status.State == NodeState.READY
        assert await client.heartbeat(session.session_id) == pytest.approx(0.5)

        stream = client.assignments(session.session_id)
        first = await anext(stream)
        assert first.full and first.tasks == []
        task = assigned_task(creds.node_id)
        with mgr.store.tx() as tx:
            tx.create("task", task)
        delta = await asyncio.wait_for(anext(stream), 5)
        assert not delta.full and [t.ID for t in delta.tasks] == [task.ID]

        await client.update_task_status(session.session_id, [TaskStatusUpdate(
            task.ID, TaskStatus(State=TaskState.RUNNING, Message="started"))])
        assert mgr.store.get("task", task.ID).Status.State == TaskState.RUNNING
        with mgr.store.tx() as tx:
            tx.delete("task", task.ID)
        delta = await asyncio.wait_for(anext(stream), 5)
        assert delta.removed == [task.ID]
        await stream.aclose()
    finally:
        await client.close()


async def test_manager_token_joins_a_manager(mgr: ManagerSide, tmp_path: Path) -> None:
    creds = await join_cluster(mgr.addr, mgr.tokens.Manager, "host-3", "127.0.0.3", "drain", tmp_path / "h3")
    node = mgr.store.get("node", creds.node_id)
    assert creds.role == NodeRole.MANAGER and node.Spec.Role == NodeRole.MANAGER
    assert node.Spec.Availability == NodeAvailability.DRAIN and node.ManagerStatus is not None


@pytest.mark.parametrize("kind", ["garbage", "wrong-secret", "other-ca", "rotated"])
async def test_bad_tokens_are_refused_and_nothing_is_stored(mgr: ManagerSide, tmp_path: Path, kind: str) -> None:
    if kind == "rotated":
        token = mgr.tokens.Worker
        cluster = mgr.store.cluster()  # `swarm join-token --rotate worker`:
        update_cluster(mgr.store, cluster.Version.Index, cluster.Spec, rotate_worker_token=True)
        assert mgr.tokens.Worker != token
    else:
        token = {
            "garbage": "SWMTKN-1-garbage",
            "wrong-secret": generate_join_token(mgr.ca.root_pem),
            "other-ca": generate_join_token(create_root_ca("another-cluster")[0]),
        }[kind]
    nodes = {n.ID for n in mgr.store.list("node")}
    with pytest.raises(InvalidArgument) as exc:
        await join_cluster(mgr.addr, token, "host-9", "127.0.0.9", "active", tmp_path / "h9")
    message = exc.value.message
    if kind == "other-ca":
        assert message.startswith("remote CA does not match fingerprint. Expected: ")
    else:
        assert "invalid join token" in message
    assert {n.ID for n in mgr.store.list("node")} == nodes
    assert load_credentials(tmp_path / "h9") is None


async def test_duplicate_hostname_is_refused(mgr: ManagerSide, tmp_path: Path) -> None:
    await join_cluster(mgr.addr, mgr.tokens.Worker, "host-2", "127.0.0.2", "active", tmp_path / "a")
    count = mgr.store.count("node")
    with pytest.raises(Conflict, match="host-2"):
        await join_cluster(mgr.addr, mgr.tokens.Worker, "host-2", "127.0.0.5", "active", tmp_path / "b")
    assert mgr.store.count("node") == count


async def test_unreachable_manager_is_one_clear_error(tmp_path: Path) -> None:
    token = generate_join_token(create_root_ca("c")[0])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match=rf"^could not reach the manager at 127.0.0.1:{port}: "):
        await join_cluster(f"127.0.0.1:{port}", token, "h", "127.0.0.2", "active", tmp_path / "x")

    # A listener that accepts but never speaks TLS: bounded by the timeout.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    silent = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable, match="could not reach the manager"):
            await join_cluster(f"127.0.0.1:{silent - 1}", token, "h", "127.0.0.2", "active", tmp_path / "x",
                               timeout_s=1.0)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
    assert time.monotonic() - started < 3.0
