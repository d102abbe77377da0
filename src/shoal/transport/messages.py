"""Wire messages of the gRPC transport, around the agent protocol's own structs.

The protocol's structs (:mod:`shoal.dispatcher.protocol`) are reused as they are; these add what
only a network transport needs: requests naming a session, certificates, and the cluster facts a
node compares with its certificate (its role, the root's digest) to know when to renew.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shoal.dispatcher.protocol import (
    EngineHealth,
    LogMessage,
    LogOptions,
    LogRecord,
    SessionInfo,
    TaskStats,
    TaskStatusUpdate,
)
from shoal.models import NodeDescription, Task


class Empty(msgspec.Struct):
    pass


# ---------------------------------------------------------------------------- bootstrap listener


class RootCAResponse(msgspec.Struct):
    root_pem: str  # the cluster's current root, exactly as join tokens digest it


class JoinRequest(msgspec.Struct):
    token: str
    csr_pem: str
    hostname: str
    addr: str
    availability: str = "active"
    listen_port: int = 0  # a manager's cluster port (0: 2377), for the others to reach it
    etcd_port: int = 0  # the client port of the etcd member a joining manager will run (0: 2379)


class ManagerJoin(msgspec.Struct):
    """What a manager joining a swarm on etcd needs: where the store is (shoal.ha.StoreSettings,
    with the etcd cluster its new member joins) and the CA's key, so that it can sign when it leads.
    Sent only over the bootstrap channel the joiner pinned to the token's root, to a manager token."""

    store: dict[str, Any]
    ca_key_pem: str
    # The store's data keyring (store.key, store/sealing.py): every manager of a swarm on etcd
    # opens and seals the same values. Empty from a leader that predates sealing.
    store_key: str = ""
    # The etcd CA (store/etcdtls.py) the managed members trust: a joining manager issues its own
    # member certificate from it. Empty for an etcd the user runs, or a swarm made before it.
    etcd_ca_pem: str = ""
    etcd_ca_key_pem: str = ""
    # Autolock's unlock key (SWMKEY-1-...; empty: autolock off): the joiner wraps the keys above
    # under it before they touch its disk, as swarmkit's joining managers do.
    unlock_key: str = ""


class JoinResponse(msgspec.Struct):
    node_id: str
    role: str
    cert_pem: str
    bundle_pem: str  # every root the node should trust (current first)
    manager: ManagerJoin | None = None  # a manager of a swarm on etcd: its part of the store


# ---------------------------------------------------------------------------- cluster listener


class PromoteRequest(msgspec.Struct):
    """A worker promoted to manager asks for its part of the store (swarm on etcd)."""

    listen_port: int = 0  # its cluster port (0: 2377)
    etcd_port: int = 0  # its etcd member's client port (0: 2379)


class ForwardRequest(msgspec.Struct):
    """A write made to a manager that does not lead, as it came (api/forward.py)."""

    method: str
    path: str  # path and query string, the API version prefix included
    headers: dict[str, str]
    body: bytes


class ForwardResponse(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: bytes


class CertState(msgspec.Struct):
    """What the node's certificate should say now. A node whose certificate differs (promoted,
    demoted, root rotated) renews at once."""

    role: str
    root_digest: str


class RegisterRequest(msgspec.Struct):
    node_id: str
    description: NodeDescription
    addr: str
    # Absent from older agents (None: the node counts as able to run tasks, as before). Unknown
    # fields are ignored when decoding, so older managers simply do not see it.
    engine: EngineHealth | None = None


class RegisterResponse(msgspec.Struct):
    session: SessionInfo
    state: CertState


class SessionRequest(msgspec.Struct):
    """Heartbeat, Assignments and LogSubscriptions name only the session."""

    session_id: str


class HeartbeatRequest(msgspec.Struct):
    """A heartbeat names its session and carries the node's engine health. Wire-compatible with
    :class:`SessionRequest` both ways: an older agent's heartbeat decodes with ``engine`` None."""

    session_id: str
    engine: EngineHealth | None = None


class HeartbeatResponse(msgspec.Struct):
    period_s: float
    state: CertState


class UpdateTaskStatusRequest(msgspec.Struct):
    session_id: str
    updates: list[TaskStatusUpdate]


class ReportStatsRequest(msgspec.Struct):
    session_id: str
    stats: list[TaskStats]


class ShipLogsRequest(msgspec.Struct):
    session_id: str
    records: list[LogRecord]


class RenewRequest(msgspec.Struct):
    csr_pem: str


class RenewResponse(msgspec.Struct):
    cert_pem: str
    role: str
    bundle_pem: str


class LogSubscription(msgspec.Struct):
    """The manager asks the agent for the logs of ``tasks`` (or, with ``cancel``, to stop sending)."""

    id: str
    tasks: list[Task] = msgspec.field(default_factory=list)
    options: LogOptions = msgspec.field(default_factory=LogOptions)
    cancel: bool = False


class PublishLogsMessage(msgspec.Struct):
    """Lines for one subscription; ``close`` marks its end (``error``: why it ended early)."""

    subscription_id: str
    messages: list[LogMessage] = msgspec.field(default_factory=list)
    close: bool = False
    error: str = ""


# ---------------------------------------------------------------------------- engine tunnels


class TunnelRequest(msgspec.Struct):
    """The manager asks the agent to open a byte pipe ``id`` to its engine (transport/tunnel.py)."""

    id: str


class TunnelChunk(msgspec.Struct):
    """Bytes of one pipe. The first message on a stream names the pipe: ``id`` (an agent answering
    a TunnelRequest) or ``node`` (a manager asking the leader to relay to that node's engine).
    ``eof``: the sender will send no more (a half-close); ``error``: why the pipe could not open."""

    id: str = ""
    node: str = ""
    data: bytes = b""
    eof: bool = False
    error: str = ""
