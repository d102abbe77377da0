"""The cluster port admits only certificates from the cluster's CA, each acting only as its own node."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from shoal.ca.certs import generate_key_and_csr, issue_node_cert, load_csr
from shoal.ca.rootca import create_root
from shoal.dispatcher.dispatcher import SessionInvalid
from shoal.errors import NotFound, Unavailable
from shoal.models import NodeDescription, NodeRole, NodeState
from shoal.transport import messages as m
from shoal.transport.bootstrap import NodeCredentials, join_cluster
from shoal.transport.client import GrpcDispatcherClient
from shoal.transport.errors import PermissionDenied
from shoal.transport.rpc import DISPATCHER_SERVICE, decoder, encode, path, secure_channel
from tests.integration.transport_env import ManagerSide, manager_side


@pytest.fixture
async def mgr(tmp_path: Path) -> AsyncIterator[ManagerSide]:
    async with manager_side(tmp_path) as side:
        yield side


async def joined(mgr: ManagerSide, tmp_path: Path, hostname: str) -> NodeCredentials:
    return await join_cluster(mgr.addr, mgr.tokens.Worker, hostname, "127.0.0.2", "active", tmp_path / hostname)


def snapshot(mgr: ManagerSide) -> list[tuple[str, str, int]]:
    return sorted((n.ID, str(n.Status.State), n.Version.Index) for n in mgr.store.list("node"))


async def test_no_client_certificate_is_refused(mgr: ManagerSide, tmp_path: Path) -> None:
    creds = await joined(mgr, tmp_path, "host-2")
    before = snapshot(mgr)
    async with secure_channel("127.0.0.1", mgr.server.port, mgr.ca.root_pem) as ch:  # no key, no cert
        call = ch.unary_unary(path(DISPATCHER_SERVICE, "Register"), request_serializer=encode,
                              response_deserializer=decoder(m.RegisterResponse))
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call(m.RegisterRequest(creds.node_id, NodeDescription(Hostname="host-2"), "127.0.0.2"), timeout=5)
    assert exc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    assert snapshot(mgr) == before


async def test_certificate_from_another_ca_is_refused(mgr: ManagerSide, tmp_path: Path) -> None:
    """A forged certificate naming a real node (same cluster ID, same role) but signed elsewhere."""
    real = await joined(mgr, tmp_path, "host-2")
    before = snapshot(mgr)
    root, root_key = create_root(mgr.store.cluster().ID)
    key_pem, csr_pem = generate_key_and_csr()
    forged = issue_node_cert(load_csr(csr_pem).public_key(), root, root_key, real.node_id, NodeRole.WORKER,
                             mgr.store.cluster().ID, "127.0.0.2", dt.timedelta(hours=1))
    # It trusts the real root (so the failure is ours to refuse, not its to verify).
    fake = dataclasses.replace(real, cert_pem=forged, key_pem=key_pem)
    client = GrpcDispatcherClient(fake, tmp_path / "fake")
    try:
        with pytest.raises(Unavailable, match="could not reach the manager"):
            await client.register(real.node_id, NodeDescription(Hostname="host-2"), "127.0.0.2")
    finally:
        await client.close()
    assert snapshot(mgr) == before
    assert mgr.store.get("node", real.node_id).Status.State == NodeState.UNKNOWN


async def test_a_node_cannot_act_as_another(mgr: ManagerSide, tmp_path: Path) -> None:
    a = await joined(mgr, tmp_path, "host-2")
    b = await joined(mgr, tmp_path, "host-3")
    client_a = GrpcDispatcherClient(a, tmp_path / "host-2")
    client_b = GrpcDispatcherClient(b, tmp_path / "host-3")
    try:
        before = snapshot(mgr)
        with pytest.raises(PermissionDenied, match=f"cannot register as node {b.node_id}"):
            await client_a.register(b.node_id, NodeDescription(Hostname="host-3"), "127.0.0.3")
        assert snapshot(mgr) == before

        session_b = await client_b.register(b.node_id, NodeDescription(Hostname="host-3"), "127.0.0.3")
        with pytest.raises(PermissionDenied):
            await client_a.heartbeat(session_b.session_id)
        with pytest.raises(PermissionDenied):
            await client_a.update_task_status(session_b.session_id, [])
        with pytest.raises(PermissionDenied):
            await anext(client_a.assignments(session_b.session_id))
        with pytest.raises(SessionInvalid):
            await client_a.heartbeat("no-such-session")
    finally:
        await client_a.close()
        await client_b.close()


async def test_a_removed_node_cannot_register_or_renew(mgr: ManagerSide, tmp_path: Path) -> None:
    creds = await joined(mgr, tmp_path, "host-2")
    with mgr.store.tx() as tx:
        tx.delete("node", creds.node_id)
    client = GrpcDispatcherClient(creds, tmp_path / "host-2")
    try:
        with pytest.raises(NotFound, match="removed"):
            await client.register(creds.node_id, NodeDescription(Hostname="host-2"), "127.0.0.2")
        with pytest.raises(NotFound):
            await client.renew_certificate()
    finally:
        await client.close()
    assert mgr.store.get("node", creds.node_id) is None
