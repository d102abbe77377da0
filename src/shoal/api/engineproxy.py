"""HTTP to a node's engine over a byte pipe (transport/tunnel.py): the manager's half of classic
Swarm's cluster-wide Engine API.

Two uses:

- :func:`relay` passes a client's request to the engine that holds its object and streams the answer
  back as it comes (``logs --follow``, ``events``, ``stats``, pull progress, ``docker cp`` tars). A
  request that asks to be hijacked (``Upgrade: tcp``: ``docker exec -it``, ``attach``, ``run``
  without ``-d``) gets the engine's ``101 UPGRADED`` and then the raw streams in both ways, including
  a half-close when the client's stdin ends.
- :func:`call` makes one request of the manager's own (list every node's containers, ...) and
  returns the engine's status, headers and body.

h11 frames the HTTP on the pipe: one request per pipe, ``Connection: close``, so the engine closes
the pipe when it is done and nothing is left to match up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import h11
from aiohttp import web

from shoal.errors import Unavailable
from shoal.transport.tunnel import CHUNK, Pipe, Writer

log = logging.getLogger(__name__)

# Request headers that travel to the engine; the rest (Host, Connection, framing) is the pipe's own.
PASS_REQUEST = ("Content-Type", "X-Registry-Auth", "X-Registry-Config", "User-Agent", "Accept")
# Response headers that are the hop's, not the engine's answer.
HOP_BY_HOP = frozenset({"connection", "transfer-encoding", "keep-alive", "content-length", "upgrade", "server",
                        "date"})
MAX_BUFFERED = 64 * 1024 * 1024  # a JSON answer read whole (to merge or rewrite it)
BODY_READ_WHOLE = 1024 * 1024  # a request body up to this is read and sent whole; larger ones stream


class EngineResponse:
    """One answer read whole: status, headers (lower-case names) and body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    @property
    def message(self) -> str:
        """The engine's error text (``{"message": ...}``), or the body as text."""
        try:
            doc = self.json()
        except ValueError:
            return self.body.decode(errors="replace").strip()
        return str(doc.get("message", "")) if isinstance(doc, dict) else str(doc)


class _Exchange:
    """One HTTP/1.1 exchange on a pipe, framed by h11."""

    def __init__(self, pipe: Pipe) -> None:
        self.reader, self.writer = pipe
        self.conn = h11.Connection(h11.CLIENT)

    def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)

    async def send_request(self, method: str, target: str, headers: list[tuple[str, str]],
                           body: bytes | None) -> None:
        hdrs = [("Host", "docker"), *headers]
        if body is not None:
            hdrs.append(("Content-Length", str(len(body))))
        self.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            self.send(h11.Data(data=body))
        if body is not None or not any(k.lower() in ("transfer-encoding", "content-length") for k, _ in hdrs):
            self.send(h11.EndOfMessage())
        await self.writer.drain()

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(CHUNK)
            self.conn.receive_data(data)  # b"" is the engine's close: h11 ends the body or errs

    async def response(self) -> h11.Response | h11.InformationalResponse:
        try:
            while True:
                event = await self.next_event()
                if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                    continue  # 100 Continue and the like
                if isinstance(event, (h11.Response, h11.InformationalResponse)):
                    return event
                raise Unavailable(f"the engine answered with {event!r} instead of a response")
        except (h11.RemoteProtocolError, ConnectionError, OSError) as e:
            raise Unavailable(f"the engine's answer broke off: {e}") from None

    def close(self) -> None:
        self.writer.close()


def _headers(event: h11.Response | h11.InformationalResponse) -> dict[str, str]:
    return {k.decode().lower(): v.decode(errors="replace") for k, v in event.headers}


async def call(pipe: Pipe, method: str, target: str, body: Any = None, *,
               headers: dict[str, str] | None = None) -> EngineResponse:
    """One request of the manager's own; the answer is read whole (bounded by ``MAX_BUFFERED``).
    ``body``: bytes as they are, anything else as JSON."""
    hdrs = dict(headers or {})
    raw: bytes | None = None
    if body is not None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if not isinstance(body, bytes):
            hdrs.setdefault("Content-Type", "application/json")
    stream = await open_stream(pipe, method, target, headers=hdrs, body=raw)
    try:
        parts: list[bytes] = []
        size = 0
        async for data in stream.chunks():
            size += len(data)
            if size > MAX_BUFFERED:
                raise Unavailable(f"the engine's answer to {method} {target} is over {MAX_BUFFERED} bytes")
            parts.append(data)
        return EngineResponse(stream.status, stream.headers, b"".join(parts))
    finally:
        stream.close()


