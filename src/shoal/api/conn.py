"""Connection-level bounds on the API listeners: slow clients and connection floods.

aiohttp reads requests with no deadline of its own (its keep-alive timer is the only one, an hour by
default), and accepts every connection, so a slowloris client (many connections, a header byte
every few seconds, or a body that never ends) could hold sockets and memory forever. Here:

- the request head must be complete within ``header_timeout`` of the connection opening, or of its
  first byte after the previous response (Go's ReadHeaderTimeout, which dockerd sets to 5 minutes;
  ours is shorter: the API's requests are small and local or near);
- a request body must not stall for more than ``body_idle_timeout`` (unless the server itself
  stopped reading because the handler has not consumed what arrived);
- an idle keep-alive connection closes after ``idle_timeout``;
- each listener accepts at most ``max_connections`` connections, and ``max_connections_per_client``
  from one TCP address (IPv6: one /64). Counting happens at accept(), before any TLS handshake,
  so connections stuck in a handshake count too (and the handshake has ``header_timeout``).
  Over a cap a new connection is closed at once rather than left waiting: waiting would keep the
  kernel's backlog full and make every client hang behind the flood, whereas closing fails fast
  and keeps the listener draining. On a plain listener the refusal carries a best-effort
  503/429 with Docker's ``{"message": ...}``; over TLS it is a bare close (no handshake is spent).

None of these deadlines apply while a response is being written, so ``logs --follow`` streams
run as long as the client keeps them open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import weakref
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

from shoal.bounds import address_bucket

log = logging.getLogger(__name__)

# 10 s, as the brief of issue 11 and most reverse proxies do: a docker CLI sends its request head in
# one write right after connecting; only a stalled or hostile client needs longer.
HEADER_TIMEOUT_S = 10.0
# 30 s without a byte in the middle of a body: bodies are JSON specs of at most 16 MiB.
BODY_IDLE_TIMEOUT_S = 30.0
# 60 s idle keep-alive: clients reconnect cheaply (Go's client keeps idle connections 90 s and
# retries a request that meets a closed idle connection); it frees sockets held by silent clients.
IDLE_TIMEOUT_S = 60.0
# 1,024 connections per listener: far above what the CLI and SDK clients of one cluster hold, and
# well under the process's file limit (the daemon also opens store files, agent streams, sockets).
MAX_CONNECTIONS = 1024
# 256 per TCP client address: a host behind one NAT address may run many clients, but one
# address alone can then take at most a quarter of a listener.
MAX_CONNECTIONS_PER_CLIENT = 256
# Request head bounds (aiohttp's defaults, stated here so they are ours): a request or header line
# of at most 8,190 bytes (X-Registry-Auth, the largest header the docker CLI sends, fits), at most
# 128 header fields. Over them aiohttp answers 400 and closes the connection.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128
_WARN_EVERY_S = 10.0


@dataclass(frozen=True)
class ConnLimits:
    """The bounds of one server (see the module docstring); tests shrink the timeouts."""

    header_timeout: float = HEADER_TIMEOUT_S
    body_idle_timeout: float = BODY_IDLE_TIMEOUT_S
    idle_timeout: float = IDLE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT
    max_line_size: int = MAX_LINE_SIZE
    max_field_size: int = MAX_FIELD_SIZE
    max_headers: int = MAX_HEADERS


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection handler plus a read deadline: headers within ``header_timeout``, body
    bytes at least every ``body_idle_timeout``. Past it the connection is closed.

    It reads a few of RequestHandler's private fields (which message is parsed, whether a handler
    runs); tests/unit/test_api_conn.py exercises each path, so an aiohttp change that moves them
    fails there."""

    __slots__ = ("_body", "_deadline", "_header_since", "_last_rx", "_limits")

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, limits: ConnLimits,
                 **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, keepalive_timeout=limits.idle_timeout,
                         max_line_size=limits.max_line_size, max_field_size=limits.max_field_size,
                         max_headers=limits.max_headers, **kwargs)
        self._limits = limits
        self._deadline: asyncio.TimerHandle | None = None
        self._header_since: float | None = None  # when the clock for the current request head started
        self._body: StreamReader | None = None  # the body still arriving, if any
        self._last_rx = 0.0

    # -------------------------------------------------------------------- protocol events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Go starts ReadHeaderTimeout at accept for the first request: a client that connects and
        # says nothing is as much a slowloris as one that trickles.
        self._header_since = self._loop.time()
        self._schedule()

    def data_received(self, data: bytes) -> None:
        now = self._last_rx = self._loop.time()
        if data and self._header_since is None and self._between_requests():
            self._header_since = now  # the first byte of the next request head
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a whole head arrived: its clock stops
            self._header_since = None
            payload = self._messages[-1][1] if self._messages else None
            self._body = payload if isinstance(payload, StreamReader) and not payload.is_eof() else None
        self._schedule()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_deadline()
        self._body = None
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:
        """A hijacked connection (``docker exec -i``, api/engineproxy.py) whose client closed its
        writing half (stdin ended) stays open for the rest of the output; otherwise asyncio closes
        the socket at EOF."""
        parser = self._payload_parser
        if getattr(parser, "half_close", False):
            parser.feed_eof()  # type: ignore[union-attr]
            return True
        return super().eof_received()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """A malformed or oversized request head is the client's error, answered 400: one debug line,
        not a logged traceback per request (a flood of them would flood the log)."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            log.debug("bad HTTP request from %s: %s", self.peername or "unix socket", exc)
            return
        super().log_exception(*args, **kwargs)

    # -------------------------------------------------------------------- the deadline

    def _between_requests(self) -> bool:
        return not self._request_in_progress and not self._messages and not self._body_pending()

    def _body_pending(self) -> bool:
        return self._body is not None and not self._body.is_eof() and self._body.exception() is None

    def _held_back(self) -> bool:
        """The server stopped reading (the handler has not consumed what arrived): not the client's stall."""
        return bool(getattr(self, "_reading_paused", False) or getattr(self, "_buffer_paused", False))

    def _next_deadline(self) -> float | None:
        if self._header_since is not None:
            return self._header_since + self._limits.header_timeout
        if self._body_pending():
            return self._last_rx + self._limits.body_idle_timeout
        return None

    def _schedule(self) -> None:
        when = self._next_deadline()
        if when is None:
            return  # a pending check finds nothing to do and stops
        if self._deadline is not None:
            if self._deadline.when() <= when:
                return  # an earlier check is due; it re-reads the deadline
            self._deadline.cancel()
        self._deadline = self._loop.call_at(when, self._check)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _check(self) -> None:
        self._deadline = None
        if self.transport is None:
            return
        now = self._loop.time()
        if self._header_since is not None:
            if now >= self._header_since + self._limits.header_timeout:
                self._drop(f"request head not complete within {self._limits.header_timeout:g} s")
                return
        elif self._body_pending():
            if self._held_back():
                self._last_rx = now  # our own back-pressure: the client is not the one stalling
            elif now >= self._last_rx + self._limits.body_idle_timeout:
                self._drop(f"no request body byte for {self._limits.body_idle_timeout:g} s")
                return
        self._schedule()

    def _drop(self, why: str) -> None:
        log.info("closing API connection from %s: %s", self.peername or "unix socket", why)
        if self._body is not None and self._body_pending():
            # A handler waiting on the body gets a clear error instead of waiting for the close.
            self._body.set_exception(ConnectionResetError(f"client too slow: {why}"))
        self.force_close()


