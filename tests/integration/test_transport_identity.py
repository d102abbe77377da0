"""Issue 11's attacks on the agent protocol, over real gRPC and TLS on 127.0.0.1: a worker posing as
the manager, a worker reporting on another node's tasks or describing itself out of bounds, a flood
of joins, oversized messages, and a token that is not ASCII."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from shoal.ca.certs import generate_key_and_csr
from shoal.dispatcher.protocol import TaskStatusUpdate
from shoal.errors import Conflict, InvalidArgument, TooManyRequests
from shoal.models import NodeDescription, Resources, TaskState, TaskStatus
from shoal.transport import messages as m
from shoal.transport.bootstrap import NodeCredentials, join_cluster
from shoal.transport.client import GrpcDispatcherClient
from shoal.transport.errors import from_rpc_error
from shoal.transport.limits import JoinLimiter
from shoal.transport.rpc import BOOTSTRAP_SERVICE, DISPATCHER_SERVICE, decoder, encode, path, secure_channel
from tests.integration.test_transport_join import assigned_task
from tests.integration.transport_env import ManagerSide, free_port_pair, manager_side


@pytest.fixture
async def mgr(tmp_path: Path) -> AsyncIterator[ManagerSide]:
    async with manager_side(tmp_path) as side:
        yield side


async def _join(mgr: ManagerSide, tmp: Path, name: str, addr: str = "127.0.0.1", token: str = "") -> NodeCredentials:
    return await join_cluster(mgr.addr, token or mgr.tokens.Worker, name, addr, "active", tmp / name)


async def test_a_worker_certificate_cannot_serve_as_the_manager(mgr: ManagerSide, tmp_path: Path) -> None:
    """Before: a worker joined with the address "swarm-manager", got that name in its certificate,
    and a server using it passed every agent's check. Now the join is refused, a worker certificate
    names only "swarm-worker", and a server presenting one is refused by the agent's channel."""
    with pytest.raises(InvalidArgument, match="invalid advertise address 'swarm-manager'"):
        await _join(mgr, tmp_path, "evil", addr="swarm-manager")
    creds = await _join(mgr, tmp_path, "worker-1")
    sans = x509.load_pem_x509_certificate(creds.cert_pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["swarm-worker"]

    # The worker stands up a server with its own (genuine) certificate ...
    port = free_port_pair()
    rogue = grpc.aio.server()

    async def root_ca(req: m.Empty, ctx: grpc.aio.ServicerContext) -> m.RootCAResponse:
        return m.RootCAResponse(root_pem="-----BEGIN CERTIFICATE-----\nfake")

    rogue.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(BOOTSTRAP_SERVICE, {
        "GetRootCA": grpc.unary_unary_rpc_method_handler(root_ca, request_deserializer=decoder(m.Empty),
                                                         response_serializer=encode)})])
    rogue.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(creds.key_pem.encode(),
                                                                               creds.cert_pem.encode())]))
    await rogue.start()
    try:
        # ... and an agent that trusts the cluster's root refuses it: the name it checks is the role's.
        async with secure_channel("127.0.0.1", port, mgr.ca.root_pem) as ch:
            call = ch.unary_unary(path(BOOTSTRAP_SERVICE, "GetRootCA"), request_serializer=encode,
                                  response_deserializer=decoder(m.RootCAResponse))
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await call(m.Empty(), timeout=5)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        # The manager's own certificate passes the same check (the control).
        async with secure_channel("127.0.0.1", mgr.server.bootstrap_port, mgr.ca.root_pem) as ch:
            call = ch.unary_unary(path(BOOTSTRAP_SERVICE, "GetRootCA"), request_serializer=encode,
                                  response_deserializer=decoder(m.RootCAResponse))
            assert (await call(m.Empty(), timeout=5)).root_pem == mgr.ca.root_pem
    finally:
        await rogue.stop(0)


async def test_a_worker_cannot_touch_another_nodes_task_reports(mgr: ManagerSide, tmp_path: Path) -> None:
    """Before: pending reports were keyed by task ID, so B's report on A's task replaced A's report
    in the batch (and was then dropped as not B's): A's RUNNING never landed."""
    a, b = await _join(mgr, tmp_path, "node-a"), await _join(mgr, tmp_path, "node-b")
    ca, cb = GrpcDispatcherClient(a, tmp_path / "node-a"), GrpcDispatcherClient(b, tmp_path / "node-b")
    try:
        sa = await ca.register(a.node_id, NodeDescription(Hostname="node-a"), "127.0.0.1")
        sb = await cb.register(b.node_id, NodeDescription(Hostname="node-b"), "127.0.0.1")
        task = assigned_task(a.node_id)
        with mgr.store.tx() as tx:
            tx.create("task", task)
        # Both in one batch window: B's "failed" (ordered after running) arrives second.
        await asyncio.gather(
            ca.update_task_status(sa.session_id, [TaskStatusUpdate(task.ID, TaskStatus(State=TaskState.RUNNING))]),
            cb.update_task_status(sb.session_id, [TaskStatusUpdate(task.ID, TaskStatus(State=TaskState.FAILED,
                                                                                        Err="sabotage"))]),
        )
        status = mgr.store.get("task", task.ID).Status
        assert status.State == TaskState.RUNNING and status.Err == ""
    finally:
        await ca.close()
        await cb.close()


