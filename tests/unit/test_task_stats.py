"""Task stats: a sample from the engine's JSON (CPU from two samples, memory without the page
cache), the agent's collector (first sight takes two samples, gone containers are forgotten), and
the leader's book (staleness, per-service usage)."""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.agent.stats import StatsCollector, sample_of
from shoal.dispatcher.protocol import TaskStats
from shoal.dispatcher.stats import StatsBook, usage_of
from shoal.models import ContainerSpec, ResourceLimits, ResourceRequirements, Task, TaskSpec, TaskStatus, Version


def task(tid: str = "t1", nano_cpus: int = 0) -> Task:
    res = ResourceRequirements(Limits=ResourceLimits(NanoCPUs=nano_cpus)) if nano_cpus else None
    return Task(ID=tid, Version=Version(), CreatedAt="", UpdatedAt="", ServiceID="s1", NodeID="n1", Slot=1,
                Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox"), Resources=res),
                Status=TaskStatus(State="running"), DesiredState="running",
                ServiceAnnotations={"Name": "web"})


def raw(total: int, system: int, usage: int = 10_000_000, inactive: int = 4_000_000) -> dict[str, Any]:
    return {"cpu_stats": {"cpu_usage": {"total_usage": total}, "system_cpu_usage": system, "online_cpus": 2},
            "memory_stats": {"usage": usage, "limit": 100_000_000, "stats": {"total_inactive_file": inactive}},
            "networks": {"eth0": {"rx_bytes": 10, "tx_bytes": 20}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}},
            "pids_stats": {"current": 3}}


def test_a_sample_as_docker_stats_shows_it() -> None:
    t = task(nano_cpus=500_000_000)  # half a CPU
    first, prior = sample_of(t, "c1", raw(1_000_000_000, 100_000_000_000), None, 1.0)
    assert first.cpu_percent == 0.0
    # 0.5 s of CPU in 2 s (4 s of the two CPUs' system time): a quarter of one CPU, as Docker
    # says it (25 %), and half of the half-CPU limit (50 %).
    s, _ = sample_of(t, "c1", raw(1_500_000_000, 104_000_000_000), prior, 3.0)
    assert (s.cpu_percent, s.cpu_limit_percent) == (25.0, 50.0)
    assert (s.mem_bytes, s.mem_limit_bytes, s.net_rx_bytes, s.net_tx_bytes, s.pids) == \
        (6_000_000, 100_000_000, 11, 22, 3)
    assert (s.service_name, s.slot, s.container_id) == ("web", 1, "c1")
    unlimited, _ = sample_of(task(), "c1", raw(1_500_000_000, 104_000_000_000), prior, 3.0)
    assert unlimited.cpu_limit_percent == 12.5  # over both of the node's CPUs


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.total = 0

    async def container_stats(self, cid: str) -> dict[str, Any] | None:
        self.calls.append(cid)
        if cid == "gone":
            return None
        self.total += 1_000_000_000
        return raw(self.total, 100 * self.total)


def test_the_collector_primes_new_containers_and_forgets_gone_ones() -> None:
    engine = FakeEngine()
    sent: list[list[TaskStats]] = []
    targets = [(task("t1"), "c1"), (task("t2"), "gone")]

    got = asyncio.Event()

    async def send(stats: list[TaskStats]) -> None:
        sent.append(stats)
        got.set()

    async def main() -> None:
        col = StatsCollector(engine, lambda: targets, send, interval_s=0.01)
        out = await col.sample()
        assert [s.task_id for s in out] == ["t1"] and out[0].cpu_percent > 0  # two samples at first sight
        assert engine.calls == ["c1", "c1", "gone"] or sorted(engine.calls) == ["c1", "c1", "gone"]
        engine.calls.clear()
        await col.sample()
        assert sorted(engine.calls) == ["c1", "gone"]  # primed: one request each
        targets.pop(0)
        await col.sample()
        assert "c1" not in col._prior and col.latest == {}
        runner = asyncio.create_task(col.run())
        targets.append((task("t3"), "c3"))
        await asyncio.wait_for(got.wait(), 5)
        runner.cancel()

    asyncio.run(main())
    assert sent[0][0].task_id == "t3"


def test_the_book_keeps_current_samples_per_service() -> None:
    now = [100.0]
    book = StatsBook(stale_s=30, clock=lambda: now[0])
    a = TaskStats(task_id="a", service_id="s", node_id="n", at=0, cpu_percent=50, cpu_limit_percent=80,
                  mem_bytes=100, mem_limit_bytes=1000, slot=2)
    b = TaskStats(task_id="b", service_id="s", node_id="n", at=0, cpu_percent=10, cpu_limit_percent=20,
                  mem_bytes=300, mem_limit_bytes=1000, slot=1)
    book.record([a, b])
    assert [s.task_id for s in book.service("s")] == ["b", "a"]
    u = book.usage("s")
    assert u is not None and (u.tasks, u.cpu_limit_percent_avg, u.mem_bytes_sum, u.mem_limit_percent_avg) == \
        (2, 50.0, 400, 20.0)
    now[0] += 20
    book.record([a])
    now[0] += 20  # b is 40 s old: stale, forgotten
    assert [s.task_id for s in book.service("s")] == ["a"] and len(book.all()) == 1
    assert book.usage("other") is None and usage_of([]) is None
