"""Byte pipes from a manager to the engine of any node: what lets the Engine API work cluster-wide.

Classic Swarm held a TLS connection to every engine. Shoal's managers cannot dial an agent (agents
dial in; a node may sit behind NAT and opens no port), so a pipe is opened the way log streams are
(transport/logs.py): the agent keeps an ``EngineTunnels`` stream open; to reach its engine the
leader sends a :class:`TunnelRequest` down it, and the agent answers with an ``EngineTunnel`` call
of its own, which it joins to a fresh connection to its local engine socket. Bytes then flow both
ways in chunks (``eof`` marks a half-close, which a hijacked ``docker exec``/``attach`` uses when its
stdin ends). A manager that does not lead asks the leader to relay (``EngineRelay``); a manager
reaches its own engine directly.

A pipe carries whatever the HTTP proxy (api/engineproxy.py) writes: one request, or a request and
then the raw streams of a hijacked connection. Nothing here reads the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import grpc

from shoal.errors import Unavailable
from shoal.ids import new_id
from shoal.transport.messages import TunnelChunk, TunnelRequest
from shoal.transport.rpc import DISPATCHER_SERVICE, decoder, encode, path

log = logging.getLogger(__name__)

CHUNK = 64 * 1024  # bytes per message (under the methods' 80 KiB limit)
HIGH_WATER = 4 * CHUNK  # a writer's drain() waits while more than this is queued
OPEN_TIMEOUT_S = 10.0  # how long opening a pipe waits for the node's agent to answer


class Writer(Protocol):
    """The part of :class:`asyncio.StreamWriter` a pipe's user needs (a local engine connection is
    one; a tunnel's end is a :class:`QueueWriter`)."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


Pipe = tuple[asyncio.StreamReader, Writer]


class EngineSource(Protocol):
    """Opens byte pipes to one node's engine."""

    async def open(self) -> Pipe: ...


async def open_engine_socket(url: str) -> Pipe:
    """A new connection to an engine at ``unix:///path`` or ``tcp://host:port``."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            return await asyncio.open_unix_connection(parts.path, limit=CHUNK * 4)
        if parts.scheme in ("tcp", "http") and parts.hostname:
            return await asyncio.open_connection(parts.hostname, parts.port or 2375, limit=CHUNK * 4)
    except OSError as e:
        raise Unavailable(f"the engine at {url} does not answer: {e.strerror or e}") from None
    raise Unavailable(f"cannot reach an engine at {url!r}: only unix:// and tcp:// engines can be proxied")


class LocalEngine:
    """This host's own engine."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> Pipe:
        return await open_engine_socket(self.url)


# ---------------------------------------------------------------------------- a pipe made of queues


_EOF = b""


class QueueWriter:
    """The sending half of a tunnel's end: what is written waits in a queue for the gRPC stream."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[TunnelChunk | None] = asyncio.Queue()
        self._queued = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False
        self._done = asyncio.Event()  # the stream stopped sending (closed, or the peer went away)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("the engine pipe is closed")
        for i in range(0, len(data), CHUNK):
            piece = data[i:i + CHUNK]
            self._queued += len(piece)
            self._queue.put_nowait(TunnelChunk(data=piece))
        if self._queued > HIGH_WATER:
            self._drained.clear()

    async def drain(self) -> None:
        if self._closed:
            raise ConnectionResetError("the engine pipe is closed")
        await self._drained.wait()

    def write_eof(self) -> None:
        if not self._closed:
            self._queue.put_nowait(TunnelChunk(eof=True))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)
        self._drained.set()

    async def wait_closed(self) -> None:
        await self._done.wait()

    def lost(self) -> None:
        """The stream under it ended: writing is no longer possible."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)
        self._drained.set()
        self._done.set()

    async def chunks(self) -> AsyncIterator[TunnelChunk]:
        """What to send, in order, until :meth:`close`."""
        try:
            while True:
                chunk = await self._queue.get()
                if chunk is None:
                    return
                self._queued -= len(chunk.data)
                if self._queued <= HIGH_WATER:
                    self._drained.set()
                yield chunk
        finally:
            self.lost()


def feed(reader: asyncio.StreamReader, chunk: TunnelChunk) -> None:
    if chunk.data:
        reader.feed_data(chunk.data)
    if chunk.eof:
        reader.feed_eof()


def new_reader() -> asyncio.StreamReader:
    return asyncio.StreamReader(limit=CHUNK * 4)


# ---------------------------------------------------------------------------- the leader's side


class RemoteEngine:
    """An :class:`EngineSource` for the node behind one ``EngineTunnels`` stream (on the leader)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._outbox: asyncio.Queue[TunnelRequest | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[tuple[asyncio.StreamReader, QueueWriter]]] = {}
        self.closed = False

    async def open(self) -> Pipe:
        if self.closed:
            raise Unavailable(f"node {self.node_id} is not connected")
        pid = new_id()
        fut: asyncio.Future[tuple[asyncio.StreamReader, QueueWriter]] = asyncio.get_running_loop().create_future()
        self._pending[pid] = fut
        self._outbox.put_nowait(TunnelRequest(id=pid))
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                return await fut
        except TimeoutError:
            raise Unavailable(f"node {self.node_id} did not open a pipe to its engine within "
                              f"{OPEN_TIMEOUT_S:g}s") from None
        finally:
            self._pending.pop(pid, None)

    async def requests(self) -> AsyncIterator[TunnelRequest]:
        """What to send down the agent's EngineTunnels stream, until :meth:`close`."""
        while True:
            req = await self._outbox.get()
            if req is None:
                return
            yield req

    async def serve(self, first: TunnelChunk, rest: AsyncIterator[TunnelChunk]) -> AsyncIterator[TunnelChunk]:
        """The agent's EngineTunnel call for pipe ``first.id``: joins it to the waiting opener."""
        fut = self._pending.get(first.id)
        if fut is None or fut.done():
            return  # opened too late (the opener gave up): the call ends, the agent closes its socket
        if first.error:
            fut.set_exception(Unavailable(f"node {self.node_id}: {first.error}"))
            return
        reader, writer = new_reader(), QueueWriter()
        fut.set_result((reader, writer))
        async for chunk in _joined(reader, writer, rest):
            yield chunk

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Unavailable(f"node {self.node_id} disconnected"))
        self._outbox.put_nowait(None)


