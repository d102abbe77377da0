"""The etcd backend, leader election and managed members, against real etcd-server processes.

Every test starts its own members (loopback, free ports, a tmp dir) and stops them by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aetcd import rpc

from shoal.errors import Conflict, FencedOut, StoreUnavailable
from shoal.models import (
    Cluster,
    Config,
    ContainerStatus,
    LogSink,
    Network,
    Node,
    Secret,
    Service,
    Stack,
    TaskState,
    User,
    Version,
)
from shoal.orchestrator.task import new_task
from shoal.store import MemoryStore, SqliteBackend
from shoal.store.base import KINDS
from shoal.store.election import LeaderElection
from shoal.store.etcd import EtcdBackend, RemoteBatch, RevisionCompacted, etcd_client
from shoal.store.etcdproc import EtcdStartError, ManagedEtcd, add_member, members, remove_member

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server is not installed")


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def make_members(tmp: Path, n: int, **kw: Any) -> list[ManagedEtcd]:
    ports = free_ports(2 * n)
    names = [f"m{i}" for i in range(n)]
    peers = {name: f"http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names)}
    return [ManagedEtcd(name, tmp / name, f"http://127.0.0.1:{ports[2 * i]}", peers[name],
                        initial_cluster=dict(peers), **kw) for i, name in enumerate(names)]


@contextlib.asynccontextmanager
async def running(tmp: Path, n: int, **kw: Any) -> AsyncIterator[list[ManagedEtcd]]:
    ms = make_members(tmp, n, **kw)
    try:
        for m in ms:
            m.spawn()  # all at once: a member of a new cluster waits for its peers
        await asyncio.gather(*(m.wait_healthy(30) for m in ms))
        yield ms
    finally:
        for m in ms:
            m.stop()


@pytest.fixture
async def etcd1(tmp_path: Path) -> AsyncIterator[ManagedEtcd]:
    async with running(tmp_path, 1) as ms:
        yield ms[0]


@pytest.fixture
async def backend(etcd1: ManagedEtcd) -> AsyncIterator[EtcdBackend]:
    b = EtcdBackend.from_endpoints([etcd1.client_url], max_ops=128, timeout_s=3)
    yield b
    await b.close()


def service(i: int) -> Service:
    return msgspec.convert({
        "ID": f"svc{i:04d}", "Version": {"Index": 1}, "CreatedAt": "2026-01-01T00:00:00Z",
        "UpdatedAt": "2026-01-01T00:00:00Z",
        "Spec": {"Name": f"web{i}", "Labels": {"tier": "front"},
                 "TaskTemplate": {"ContainerSpec": {"Image": "nginx:1.27", "Env": ["A=1", "B=2"]},
                                  "RestartPolicy": {"Condition": "on-failure", "MaxAttempts": 3}},
                 "Mode": {"Replicated": {"Replicas": 3}},
                 "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]}},
        "Endpoint": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080}],
                     "VirtualIPs": [{"NetworkID": "net1", "Addr": "10.0.0.2/24"}]},
    }, Service)


def task(i: int, svc: Service, revision: int = 1) -> Any:
    t = new_task(svc, slot=i % 50 + 1, node_id=f"node{i % 7}")
    t.ID = f"task{i:06d}"
    t.Version = Version(revision)
    t.Status.State = TaskState.RUNNING
    t.Status.ContainerStatus = ContainerStatus(ContainerID=f"{i:064x}", PID=1000 + i)
    return t


def one_of_each_kind() -> dict[str, list[Any]]:
    stamp = {"Version": {"Index": 3}, "CreatedAt": "2026-01-01T00:00:00Z", "UpdatedAt": "2026-01-02T00:00:00Z"}
    svc = service(1)
    return {
        "cluster": [msgspec.convert({"ID": "clu1", **stamp, "Spec": {"Name": "default"},
                                     "JoinTokens": {"Worker": "SWMTKN-1-w", "Manager": "SWMTKN-1-m"}}, Cluster)],
        "node": [msgspec.convert({"ID": "node1", **stamp, "Spec": {"Role": "manager"},
                                  "Description": {"Hostname": "h1"}, "Status": {"State": "ready", "Addr": "10.1.1.1"},
                                  "ManagerStatus": {"Leader": True, "Addr": "10.1.1.1:2377"}}, Node)],
        "service": [svc],
        "task": [task(1, svc, 3)],
        "network": [msgspec.convert({"ID": "net1", **stamp, "NodeAddresses": {"node1": "10.0.0.250/24"},
                                     "Spec": {"Name": "front", "DriverConfiguration": {"Name": "overlay"}}}, Network)],
        "secret": [msgspec.convert({"ID": "sec1", **stamp, "Spec": {"Name": "pw", "Data": "aHVudGVyMg=="}}, Secret)],
        "config": [msgspec.convert({"ID": "cfg1", **stamp, "Spec": {"Name": "conf", "Data": "eD0x"}}, Config)],
        "stack": [msgspec.convert({"ID": "stk1", **stamp, "Spec": {"Name": "app", "Compose": "services: {}"},
                                   "Status": {"State": "deployed"}}, Stack)],
        "user": [msgspec.convert({"ID": "usr1", **stamp, "Spec": {"Name": "olga", "Role": "operator", "Teams": ["web"]},
                                  "Tokens": [{"ID": "tok1", "Hash": "ab" * 32}]}, User)],
        "logsink": [msgspec.convert({"ID": "lsk1", **stamp, "Spec": {"Name": "loki", "Type": "loki",
                                                                     "URL": "http://127.0.0.1:3100"}}, LogSink)],
    }


async def collect(agen: AsyncIterator[RemoteBatch], until: Any, within: float = 10) -> list[RemoteBatch]:
    """Batches from a watch until ``until(batches)`` holds."""
    out: list[RemoteBatch] = []

    async def run() -> None:
        async for b in agen:
            out.append(b)
            if until(out):
                return

    await asyncio.wait_for(run(), within)
    return out


# ---------------------------------------------------------------------------------------- backend


async def test_round_trip_of_every_kind(backend: EtcdBackend) -> None:
    objs = one_of_each_kind()
    assert set(objs) == set(KINDS)
    await backend.persist(3, [(k, o) for k, os in objs.items() for o in os], [])
    snap = await backend.load()
    assert snap.revision == 3 and snap.bad == [] and snap.max_index == 3
    assert snap.objects == objs
    # A delete and an update in one later batch.
    renamed = msgspec.structs.replace(objs["service"][0], Version=Version(4))
    await backend.persist(4, [("service", renamed)], [("secret", "sec1")])
    snap = await backend.load()
    assert snap.revision == 4 and snap.objects["secret"] == [] and snap.objects["service"] == [renamed]


async def test_a_big_batch_is_chunked_and_the_meta_revision_lands_last(backend: EtcdBackend) -> None:
    svc = service(1)
    start = (await backend.load()).etcd_revision + 1
    tasks = [("task", task(i, svc, 7)) for i in range(5000)]
    await backend.persist(7, tasks, [])
    batches = await collect(backend.watch(start), lambda bs: bs[-1].revision is not None)
    # 5,000 objects + the meta key, at most 128 ops per transaction: 40 transactions.
    assert len(batches) == 40
    assert all(len(b.puts) <= 128 for b in batches)
    assert [b.revision for b in batches[:-1]] == [None] * 39 and batches[-1].revision == 7
    assert [b.etcd_revision for b in batches] == list(range(start, start + 40))
    snap = await backend.load()
    assert snap.revision == 7 and len(snap.objects["task"]) == 5000
    assert {t.ID for t in snap.objects["task"]} == {t.ID for _, t in tasks}


async def test_chunks_also_respect_the_request_size(etcd1: ManagedEtcd) -> None:
    b = EtcdBackend.from_endpoints([etcd1.client_url], max_ops=10_000, max_bytes=64 * 1024, timeout_s=3)
    try:
        svc = service(1)
        size = len(msgspec.msgpack.encode(task(0, svc)))
        await b.persist(1, [("task", task(i, svc)) for i in range(1000)], [])
        batches = await collect(b.watch(2), lambda bs: bs[-1].revision == 1)
        per_chunk = max(len(x.puts) for x in batches)
        assert per_chunk * size <= 64 * 1024 and len(batches) >= 1000 * size // (64 * 1024)
        # An object bigger than one request is left out and reported; the rest of its batch lands.
        big_spec = msgspec.structs.replace(svc.Spec, Labels={"x": "y" * 70_000})
        huge = msgspec.structs.replace(svc, ID="huge", Spec=big_spec)
        (problem,) = await b.persist(2, [("service", svc), ("service", huge)], [])
        assert (problem.kind, problem.id) == ("service", "huge") and "more than one etcd request" in problem.error
        snap = await b.load()
        assert snap.revision == 2 and [o.ID for o in snap.objects["service"]] == [svc.ID]
    finally:
        await b.close()


async def test_an_undecodable_row_is_reported_and_the_rest_loads(backend: EtcdBackend) -> None:
    objs = one_of_each_kind()
    # Rows another Shoal version (or damage) left, then a batch persisted after them.
    start = (await backend.load()).etcd_revision + 1
    c = backend.client
    await c.put(backend.key("task", "garbage"), b"\xc1 not msgpack")
    await c.put(backend.key("service", "wrongshape"), msgspec.msgpack.encode({"ID": 5}))
    await backend.persist(3, [(k, o) for k, os in objs.items() for o in os], [])
    snap = await backend.load()
    assert {(r.kind, r.id) for r in snap.bad} == {("task", "garbage"), ("service", "wrongshape")}
    assert snap.objects == objs
    assert all("cannot be decoded" in r.error for r in snap.bad)
    # A watcher skips and reports them too.
    await c.put(backend.key("node", "bad"), b"\xff")
    await backend.persist(4, [("node", msgspec.structs.replace(objs["node"][0], Version=Version(4)))], [])
    batches = await collect(backend.watch(start), lambda bs: bs[-1].revision == 4)
    assert [(r.kind, r.id) for b in batches for r in b.bad] == [("task", "garbage"), ("service", "wrongshape"),
                                                                ("node", "bad")]
    assert all("cannot be decoded" in r.error for b in batches for r in b.bad)
    assert [o.ID for _, o in batches[-1].puts] == ["node1"]


async def test_watch_groups_each_chunk_and_merges_whole_batches(backend: EtcdBackend) -> None:
    svc = service(1)
    start = (await backend.load()).etcd_revision + 1
    await backend.persist(1, [("service", svc)], [])
    await backend.persist(2, [("task", task(i, svc, 2)) for i in range(300)], [])  # 3 chunks
    await backend.persist(3, [], [("task", "task000000"), ("task", "task000001")])
    chunks = await collect(backend.watch(start), lambda bs: bs[-1].revision == 3)
    assert [(b.revision, len(b.puts), len(b.deletes)) for b in chunks] == [
        (1, 1, 0), (None, 128, 0), (None, 128, 0), (2, 44, 0), (3, 0, 2)]
    whole = await collect(backend.watch(start, whole_batches=True), lambda bs: bs[-1].revision == 3)
    assert [(b.revision, len(b.puts), len(b.deletes)) for b in whole] == [(1, 1, 0), (2, 300, 0), (3, 0, 2)]
    assert whole[2].deletes == [("task", "task000000"), ("task", "task000001")]
    # A watch from a compacted revision says so clearly.
    await backend.client.kvstub.Compact(rpc.CompactionRequest(revision=chunks[-1].etcd_revision, physical=True))
    with pytest.raises(RevisionCompacted, match="compacted"):
        await collect(backend.watch(start), lambda bs: True, within=5)


async def test_a_torn_batch_stays_invisible_and_the_next_leader_repairs_it(backend: EtcdBackend) -> None:
    svc = service(1)
    before = [("task", task(i, svc, 1)) for i in range(200)]
    await backend.persist(1, [("service", svc), *before], [])
    good = await backend.load()
    # Batch 2 updates every task, deletes the service and adds 100 tasks: 3 chunks of 128 ops. Its
    # leader dies after the first two chunks (written as persist writes them, the meta key not yet).
    update = [("task", msgspec.structs.replace(t, Version=Version(2), NodeID="elsewhere")) for _, t in before]
    added = [("task", task(1000 + i, svc, 2)) for i in range(100)]
    ops, _ = backend._ops(2, update + added, [("service", svc.ID)])
    chunks = backend._chunks(ops)
    assert len(chunks) == 3
    await backend._write_chunks(await backend._stubs(), 2, [], chunks[:2])
    # A load sees the state of batch 1 exactly: nothing of the torn batch.
    snap = await backend.load()
    assert snap.revision == 1 and snap.objects == good.objects and snap.max_index == 1
    assert snap.etcd_revision == good.etcd_revision < snap.head_revision
    # The next leader repairs etcd before writing: the torn writes are undone.
    # Every key the two chunks touched: the service put back, 200 tasks rewritten, 55 new ones deleted.
    assert await backend.repair(snap) == 128 * 2
    after = await backend.load()
    assert after.objects == good.objects and after.max_index == 1
    assert await backend.repair(after) == 0
    # A follower watching from the snapshot with whole batches gets torn chunks + repair as one
    # batch that nets out to nothing new.
    (merged,) = await collect(backend.watch(snap.etcd_revision + 1, whole_batches=True), lambda bs: True)
    assert merged.revision == 1
    final = {o.ID: o for _, o in merged.puts}
    assert final[svc.ID] == svc and all(final[t.ID] == t for _, t in before)


async def test_import_a_sqlite_store_into_an_empty_prefix_only(backend: EtcdBackend, tmp_path: Path) -> None:
    # A single manager's store, written through MemoryStore into its sqlite file.
    store = MemoryStore(SqliteBackend(tmp_path / "state.db"))
    seed = one_of_each_kind()
    seed["task"] = [task(i, seed["service"][0]) for i in range(1000)]
    # One transaction per kind, then the delete: the revision is the number of kinds + 1.
    for kind, items in seed.items():
        with store.tx() as tx:
            for obj in items:
                tx.create(kind, obj)
    with store.tx() as tx:
        tx.delete("secret", "sec1")
    await store.close()  # waits until the write-behind writer has persisted everything
    single = SqliteBackend(tmp_path / "state.db").load()
    revision, objs = single.revision, single.objects
    assert revision == 11 and len(objs["task"]) == 1000 and single.bad == []
    assert await backend.import_snapshot(revision, objs) == []
    snap = await backend.load()
    assert snap.revision == 11 and snap.max_index == 10
    assert {k: sorted(v, key=lambda o: o.ID) for k, v in snap.objects.items()} == {
        k: sorted(v, key=lambda o: o.ID) for k, v in objs.items()}
    with pytest.raises(Conflict, match="wipe it first"):
        await backend.import_snapshot(42, objs)
    await backend.wipe()
    after = await backend.load()
    assert after.revision == 0 and all(v == [] for v in after.objects.values())
    # A watcher sees the wipe as one whole batch of deletes at store revision 0.
    (wiped,) = await collect(backend.watch(snap.etcd_revision + 1, whole_batches=True), lambda bs: True)
    assert wiped.revision == 0 and wiped.puts == [] and len(wiped.deletes) == sum(len(v) for v in objs.values())
    # A wiped prefix takes an import again.
    assert await backend.import_snapshot(43, {"service": objs["service"]}) == []
    assert (await backend.load()).revision == 43


# ---------------------------------------------------------------------------------------- election


async def test_one_leader_and_the_other_takes_over_when_the_lease_goes(etcd1: ManagedEtcd) -> None:
    clients = [etcd_client([etcd1.client_url]) for _ in range(3)]
    a = LeaderElection(clients[0], member_id="a", info=b"a:2377", ttl_s=2)
    b = LeaderElection(clients[1], member_id="b", info=b"b:2377", ttl_s=2)
    watcher = LeaderElection(clients[2], member_id="w", ttl_s=2)
    seen: list[bytes | None] = []

    async def observe() -> None:
        async for info in watcher.observe():
            seen.append(info)

    obs = asyncio.create_task(observe())
    try:
        lead_a = await asyncio.wait_for(a.campaign(), 5)
        b_campaign = asyncio.create_task(b.campaign())
        await asyncio.sleep(1.0)
        assert not b_campaign.done()  # a still leads
        assert await watcher.leader() == b"a:2377"
        # Revoke a's lease from outside: its key goes, a notices, b leads at once.
        t0 = time.monotonic()
        await clients[2].leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lead_a.lease_id))
        lead_b = await asyncio.wait_for(b_campaign, 3)
        await asyncio.wait_for(lead_a.lost.wait(), 3)
        assert time.monotonic() - t0 < 2
        assert lead_b.fence.create_revision > lead_a.fence.create_revision
        # a campaigns again; b's client dies (no resign, no revoke): b's keepalive stops, the lease
        # expires after its TTL and a takes over within the TTL plus a little.
        a_again = asyncio.create_task(a.campaign())
        await asyncio.sleep(0.5)
        assert not a_again.done()
        t0 = time.monotonic()
        for t in b._tasks:
            t.cancel()  # the process is gone: nothing refreshes the lease any more
        await clients[1].close()
        lead_a2 = await asyncio.wait_for(a_again, 6)
        assert time.monotonic() - t0 <= 2 + 1.5
        assert lead_a2.fence.create_revision > lead_b.fence.create_revision
        await asyncio.sleep(0.3)
        assert seen == [None, b"a:2377", b"b:2377", b"a:2377"]
        # Resigning hands over at once; with nobody campaigning there is no leader.
        await a.resign()
        await asyncio.sleep(0.3)
        assert await watcher.leader() is None and seen[-1] is None and len(seen) == 5
    finally:
        obs.cancel()
        for e in (a, b, watcher):
            with contextlib.suppress(Exception):
                await e.close()
        for c in clients:
            await c.close()


async def test_a_deposed_leader_is_fenced_out_and_writes_nothing(etcd1: ManagedEtcd) -> None:
    ca, cb = etcd_client([etcd1.client_url]), etcd_client([etcd1.client_url])
    a = LeaderElection(ca, member_id="a", info=b"a", ttl_s=2)
    b = LeaderElection(cb, member_id="b", info=b"b", ttl_s=2)
    backend = EtcdBackend(ca, max_ops=128, timeout_s=3)
    try:
        lead_a = await a.campaign()
        svc = service(1)
        await backend.persist(1, [("service", svc)], [], fence=lead_a.fence)
        b_task = asyncio.create_task(b.campaign())
        await ca.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lead_a.lease_id))  # a's term ends
        lead_b = await asyncio.wait_for(b_task, 5)
        # a has not caught up and writes a two-chunk batch with its old fence: nothing lands.
        before = await backend.load()
        with pytest.raises(FencedOut, match="no longer the leader"):
            await backend.persist(2, [("task", task(i, svc, 2)) for i in range(200)], [], fence=lead_a.fence)
        after = await backend.load()
        assert after.revision == 1 and after.objects == before.objects
        with pytest.raises(FencedOut):
            await backend.wipe(fence=lead_a.fence)
        # The new leader's fence works.
        await backend.persist(2, [("task", task(1, svc, 2))], [], fence=lead_b.fence)
        assert (await backend.load()).revision == 2
    finally:
        await a.close()
        await b.close()
        await ca.close()
        await cb.close()


# ---------------------------------------------------------------------------------------- clusters


async def test_three_members_survive_one_loss_and_fail_fast_without_quorum(tmp_path: Path) -> None:
    # The bounds must cover etcd's own failover when the member we lose is its raft leader: a new
    # one is elected within about two election timeouts (0.5 s here), and writes wait for it.
    timeout, ttl = 2.5, 3
    async with running(tmp_path, 3, heartbeat_ms=50, election_ms=500) as ms:
        endpoints = [m.client_url for m in ms]
        b = EtcdBackend.from_endpoints(endpoints, max_ops=128, timeout_s=timeout)
        elect_client = etcd_client(endpoints)
        election = LeaderElection(elect_client, member_id="a", info=b"a", ttl_s=ttl)
        seen: list[RemoteBatch] = []
        watch_error: list[BaseException] = []

        async def follow(start: int) -> None:
            try:
                async for batch in b.watch(start):
                    seen.append(batch)
            except StoreUnavailable as e:
                watch_error.append(e)

        try:
            svc = service(1)
            lead = await election.campaign()
            await b.persist(1, [("service", svc)], [], fence=lead.fence)
            follower = asyncio.create_task(follow((await b.load()).etcd_revision + 1))
            ms[0].kill()
            for rev in (2, 3, 4):  # round robin: some of these would have gone to the dead member
                await b.persist(rev, [("task", task(rev, svc, rev))], [], fence=lead.fence)
            assert (await b.load()).revision == 4
            await asyncio.sleep(ttl + 0.5)  # longer than the lease TTL: the keepalive moved to a live member
            assert not lead.lost.is_set()
            assert [x.revision for x in seen] == [2, 3, 4]  # the watch followed, without a gap
            ms[1].kill()
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable, match=f"no answer within {timeout:g}s"):
                await b.persist(5, [("task", task(5, svc, 5))], [], fence=lead.fence)
            assert time.monotonic() - t0 < timeout + 1.0
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await b.load()
            assert time.monotonic() - t0 < timeout + 1.0
            # Without quorum the leader cannot refresh its lease: it gives up within 0.6 * TTL (it had
            # been trying for 5 s already), and the watch gives up too.
            await asyncio.wait_for(lead.lost.wait(), 1)
            await asyncio.wait_for(follower, timeout + 1)
            assert watch_error and "no member answered" in str(watch_error[0])
            # Quorum comes back: both work again (the data dirs keep everything).
            ms[0].spawn()
            ms[1].spawn()
            await asyncio.gather(ms[0].wait_healthy(20), ms[1].wait_healthy(20))
            await b.persist(6, [("task", task(6, svc, 6))], [])
            snap = await b.load()
            assert snap.revision == 6 and {t.ID for t in snap.objects["task"]} >= {
                "task000002", "task000003", "task000004", "task000006"}
            lead = await asyncio.wait_for(election.campaign(), 10)
            await b.persist(7, [], [("task", "task000006")], fence=lead.fence)
        finally:
            await election.close()
            await elect_client.close()
            await b.close()


async def test_no_etcd_at_all_is_unavailable_within_the_bound() -> None:
    (port,) = free_ports(1)
    b = EtcdBackend.from_endpoints([f"127.0.0.1:{port}"], timeout_s=1)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await b.persist(1, [], [])
        assert time.monotonic() - t0 < 2
    finally:
        await b.close()


async def test_managed_member_add_and_remove(tmp_path: Path) -> None:
    async with running(tmp_path, 1) as (first,):
        client = etcd_client([first.client_url])
        new_client = None
        cport, pport = free_ports(2)
        second = ManagedEtcd("m1", tmp_path / "m1", f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}",
                             cluster_state="existing")
        try:
            b1 = EtcdBackend(client, timeout_s=3)
            await b1.persist(1, [("service", service(1))], [])
            with pytest.raises(Conflict, match="already exists"):  # a peer URL the cluster has
                await add_member(client, "again", first.peer_url)
            second.initial_cluster = await add_member(client, "m1", second.peer_url)
            assert second.initial_cluster == {"m0": first.peer_url, "m1": second.peer_url}
            await second.start(20)
            names = {m.name for m in await members(client)}
            assert names == {"m0", "m1"}
            # The new member has the data and takes writes.
            new_client = etcd_client([second.client_url])
            b2 = EtcdBackend(new_client, timeout_s=3)
            assert (await b2.load()).objects["service"] == [service(1)]
            await b2.persist(2, [("service", service(2))], [])
            assert len((await b1.load()).objects["service"]) == 2
            (mid,) = [m.id for m in await members(client) if m.name == "m1"]
            await remove_member(client, mid)
            assert [m.name for m in await members(client)] == ["m0"]
        finally:
            second.stop()
            await client.close()
            if new_client is not None:
                await new_client.close()


async def test_a_member_that_cannot_start_says_why(tmp_path: Path) -> None:
    (m,) = make_members(tmp_path, 1)
    m.peer_url = "http://127.0.0.1:notaport"
    m.initial_cluster = {m.name: m.peer_url}
    with pytest.raises(EtcdStartError, match="exited with status"):
        await m.start(10)
    m.stop()


async def test_a_restarted_manager_adopts_its_running_member(tmp_path: Path) -> None:
    async with running(tmp_path, 1) as (first,):
        again = ManagedEtcd(first.name, first.data_dir, first.client_url, first.peer_url)
        await again.start(10)  # the member is already up: adopted, not started twice
        assert again.pid == first.pid and again.running
        b = EtcdBackend.from_endpoints([again.client_url], timeout_s=3)
        try:
            await b.persist(1, [("service", service(1))], [])
        finally:
            await b.close()
        again.stop()
        assert not first.running and not again.running and not first.pid_path.exists()
