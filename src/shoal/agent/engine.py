"""The agent's watch on its node's container engine: up or down, and why.

Shoal's agent is not inside the engine (Swarm's is), so the engine can stop while the agent and its
session with the manager live on. The agent then reports the engine down with its heartbeat, the
manager marks the node ``down`` ("engine unavailable: ...") and moves its tasks, and nothing new is
placed there until the agent reports the engine back.

How it tells: ``GET /_ping`` every ``interval_up_s`` (every ``interval_down_s`` while down), and at
once when the executor's event stream breaks (``executor.engine_trouble``), which is how a stopping
dockerd shows first: it closes its API before it stops its containers. A refused or missing socket
is down at once; a ping that only times out is down after ``timeouts_down`` in a row, so an engine
busy starting containers is not mistaken for a dead one (that would evacuate the node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from shoal.agent.executor.base import EngineUnavailable, Executor
from shoal.dispatcher.protocol import EngineHealth

log = logging.getLogger(__name__)

INTERVAL_UP_S = 2.0
INTERVAL_DOWN_S = 1.0
TIMEOUTS_DOWN = 2


class EngineMonitor:
    """Probes the engine; :attr:`health` is the verdict, :meth:`flipped` tells when it changes."""

    def __init__(
        self,
        executor: Executor,
        *,
        interval_up_s: float = INTERVAL_UP_S,
        interval_down_s: float = INTERVAL_DOWN_S,
        timeouts_down: int = TIMEOUTS_DOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.executor = executor
        self.interval_up_s = interval_up_s
        self.interval_down_s = interval_down_s
        self.timeouts_down = timeouts_down
        self.clock = clock
        self.health: EngineHealth | None = None  # None until the first probe
        self._flip = asyncio.Event()  # set (and replaced) at every change
        self.since = clock()  # when the current verdict began
        self._timeouts = 0

    @property
    def up(self) -> bool:
        return self.health is not None and self.health.up

    async def check(self) -> EngineHealth:
        """Probe once and update :attr:`health`."""
        try:
            await self.executor.ping()
        except EngineUnavailable as e:
            self._timeouts = self._timeouts + 1 if e.timed_out else 0
            if e.timed_out and self.up and self._timeouts < self.timeouts_down:
                return self._set(EngineHealth(up=True))  # one slow answer is not a dead engine
            return self._set(EngineHealth(up=False, reason=str(e)))
        except Exception as e:  # anything else the probe hits also means the engine is not usable
            self._timeouts = 0
            return self._set(EngineHealth(up=False, reason=str(e) or type(e).__name__))
        self._timeouts = 0
        return self._set(EngineHealth(up=True))

    def _set(self, health: EngineHealth) -> EngineHealth:
        old = self.health
        if old is None or old.up != health.up or (not health.up and old.reason != health.reason):
            if old is None or old.up != health.up:
                self.since = self.clock()
                if health.up:
                    log.info("engine is up")
                else:
                    log.warning("engine unavailable: %s", health.reason)
            flip, self._flip = self._flip, asyncio.Event()
            flip.set()
        self.health = health
        return health

    def flipped(self) -> asyncio.Event:
        """An event set at the next change of :attr:`health` (up/down, or the reason while down).
        Every waiter gets its own wake-up, so several may wait (heartbeat, worker start)."""
        return self._flip

    def trouble(self) -> asyncio.Event | None:
        """The executor's "event stream broke" signal, if it has one (the hollow one does not)."""
        ev = getattr(self.executor, "engine_trouble", None)
        return ev if isinstance(ev, asyncio.Event) else None

    async def run(self) -> None:
        """Until cancelled: probe at the interval, or at once when the executor smells trouble."""
        if getattr(self.executor, "engine_always_up", False):
            # The hollow executor: a thousand of them in one fleet process would only add wake-ups.
            await self.check()
            return
        while True:
            await self.check()
            interval = self.interval_up_s if self.up else self.interval_down_s
            trouble = self.trouble()
            if trouble is None:
                await asyncio.sleep(interval)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(trouble.wait(), timeout=interval)
            trouble.clear()
