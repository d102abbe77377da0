"""State at rest on etcd: secrets, configs and join tokens are sealed in every etcd value (and so in
every etcd snapshot), the managed member's files are private, and a manager's store without the
swarm's data key neither loads nor writes. Real etcd-server processes, loopback, tmp dirs."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from shoal.store import MemoryStore, NullBackend
from shoal.store.election import LeaderElection
from shoal.store.etcd import EtcdBackend, etcd_client, prefix_end
from shoal.store.etcdproc import ManagedEtcd
from shoal.store.replica import EtcdReplica
from shoal.store.sealing import MAGIC, SEALED_KINDS, FileKeySource, Keyring, Sealer, StoreKeyError
from tests.integration.test_store_etcd import one_of_each_kind, running

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server is not installed")

SECRET_B64 = "aHVudGVyMg=="  # the secret in one_of_each_kind()
CONFIG_B64 = "eD0x"
TOKENS = (b"SWMTKN-1-w", b"SWMTKN-1-m")


@pytest.fixture
async def etcd1(tmp_path: Path) -> AsyncIterator[ManagedEtcd]:
    async with running(tmp_path / "members", 1) as ms:
        yield ms[0]


def sealer(tmp_path: Path, name: str = "store.key", ring: Keyring | None = None) -> Sealer:
    source = FileKeySource(tmp_path / name)
    if ring is not None:
        source.save(ring)
    else:
        source.create()
    return Sealer(source)


async def raw_values(url: str) -> dict[bytes, bytes]:
    client = etcd_client([url])
    try:
        await client.connect()
        from aetcd import rpc
        resp = await client.kvstub.Range(rpc.RangeRequest(key=b"/shoal/", range_end=prefix_end(b"/shoal/")))
        return {kv.key: kv.value for kv in resp.kvs}
    finally:
        await client.close()


def snapshot_bytes(url: str, tmp_path: Path) -> bytes:
    """What an operator's ``etcdctl snapshot save`` backup holds."""
    out = tmp_path / "backup.db"
    subprocess.run(["etcdctl", f"--endpoints={url}", "snapshot", "save", str(out)], check=True,
                   capture_output=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, timeout=30)
    return out.read_bytes()


async def test_sealed_kinds_are_not_plain_in_etcd_nor_in_its_snapshot(etcd1: ManagedEtcd, tmp_path: Path) -> None:
    key = sealer(tmp_path)
    b = EtcdBackend.from_endpoints([etcd1.client_url], timeout_s=3, sealer=key)
    try:
        objs = one_of_each_kind()
        await b.persist(5, [(k, o) for k, os_ in objs.items() for o in os_], [])
        raw = await raw_values(etcd1.client_url)
        backup = snapshot_bytes(etcd1.client_url, tmp_path)
        for blob in (b"".join(raw.values()), backup):
            for plain in (SECRET_B64.encode(), CONFIG_B64.encode(), *TOKENS):
                assert plain not in blob, plain
        for k, v in raw.items():
            kind = k.split(b"/")[2].decode()
            if kind in SEALED_KINDS:
                assert v.startswith(MAGIC), k
            elif kind != "meta":
                assert not v.startswith(MAGIC), k  # tasks and services: as before
        assert b"nginx:1.27" in backup  # (the snapshot does hold the store: the check above means something)

        # Read back with the key, by a fresh backend (a restarted manager).
        again = EtcdBackend.from_endpoints([etcd1.client_url], timeout_s=3,
                                           sealer=Sealer(FileKeySource(tmp_path / "store.key")))
        try:
            snap = await again.load()
            assert snap.objects["secret"] == objs["secret"] and snap.objects["cluster"] == objs["cluster"]
            assert snap.objects["config"] == objs["config"] and not snap.bad and not snap.stale
        finally:
            await again.close()
    finally:
        await b.close()


