"""How late the event loop runs: the manager's own measure of whether it is starving itself.

Everything in a manager shares one asyncio loop: heartbeats, the API, store commits, reconcile
passes. A pass that holds the loop for 2 s delays every heartbeat behind it by 2 s, so this is the
figure that says whether a node marked Down really went silent. The monitor sleeps a short period
over and over and records how much later than asked it woke up.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque

PERIOD_S = 0.05
KEEP = 100_000  # samples (over an hour at 20 per second)


class LoopLagMonitor:
    def __init__(self, period_s: float = PERIOD_S) -> None:
        self.period_s = period_s
        self.samples: deque[float] = deque(maxlen=KEEP)  # seconds late, one per wake-up
        self.max_s = 0.0

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.period_s)
            late = max(0.0, time.monotonic() - before - self.period_s)
            self.samples.append(late)
            self.max_s = max(self.max_s, late)

    def summary(self) -> dict[str, float]:
        """Lag in milliseconds over the kept samples: p50, p99, max, and how many samples."""
        s = sorted(self.samples)
        if not s:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "samples": 0}
        q = statistics.quantiles(s, n=100, method="inclusive") if len(s) > 1 else [s[0]] * 99
        return {"p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
                "max_ms": round(self.max_s * 1000, 1), "samples": len(s)}
