"""Merge several async streams into one, in arrival order.

Both the dispatcher (logs of tasks on several nodes) and an agent (logs of several containers) need
this; a follow-mode log stream never ends, so the streams must be read concurrently, not one after the
other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_DONE = object()


async def merge_streams(streams: list[AsyncIterator[T]], buffer: int = 256) -> AsyncIterator[T]:
    """Yield items from every stream as they come. A stream that fails is logged and dropped: one
    broken source (a node gone, a container removed) must not end everyone else's logs."""
    if not streams:
        return
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=buffer)

    async def pump(stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
        except Exception as exc:  # see docstring
            log.warning("log stream failed: %s", exc)
        # Not in a ``finally``: a cancelled pump must not block on a queue nobody reads any more.
        await queue.put(_DONE)

    pumps = [asyncio.create_task(pump(s)) for s in streams]
    live = len(pumps)
    try:
        while live:
            item = await queue.get()
            if item is _DONE:
                live -= 1
                continue
            yield item  # type: ignore[misc]
    finally:
        for p in pumps:
            p.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
