"""The manager's loop-lag monitor and its garbage-collector policy (freeze what survives a full
collection, thaw it all now and then), on the real collector."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from shoal.looplag import GcStats, LoopLagMonitor


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    """A cyclic object: only the cyclic collector frees it once unreachable."""

    def __init__(self) -> None:
        self.me = self


def test_survivors_of_a_full_collection_are_frozen_and_thawed_later() -> None:
    stats = GcStats(freeze=True, thaw_s=3600)
    try:
        keep = [Node() for _ in range(1000)]
        stats.tick()
        assert gc.get_freeze_count() == 0  # no full collection yet: nothing to freeze
        gc.collect()
        assert stats.collections[2] >= 1 and stats.longest[2] > 0
        stats.tick()
        frozen = gc.get_freeze_count()
        assert frozen >= len(keep)  # the survivors are out of every later collection's walk
        # A later full collection walks only what came since: far fewer objects than were frozen.
        gc.collect()
        stats.tick()
        assert gc.get_freeze_count() >= frozen
        assert stats.summary()["frozen"] == gc.get_freeze_count()

        stats.thaw_s = 0  # time to thaw: the next full collection sees everything again
        gc.collect()
        stats.tick()
        assert gc.get_freeze_count() == 0
        del keep
    finally:
        stats.close()


def test_frozen_garbage_cycles_are_collected_after_a_thaw() -> None:
    stats = GcStats(freeze=True, thaw_s=3600)
    try:
        cycles = [Node() for _ in range(100)]
        gc.collect()
        stats.tick()
        del cycles  # unreachable cycles, but frozen: the collector does not see them yet
        assert gc.collect() < 100
        stats.thaw_s = 0
        stats.tick()  # after that full collection, and it is time: thawed
        assert gc.get_freeze_count() == 0
        assert gc.collect() >= 100  # the next full collection frees them (each Node and its dict)
    finally:
        stats.close()


def test_without_freeze_nothing_is_frozen_and_close_leaves_no_callback() -> None:
    stats = GcStats()
    gc.collect()
    stats.tick()
    assert gc.get_freeze_count() == 0
    stats.close()
    assert stats._callback not in gc.callbacks


async def test_the_monitor_ticks_the_collector_policy() -> None:
    stats = GcStats(freeze=True)
    monitor = LoopLagMonitor(period_s=0.01, gc_stats=stats)
    task = asyncio.create_task(monitor.run())
    try:
        gc.collect()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if gc.get_freeze_count():
                break
        assert gc.get_freeze_count() > 0
        assert monitor.summary()["samples"] > 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        stats.close()
