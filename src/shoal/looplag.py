"""How late the event loop runs: the manager's own measure of whether it is starving itself.

Everything in a manager shares one asyncio loop: heartbeats, the API, store commits, reconcile
passes. A pass that holds the loop for 2 s delays every heartbeat behind it by 2 s, so this is the
figure that says whether a node marked Down really went silent. The monitor sleeps a short period
over and over and records how much later than asked it woke up.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable

PERIOD_S = 0.05
KEEP = 100_000  # samples (over an hour at 20 per second)
THAW_S = 3600.0  # how often a full collection walks the whole heap again (frozen objects included)


class LoopLagMonitor:
    def __init__(self, period_s: float = PERIOD_S, gc_stats: GcStats | None = None) -> None:
        self.period_s = period_s
        self.samples: deque[float] = deque(maxlen=KEEP)  # seconds late, one per wake-up
        self.max_s = 0.0
        self.gc_stats = gc_stats
        self.on_sample: Callable[[float], None] | None = None  # the daemon's metrics (20 a second)

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.period_s)
            late = max(0.0, time.monotonic() - before - self.period_s)
            self.samples.append(late)
            self.max_s = max(self.max_s, late)
            if self.on_sample is not None:
                self.on_sample(late)
            if self.gc_stats is not None:
                self.gc_stats.tick()

    def summary(self) -> dict[str, float]:
        """Lag in milliseconds over the kept samples: p50, p99, max, and how many samples."""
        s = sorted(self.samples)
        if not s:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "samples": 0}
        q = statistics.quantiles(s, n=100, method="inclusive") if len(s) > 1 else [s[0]] * 99
        return {"p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
                "max_ms": round(self.max_s * 1000, 1), "samples": len(s)}


def trace_slow_callbacks(threshold_s: float, log: logging.Logger) -> None:
    """Log every event-loop callback that holds the loop longer than ``threshold_s``, naming the
    coroutine it ran — what asyncio's debug mode does, without the rest of debug mode's cost.
    Opt-in (``SHOAL_TRACE_SLOW_MS``): it wraps every callback of the process."""
    original = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        t0 = time.perf_counter()
        original(handle)
        took = time.perf_counter() - t0
        if took > threshold_s:
            cb = handle._callback
            owner = getattr(cb, "__self__", None)
            what = f"task {owner.get_name()} ({owner.get_coro()})" if isinstance(owner, asyncio.Task) else repr(cb)
            log.warning("event loop held %.0f ms by %s", took * 1000, what)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]


class GcStats:
    """Time the cyclic garbage collector spends, by generation: at 100,000 tasks a full collection
    walks every tracked object, and it runs on the event loop's thread like everything else.

    With ``freeze``, what survives a full collection is frozen (``gc.freeze()``): the next full
    collections walk only what was allocated since, instead of the whole store again (on etcd, a
    100,000-task deploy made 22 full collections of up to 0.4 s, each stalling the loop). Frozen
    objects are still freed by reference counting; only garbage cycles among them wait, until the
    heap is thawed once every ``THAW_S`` and the next full collection walks it all."""

    def __init__(self, freeze: bool = False, thaw_s: float = THAW_S) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]  # the longest single pause, by generation
        self.freeze = freeze
        self.thaw_s = thaw_s
        self._thawed_at = time.monotonic()
        self._full_done = False
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def tick(self) -> None:
        """From the event loop, often (not from the collector's callback, which may run anywhere):
        after a full collection, freeze its survivors, or thaw the heap if it is time."""
        if not (self.freeze and self._full_done):
            return
        self._full_done = False
        now = time.monotonic()
        if now - self._thawed_at >= self.thaw_s:
            gc.unfreeze()  # the next full collection walks everything once
            self._thawed_at = now
        else:
            gc.freeze()

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            gen = info["generation"]
            took = time.perf_counter() - self._t0
            self.seconds[gen] += took
            self.collections[gen] += 1
            self.longest[gen] = max(self.longest[gen], took)
            if gen == 2:
                self._full_done = True

    def summary(self) -> dict[str, list[float] | list[int] | int]:
        return {"seconds": [round(s, 3) for s in self.seconds], "collections": list(self.collections),
                "longest": [round(s, 3) for s in self.longest], "frozen": gc.get_freeze_count()}

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)
        if self.freeze:
            gc.unfreeze()
