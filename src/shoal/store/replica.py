"""One manager's copy of a store held in etcd: a follower's watch-fed view, or the leader's term.

Every manager keeps the whole store in memory (reads are dictionary look-ups wherever they are
served). Exactly one of them, the leader, commits: its batches persist through a writer that
carries the leader's fence (store/etcd.py), so a deposed leader's writes are refused by etcd
itself. The others apply what the leader persisted, batch by batch, from an etcd watch.

Becoming the leader: load the last whole batch, :meth:`EtcdBackend.repair` over a torn one, make
the view equal what was loaded (a follower is usually there already), then accept commits from that
revision on. Losing it: refuse commits, drop the writer and whatever it had not made durable
(nobody was told about it: API answers and assignments wait for durability), and reload what the
new leader holds. So every manager's view is always the state of some durable revision, plus, on
the leader, commits on their way to etcd.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from shoal.errors import FencedOut
from shoal.store.base import Kind, Problem, Snapshot
from shoal.store.etcd import DEFAULT_PREFIX, EtcdBackend, EtcdSnapshot, Fence, RevisionCompacted
from shoal.store.memory import MemoryStore
from shoal.store.sealing import Sealer
from shoal.store.sqlite import NullBackend

log = logging.getLogger(__name__)

NOT_LEADER = "this manager is not the leader; writes go to the leader"
RETRY_S = 1.0


class FencedWriter:
    """The leader's :class:`~shoal.store.base.Backend` under its :class:`WriteBehind`: every batch
    carries the term's fence. It opens its own etcd client on first use, because a gRPC channel
    belongs to the event loop that made it and the writer runs on a loop of its own."""

    name = "etcd"  # the backend label of store metrics (shoal/metrics.py)

    def __init__(self, endpoints: Sequence[str], prefix: str, fence: Fence, timeout_s: float,
                 limits: dict[str, int] | None = None, sealer: Sealer | None = None) -> None:
        self.endpoints = list(endpoints)
        self.sealer = sealer
        self.prefix = prefix
        self.fence = fence
        self.timeout_s = timeout_s
        self.limits = limits or {}  # max_ops/max_bytes of one transaction; etcd's defaults if empty
        self._backend: EtcdBackend | None = None

    def _etcd(self) -> EtcdBackend:
        if self._backend is None:
            self._backend = EtcdBackend.from_endpoints(self.endpoints, self.prefix, timeout_s=self.timeout_s,
                                                       sealer=self.sealer, **self.limits)
        return self._backend

    def load(self) -> Snapshot:  # the leader's store is loaded by EtcdReplica, never through here
        raise NotImplementedError

    async def persist(
        self, revision: int, puts: list[tuple[Kind, Any]], deletes: list[tuple[Kind, str]]
    ) -> list[Problem]:
        return await self._etcd().persist(revision, puts, deletes, self.fence)

    async def wipe(self) -> None:
        await self._etcd().wipe(self.fence)

    async def close(self) -> None:
        if self._backend is not None:
            await self._backend.close()


class EtcdReplica:
    """Keeps ``store`` (a MemoryStore over a NullBackend) equal to what etcd holds under ``prefix``,
    following the leader's writes; :meth:`lead` turns it into the leader's store for one term."""

    def __init__(
        self, store: MemoryStore, endpoints: Sequence[str], prefix: str = DEFAULT_PREFIX, timeout_s: float = 5.0,
        txn_limits: dict[str, int] | None = None, sealer: Sealer | None = None,
    ) -> None:
        self.store = store
        self.sealer = sealer  # the swarm's data key: opens what followers load, seals what the leader writes
        self.txn_limits = txn_limits  # the leader's transactions (members Shoal runs accept bigger ones)
        self.endpoints = list(endpoints)
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.etcd = EtcdBackend.from_endpoints(self.endpoints, prefix, timeout_s=timeout_s, sealer=sealer)
        self.error = ""  # why the view may be stale (etcd unreachable), "" while it follows
        self.synced = asyncio.Event()  # set once the view has caught up with etcd at least once
        store.refuse_writes = NOT_LEADER

    async def load(self) -> EtcdSnapshot:
        """Make the view equal the last whole batch in etcd, now."""
        snap = await self.etcd.load()
        self.store.reset(snap)
        self.synced.set()
        return snap

    async def follow(self) -> None:
        """Apply every batch the leader persists, forever (cancel to stop). An etcd outage leaves the
        view as it was (reads go on) and is retried; history lost to compaction means a reload."""
        while True:
            try:
                snap = await self.load()
                if self.error:
                    log.info("store: following etcd again at revision %d", snap.revision)
                self.error = ""
                async for batch in self.etcd.watch(snap.etcd_revision + 1, whole_batches=True):
                    assert batch.revision is not None  # whole batches end with the meta revision
                    self.store.apply_remote(batch.revision, batch.puts, batch.deletes)
                    if batch.bad:
                        self.store.problems.extend(batch.bad)
            except RevisionCompacted:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # StoreUnavailable, a broken channel: the view waits, reads go on
                if str(e) != self.error:
                    log.warning("store: cannot follow etcd (%s); retrying", e)
                self.error = str(e) or type(e).__name__
                await asyncio.sleep(RETRY_S)

    async def lead(self, fence: Fence, on_fenced: Callable[[FencedOut], None]) -> int:
        """Start a term: load, repair a torn batch, and accept commits (persisted with ``fence``).
        Returns the revision the term starts from. ``on_fenced(error)`` is called on the manager's
        loop if etcd refuses a write because the term is over."""
        snap = await self.load()
        repaired = await self.etcd.repair(snap, fence)
        if repaired:
            log.warning("store: repaired %d objects of a batch the previous leader left torn", repaired)
        if snap.stale:  # written plain by an older Shoal, or sealed with a key since rotated
            await self.etcd.persist(snap.revision, snap.stale, [], fence)
            log.info("store: sealed %d objects with the current data key", len(snap.stale))
        self.store.lead(FencedWriter(self.endpoints, self.prefix, fence, self.timeout_s, self.txn_limits,
                                     self.sealer), on_fenced)
        self.error = ""
        return snap.revision

    async def step_down(self) -> None:
        """End the term: refuse commits, drop the writer (and what it had not made durable)."""
        await self.store.follow(NOT_LEADER, NullBackend())

    async def close(self) -> None:
        await self.store.follow(NOT_LEADER, NullBackend())
        await self.etcd.close()