# ---------------------------------------------------------------------------- relaying a client's request


class _RawIn:
    """What the API connection's protocol feeds once hijacked: the client's bytes go to the
    engine as they come; its half-close (stdin ended) becomes the pipe's."""

    half_close = True  # api/conn.py keeps the connection open for writing after the client's EOF

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.ended = asyncio.Event()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write(data)
        return False, b""

    def feed_eof(self) -> None:
        if not self.ended.is_set():
            self.ended.set()
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                self.writer.write_eof()


def _upgrade_headers(request: web.Request) -> list[tuple[str, str]]:
    """A request asking to switch protocols (``Upgrade: tcp`` for Docker's hijack, ``websocket`` for
    ``attach/ws``): the headers that say so, for the engine; empty otherwise."""
    upgrade = request.headers.get("Upgrade", "")
    if not upgrade:
        return []
    return [("Connection", "Upgrade"), ("Upgrade", upgrade),
            *((k, v) for k, v in request.headers.items() if k.lower().startswith("sec-websocket-"))]


async def relay(request: web.Request, pipe: Pipe, target: str, *,
                transform: Callable[[Any], Any] | None = None) -> web.StreamResponse:
    """Send ``request`` (to ``target``: path and query as the engine should see them) through
    ``pipe`` and answer the client with what the engine says. ``transform``: rewrites a JSON answer
    of a 2xx status (read whole) before it goes back, e.g. to name the node a container is on."""
    ex = _Exchange(pipe)
    upgrade = _upgrade_headers(request)
    try:
        hdrs = [(h, request.headers[h]) for h in PASS_REQUEST if h in request.headers]
        if upgrade:
            hdrs += upgrade
            # Only a sized body (exec start's JSON): a websocket's request has none, and reading an
            # upgraded request's payload would wait for the end of the whole connection.
            body: bytes | None = await request.read() if request.content_length else None
        else:
            hdrs.append(("Connection", "close"))
            body = None
            if request.body_exists and request.content_length is None:
                hdrs.append(("Transfer-Encoding", "chunked"))
            elif request.content_length is not None and request.content_length <= BODY_READ_WHOLE:
                body = await request.read()
            elif request.body_exists:
                hdrs.append(("Content-Length", str(request.content_length)))
            elif request.method in ("POST", "PUT"):
                body = b""
        await ex.send_request(request.method, target, hdrs, body)
        if body is None and request.body_exists:  # a large or chunked body streams as it comes
            async for data in request.content.iter_chunked(CHUNK):
                ex.send(h11.Data(data=data))
                await ex.writer.drain()
            ex.send(h11.EndOfMessage())
            await ex.writer.drain()
        head = await ex.response()
        if head.status_code == 101 and upgrade:
            return await _hijacked(request, ex, head)
        return await _streamed(request, ex, head, transform)
    except (ConnectionError, OSError) as e:
        raise Unavailable(f"the engine's pipe broke: {e}") from None
    finally:
        ex.close()


