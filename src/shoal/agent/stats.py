"""The agent's sampling of its running tasks' usage: CPU, memory, network, from the node's engine.

Every ``interval_s`` the agent asks the engine for one stats sample of each running task's
container (``GET /containers/{id}/stats?stream=false&one-shot=true``, the same figures as
``docker stats``), at most ``concurrency`` at a time, and sends the lot to the leader with its
session (dispatcher/stats.py keeps them). CPU percentages come from two successive samples of the
same container: the first sample of a container only primes it.

Why the engine API rather than reading cgroup files: it works for any Docker-compatible engine the
agent is pointed at (a remote socket, Podman) and cgroup v1 or v2 alike. The cost is bounded: one
request per running container per interval; the engine answers a one-shot at its next collection
tick (about a second), so requests wait concurrently rather than in a row. bench/stats_cost.py
measures the agent's own CPU per 100 containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.dispatcher.protocol import TaskStats
from shoal.models import Task

log = logging.getLogger(__name__)

INTERVAL_S = 10.0
CONCURRENCY = 32


class StatsEngine(Protocol):
    async def container_stats(self, container_id: str) -> dict[str, Any] | None:
        """One engine stats sample (Docker's JSON); None if the container is gone."""
        ...


@dataclass(slots=True)
class _Prior:
    cpu_total: int
    system: int
    at: float


def _limit_cpus(task: Task, online: int) -> float:
    """The CPUs the task may use: its limit (NanoCPUs), else every CPU of the node."""
    res = task.Spec.Resources
    limits = res.Limits if res is not None else None
    nano = limits.NanoCPUs if limits is not None else 0
    return nano / 1e9 if nano else float(max(online, 1))


def sample_of(task: Task, container_id: str, raw: dict[str, Any], prior: _Prior | None,
              now: float) -> tuple[TaskStats, _Prior]:
    """A TaskStats from one engine sample (and the previous one of the same container)."""
    cpu = raw.get("cpu_stats") or {}
    total = int((cpu.get("cpu_usage") or {}).get("total_usage") or 0)
    system = int(cpu.get("system_cpu_usage") or 0)
    online = int(cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1)
    cpu_percent = limit_percent = 0.0
    if prior is not None and system > prior.system and total >= prior.cpu_total:
        used = (total - prior.cpu_total) / (system - prior.system)  # share of all the node's CPUs
        cpu_percent = used * online * 100.0
        limit_percent = used * online / _limit_cpus(task, online) * 100.0
    mem = raw.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    # What `docker stats` shows: usage without the page cache the kernel can drop at once.
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0
    usage = max(int(mem.get("usage") or 0) - int(cache), 0)
    nets = (raw.get("networks") or {}).values()
    ann = task.ServiceAnnotations or {}
    stats = TaskStats(
        task_id=task.ID,
        service_id=task.ServiceID,
        node_id=task.NodeID,
        at=now,
        cpu_percent=round(cpu_percent, 3),
        cpu_limit_percent=round(limit_percent, 3),
        cpu_total_ns=total,
        mem_bytes=usage,
        mem_limit_bytes=int(mem.get("limit") or 0),
        net_rx_bytes=sum(int(n.get("rx_bytes") or 0) for n in nets),
        net_tx_bytes=sum(int(n.get("tx_bytes") or 0) for n in nets),
        pids=int((raw.get("pids_stats") or {}).get("current") or 0),
        service_name=str(ann.get("Name") or ""),
        slot=task.Slot,
        container_id=container_id,
    )
    return stats, _Prior(total, system, now)


class StatsCollector:
    """Samples the running tasks ``targets()`` names and hands each round to ``send``."""

    def __init__(
        self,
        engine: StatsEngine,
        targets: Callable[[], Iterable[tuple[Task, str]]],
        send: Callable[[list[TaskStats]], Awaitable[None]],
        *,
        interval_s: float = INTERVAL_S,
        concurrency: int = CONCURRENCY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.targets = targets
        self.send = send
        self.interval_s = interval_s
        self.clock = clock
        self._sem = asyncio.Semaphore(concurrency)
        self._prior: dict[str, _Prior] = {}  # by container
        self.latest: dict[str, TaskStats] = {}  # by task: the last round (metrics read it)
        self.rounds = 0

    async def _one(self, task: Task, cid: str) -> TaskStats | None:
        async with self._sem:
            try:
                raw = await self.engine.container_stats(cid)
            except Exception as e:  # an engine hiccup costs one sample, not the round
                log.debug("stats of %s: %s", cid[:12], e)
                return None
            if raw is None:
                return None
            prior = self._prior.get(cid)
            if prior is None:
                # A container seen for the first time: its CPU share needs a second sample, taken at
                # once (the engine answers it at its next collection tick, about a second later).
                _, prior = sample_of(task, cid, raw, None, self.clock())
                try:
                    raw = await self.engine.container_stats(cid)
                except Exception as e:
                    log.debug("stats of %s: %s", cid[:12], e)
                    raw = None
                if raw is None:
                    self._prior[cid] = prior
                    return None
        stats, self._prior[cid] = sample_of(task, cid, raw, prior, self.clock())
        return stats

    async def sample(self) -> list[TaskStats]:
        """One round: every running task's sample."""
        targets = list(self.targets())
        got = await asyncio.gather(*(self._one(t, cid) for t, cid in targets))
        out = [s for s in got if s is not None]
        live = {cid for _, cid in targets}
        for cid in [c for c in self._prior if c not in live]:
            del self._prior[cid]
        self.latest = {s.task_id: s for s in out}
        self.rounds += 1
        return out

    async def run(self) -> None:
        """Until cancelled: a round every interval (from each round's start), sent when non-empty."""
        while True:
            started = time.monotonic()
            try:
                out = await self.sample()
                if out:
                    await self.send(out)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # no session right now, a manager changing: the next round will do
                log.debug("stats round: %s", e)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.sleep(max(self.interval_s - (time.monotonic() - started), 0.0))
