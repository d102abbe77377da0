"""Autolock on one manager (sqlite): the key files wrapped under the unlock key, a restart that comes
up locked, unlock (right key, wrong key), rotation that survives a crash half-way, and turning it off.

Real Manager, real sqlite (writer process included); the data root is then read as an attacker with
a copy of the disk would."""

from __future__ import annotations

import base64
from pathlib import Path

import msgspec
import pytest

from shoal.bench.scale import free_port_pair
from shoal.ca.certs import write_private
from shoal.controlapi import secrets as ops
from shoal.controlapi.cluster import update_cluster
from shoal.errors import Conflict, InvalidArgument, Unauthorized, Unavailable
from shoal.manager import Manager
from shoal.models import EncryptionConfig, InitRequest, SecretSpec
from shoal.store.autolock import (
    INVALID_UNLOCK_KEY,
    LOCKED_LEAVE,
    NOT_LOCKED,
    SWARM_LOCKED,
    KeyVault,
    human_key,
    is_wrapped,
    new_unlock_key,
    parse_human_key,
    wrap,
)
from shoal.store.sealing import KEY_FILE, FileKeySource, StoreKeyError

SECRET = b"autolock-secret-payload"


def test_human_key_round_trip_and_swarmkit_form() -> None:
    key = new_unlock_key()
    text = human_key(key)
    assert text.startswith("SWMKEY-1-") and not text.endswith("=")  # RawStdEncoding: no padding
    assert len(text) == len("SWMKEY-1-") + 43
    assert parse_human_key(text) == key
    assert parse_human_key(f"  {text}\n") == key  # what `docker swarm unlock` reads from a pipe
    for bad in ("", "SWMKEY-2-abc", "SWMKEY-1-!!!", "SWMTKN-1-abc"):
        with pytest.raises(InvalidArgument, match=r"^invalid key string$"):
            parse_human_key(bad)


def test_vault_wraps_reads_and_refuses_a_wrong_key(tmp_path: Path) -> None:
    vault = KeyVault(tmp_path)
    key = new_unlock_key()
    vault.kek = key
    vault.write(tmp_path / "ca.key", "PEM-TEXT")
    raw = (tmp_path / "ca.key").read_text()
    assert is_wrapped(raw) and "PEM-TEXT" not in raw
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    assert vault.read(tmp_path / "ca.key") == "PEM-TEXT"

    fresh = KeyVault(tmp_path)  # a restarted manager
    assert fresh.locked
    with pytest.raises(Unavailable, match="Swarm is encrypted"):
        fresh.read(tmp_path / "ca.key")
    with pytest.raises(Unauthorized, match=f"^{INVALID_UNLOCK_KEY}$"):
        fresh.unlock(new_unlock_key())
    assert fresh.locked and (tmp_path / "ca.key").read_text() == raw  # nothing written
    fresh.unlock(key)
    assert not fresh.locked and fresh.read(tmp_path / "ca.key") == "PEM-TEXT"
    with pytest.raises(Conflict, match=NOT_LOCKED):
        KeyVault(tmp_path / "nowhere").unlock(key)


def test_a_wrapping_moved_onto_the_other_file_does_not_open(tmp_path: Path) -> None:
    key = new_unlock_key()
    write_private(tmp_path / "store.key", wrap("CA KEY", [key], tmp_path / "ca.key"))
    vault = KeyVault(tmp_path)
    with pytest.raises(Unauthorized):
        vault.unlock(key)


def test_rekey_crash_half_way_leaves_one_key_that_opens_everything(tmp_path: Path) -> None:
    """The first pass wraps each file under new *and* old: a crash during it or after leaves all
    files openable with the old key; after the second pass, with the new one."""
    old, new = new_unlock_key(), new_unlock_key()
    vault = KeyVault(tmp_path)
    vault.kek = old
    vault.write(tmp_path / "ca.key", "CA")
    vault.write(tmp_path / "store.key", "RING")
    # A crash after the first pass rewrote ca.key only: ca.key [new, old], store.key [old].
    write_private(tmp_path / "ca.key", wrap("CA", [new, old], tmp_path / "ca.key"))
    with pytest.raises(Unauthorized):
        KeyVault(tmp_path).unlock(new)
    restarted = KeyVault(tmp_path)
    restarted.unlock(old)
    assert restarted.rekey(new)  # the restarted manager finishes: every file under the new key only
    again = KeyVault(tmp_path)
    with pytest.raises(Unauthorized):
        again.unlock(old)
    again.unlock(new)
    assert again.read(tmp_path / "store.key") == "RING" and again.read(tmp_path / "ca.key") == "CA"
    assert not again.rekey(new)  # nothing to do: nothing rewritten
    assert again.rekey(None)  # autolock off: plain files
    assert (tmp_path / "store.key").read_text() == "RING" and not KeyVault(tmp_path).locked


def test_offline_store_commands_say_the_key_file_is_locked(tmp_path: Path) -> None:
    vault = KeyVault(tmp_path)
    vault.kek = new_unlock_key()
    vault.write(tmp_path / KEY_FILE, "{}")
    with pytest.raises(StoreKeyError, match="locked under the swarm's unlock key"):
        FileKeySource(tmp_path / KEY_FILE).load()