async def _joined(reader: asyncio.StreamReader, writer: QueueWriter,
                  incoming: AsyncIterator[TunnelChunk]) -> AsyncIterator[TunnelChunk]:
    """Run one gRPC stream as a pipe's far end: what arrives feeds ``reader``, what ``writer``
    queues is yielded. Ends when the writer closes; the reader sees EOF if the stream breaks."""

    async def take() -> None:
        try:
            async for chunk in incoming:
                feed(reader, chunk)
                if chunk.error:
                    reader.set_exception(ConnectionResetError(chunk.error))
                    return
        except Exception as e:  # the stream broke: whoever reads sees it as a reset
            reader.set_exception(ConnectionResetError(str(e) or type(e).__name__))
            return
        if not reader.at_eof():
            reader.feed_eof()

    taker = asyncio.create_task(take(), name="pipe-in")
    try:
        async for chunk in writer.chunks():
            yield chunk
    finally:
        taker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await taker
        if not reader.at_eof() and reader.exception() is None:
            reader.feed_eof()


async def relay_to(source: EngineSource | None, first: TunnelChunk,
                   rest: AsyncIterator[TunnelChunk], why_not: str = "") -> AsyncIterator[TunnelChunk]:
    """The leader's EngineRelay: a pipe to ``first.node``'s engine, for another manager. The first
    answer says whether it opened (empty) or why not (``error``)."""
    if source is None:
        yield TunnelChunk(error=why_not or f"node {first.node} is not connected")
        return
    try:
        reader, writer = await source.open()
    except Unavailable as e:
        yield TunnelChunk(error=e.message)
        return
    yield TunnelChunk()
    async for chunk in pump(reader, writer, rest):
        yield chunk


async def pump(reader: asyncio.StreamReader, writer: Writer,
               incoming: AsyncIterator[TunnelChunk]) -> AsyncIterator[TunnelChunk]:
    """Join a real connection (``reader``/``writer``) to a gRPC stream: what arrives is written to
    it, what it sends is yielded, until it closes. Used by the agent (its engine socket) and the
    leader's relay (a pipe it opened)."""

    async def give() -> None:
        try:
            async for chunk in incoming:
                if chunk.data:
                    writer.write(chunk.data)
                    await writer.drain()
                if chunk.eof:
                    with contextlib.suppress(OSError, RuntimeError):
                        writer.write_eof()
        except (OSError, ConnectionError):
            pass  # the connection went: the reading side sees it too

    giver = asyncio.create_task(give(), name="pipe-out")
    try:
        while True:
            try:
                data = await reader.read(CHUNK)
            except (OSError, ConnectionError) as e:
                yield TunnelChunk(error=str(e) or "connection reset")
                return
            if not data:
                break
            yield TunnelChunk(data=data)
        yield TunnelChunk(eof=True)
    finally:
        giver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await giver
        writer.close()


async def pipe_from_stream(responses: AsyncIterator[TunnelChunk], writer: QueueWriter,
                           opened: TunnelChunk) -> Pipe:
    """A pipe whose bytes arrive on ``responses`` (after ``opened``, the first answer) and leave
    through ``writer`` (whose chunks the caller is already sending). For a relay's caller."""
    reader = new_reader()

    async def take() -> None:
        try:
            async for chunk in responses:
                feed(reader, chunk)
                if chunk.error:
                    reader.set_exception(ConnectionResetError(chunk.error))
                    return
        except Exception as e:
            reader.set_exception(ConnectionResetError(str(e) or type(e).__name__))
            return
        finally:
            writer.lost()
        if not reader.at_eof():
            reader.feed_eof()

    feed(reader, opened)
    task = asyncio.create_task(take(), name="relay-in")
    _keep(task)
    return reader, writer


async def open_relay(channel: grpc.aio.Channel, node_id: str) -> Pipe:
    """A pipe to ``node_id``'s engine through the leader (``channel``: a manager's to the leader)."""
    writer = QueueWriter()
    factory = channel.stream_stream(path(DISPATCHER_SERVICE, "EngineRelay"), request_serializer=encode,
                                    response_deserializer=decoder(TunnelChunk))
    stream: Any = None

    async def requests() -> AsyncIterator[TunnelChunk]:
        yield TunnelChunk(node=node_id)
        async for chunk in writer.chunks():
            yield chunk
        if stream is not None:  # closed by its user: the far end stops too
            stream.cancel()

    stream = factory(requests())
    responses = stream.__aiter__()
    try:
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            first = await anext(responses)
    except (StopAsyncIteration, grpc.aio.AioRpcError, TimeoutError) as e:
        stream.cancel()
        why = e.details() if isinstance(e, grpc.aio.AioRpcError) else "no answer"
        raise Unavailable(f"the leader did not open a pipe to node {node_id}'s engine: {why}") from None
    if first.error:
        stream.cancel()
        raise Unavailable(first.error)
    return await pipe_from_stream(responses, writer, first)


_running: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    """Hold a reference to a background task until it ends (asyncio keeps only weak ones)."""
    _running.add(task)
    task.add_done_callback(_running.discard)
