"""``shoal store rotate-key``: a new data key for the store, every sealed value sealed again with it.

Run on a stopped manager (the data root's lock says so). Crash safety comes from the keyring: the
new key is added as current *beside* the old one and saved first; the values are then re-sealed
(one sqlite transaction; etcd chunks under its meta revision); only then is the old key dropped.
A run that stops anywhere leaves every value openable, and the next start (or run) finishes it:
a load seals again whatever is not under the current key, then prunes the ring.

It is also how a store written before sealing existed gets its first key (on sqlite the first
start does that by itself; on etcd no manager may make a key the others lack, so such a swarm is
stored plain, with a warning, until this is run).

On etcd every manager must hold the same key, and a stopped swarm has no way to hand a new one to
the others, so this is refused while the swarm has more than one manager: demote the others,
rotate, promote them again (a promotion hands them the new key). See docs/security.md.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from shoal.errors import Conflict, InvalidArgument, Unavailable
from shoal.models import NodeRole
from shoal.store.dataroot import DataRootLock
from shoal.store.sealing import KEY_FILE, SEALED_KINDS, FileKeySource, Keyring, Sealer

MULTI_MANAGER = (
    "this swarm has {n} managers on etcd, and each must hold the same data key: demote the others "
    "(docker node demote), rotate on this one, then promote them again (they receive the new key)"
)


async def rotate_store_key(data_root: Path) -> tuple[str, int]:
    """Rotate the data key of the stopped manager at ``data_root``; returns the new key's ID and
    how many values were sealed again."""
    try:
        membership = json.loads((data_root / "node.json").read_text())
    except (OSError, ValueError):
        raise InvalidArgument(f"{data_root} holds no swarm (no readable node.json)") from None
    if membership.get("role") != "manager":
        raise InvalidArgument("only a manager holds a store (this host is a worker)")
    lock = DataRootLock(data_root, who="its daemon")
    try:
        # No key file: a store written before sealing gets its first key here (a sealed store
        # without its key fails at load, saying so).
        source = FileKeySource(data_root / KEY_FILE)
        from shoal.ha import StoreSettings  # the etcd side pulls in the election and the member

        settings = StoreSettings.from_dict(membership.get("store"))
        if settings.on_etcd:
            return await _rotate_etcd(data_root, settings, source)
        return await _rotate_sqlite(data_root / "state.db", source)
    finally:
        lock.release()


async def _rotate_sqlite(db: Path, source: FileKeySource) -> tuple[str, int]:
    from shoal.store.sqlite import SqliteBackend

    backend = SqliteBackend(db, Sealer(source, create=True))
    try:
        backend.load()  # finishes an earlier rotation that stopped half-way
        ring = backend.sealer.ring
        assert ring is not None
        new = ring.rotated()
        source.save(new)  # step 1: both keys, the new one current
        backend.sealer.use(new)
        backend.load()  # step 2: every sealed row under the new key (one transaction); 3: prune
        return new.current, backend.resealed
    finally:
        await backend.close()


async def _rotate_etcd(data_root: Path, settings: Any, source: FileKeySource) -> tuple[str, int]:
    from shoal.ha import ETCD_START_TIMEOUT_S
    from shoal.store.election import LeaderElection
    from shoal.store.etcd import EtcdBackend, etcd_client
    from shoal.store.etcdproc import EtcdStartError, ManagedEtcd, tls_member

    member: ManagedEtcd | None = None
    if settings.managed:
        try:
            member = tls_member(data_root, settings.member, settings.client_url, settings.peer_url,
                                settings.initial_cluster, may_create=False)
        except ValueError as e:
            raise Unavailable(str(e)) from None
        try:
            await member.start(ETCD_START_TIMEOUT_S)
        except EtcdStartError as e:
            raise Unavailable(f"the etcd member did not start: {e}") from None
    sealer = Sealer(source)
    etcd = EtcdBackend.from_endpoints(settings.client_endpoints, settings.prefix, sealer=sealer,
                                      **settings.txn_limits)
    client = etcd_client(settings.client_endpoints)
    try:
        snap = await etcd.load()
        managers = [n for n in snap.objects.get("node", []) if n.Spec.Role == NodeRole.MANAGER]
        if len(managers) > 1:
            raise Conflict(MULTI_MANAGER.format(n=len(managers)))
        live = await LeaderElection(client, settings.prefix, member_id="rotate-key").candidates()
        if live:
            raise Conflict(f"manager {sorted(live)[0]} is running on this store (or stopped less than a lease "
                           "ago): stop its daemon first")
        await etcd.repair(snap)  # a batch a dead leader left torn: undone before writing anything
        ring = sealer.ring
        new = ring.rotated() if ring is not None else Keyring.new()
        source.save(new)  # step 1: both keys, the new one current
        sealer.use(new)
        puts = [(kind, obj) for kind in SEALED_KINDS for obj in snap.objects.get(kind, [])]
        await etcd.persist(snap.revision, puts, [])  # step 2 (no fence: no manager runs)
        source.save(new.pruned())  # step 3
        return new.current, len(puts)
    finally:
        await etcd.close()
        await client.close()
        if member is not None:
            await asyncio.get_running_loop().run_in_executor(None, member.stop)
