"""The leader's book of task stats: the latest sample of every running task, as agents report them.

Agents read their containers' usage from their engines (agent/stats.py) and send it every few
seconds with their session; the book keeps only the latest sample per task, in memory. Stats are
not desired or observed state — a new leader starts empty and is full again one interval later —
so they never touch the store (100,000 tasks reporting every 10 s would be 10,000 writes/s).

Readers: ``shoal service stats`` (api/stats.py), the autoscaler (orchestrator/autoscale.py) and
the metrics collectors. A sample older than ``stale_s`` is not current any more (its task stopped,
its node went quiet) and is neither returned nor kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shoal.dispatcher.protocol import TaskStats

STALE_S = 35.0  # three of the agents' default intervals, and a little more


@dataclass(frozen=True, slots=True)
class ServiceUsage:
    """A service's current usage over its reporting tasks: CPU and memory averaged per task (what
    an autoscaling target compares with) and summed (what the service costs)."""

    tasks: int
    cpu_percent_avg: float  # Docker's %: 100 = one CPU
    cpu_limit_percent_avg: float  # over each task's CPU limit (or its node's CPUs)
    cpu_percent_sum: float
    mem_bytes_avg: float
    mem_bytes_sum: int
    mem_limit_percent_avg: float  # over each task's memory limit (0 when none has one)
    net_rx_bytes_sum: int
    net_tx_bytes_sum: int


class StatsBook:
    def __init__(self, stale_s: float = STALE_S, clock: Callable[[], float] = time.time) -> None:
        self.stale_s = stale_s
        self.clock = clock
        self._tasks: dict[str, TaskStats] = {}
        self._by_service: dict[str, set[str]] = {}
        self._received: dict[str, float] = {}  # task → when the sample arrived (our clock, not the agent's)

    def record(self, samples: Iterable[TaskStats]) -> None:
        now = self.clock()
        for s in samples:
            old = self._tasks.get(s.task_id)
            if old is not None and old.service_id != s.service_id:
                self._forget(s.task_id)
            self._tasks[s.task_id] = s
            self._received[s.task_id] = now
            self._by_service.setdefault(s.service_id, set()).add(s.task_id)

    def _forget(self, task_id: str) -> None:
        s = self._tasks.pop(task_id, None)
        self._received.pop(task_id, None)
        if s is not None:
            ids = self._by_service.get(s.service_id)
            if ids is not None:
                ids.discard(task_id)
                if not ids:
                    del self._by_service[s.service_id]

    def _current(self, task_id: str, now: float) -> TaskStats | None:
        if now - self._received.get(task_id, 0.0) > self.stale_s:
            self._forget(task_id)
            return None
        return self._tasks.get(task_id)

    def service(self, service_id: str) -> list[TaskStats]:
        """The current samples of a service's tasks (slot order)."""
        now = self.clock()
        out = [s for tid in list(self._by_service.get(service_id, ())) if (s := self._current(tid, now)) is not None]
        return sorted(out, key=lambda s: (s.slot, s.task_id))

    def all(self) -> list[TaskStats]:
        now = self.clock()
        return [s for tid in list(self._tasks) if (s := self._current(tid, now)) is not None]

    def usage(self, service_id: str) -> ServiceUsage | None:
        """The service's usage now; None while none of its tasks has reported."""
        return usage_of(self.service(service_id))


def usage_of(samples: list[TaskStats]) -> ServiceUsage | None:
    if not samples:
        return None
    n = len(samples)
    limited = [s for s in samples if s.mem_limit_bytes > 0]
    return ServiceUsage(
        tasks=n,
        cpu_percent_avg=sum(s.cpu_percent for s in samples) / n,
        cpu_limit_percent_avg=sum(s.cpu_limit_percent for s in samples) / n,
        cpu_percent_sum=sum(s.cpu_percent for s in samples),
        mem_bytes_avg=sum(s.mem_bytes for s in samples) / n,
        mem_bytes_sum=sum(s.mem_bytes for s in samples),
        mem_limit_percent_avg=(sum(100.0 * s.mem_bytes / s.mem_limit_bytes for s in limited) / len(limited)
                               if limited else 0.0),
        net_rx_bytes_sum=sum(s.net_rx_bytes for s in samples),
        net_tx_bytes_sum=sum(s.net_tx_bytes for s in samples),
    )
