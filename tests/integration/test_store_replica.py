"""Two managers' stores on one real etcd: the follower's view tracks the leader's durable batches,
refuses commits of its own, and takes over when the leader's term ends; a deposed leader's write
is refused by etcd and dropped from its view."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from shoal.errors import FencedOut, Unavailable
from shoal.store import MemoryStore, NullBackend
from shoal.store.election import LeaderElection
from shoal.store.etcd import etcd_client
from shoal.store.etcdproc import ManagedEtcd
from shoal.store.replica import NOT_LEADER, EtcdReplica
from tests.integration.test_store_etcd import running, service

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server is not installed")


@pytest.fixture
async def etcd1(tmp_path: Path) -> AsyncIterator[ManagedEtcd]:
    async with running(tmp_path, 1) as ms:
        yield ms[0]


async def until(pred, within: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def names(store: MemoryStore) -> set[str]:
    return {s.Spec.Name for s in store.list("service")}


async def test_a_follower_tracks_the_leader_and_takes_over(etcd1: ManagedEtcd) -> None:
    url = [etcd1.client_url]
    stores = [MemoryStore(NullBackend()), MemoryStore(NullBackend())]
    replicas = [EtcdReplica(s, url, timeout_s=3) for s in stores]
    clients = [etcd_client(url), etcd_client(url)]
    elections = [LeaderElection(c, member_id=m, ttl_s=2) for c, m in zip(clients, "ab", strict=True)]
    fenced: list[FencedOut] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        a, b = stores
        term_a = await elections[0].campaign()
        await replicas[0].lead(term_a.fence, fenced.append)
        tasks.append(asyncio.create_task(replicas[1].follow()))
        await replicas[1].synced.wait()

        # The leader's commits reach the follower, as whole batches, with the leader's versions.
        with a.tx() as tx:
            for i in range(3):
                tx.create("service", service(i))
        await a.wait_durable(within=5)
        await until(lambda: b.revision == a.revision, what="the follower to catch up")
        assert names(b) == {"web0", "web1", "web2"}
        assert b.get("service", "svc0001").Version == a.get("service", "svc0001").Version
        # A follower never commits: the same 503 the API gives.
        with pytest.raises(Unavailable, match=NOT_LEADER), b.tx() as tx:
            tx.create("service", service(9))
        assert b.get("service", "svc0009") is None

        # The leader's term ends (its lease is gone) while it does not know yet: its next write
        # is refused by etcd, reported once, and never becomes durable.
        campaign_b = asyncio.create_task(elections[1].campaign())
        await elections[0]._stop(revoke=True)  # the lease goes; the old leader is not told
        term_b = await asyncio.wait_for(campaign_b, 10)
        with a.tx() as tx:
            tx.delete("service", "svc0000")
        with pytest.raises(FencedOut):
            await a.wait_durable(within=5)
        await until(lambda: bool(fenced), what="on_fenced")

        # The new leader starts from what was durable: the deposed leader's delete is not there.
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        tasks.clear()
        await replicas[1].lead(term_b.fence, fenced.append)
        assert names(b) == {"web0", "web1", "web2"}
        with b.tx() as tx:
            tx.update("service", msgspec.structs.replace(b.get("service", "svc0001"),
                                                         Spec=msgspec.structs.replace(
                                                             b.get("service", "svc0001").Spec, Name="renamed")))
        await b.wait_durable(within=5)

        # The deposed leader steps down and follows: its undurable delete is gone, the new
        # leader's write is there.
        await replicas[0].step_down()
        tasks.append(asyncio.create_task(replicas[0].follow()))
        await until(lambda: names(a) == {"web0", "renamed", "web2"}, what="the old leader to follow")
        assert a.revision == b.revision
        with pytest.raises(Unavailable, match=NOT_LEADER), a.tx() as tx:
            tx.delete("service", "svc0002")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for e in elections:
            await e.close()
        for r in replicas:
            await r.close()
        for c in clients:
            await c.close()
