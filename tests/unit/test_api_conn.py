"""Slow clients and connection floods against a real served app (raw sockets on loopback, real TLS).

Timeouts are shrunk to fractions of a second through ConnLimits so the tests run in seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shoal import controlapi
from shoal.api import create_app, serve
from shoal.api.conn import ConnLimits
from shoal.api.testing import FakeManager, add_task
from shoal.api.tls import ServerTLS, TLSOptions
from shoal.models import ContainerSpec, InitRequest, ServiceSpec, TaskSpec

FAST = ConnLimits(header_timeout=0.5, body_idle_timeout=0.5, idle_timeout=3.0)
PING = b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def served(limits: ConnLimits, ssl_context: ssl.SSLContext | None = None,
                 manager: FakeManager | None = None) -> AsyncIterator[int]:
    port = free_port()
    runner = await serve(create_app(manager or FakeManager()), [f"tcp://127.0.0.1:{port}"],
                         ssl_context=ssl_context, limits=limits)
    try:
        yield port
    finally:
        await runner.cleanup()


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_after(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the server closes the connection (reading and discarding what it sends)."""
    start = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        while await asyncio.wait_for(reader.read(65536), within - (time.monotonic() - start)):
            pass
    return time.monotonic() - start


async def ping(port: int) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/_ping") as resp:
        assert resp.status == 200 and await resp.text() == "OK"


# ------------------------------------------------------------------------ slow request heads