async def test_a_nodes_description_is_checked(mgr: ManagerSide, tmp_path: Path) -> None:
    a, b = await _join(mgr, tmp_path, "node-a"), await _join(mgr, tmp_path, "node-b")
    client = GrpcDispatcherClient(b, tmp_path / "node-b")
    try:
        await GrpcDispatcherClient(a, tmp_path / "node-a").register(a.node_id, NodeDescription(Hostname="node-a"),
                                                                     "127.0.0.1")
        before = mgr.store.get("node", b.node_id)
        greedy = NodeDescription(Hostname="node-b", Resources=Resources(NanoCPUs=10**9 * 10**6, MemoryBytes=1))
        with pytest.raises(InvalidArgument, match=r"NanoCPUs \d+ out of range"):
            await client.register(b.node_id, greedy, "127.0.0.1")
        with pytest.raises(InvalidArgument, match="invalid hostname"):
            await client.register(b.node_id, NodeDescription(Hostname="x" * 300), "127.0.0.1")
        with pytest.raises(Conflict, match="cannot take the name 'node-a'"):
            await client.register(b.node_id, NodeDescription(Hostname="node-a"), "127.0.0.1")
        assert mgr.store.get("node", b.node_id).Description == before.Description  # nothing stored
        # A node's claims about its TLS identity are not kept: the CA's are.
        forged = NodeDescription(Hostname="node-b")
        forged.TLSInfo = mgr.store.get("node", a.node_id).Description.TLSInfo.__class__(TrustRoot="forged")
        await client.register(b.node_id, forged, "127.0.0.1")
        assert mgr.store.get("node", b.node_id).Description.TLSInfo == before.Description.TLSInfo
    finally:
        await client.close()


async def test_joins_are_rate_limited_per_source(mgr: ManagerSide, tmp_path: Path) -> None:
    # Loopback is exempt (the scale bench joins 1,000 nodes from it): treat it as a remote source here.
    mgr.server._join_limit = JoinLimiter(burst=3, rate=0.01)
    mgr.server._join_limit.take = _counting_loopback(mgr.server._join_limit)  # type: ignore[method-assign]
    await _join(mgr, tmp_path, "ok-1")  # GetRootCA + Join: 2 of the 3
    with pytest.raises(TooManyRequests, match=r"too many join attempts from 10\.255\.0\.1"):
        await join_cluster(mgr.addr, mgr.tokens.Worker, "ok-2", "127.0.0.1", "active", tmp_path / "ok-2",
                           timeout_s=2)  # the joiner tries again within its timeout, then gives up
    assert [n for n in mgr.store.list("node") if n.Description.Hostname == "ok-2"] == []
    mgr.server._join_limit.rate = 2.0  # the bucket refills: a patient joiner gets in
    assert (await _join(mgr, tmp_path, "ok-3")).node_id


def _counting_loopback(limiter: JoinLimiter):
    take = limiter.take

    def run(ip: str, now: float | None = None) -> None:
        return take("10.255.0.1" if ip == "127.0.0.1" else ip, now)

    return run


async def _bootstrap_join(mgr: ManagerSide, req: m.JoinRequest) -> m.JoinResponse:
    async with secure_channel("127.0.0.1", mgr.server.bootstrap_port, mgr.ca.root_pem) as ch:
        call = ch.unary_unary(path(BOOTSTRAP_SERVICE, "Join"), request_serializer=encode,
                              response_deserializer=decoder(m.JoinResponse))
        try:
            resp: m.JoinResponse = await call(req, timeout=10)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, mgr.addr) from None
        return resp


async def test_oversized_and_non_ascii_joins_are_refused_and_the_server_keeps_serving(
        mgr: ManagerSide, tmp_path: Path) -> None:
    _, csr = generate_key_and_csr()
    nodes = mgr.store.count("node")
    huge = m.JoinRequest(token=mgr.tokens.Worker, csr_pem=csr, hostname="h" * (1024 * 1024), addr="127.0.0.1")
    with pytest.raises(TooManyRequests):  # gRPC's RESOURCE_EXHAUSTED: over the listener's limit
        await _bootstrap_join(mgr, huge)
    just_over = m.JoinRequest(token=mgr.tokens.Worker, csr_pem=csr, hostname="h" * (64 * 1024 + 100),
                              addr="127.0.0.1")
    with pytest.raises(TooManyRequests, match=r"Join: request of \d+ bytes is over the limit of 65536 bytes"):
        await _bootstrap_join(mgr, just_over)
    for token in (mgr.tokens.Worker[:-1] + "\u00e9", "\u00e9" * 80):
        with pytest.raises(InvalidArgument, match="invalid join token"):
            await _bootstrap_join(mgr, m.JoinRequest(token=token, csr_pem=csr, hostname="h", addr="127.0.0.1"))
    assert mgr.store.count("node") == nodes
    assert (await _join(mgr, tmp_path, "after")).node_id  # still serving


async def test_an_oversized_heartbeat_is_refused(mgr: ManagerSide, tmp_path: Path) -> None:
    creds = await _join(mgr, tmp_path, "node-h")
    async with secure_channel("127.0.0.1", mgr.server.port, creds.root_pem, creds.key_pem, creds.cert_pem) as ch:
        call = ch.unary_unary(path(DISPATCHER_SERVICE, "Heartbeat"), request_serializer=encode,
                              response_deserializer=decoder(m.HeartbeatResponse))
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call(m.HeartbeatRequest(session_id="s" * (64 * 1024)), timeout=5)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Heartbeat: request of" in (exc.value.details() or "")


async def test_a_malformed_join_is_a_clear_invalid_argument(mgr: ManagerSide) -> None:
    async with secure_channel("127.0.0.1", mgr.server.bootstrap_port, mgr.ca.root_pem) as ch:
        call = ch.unary_unary(path(BOOTSTRAP_SERVICE, "Join"), request_serializer=lambda b: b,
                              response_deserializer=decoder(m.JoinResponse))
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call(b"\xc1 not msgpack", timeout=5)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Join: malformed request" in (exc.value.details() or "")
