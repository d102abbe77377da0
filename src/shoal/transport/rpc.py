"""Method tables shared by server and client: names, message types, msgpack codecs, channel options."""

from __future__ import annotations

from typing import Any

import grpc
import msgspec

from shoal.ca.certs import MANAGER_SERVER_NAME
from shoal.dispatcher.protocol import Assignments
from shoal.transport import messages as m
from shoal.transport.limits import BOOTSTRAP_MAX_MESSAGE, CLUSTER_MAX_MESSAGE, Malformed, Oversized

DISPATCHER_SERVICE = "shoal.Dispatcher"  # cluster port, mutual TLS
BOOTSTRAP_SERVICE = "shoal.Bootstrap"  # bootstrap port (cluster port + 1), server-only TLS

# method name → (request type, response type)
DISPATCHER_METHODS: dict[str, tuple[type[Any], type[Any]]] = {
    "Register": (m.RegisterRequest, m.RegisterResponse),
    "Heartbeat": (m.HeartbeatRequest, m.HeartbeatResponse),
    "Assignments": (m.SessionRequest, Assignments),
    "UpdateTaskStatus": (m.UpdateTaskStatusRequest, m.Empty),
    "ReportStats": (m.ReportStatsRequest, m.Empty),
    "ShipLogs": (m.ShipLogsRequest, m.Empty),
    "RenewCertificate": (m.RenewRequest, m.RenewResponse),
    "LogSubscriptions": (m.SessionRequest, m.LogSubscription),
    "PublishLogs": (m.PublishLogsMessage, m.Empty),
    "Forward": (m.ForwardRequest, m.ForwardResponse),
    "Promote": (m.PromoteRequest, m.ManagerJoin),
    "EngineTunnels": (m.SessionRequest, m.TunnelRequest),
    "EngineTunnel": (m.TunnelChunk, m.TunnelChunk),
    "EngineRelay": (m.TunnelChunk, m.TunnelChunk),
}
BOOTSTRAP_METHODS: dict[str, tuple[type[Any], type[Any]]] = {
    "GetRootCA": (m.Empty, m.RootCAResponse),
    "Join": (m.JoinRequest, m.JoinResponse),
}

MAX_MESSAGE = 256 * 1024 * 1024  # a node's full assignment set can be large (thousands of tasks)

# Keepalives find a dead peer (cut link, killed host) in seconds, not at the next TCP timeout.
KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
# grpc.aio takes calls off gRPC's queue one per event-loop turn, so while the manager's loop is busy
# (a 100,000-task deploy) calls wait in the core's queue. Past 1,000 queued, gRPC drops new ones at
# random (its default "pending backlog" protection, surfacing as CANCELLED), and any call queued for
# 30 s is dropped too: agents then lost their sessions to the manager's stall and were marked down
# (the etcd scale run, where the loop is busiest). The queue is bounded still, far above 1,000
# nodes' worth of heartbeats and reports; the callers' own deadlines (10 s for agents) bound the wait.
PENDING_CALLS = 20_000
HANDSHAKE_TIMEOUT_MS = 10_000  # a connection that has not finished TLS by then is dropped (gRPC: 120 s)
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *KEEPALIVE_OPTIONS,
    ("grpc.server.max_pending_requests", PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", 2 * PENDING_CALLS),
    ("grpc.server_max_unrequested_time_in_server", 120),
    ("grpc.so_reuseport", 0),  # a second manager on the same port must fail, not share it
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
    # Requests are bounded per method (transport/limits.py); this is the largest of those bounds.
    ("grpc.max_receive_message_length", CLUSTER_MAX_MESSAGE + 1024),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
# The bootstrap port answers anyone: small messages, few calls at once, short-lived connections.
BOOTSTRAP_OPTIONS: list[tuple[str, Any]] = [
    *[o for o in SERVER_OPTIONS if o[0] != "grpc.max_receive_message_length"],
    ("grpc.max_receive_message_length", BOOTSTRAP_MAX_MESSAGE + 1024),
    ("grpc.max_connection_idle_ms", 30_000),
    ("grpc.max_concurrent_streams", 8),  # per connection: a joiner makes two calls
    ("grpc.max_connection_age_ms", 120_000),
    ("grpc.max_connection_age_grace_ms", 60_000),  # a manager's join waits for etcd to add its member
]
CLIENT_OPTIONS: list[tuple[str, Any]] = [
    *KEEPALIVE_OPTIONS,
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # Reconnect soon after a manager comes back; the agent backs off on its own.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

encode = msgspec.msgpack.encode


def decoder(t: type[Any]) -> Any:
    return msgspec.msgpack.Decoder(t).decode


def bounded_decoder(t: type[Any], method: str, limit: int) -> Any:
    """A request decoder that answers :class:`Oversized` for a message over ``limit`` bytes and
    :class:`Malformed` for one that does not decode (the handler then answers with a clear status;
    a decoder that raised would make gRPC answer INTERNAL, "Exception deserializing request!")."""
    decode = msgspec.msgpack.Decoder(t).decode

    def run(data: bytes) -> Any:
        if len(data) > limit:
            return Oversized(method, len(data), limit)
        try:
            return decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return Malformed(method, str(e))

    return run


def path(service: str, method: str) -> str:
    return f"/{service}/{method}"


def split_addr(addr: str, default_port: int = 2377) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``host`` → (host, port)."""
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if addr.count(":") == 1:
        host, port = addr.split(":")
        return host, int(port)
    return addr, default_port


def secure_channel(host: str, port: int, root_pem: str, key_pem: str | None = None,
                   cert_pem: str | None = None) -> grpc.aio.Channel:
    """A TLS channel to a manager, checking its certificate against ``root_pem`` and the server name
    every manager certificate carries (so any of the manager's addresses works)."""
    creds = grpc.ssl_channel_credentials(root_pem.encode(), key_pem.encode() if key_pem else None,
                                         cert_pem.encode() if cert_pem else None)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return grpc.aio.secure_channel(target, creds,
                                   options=[*CLIENT_OPTIONS, ("grpc.ssl_target_name_override", MANAGER_SERVER_NAME)])