async def test_slowloris_head_is_dropped_while_others_are_served() -> None:
    async with served(FAST) as port:
        silent_r, silent_w = await connect(port)  # connects and never says a word
        slow_r, slow_w = await connect(port)
        slow_w.write(b"GET /_ping HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:  # a header line every 0.1 s, never the blank line that ends the head
            with contextlib.suppress(ConnectionError):
                for i in range(100):
                    slow_w.write(b"X-%d: y\r\n" % i)
                    await slow_w.drain()
                    await asyncio.sleep(0.1)

        trickler = asyncio.create_task(trickle())
        await ping(port)  # a normal client meanwhile
        slow_t, silent_t = await asyncio.gather(closed_after(slow_r, 3.0), closed_after(silent_r, 3.0))
        trickler.cancel()
        assert 0.4 <= slow_t <= 1.5 and silent_t <= 1.5
        await ping(port)
        for w in (slow_w, silent_w):
            w.close()


async def test_head_clock_restarts_per_request_on_a_kept_alive_connection() -> None:
    """The head timeout is per request, not per connection: a keep-alive client that sends a request
    every 0.3 s for longer than the timeout is served every time."""
    async with served(FAST) as port:
        reader, writer = await connect(port)
        for _ in range(5):
            writer.write(PING)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(2) == b"OK"
            await asyncio.sleep(0.3)
        writer.close()


async def test_tls_handshake_that_never_ends_is_dropped(tmp_path: Path) -> None:
    hosts = ["tcp://127.0.0.1:1"]
    tls = ServerTLS(TLSOptions(tls=True), tmp_path, hosts, None)
    async with served(FAST, ssl_context=tls.context) as port:
        reader, writer = await connect(port)  # TCP only: no ClientHello, ever
        assert await closed_after(reader, 3.0) <= 1.5
        writer.close()
        ctx = ssl.create_default_context(cadata=tls.server_ca_pem)
        async with aiohttp.ClientSession() as session, \
                session.get(f"https://127.0.0.1:{port}/_ping", ssl=ctx) as resp:
            assert resp.status == 200


# ------------------------------------------------------------------------ slow bodies


async def test_stalled_body_is_dropped_and_a_trickling_one_is_not() -> None:
    manager = FakeManager()
    await manager.init_swarm(InitRequest())
    spec = json.dumps({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}}).encode()
    head = (b"POST /services/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(spec))
    async with served(FAST, manager=manager) as port:
        stalled_r, stalled_w = await connect(port)
        stalled_w.write(head + spec[:10])  # then nothing
        assert 0.4 <= await closed_after(stalled_r, 3.0) <= 1.5
        assert manager.store.service_by_name("web") is None
        stalled_w.close()
        # A byte every 0.1 s is slow but alive: well past the 0.5 s idle bound, the request succeeds.
        reader, writer = await connect(port)
        writer.write(head)
        started = time.monotonic()
        for i in range(len(spec)):
            writer.write(spec[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.1 if time.monotonic() - started < 1.5 else 0)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert answer.startswith(b"HTTP/1.1 201"), answer
        assert manager.store.service_by_name("web") is not None
        writer.close()


# ------------------------------------------------------------------------ long responses


async def test_follow_stream_outlives_every_timeout() -> None:
    manager = FakeManager()
    await manager.init_swarm(InitRequest())
    svc = controlapi.create_service(
        manager.store, ServiceSpec(Name="web", TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox")))
    )
    add_task(manager.store, svc, slot=1, node_id=manager.node_id, container_id="c1")
    limits = ConnLimits(header_timeout=0.3, body_idle_timeout=0.3, idle_timeout=0.3)
    async with served(limits, manager=manager) as port, aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/services/{svc.ID}/logs?stdout=1&follow=1") as resp:
            assert resp.status == 200
            # Still open after 5x every timeout: the read times out instead of meeting the end.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(resp.content.read(1), 1.5)
            assert not resp.content.at_eof()


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with served(ConnLimits(header_timeout=5, body_idle_timeout=5, idle_timeout=0.5)) as port:
        reader, writer = await connect(port)
        writer.write(PING)
        await asyncio.wait_for(reader.readuntil(b"OK"), 2)
        assert await closed_after(reader, 3.0) <= 1.5
        writer.close()


# ------------------------------------------------------------------------ connection caps


async def test_connection_caps_per_client_and_per_listener() -> None:
    limits = ConnLimits(max_connections=6, max_connections_per_client=4)
    async with served(limits) as port:
        held = [await connect(port) for _ in range(4)]
        for _, w in held:  # each one served: they are really open, not just queued in the backlog
            w.write(PING)
        for r, _ in held:
            assert (await asyncio.wait_for(r.readuntil(b"OK"), 2)).startswith(b"HTTP/1.1 200")
        # The 5th from 127.0.0.1 is refused at once, with a message naming the cap.
        r5, w5 = await connect(port)
        refusal = await asyncio.wait_for(r5.read(), 2)
        assert refusal.startswith(b"HTTP/1.1 429")
        assert b"at most 4 per client address" in refusal and b"127.0.0.1" in refusal
        w5.close()
        # Another address still gets in, until the listener's total is reached.
        held += [await connect(port, "127.0.0.2") for _ in range(2)]
        r7, w7 = await connect(port, "127.0.0.3")
        refusal = await asyncio.wait_for(r7.read(), 2)
        assert refusal.startswith(b"HTTP/1.1 503") and b"at most 6 are served at once" in refusal
        w7.close()
        # Closing connections frees their places: the server answers again.
        for _, w in held[:2]:
            w.close()
        for _ in range(50):
            try:
                await ping(port)
                break
            except (aiohttp.ClientError, AssertionError):
                await asyncio.sleep(0.05)
        else:
            pytest.fail("closed connections did not free their places")
        for _, w in held[2:]:
            w.close()


async def test_slowloris_flood_cannot_hold_places_forever() -> None:
    """Connections dropped by the head timeout give their places back."""
    limits = ConnLimits(header_timeout=0.3, max_connections=5, max_connections_per_client=5)
    async with served(limits) as port:
        flood = [await connect(port) for _ in range(5)]
        r, w = await connect(port)
        assert (await asyncio.wait_for(r.read(), 2)).startswith(b"HTTP/1.1 503")
        w.close()
        await asyncio.gather(*(closed_after(fr, 2.0) for fr, _ in flood))
        await ping(port)
        for _, fw in flood:
            fw.close()


# ------------------------------------------------------------------------ head size


@pytest.mark.parametrize("head", [
    b"GET /_ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /_ping?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /_ping HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
], ids=["field", "line", "count"])
async def test_oversized_heads_are_refused(head: bytes) -> None:
    async with served(FAST) as port:
        reader, writer = await connect(port)
        writer.write(head)
        answer = await asyncio.wait_for(reader.read(), 2)
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.split()[1] == b"400", answer[:100]  # aiohttp answers in HTTP/1.0 here
        writer.close()
        await ping(port)


async def test_body_the_server_has_not_read_yet_is_not_the_clients_stall() -> None:
    """A handler that reads its (large) body only after a while makes the server stop reading (flow
    control); that pause is not the client stalling, so the body idle timeout must not fire."""
    async def slow_reader(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)  # e.g. asking etcd who leads before forwarding
        return web.Response(text=str(len(await request.read())))

    app = web.Application(client_max_size=16 * 1024**2)
    app.router.add_post("/slow", slow_reader)
    port = free_port()
    runner = await serve(app, [f"tcp://127.0.0.1:{port}"], limits=FAST)
    try:
        body = b"x" * (4 * 1024**2)
        async with aiohttp.ClientSession() as session, \
                session.post(f"http://127.0.0.1:{port}/slow", data=body) as resp:
            assert resp.status == 200 and await resp.text() == str(len(body))
    finally:
        await runner.cleanup()