async def _streamed(request: web.Request, ex: _Exchange, head: h11.Response | h11.InformationalResponse,
                    transform: Callable[[Any], Any] | None) -> web.StreamResponse:
    headers = {k: v for k, v in _headers(head).items() if k not in HOP_BY_HOP}
    if transform is not None and 200 <= head.status_code < 300 and "json" in headers.get("content-type", ""):
        parts: list[bytes] = []
        while not isinstance(event := await ex.next_event(), (h11.EndOfMessage, h11.ConnectionClosed)):
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
        doc = transform(json.loads(b"".join(parts) or b"null"))
        return web.Response(status=head.status_code, body=json.dumps(doc).encode(), headers=headers)
    resp = web.StreamResponse(status=head.status_code, reason=head.reason.decode(errors="replace") or None,
                              headers=headers)
    length = _headers(head).get("content-length")
    if length is not None and length.isdigit():
        resp.content_length = int(length)
    await resp.prepare(request)
    try:
        while True:
            event = await ex.next_event()
            if isinstance(event, h11.Data):
                await resp.write(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    except (h11.RemoteProtocolError, ConnectionError, OSError) as e:
        log.debug("engine stream for %s ended early: %s", request.path, e)
        request.protocol.force_close()  # the client must not take a cut answer for a whole one
        return resp
    await resp.write_eof()
    return resp


async def _hijacked(request: web.Request, ex: _Exchange, head: h11.InformationalResponse | h11.Response
                    ) -> web.StreamResponse:
    """The engine switched protocols: say so to the client, then join the two raw streams."""
    transport = request.transport
    if transport is None:
        return web.Response(status=499)
    said = _headers(head)
    headers = {k: v for k, v in said.items() if k not in HOP_BY_HOP}  # Content-Type, Sec-WebSocket-Accept
    headers.update({"Connection": "Upgrade", "Upgrade": said.get("upgrade", "tcp")})
    resp = web.StreamResponse(status=101, reason=head.reason.decode(errors="replace") or "UPGRADED",
                              headers=headers)
    await resp.prepare(request)
    raw_in = _RawIn(ex.writer)
    request.protocol.set_parser(raw_in)  # type: ignore[arg-type]  # from here the client's bytes are stdin
    tail, _closed = ex.conn.trailing_data
    if tail:
        transport.write(bytes(tail))
    try:
        while True:
            data = await ex.reader.read(CHUNK)
            if not data or transport.is_closing():
                break
            transport.write(data)
            await _writable(request)
    except (ConnectionError, OSError) as e:
        log.debug("hijacked stream for %s ended: %s", request.path, e)
    request.protocol.force_close()
    return resp


async def _writable(request: web.Request) -> None:
    """Wait while the client's socket has too much unsent (the engine's output outruns it): the
    protocol is paused by the transport past its high-water mark, and aiohttp's drain helper (what
    its own writers await) waits for the resume."""
    await request.protocol._drain_helper()


# ---------------------------------------------------------------------------- answers read as they come


class EngineStream:
    """An answer whose head has come and whose body is read as it comes (pull progress from many
    engines at once, merged by the caller); :meth:`close` ends the exchange."""

    def __init__(self, ex: _Exchange, status: int, headers: dict[str, str]) -> None:
        self._ex, self.status, self.headers = ex, status, headers

    async def chunks(self) -> Any:
        """The body's pieces; the engine's close ends them. A broken pipe ends them early, as
        :class:`~shoal.errors.Unavailable`."""
        try:
            while True:
                event = await self._ex.next_event()
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return
        except (h11.RemoteProtocolError, ConnectionError, OSError) as e:
            raise Unavailable(f"the engine's answer broke off: {e}") from None

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def close(self) -> None:
        self._ex.close()


async def open_stream(pipe: Pipe, method: str, target: str, *, headers: dict[str, str] | None = None,
                      body: bytes | None = None, body_chunks: Any = None) -> EngineStream:
    """Send a request (its body whole, or streamed from the async iterator ``body_chunks``) and
    return once the answer's head is in; the caller reads the body and closes."""
    ex = _Exchange(pipe)
    try:
        hdrs = [("Connection", "close"), *(headers or {}).items()]
        if body_chunks is not None:
            hdrs.append(("Transfer-Encoding", "chunked"))
            await ex.send_request(method, target, hdrs, None)
            async for data in body_chunks:
                ex.send(h11.Data(data=data))
                await ex.writer.drain()
            ex.send(h11.EndOfMessage())
            await ex.writer.drain()
        else:
            await ex.send_request(method, target, hdrs, body if body is not None or method not in ("POST", "PUT")
                                  else b"")
        head = await ex.response()
        return EngineStream(ex, head.status_code, _headers(head))
    except (h11.LocalProtocolError, ConnectionError, OSError) as e:
        ex.close()
        raise Unavailable(f"the engine's pipe broke during {method} {target}: {e}") from None
    except BaseException:
        ex.close()
        raise