# ------------------------------------------------------------------------ admission at accept()


class Admission:
    """Connections open on one listener, in total and per client address (TCP only)."""

    def __init__(self, name: str, limits: ConnLimits, tls: bool) -> None:
        self.name = name
        self.limit = limits.max_connections
        self.per_client = limits.max_connections_per_client
        self.tls = tls
        self.total = 0
        self.by_client: dict[str, int] = {}
        self.refused = 0
        self._warned = 0.0

    def admit(self, client: str | None) -> tuple[int, str] | None:
        """Count a new connection in; over a cap, (status, message) and nothing counted."""
        if self.total >= self.limit:
            return 503, (f"too many connections to {self.name}: at most {self.limit} are served at once; "
                         "try again later")
        if client is not None and self.by_client.get(client, 0) >= self.per_client:
            return 429, (f"too many connections from {client} to {self.name}: at most {self.per_client} "
                         "per client address; close some and try again")
        self.total += 1
        if client is not None:
            self.by_client[client] = self.by_client.get(client, 0) + 1
        return None

    def release(self, client: str | None) -> None:
        self.total -= 1
        if client is not None:
            left = self.by_client[client] - 1
            if left:
                self.by_client[client] = left
            else:
                del self.by_client[client]

    def refuse(self, conn: socket.socket, status: int, message: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:  # a flood must not flood the log too
            self._warned = now
            log.warning("refusing API connections: %s (%d refused so far)", message, self.refused)
        try:
            if not self.tls:
                conn.setblocking(False)
                body = json.dumps({"message": message}).encode()
                reason = "Too Many Requests" if status == 429 else "Service Unavailable"
                conn.send(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(65536)  # what the client already sent: unread, the close would be a reset
        except OSError:
            pass  # best effort: the client may already be gone, or its request not yet arrived
        finally:
            conn.close()


class _Conn(socket.socket):
    """An accepted connection that gives its place back to its listener when closed (or collected)."""

    _release: weakref.finalize | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._release is not None:
                self._release()  # runs once however often close() is called


class ListenSocket(socket.socket):
    """A listening socket whose accept() applies its listener's :class:`Admission`. asyncio's event
    loop calls accept() on the very socket given to create_server(sock=...), so every connection,
    TLS or not, is counted before anything else is spent on it."""

    admission: Admission

    def accept(self) -> tuple[socket.socket, Any]:
        while True:  # refused ones are closed here; BlockingIOError ends the loop when none is left
            plain, addr = super().accept()
            conn = _Conn(plain.family, plain.type, plain.proto, fileno=plain.detach())
            client = address_bucket(str(addr[0])) if isinstance(addr, tuple) and addr else None
            refusal = self.admission.admit(client)
            if refusal is not None:
                self.admission.refuse(conn, *refusal)
                continue
            fin = weakref.finalize(conn, self.admission.release, client)
            fin.atexit = False
            conn._release = fin
            return conn, addr


# ------------------------------------------------------------------------ sites


class GuardedSite(web.BaseSite):
    """Serves a runner on a :class:`ListenSocket` with :class:`GuardedHandler` connections."""

    __slots__ = ("_limits", "_name", "_sock")

    def __init__(self, runner: web.BaseRunner, sock: ListenSocket, limits: ConnLimits, name: str, *,
                 ssl_context: Any = None, backlog: int = 128) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._sock = sock
        self._limits = limits
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        limits = self._limits

        def factory() -> GuardedHandler:
            return GuardedHandler(server, loop=loop, limits=limits, access_log=None)

        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            # asyncio's default is 60 s: a handshake that never ends is a slowloris before the head.
            tls = {"ssl": self._ssl_context, "ssl_handshake_timeout": limits.header_timeout}
        self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog, **tls)


def tcp_listen_sockets(host: str, port: int, admission: Admission) -> list[ListenSocket]:
    """Bound sockets for ``host:port`` (every address it resolves to, as loop.create_server does)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[ListenSocket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, type_, proto, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = ListenSocket(family, type_, proto)
            socks.append(sock)
            sock.admission = admission
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as e:
                raise OSError(e.errno, f"error while attempting to bind on address {sockaddr!r}: "
                              f"{e.strerror.lower() if e.strerror else e}") from None
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def unix_listen_socket(path: str, admission: Admission) -> ListenSocket:
    sock = ListenSocket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.admission = admission
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    return sock
