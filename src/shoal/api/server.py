"""Listening on Docker-style host addresses: ``unix:///path`` and ``tcp://host:port``."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import stat
from pathlib import Path

from aiohttp import web

from shoal.api.app import create_app  # re-exported: the daemon imports both from here
from shoal.api.conn import Admission, ConnLimits, GuardedSite, tcp_listen_sockets, unix_listen_socket

__all__ = ["ConnLimits", "create_app", "serve"]

DEFAULT_TCP_PORT = 2375


def _prepare_unix_path(path: Path) -> None:
    """Create the parent directory and remove a stale socket, refusing to steal a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody answers: a leftover from a process that died
            return
    raise RuntimeError(f"another daemon is already listening on {path}")


def _split_tcp(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        host, port = addr, str(DEFAULT_TCP_PORT)
    host = host.strip("[]")  # [::1]:2375
    return host or "0.0.0.0", int(port)


async def serve(app: web.Application, hosts: list[str], shutdown_timeout: float = 2.0,
                ssl_context: ssl.SSLContext | None = None, limits: ConnLimits | None = None) -> web.AppRunner:
    """Start serving ``app`` on every host; returns the runner (``await runner.cleanup()`` to stop).
    ``ssl_context`` applies to the TCP hosts (a unix socket is guarded by its file mode). Each host
    is one listener with its own connection caps; ``limits`` (timeouts, caps: api/conn.py) applies
    to all of them."""
    limits = limits or ConnLimits()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        for host in hosts:
            if host.startswith("unix://"):
                path = Path(host.removeprefix("unix://"))
                _prepare_unix_path(path)
                sock = unix_listen_socket(str(path), Admission(host, limits, tls=False))
                await GuardedSite(runner, sock, limits, f"http://unix:{path}:").start()
                os.chmod(path, 0o660)
            elif host.startswith("tcp://"):
                h, port = _split_tcp(host.removeprefix("tcp://"))
                admission = Admission(host, limits, tls=ssl_context is not None)
                for sock in tcp_listen_sockets(h, port, admission):
                    name = f"{'https' if ssl_context else 'http'}://{h}:{sock.getsockname()[1]}"
                    await GuardedSite(runner, sock, limits, name, ssl_context=ssl_context).start()
            else:
                raise ValueError(f"unsupported host address {host!r}: use unix:///path or tcp://host:port")
    except BaseException:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise
    return runner