@pytest.mark.parametrize("which", ["no key file", "another swarm's key"])
async def test_a_wrong_or_missing_key_neither_loads_nor_campaigns(etcd1: ManagedEtcd, tmp_path: Path,
                                                                  which: str) -> None:
    b = EtcdBackend.from_endpoints([etcd1.client_url], timeout_s=3, sealer=sealer(tmp_path))
    objs = one_of_each_kind()
    await b.persist(5, [(k, o) for k, os_ in objs.items() for o in os_], [])
    await b.close()
    before = await raw_values(etcd1.client_url)
    other = Sealer(FileKeySource(tmp_path / "absent.key")) if which == "no key file" else \
        sealer(tmp_path, "other.key", Keyring.new())
    wrong = EtcdBackend.from_endpoints([etcd1.client_url], timeout_s=3, sealer=other)
    try:
        with pytest.raises(StoreKeyError, match="does not hold") as err:
            await wrong.load()
        assert "\n" not in err.value.message
        with pytest.raises(StoreKeyError):
            await wrong.check_key()
        # A follower with that key does not apply the leader's sealed writes: it says why.
        store = MemoryStore(NullBackend())
        replica = EtcdReplica(store, [etcd1.client_url], timeout_s=3, sealer=other)
        task = asyncio.create_task(replica.follow())
        try:
            for _ in range(100):
                if replica.error:
                    break
                await asyncio.sleep(0.05)
            assert "does not hold" in replica.error and store.cluster() is None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await replica.close()
    finally:
        await wrong.close()
    assert await raw_values(etcd1.client_url) == before  # nothing written over the sealed values


async def test_a_follower_with_the_key_opens_the_leaders_writes_and_plain_values_get_sealed(
        etcd1: ManagedEtcd, tmp_path: Path) -> None:
    url = [etcd1.client_url]
    # What an older Shoal left in etcd: every value plain.
    plain = EtcdBackend.from_endpoints(url, timeout_s=3)
    objs = one_of_each_kind()
    await plain.persist(5, [(k, o) for k, os_ in objs.items() for o in os_], [])
    await plain.close()
    assert SECRET_B64.encode() in b"".join((await raw_values(etcd1.client_url)).values())

    key = sealer(tmp_path)
    leader_store, follower_store = MemoryStore(NullBackend()), MemoryStore(NullBackend())
    leader = EtcdReplica(leader_store, url, timeout_s=3, sealer=key)
    follower = EtcdReplica(follower_store, url, timeout_s=3, sealer=Sealer(FileKeySource(tmp_path / "store.key")))
    client = etcd_client(url)
    election = LeaderElection(client, member_id="a", ttl_s=2)
    follow = asyncio.create_task(follower.follow())
    try:
        term = await election.campaign()
        await leader.lead(term.fence, lambda _e: None)  # seals what was plain, once
        raw = await raw_values(etcd1.client_url)
        assert SECRET_B64.encode() not in b"".join(raw.values())
        assert all(v.startswith(MAGIC) for k, v in raw.items() if k.split(b"/")[2] in (b"secret", b"cluster"))

        secret = leader_store.get("secret", "sec1")
        with leader_store.tx() as tx:
            tx.update("secret", msgspec.structs.replace(
                secret, Spec=msgspec.structs.replace(secret.Spec, Data="bmV3LXNlY3JldA==")))
        await leader_store.wait_durable(within=5)
        for _ in range(200):
            s = follower_store.get("secret", "sec1")
            if s is not None and s.Spec.Data == "bmV3LXNlY3JldA==":
                break
            await asyncio.sleep(0.02)
        assert follower_store.get("secret", "sec1").Spec.Data == "bmV3LXNlY3JldA=="
        assert b"bmV3LXNlY3JldA==" not in b"".join((await raw_values(etcd1.client_url)).values())
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await election.close()
        await leader.close()
        await follower.close()
        await client.close()


async def test_the_managed_members_files_are_private(tmp_path: Path) -> None:
    async with running(tmp_path, 1) as (member,):
        b = EtcdBackend.from_endpoints([member.client_url], timeout_s=3)
        await b.persist(1, [("stack", one_of_each_kind()["stack"][0])], [])
        await b.close()
        paths = [member.data_dir, *member.data_dir.rglob("*"), member.pid_path, member.log_path]
        for p in paths:
            assert p is not None
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode & 0o077 == 0, f"{p} is {mode:o}"


