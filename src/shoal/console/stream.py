"""``GET /shoal/console/stream``: Server-Sent Events telling a console page what changed.

One store watch per stream; what it reports is batched for :data:`BATCH_S` and sent as one
``event: change`` with the kinds and (up to :data:`MAX_IDS` per kind) the IDs that changed; the page
re-fetches what it shows. IDs only, never objects: a page learns nothing it could not list, and a
100,000-task deploy costs a few small messages a second. ``event: ping`` every :data:`PING_S` keeps
proxies and the browser from timing the stream out. Each stream holds one of the caller's stream
slots (api/limits.py), ends when the client goes (a failed write, or the transport closing), and
ends cleanly (the last chunk written) when the daemon stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from shoal.api.auth import identity
from shoal.api.common import swarm_manager
from shoal.api.limits import stream_slot
from shoal.controlapi.users import ADMIN, OPERATOR

BATCH_S = 0.25
PING_S = 15.0
MAX_IDS = 100
POLL_S = 1.0  # how often a quiet stream checks that its client is still there
# What a page shows; users and log sinks are admin business and not on any console page.
KINDS = ("cluster", "node", "service", "task", "network", "secret", "config", "stack")

STOPPING: web.AppKey[asyncio.Event] = web.AppKey("shoal.console.stopping", asyncio.Event)


async def stop_streams(app: web.Application) -> None:
    """on_shutdown: every open stream finishes its last write and ends."""
    if STOPPING in app:
        app[STOPPING].set()


def _message(event: str, data: dict[str, Any] | None = None) -> bytes:
    body = json.dumps(data if data is not None else {}, separators=(",", ":"))
    return f"event: {event}\ndata: {body}\n\n".encode()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream(request: web.Request) -> web.StreamResponse:
    manager = swarm_manager(request)
    kinds = KINDS if identity(request).role in (ADMIN, OPERATOR) else tuple(k for k in KINDS if k != "secret")
    stopping = request.app.get(STOPPING) or asyncio.Event()  # install() sets one; a bare app never stops it
    with stream_slot(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        store = manager.store
        watcher = store.watch(*kinds)
        try:
            await resp.write(b"retry: 2000\n\n")  # the browser reconnects after 2 s if the stream breaks
            await resp.write(_message("hello", {"kinds": list(kinds), "revision": store.revision}))
            next_ping = time.monotonic() + PING_S
            while not stopping.is_set() and not _gone(request):
                if manager.store is not store:  # swarm leave/join replaced the store: everything changed
                    watcher.close()
                    store = manager.store
                    watcher = store.watch(*kinds)
                    await resp.write(_message("change", {"kinds": list(kinds), "ids": {}}))
                wait = max(0.0, min(POLL_S, next_ping - time.monotonic()))
                try:
                    batch = await asyncio.wait_for(watcher.get(), wait)
                except TimeoutError:
                    if time.monotonic() >= next_ping:
                        await resp.write(_message("ping"))
                        next_ping = time.monotonic() + PING_S
                    continue
                await asyncio.sleep(BATCH_S)  # let the rest of a burst arrive: one message for it
                batch += watcher.drain()
                ids: dict[str, list[str]] = {}
                for ev in batch:
                    seen = ids.setdefault(ev.kind, [])
                    oid = ev.obj.ID if ev.obj is not None else ""
                    if len(seen) < MAX_IDS and oid and oid not in seen:
                        seen.append(oid)
                await resp.write(_message("change", {"kinds": sorted(ids), "ids": ids}))
            with contextlib.suppress(ConnectionResetError):
                await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            watcher.close()
        return resp
