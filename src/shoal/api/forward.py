"""Writes made to a manager that does not lead go to the leader, unchanged (Swarm's managers proxy
their control API calls to the leader the same way).

The leader serves the same API on one more port, its cluster port + 2, over mutual TLS: only a
certificate of the cluster's CA with the manager role gets in. A follower sends the request as it
came (method, path, query, body) with its own node certificate, and answers with what the leader
said. It then waits (briefly) until its own view has the leader's revision, so that a client
reading right after its write, from the same manager, sees it.

Reads are served from the follower's own view; ``swarm init/join/leave`` and the engine's
``/containers`` calls are about this host, so they never travel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from shoal.ca.certs import MANAGER_SERVER_NAME, cert_identity
from shoal.errors import Unavailable
from shoal.models import NodeRole
from shoal.store import MemoryStore

log = logging.getLogger(__name__)

API_PORT_OFFSET = 2  # the leader's API for managers: cluster port + 2 (bootstrap is + 1)
FORWARDED = "X-Shoal-Forwarded"  # set on a forwarded request: never forwarded twice
REVISION = "X-Shoal-Revision"  # the leader's store revision once the write was durable
NO_LEADER = (
    "The swarm does not have a leader. It's possible that too few managers are online. Make sure more "
    "than half of the managers are online."
)
FORWARD_TIMEOUT_S = 60.0
CATCH_UP_S = 5.0  # how long a follower waits for its view to show a forwarded write
_LOCAL = ("/swarm/init", "/swarm/join", "/swarm/leave", "/containers/")
_PASS_HEADERS = ("Content-Type", "X-Registry-Auth", "X-Registry-Config")


@dataclass(frozen=True, slots=True)
class Leader:
    """Where the leader's manager API is, and the TLS context this manager reaches it with."""

    host: str
    port: int
    ssl: ssl.SSLContext


def is_local(path: str) -> bool:
    """Calls about this host (or the engine under it): never forwarded."""
    bare = path.split("/", 2)[-1] if path.startswith("/v") and path[2:3].isdigit() else path.lstrip("/")
    bare = "/" + bare
    return any(bare == p or bare.startswith(p) for p in _LOCAL)


# ---------------------------------------------------------------------------- follower side


class Forwarder:
    """A follower's connection to the leader's manager API (one HTTP session, kept)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def send(self, request: web.Request, leader: Leader) -> web.Response:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S))
        headers = {h: request.headers[h] for h in _PASS_HEADERS if h in request.headers}
        headers[FORWARDED] = "1"
        url = f"https://{leader.host}:{leader.port}{request.rel_url}"
        body = await request.read()
        try:
            async with self._session.request(request.method, url, data=body, headers=headers, ssl=leader.ssl,
                                             server_hostname=MANAGER_SERVER_NAME) as resp:
                payload = await resp.read()
                out = web.Response(status=resp.status, body=payload)
                if "Content-Type" in resp.headers:
                    out.headers["Content-Type"] = resp.headers["Content-Type"]
                if REVISION in resp.headers:
                    out.headers[REVISION] = resp.headers[REVISION]
                return out
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise Unavailable(f"{NO_LEADER} (the leader at {leader.host}:{leader.port} did not answer: "
                              f"{str(e) or type(e).__name__})") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def client_ssl(root_pem: str, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """TLS to a leader: its certificate must chain to the cluster's root and name a manager."""
    ctx = ssl.create_default_context(cadata=root_pem)
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


async def wait_for_revision(store: MemoryStore, revision: int, within: float = CATCH_UP_S) -> None:
    """Until this manager's view has reached ``revision`` (bounded: the answer goes out anyway)."""
    if store.revision >= revision:
        return
    watcher = store.watch()
    try:
        async with asyncio.timeout(within):
            while store.revision < revision:
                await watcher.get()
    except TimeoutError:
        log.info("this manager's view is still behind revision %d after %gs", revision, within)
    finally:
        watcher.close()


# ---------------------------------------------------------------------------- leader side


class ManagerSite:
    """The leader's manager API: the daemon's app on one more TCP site, mutual TLS, managers only."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self._site: web.TCPSite | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    async def start(self, cert_pem: str, key_pem: str, root_pem: str) -> None:
        # ssl loads a certificate chain from files only: a private directory, gone with the site.
        self._dir = tempfile.TemporaryDirectory(prefix="shoal-manager-api-")
        d = Path(self._dir.name)
        (d / "cert.pem").write_text(cert_pem)
        key = d / "key.pem"
        key.touch(mode=0o600)
        key.write_text(key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(d / "cert.pem"), str(key))
        ctx.load_verify_locations(cadata=root_pem)
        ctx.verify_mode = ssl.CERT_REQUIRED
        self._site = web.TCPSite(self.runner, self.host, self.port, ssl_context=ctx)
        try:
            await self._site.start()
        except OSError as e:
            raise Unavailable(f"cannot listen on {self.host}:{self.port} (is the port in use?): {e}") from None
        log.info("manager API for forwarded writes on %s:%d (mutual TLS)", self.host, self.port)

    async def stop(self) -> None:
        if self._site is not None:
            with contextlib.suppress(Exception):
                await self._site.stop()
            self._site = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def peer_role(request: web.Request) -> NodeRole | bool | None:
    """The role in the client certificate of a TLS request; False when the request is not over TLS."""
    ssl_obj: Any = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_obj is None:
        return False
    der = ssl_obj.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return cert_identity(ssl.DER_cert_to_PEM_cert(der)).role
    except ValueError:
        return None

