"""serve(): unix sockets (stale ones replaced, live ones kept, mode 660) and TCP."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import aiohttp
import pytest

from shoal.api import create_app, serve
from shoal.api.testing import FakeManager


async def test_unix_and_tcp(tmp_path: Path) -> None:
    sock_path = tmp_path / "run" / "shoal" / "docker.sock"
    sock_path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))  # bound but never listening: what a crashed daemon leaves behind
    stale.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = await serve(create_app(FakeManager()), [f"unix://{sock_path}", f"tcp://127.0.0.1:{port}"])
    try:
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o660
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock_path))) as session:
            async with session.get("http://docker/v1.41/_ping") as resp:
                assert resp.status == 200 and await resp.text() == "OK"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/_ping") as resp:
                assert resp.headers["API-Version"] == "1.41"
        # A second daemon must not steal the socket of a live one.
        with pytest.raises(RuntimeError, match="already listening"):
            await serve(create_app(FakeManager()), [f"unix://{sock_path}"])
    finally:
        await runner.cleanup()


async def test_bad_host_address() -> None:
    with pytest.raises(ValueError, match="unsupported host address"):
        await serve(create_app(FakeManager()), ["npipe:////./pipe/docker"])
