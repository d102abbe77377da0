"""Per-client caps on concurrent log streams, over a real aiohttp server (TCP and unix socket)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from shoal import controlapi
from shoal.api import create_app, serve
from shoal.api.auth import ANONYMOUS_ADMIN, IDENTITY_KEY, LOCAL_ADMIN, USER_KEY
from shoal.api.limits import STREAMS_PER_CLIENT, client_key
from shoal.api.testing import FakeManager, add_task
from shoal.bounds import address_bucket
from shoal.controlapi.users import ADMIN, Identity
from shoal.models import ContainerSpec, InitRequest, ServiceSpec, TaskSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, Path, str, str]]:
    """A served app with one running service and task: (TCP base URL, unix socket, service, task)."""
    manager = FakeManager()
    await manager.init_swarm(InitRequest())
    svc = controlapi.create_service(
        manager.store,
        ServiceSpec(Name="web",
                    TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox"))),
    )
    task = add_task(manager.store, svc, slot=1, node_id=manager.node_id, container_id="c1")
    port = free_port()
    sock = tmp_path / "docker.sock"
    runner = await serve(create_app(manager), [f"tcp://127.0.0.1:{port}", f"unix://{sock}"])
    try:
        yield f"http://127.0.0.1:{port}", sock, svc.ID, task.ID
    finally:
        await runner.cleanup()


async def test_follow_streams_capped_per_client(api: tuple[str, Path, str, str]) -> None:
    base, sock, svc_id, task_id = api
    paths = [f"/services/{svc_id}/logs", f"/tasks/{task_id}/logs"]
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        streams = []
        for i in range(STREAMS_PER_CLIENT):  # every kind of log stream counts against the same cap
            resp = await stack.enter_async_context(
                session.get(f"{base}{paths[i % 2]}?stdout=1&follow=1")
            )
            assert resp.status == 200, await resp.text()
            streams.append(resp)
        for path in paths:
            async with session.get(f"{base}{path}?stdout=1&follow=1") as over:
                assert over.status == 429
                message = (await over.json())["message"]
                assert f"at most {STREAMS_PER_CLIENT} per client" in message and "127.0.0.1" in message
        # Another client (the local uid on the unix socket) has its own slots.
        unix = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock)))
        )
        async with unix.get(f"http://docker{paths[0]}?stdout=1&follow=1") as other:
            assert other.status == 200
        # The server still answers ordinary calls, and a closed stream frees its slot.
        async with session.get(f"{base}/_ping") as ping:
            assert ping.status == 200
        streams.pop().close()
        for _ in range(50):
            async with session.get(f"{base}{paths[0]}?stdout=1&follow=1") as again:
                if again.status == 200:
                    break
                assert again.status == 429
            await asyncio.sleep(0.1)
        else:
            pytest.fail("closing a stream did not free its slot")


async def test_plain_logs_release_their_slot(api: tuple[str, Path, str, str]) -> None:
    """Streams that end on their own (no follow) give their slot back: many in a row all succeed."""
    base, _, svc_id, _ = api
    async with aiohttp.ClientSession() as session:
        for _ in range(STREAMS_PER_CLIENT + 5):
            async with session.get(f"{base}/services/{svc_id}/logs?stdout=1") as resp:
                assert resp.status == 200
                await resp.read()


def test_address_buckets() -> None:
    assert address_bucket("10.0.0.7") == "10.0.0.7"
    assert address_bucket("::ffff:10.0.0.7") == "10.0.0.7"
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_bucket("fe80::1%eth0") == "fe80::/64"


class _Transport:
    """Just what client_key asks of a transport."""

    def __init__(self, peer: tuple[str, int] | None, sock: socket.socket | None = None) -> None:
        self.extra = {"peername": peer, "socket": sock}

    def get_extra_info(self, name: str) -> object:
        return self.extra.get(name)

    def is_closing(self) -> bool:
        return False


def _request(transport: _Transport, ident: Identity | None) -> web.Request:
    req = make_mocked_request("GET", "/services/x/logs", transport=transport)
    if ident is not None:
        req[IDENTITY_KEY] = ident
        req[USER_KEY] = ident.name
    return req


def test_client_keys() -> None:
    tcp = _Transport(("10.1.2.3", 5555))
    alice_token = Identity(name="alice", role=ADMIN, via="token")
    # A named user is one client from wherever it calls; the shared names are told apart by peer.
    assert client_key(_request(tcp, alice_token)) == "user alice"
    assert client_key(_request(_Transport(("10.9.9.9", 1)), alice_token)) == "user alice"
    assert client_key(_request(tcp, ANONYMOUS_ADMIN)) == "address 10.1.2.3"
    a, b = socket.socketpair()
    with a, b:
        assert client_key(_request(_Transport(None, a), LOCAL_ADMIN)) == f"uid {os.getuid()}"