async def _init(root: Path, autolock: bool) -> tuple[Manager, str]:
    manager = Manager(root, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    await manager.start()
    await manager.init_swarm(InitRequest(ListenAddr=f"127.0.0.1:{free_port_pair()}", AdvertiseAddr="127.0.0.1",
                                         AutoLockManagers=autolock))
    ops.create_secret(manager.store, SecretSpec(Name="db-pass", Data=base64.b64encode(SECRET).decode()))
    await manager.store.wait_durable(within=10)
    cluster = manager.store.cluster()
    assert cluster is not None
    return manager, cluster.UnlockKey


def _secret_data(manager: Manager) -> bytes:
    (secret,) = manager.store.list("secret")
    return base64.b64decode(secret.Spec.Data)


async def test_init_autolock_restart_locked_then_unlock(tmp_path: Path) -> None:
    root = tmp_path / "data"
    manager, key = await _init(root, autolock=True)
    try:
        assert key.startswith("SWMKEY-1-")
        cluster = manager.store.cluster()
        assert cluster is not None and cluster.Spec.EncryptionConfig == EncryptionConfig(AutoLockManagers=True)
        for name in ("ca.key", "store.key"):  # never plain on disk, from the first byte
            assert is_wrapped((root / name).read_text())
        assert b"BEGIN EC PRIVATE KEY" not in b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    finally:
        await manager.close()

    locked = Manager(root, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    try:
        await locked.start()
        assert locked.locked and locked.store.cluster() is None  # nothing read from the store
        with pytest.raises(Unavailable, match=f"^{SWARM_LOCKED}$".replace(".", r"\.")):
            locked.require_swarm()
        with pytest.raises(Unavailable, match="Please unlock it first"):
            await locked.leave(force=False)
        assert LOCKED_LEAVE.startswith("Swarm is encrypted and locked")
        before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.name != "lock"}
        with pytest.raises(Unauthorized, match=INVALID_UNLOCK_KEY):
            await locked.unlock(new_unlock_key())
        after = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.name != "lock"}
        assert before == after and locked.locked  # a wrong key writes nothing

        await locked.unlock(parse_human_key(key))
        assert not locked.locked
        locked.require_swarm()
        assert _secret_data(locked) == SECRET  # sealed values open again
        assert locked.ca is not None  # the leader's components (CA key included) run
        with pytest.raises(Conflict, match=NOT_LOCKED):
            await locked.unlock(parse_human_key(key))
    finally:
        await locked.close()


async def test_rotate_then_turn_off(tmp_path: Path) -> None:
    root = tmp_path / "data"
    manager, key = await _init(root, autolock=True)
    try:
        cluster = manager.store.cluster()
        assert cluster is not None
        update_cluster(manager.store, cluster.Version.Index, cluster.Spec, rotate_unlock_key=True)
        await manager.apply_autolock()
        cluster = manager.store.cluster()
        assert cluster is not None and cluster.UnlockKey not in ("", key)
        new_key = cluster.UnlockKey
        vault = KeyVault(root)
        with pytest.raises(Unauthorized):
            vault.unlock(parse_human_key(key))
        vault.unlock(parse_human_key(new_key))

        # Off: the unlock key leaves the store, the files go plain; a restart is not locked.
        spec = msgspec.structs.replace(cluster.Spec, EncryptionConfig=EncryptionConfig(AutoLockManagers=False))
        update_cluster(manager.store, cluster.Version.Index, spec)
        await manager.apply_autolock()
        cluster = manager.store.cluster()
        assert cluster is not None and cluster.UnlockKey == ""
        assert not is_wrapped((root / "ca.key").read_text()) and not KeyVault(root).locked
    finally:
        await manager.close()
    again = Manager(root, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    try:
        await again.start()
        assert not again.locked and _secret_data(again) == SECRET
    finally:
        await again.close()


async def test_turning_autolock_on_later_and_a_restart_that_missed_the_rewrap(tmp_path: Path) -> None:
    """`swarm update --autolock=true` on a running swarm; then a crash after the key was durable
    but before the files were wrapped: the restart is unlocked and wraps them itself."""
    root = tmp_path / "data"
    manager, key = await _init(root, autolock=False)
    try:
        assert key == "" and not is_wrapped((root / "ca.key").read_text())
        cluster = manager.store.cluster()
        assert cluster is not None
        spec = msgspec.structs.replace(cluster.Spec, EncryptionConfig=EncryptionConfig(AutoLockManagers=True))
        await manager._stop_autolock_keeper()  # the "crash" comes before anything re-wraps
        update_cluster(manager.store, cluster.Version.Index, spec)
        await manager.store.wait_durable(within=10)
    finally:
        await manager.close()
    assert not is_wrapped((root / "store.key").read_text())
    again = Manager(root, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    try:
        await again.start()
        assert not again.locked
        await again.apply_autolock()
        assert is_wrapped((root / "store.key").read_text()) and is_wrapped((root / "ca.key").read_text())
    finally:
        await again.close()
    locked = Manager(root, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    try:
        assert locked.locked
        await locked.leave(force=True)  # Docker allows it: the state goes unread
        assert not locked.in_swarm and not (root / "ca.key").exists() and not (root / "store.key").exists()
    finally:
        await locked.close()
