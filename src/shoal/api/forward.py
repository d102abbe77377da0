"""Writes made to a manager that does not lead go to the leader, unchanged (Swarm's managers proxy
their control API calls to the leader the same way).

A follower sends the request as it came (method, path, query, body) in one ``Forward`` call on
the leader's cluster port (mutual TLS; the leader takes it from manager certificates only). The
leader replays it on a private unix socket of its own API (``<data-root>/forward.sock``, 0600,
served by the same app), so the request meets exactly the validation and errors it would have met
there, and the answer goes back as it was. The follower then waits (briefly) until its own view
has the leader's revision, so that a client reading right after its write, from the same manager,
sees it.

Reads are served from the follower's own view; ``swarm init/join/leave`` and the engine's
``/containers`` calls are about this host, so they never travel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from shoal.errors import Unavailable
from shoal.store import MemoryStore
from shoal.transport import messages as m
from shoal.transport.bootstrap import NodeCredentials
from shoal.transport.errors import from_rpc_error
from shoal.transport.rpc import DISPATCHER_SERVICE, decoder, encode, path, secure_channel, split_addr

log = logging.getLogger(__name__)

FORWARDED = "X-Shoal-Forwarded"  # set on a replayed request: never forwarded twice
REVISION = "X-Shoal-Revision"  # the leader's store revision once the write was durable
FORWARDED_USER = "X-Shoal-Forwarded-User"  # set by the follower only: a client's own copy is not passed
NO_LEADER = (
    "The swarm does not have a leader. It's possible that too few managers are online. Make sure more "
    "than half of the managers are online."
)
FORWARD_TIMEOUT_S = 60.0
CATCH_UP_S = 5.0  # how long a follower waits for its view to show a forwarded write
# Engine calls (api/engines.py) reach the node engines through this manager's own pipes.
ENGINE_PATHS = ("/containers/", "/exec/", "/images/", "/volumes", "/events", "/system/df", "/build",
                "/distribution/", "/commit", "/auth")
# A console login token is kept in the memory of the manager that minted it: the browser logs in there.
_LOCAL = ("/swarm/init", "/swarm/join", "/swarm/leave", "/swarm/unlock", "/shoal/console/tokens", *ENGINE_PATHS)
_PASS_HEADERS = ("Content-Type", "X-Registry-Auth", "X-Registry-Config")
_BACK_HEADERS = ("Content-Type", REVISION)


def _bare(path: str) -> str:
    return "/" + (path.split("/", 2)[-1] if path.startswith("/v") and path[2:3].isdigit() else path.lstrip("/"))


def is_local(path: str) -> bool:
    """Calls about this host or the node engines: never forwarded."""
    bare = _bare(path)
    return any(bare == p or bare.startswith(p) for p in _LOCAL)


def is_engine(path: str) -> bool:
    """Calls the node engines answer: the store is not written, so its durability is not waited for."""
    bare = _bare(path)
    return any(bare == p.rstrip("/") or bare.startswith(p) for p in ENGINE_PATHS)


# ---------------------------------------------------------------------------- follower side


class Forwarder:
    """A follower's channel to the leader's cluster port (kept while the leader stays the same)."""

    def __init__(self) -> None:
        self._channel: grpc.aio.Channel | None = None
        self._key: tuple[str, str] = ("", "")  # (leader address, certificate) of the channel

    async def channel(self, leader_addr: str, creds: NodeCredentials) -> grpc.aio.Channel:
        """The channel to the leader's cluster port (also carries engine relays, transport/tunnel.py)."""
        if self._channel is None or self._key != (leader_addr, creds.cert_pem):
            await self.close()
            host, port = split_addr(leader_addr)
            self._channel = secure_channel(host, port, creds.root_pem, creds.key_pem, creds.cert_pem)
            self._key = (leader_addr, creds.cert_pem)
        return self._channel

    async def send(self, request: web.Request, leader_addr: str, creds: NodeCredentials,
                   user: str = "") -> web.Response:
        channel = await self.channel(leader_addr, creds)
        headers = {h: request.headers[h] for h in _PASS_HEADERS if h in request.headers}
        if user:  # authorized here already; the leader's audit log names who it was for
            headers[FORWARDED_USER] = user
        req = m.ForwardRequest(method=request.method, path=str(request.rel_url), headers=headers,
                               body=await request.read())
        call = channel.unary_unary(path(DISPATCHER_SERVICE, "Forward"), request_serializer=encode,
                                         response_deserializer=decoder(m.ForwardResponse))
        try:
            resp: m.ForwardResponse = await call(req, timeout=FORWARD_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            err = from_rpc_error(e, leader_addr)
            raise Unavailable(f"{NO_LEADER} ({err.message})") from None
        out = web.Response(status=resp.status, body=resp.body)
        for h, v in resp.headers.items():
            out.headers[h] = v
        return out

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


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


async def to_leader(request: web.Request, manager: Any, user: str = "") -> web.Response | None:
    """Send ``request`` to the leader and return its answer (after this manager's view caught up);
    None when this manager handles it itself (it leads, or holds the only copy of the store)."""
    leader = await manager.leader_api()
    if leader is None:
        return None
    if request.headers.get(FORWARDED):
        raise Unavailable(NO_LEADER)  # forwarded to us, but we do not lead: never a second hop
    response: web.Response = await manager.forwarder.send(request, *leader, user=user)
    revision = response.headers.get(REVISION, "")
    if revision.isdigit():
        await wait_for_revision(manager.store, int(revision))
    return response


# ---------------------------------------------------------------------------- leader side


class ReplaySite:
    """The leader's end: its own API on a private unix socket, where forwarded requests replay."""

    def __init__(self, runner: web.AppRunner, sock: Path) -> None:
        self.runner = runner
        self.sock = sock
        self._site: web.UnixSite | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.sock.unlink(missing_ok=True)
        self._site = web.UnixSite(self.runner, str(self.sock))
        await self._site.start()
        os.chmod(self.sock, 0o600)

    async def replay(self, req: m.ForwardRequest) -> m.ForwardResponse:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.sock)),
                                                  timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S))
        headers = {**req.headers, FORWARDED: "1"}
        async with self._session.request(req.method, f"http://manager{req.path}", data=req.body,
                                         headers=headers) as resp:
            body = await resp.read()
            back = {h: resp.headers[h] for h in _BACK_HEADERS if h in resp.headers}
            return m.ForwardResponse(status=resp.status, headers=back, body=body)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._site is not None:
            with contextlib.suppress(Exception):
                await self._site.stop()
            self._site = None
        self.sock.unlink(missing_ok=True)
