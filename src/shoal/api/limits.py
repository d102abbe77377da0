"""Per-client bounds on the API: concurrent long-lived streams (service/task logs and ``/events``).

A stream holds manager resources for as long as the client keeps it open (a store watch, a merge
queue, one log stream per agent that runs one of the tasks), so one client must not be able to open
thousands of them. Connection-level bounds (timeouts, connection caps) are in api/conn.py.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator

from aiohttp import web

from shoal.api.auth import IDENTITY_KEY, USER_KEY
from shoal.bounds import KeyedSlots, address_bucket

# 32: a person following every service of a large stack in its own terminal, or a log shipper with
# a stream per service, stays well under it; one stream costs a store watch, a queue of up to
# 1,024 messages and a stream from every agent involved, so 32 per client keeps a misbehaving
# client's share small while the many-client total stays bounded by the connection caps.
STREAMS_PER_CLIENT = 32

# The identities that do not name a person: every local unix-socket caller is "local" and every
# unauthenticated caller (--insecure-tcp) "anonymous"; they are told apart by uid or address.
_SHARED_NAMES = frozenset({"unix", "anonymous"})
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(sock: socket.socket | None) -> int | None:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED), if the OS says."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        _, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return None
    return uid


def client_key(request: web.Request) -> str:
    """Who the caller is for per-client caps: the authenticated user when there is one; else the
    peer's uid on a unix socket, or its address (bucket) on TCP."""
    ident = request.get(IDENTITY_KEY)
    user = request.get(USER_KEY)
    if user and (ident is None or ident.via not in _SHARED_NAMES):
        return f"user {user}"
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        uid = peer_uid(sock)
        return f"uid {uid}" if uid is not None else "unix"
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and peer:
        return f"address {address_bucket(str(peer[0]))}"
    return "unknown"


class StreamSlots(KeyedSlots):
    """Counts the streams each client holds open; one per app (all listeners share it)."""

    def __init__(self, per_client: int = STREAMS_PER_CLIENT) -> None:
        super().__init__(per_client)
        self.per_client = per_client

    def refusal(self, key: str) -> str:
        return (f"too many concurrent log or event streams for {key}: at most {self.per_client} per client are "
                "allowed; close one (e.g. a 'logs --follow' or 'events') and try again")


STREAM_SLOTS: web.AppKey[StreamSlots] = web.AppKey("shoal.stream_slots", StreamSlots)


@contextlib.contextmanager
def stream_slot(request: web.Request) -> Iterator[None]:
    """Hold one of the caller's stream slots while a long response runs (see :class:`StreamSlots`)."""
    slots = request.app.get(STREAM_SLOTS)
    if slots is None:  # an app not built by create_app: nothing to count against
        yield
        return
    with slots.hold(client_key(request)):
        yield