async def test_rotate_key_on_a_single_manager_swarm_on_etcd(etcd1: ManagedEtcd, tmp_path: Path) -> None:
    from shoal.errors import Conflict
    from shoal.models import Node, NodeRole
    from shoal.store.rotate import rotate_store_key
    from shoal.store.sealing import KEY_FILE, key_id

    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    (root / "node.json").write_text(json.dumps({"node_id": "node1", "role": "manager", "store": {
        "backend": "etcd", "endpoints": [etcd1.client_url]}}))
    key = sealer(root, KEY_FILE)
    old = key.ring.current
    b = EtcdBackend.from_endpoints([etcd1.client_url], timeout_s=3, sealer=key)
    objs = one_of_each_kind()
    await b.persist(5, [(k, o) for k, os_ in objs.items() for o in os_], [])

    # A manager still campaigning on the store: refused, nothing changes.
    client = etcd_client([etcd1.client_url])
    election = LeaderElection(client, member_id="node1", ttl_s=2)
    await election.campaign()
    with pytest.raises(Conflict, match="running"):
        await rotate_store_key(root)
    await election.close()
    await client.close()
    assert Keyring.from_json((root / KEY_FILE).read_text()).current == old

    new, n = await rotate_store_key(root)
    assert n == len(SEALED_KINDS) and new != old  # one sealed object of each sealed kind
    assert Keyring.from_json((root / KEY_FILE).read_text()).keys.keys() == {new}
    raw = await raw_values(etcd1.client_url)
    assert {key_id(v) for k, v in raw.items() if k.split(b"/")[2].decode() in SEALED_KINDS} == {new}
    fresh = EtcdBackend.from_endpoints([etcd1.client_url], timeout_s=3,
                                       sealer=Sealer(FileKeySource(root / KEY_FILE)))
    try:
        snap = await fresh.load()
        assert snap.objects["secret"] == objs["secret"] and not snap.stale
    finally:
        await fresh.close()

    # A second manager: each would need the new key; refused with the procedure, nothing changes.
    second = msgspec.structs.replace(objs["node"][0], ID="node2")
    assert isinstance(second, Node) and second.Spec.Role == NodeRole.MANAGER
    await b.persist(6, [("node", second)], [])
    await b.close()
    before = await raw_values(etcd1.client_url)
    with pytest.raises(Conflict, match="demote the others"):
        await rotate_store_key(root)
    assert Keyring.from_json((root / KEY_FILE).read_text()).current == new
    assert await raw_values(etcd1.client_url) == before


async def test_a_swarm_on_etcd_from_before_sealing_runs_on_plain_until_rotate_key_seals_it(
        etcd1: ManagedEtcd, tmp_path: Path) -> None:
    from shoal.store.rotate import rotate_store_key
    from shoal.store.sealing import KEY_FILE, key_id

    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    (root / "node.json").write_text(json.dumps({"node_id": "node1", "role": "manager", "store": {
        "backend": "etcd", "endpoints": [etcd1.client_url]}}))
    plain = EtcdBackend.from_endpoints([etcd1.client_url], timeout_s=3)  # an older Shoal wrote these
    objs = one_of_each_kind()
    await plain.persist(5, [(k, o) for k, os_ in objs.items() for o in os_], [])
    await plain.close()

    # Its managers have no key: the leader neither makes one (the others would lack it) nor stalls.
    store = MemoryStore(NullBackend())
    leader = EtcdReplica(store, [etcd1.client_url], timeout_s=3,
                         sealer=Sealer(FileKeySource(root / KEY_FILE), plain_without_key=True))
    client = etcd_client([etcd1.client_url])
    election = LeaderElection(client, member_id="node1", ttl_s=2)
    try:
        await leader.etcd.check_key()
        await leader.lead((await election.campaign()).fence, lambda _e: None)
        secret = store.get("secret", "sec1")
        with store.tx() as tx:
            tx.update("secret", msgspec.structs.replace(secret, Spec=msgspec.structs.replace(secret.Spec, Name="b")))
        await store.wait_durable(within=5)
        assert not (root / KEY_FILE).exists()
    finally:
        await election.close()
        await leader.close()
        await client.close()

    kid, n = await rotate_store_key(root)
    assert n == len(SEALED_KINDS) and Keyring.from_json((root / KEY_FILE).read_text()).current == kid
    raw = await raw_values(etcd1.client_url)
    assert {key_id(v) for k, v in raw.items() if k.split(b"/")[2].decode() in SEALED_KINDS} == {kid}
    assert SECRET_B64.encode() not in b"".join(raw.values())
