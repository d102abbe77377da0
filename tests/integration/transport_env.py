"""A manager's side for transport tests: a store with a cluster as ``swarm init`` makes it, a real
Dispatcher, the cluster CA and the gRPC listeners on 127.0.0.1 (free ports)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from shoal.ca.authority import ClusterCA
from shoal.ca.certs import write_private
from shoal.ca.rootca import create_root_ca
from shoal.ca.tokens import generate_join_token
from shoal.dispatcher.dispatcher import Dispatcher
from shoal.ids import new_id
from shoal.models import (
    SECOND,
    CAConfig,
    Cluster,
    DispatcherConfig,
    JoinTokens,
    ManagerStatus,
    Node,
    NodeDescription,
    NodeRole,
    NodeSpec,
    NodeState,
    NodeStatus,
    SwarmSpec,
    TLSInfo,
    Version,
)
from shoal.store import MemoryStore, NullBackend
from shoal.transport.server import ClusterServer

HEARTBEAT_S = 0.5


def free_port_pair() -> int:
    """A port P with P and P + 1 both free (the cluster and bootstrap listeners)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def listen_addr() -> str:
    """A swarm's listen address on free loopback ports, never 2377: a daemon left by
    ``scripts/setup.sh`` (or any other swarm on the machine) may hold it."""
    return f"127.0.0.1:{free_port_pair()}"


def make_cluster(store: MemoryStore, data_root: Path, cert_expiry_s: float = 90 * 24 * 3600) -> str:
    """What Manager.init_swarm writes: root key file, cluster object, the manager's node. Returns its ID."""
    cluster_id, node_id = new_id(), new_id()
    ca_cert, ca_key = create_root_ca(cluster_id)
    data_root.mkdir(parents=True, exist_ok=True)
    write_private(data_root / "ca.key", ca_key)
    spec = SwarmSpec(Name="default", Dispatcher=DispatcherConfig(HeartbeatPeriod=int(HEARTBEAT_S * SECOND)),
                     CAConfig=CAConfig(NodeCertExpiry=int(cert_expiry_s * SECOND)))
    with store.tx() as tx:
        tx.create("cluster", Cluster(
            ID=cluster_id, Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec,
            TLSInfo=TLSInfo(TrustRoot=ca_cert),
            JoinTokens=JoinTokens(Worker=generate_join_token(ca_cert), Manager=generate_join_token(ca_cert)),
        ))
        tx.create("node", Node(
            ID=node_id, Version=Version(), CreatedAt="", UpdatedAt="",
            Spec=NodeSpec(Role=NodeRole.MANAGER), Description=NodeDescription(Hostname="manager-host"),
            Status=NodeStatus(State=NodeState.READY, Addr="127.0.0.1"),
            ManagerStatus=ManagerStatus(Leader=True, Addr="127.0.0.1:2377"),
        ))
    return node_id


@dataclass
class ManagerSide:
    store: MemoryStore
    dispatcher: Dispatcher
    ca: ClusterCA
    server: ClusterServer
    node_id: str
    data_root: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def tokens(self) -> JoinTokens:
        tokens = self.store.cluster().JoinTokens
        assert tokens is not None
        return tokens


@contextlib.asynccontextmanager
async def manager_side(tmp: Path, cert_expiry_s: float = 90 * 24 * 3600) -> AsyncIterator[ManagerSide]:
    store = MemoryStore(NullBackend())
    data_root = tmp / "manager"
    node_id = make_cluster(store, data_root, cert_expiry_s)
    dispatcher = Dispatcher(store, heartbeat_period_s=HEARTBEAT_S)
    runner = asyncio.create_task(dispatcher.run())
    ca = ClusterCA(store, data_root)
    ca_runner = asyncio.create_task(ca.run())
    server = ClusterServer(dispatcher, ca, "127.0.0.1", free_port_pair(), node_id_of_manager=node_id)
    await server.start()
    side = ManagerSide(store, dispatcher, ca, server, node_id, data_root)
    try:
        yield side
    finally:
        await side.server.stop(0)  # a test may have replaced it (a restarted manager)
        for t in (runner, ca_runner):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
