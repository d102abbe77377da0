"""State at rest on one manager (sqlite): private files, and secrets, configs and join tokens sealed.

Every test runs a real Manager over a real sqlite file (its writer process included) and then reads
what is on disk as an attacker with a copy of the data root would."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from pathlib import Path

import msgspec
import pytest

from shoal.bench.scale import free_port_pair
from shoal.controlapi import secrets as ops
from shoal.manager import Manager
from shoal.models import ConfigSpec, InitRequest, SecretSpec
from shoal.store import MemoryStore, SqliteBackend
from shoal.store.sealing import KEY_FILE, MAGIC, FileKeySource, Keyring, Sealer, StoreKeyError, key_id

SECRET = b"hunter2-the-secret-payload"
CONFIG = b"config-payload-not-for-backups"


async def swarm_with_secrets(root: Path) -> tuple[Manager, dict[str, str]]:
    """A manager with a swarm, one secret and one config, all durable; returns what must not leak."""
    manager = Manager(root, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    await manager.start()
    await manager.init_swarm(InitRequest(ListenAddr=f"127.0.0.1:{free_port_pair()}", AdvertiseAddr="127.0.0.1"))
    ops.create_secret(manager.store, SecretSpec(Name="db-pass", Data=base64.b64encode(SECRET).decode()))
    ops.create_config(manager.store, ConfigSpec(Name="app-conf", Data=base64.b64encode(CONFIG).decode()))
    await manager.store.wait_durable(within=10)
    cluster = manager.store.cluster()
    assert cluster is not None
    return manager, {"secret": base64.b64encode(SECRET).decode(), "config": base64.b64encode(CONFIG).decode(),
                     "worker token": cluster.JoinTokens.Worker, "manager token": cluster.JoinTokens.Manager}


def raw_rows(db: Path) -> dict[tuple[str, str], bytes]:
    con = sqlite3.connect(db)
    try:
        return {(k, i): bytes(d) for k, i, d in con.execute("SELECT kind, id, data FROM objects")}
    finally:
        con.close()


def every_file_bytes(root: Path) -> bytes:
    """state.db, its WAL and anything else under the data root, as one blob (a stolen backup)."""
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_socket())


# ---------------------------------------------------------------------------- finding 1: modes


async def test_every_state_file_and_dir_is_private(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)  # as an older Shoal (or the umask) left it
    manager, _ = await swarm_with_secrets(root)
    try:
        assert (root / "state.db-wal").exists()  # the WAL holds the rows until a checkpoint
        seen = []
        for p in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(p.lstat().st_mode)
            if p.is_dir():
                assert mode == 0o700, f"{p} is {mode:o}"
            elif not p.is_socket():
                assert mode & 0o077 == 0, f"{p} is {mode:o}"
            seen.append(p.name)
        for name in ("state.db", "state.db-wal", "state.db-shm", "ca.key", KEY_FILE, "node.json"):
            assert name in seen
    finally:
        await manager.close()


async def test_a_loose_state_db_from_an_older_shoal_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    for suffix in ("", "-wal", "-shm"):
        p = db.with_name(db.name + suffix)
        p.touch()
        os.chmod(p, 0o644)
    os.unlink(db.with_name("state.db-wal"))  # sqlite would take an empty WAL file for a broken one
    os.unlink(db.with_name("state.db-shm"))
    store = MemoryStore(SqliteBackend(db))
    await store.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


# ---------------------------------------------------------------------------- finding 2: sealed


async def test_secrets_configs_and_join_tokens_are_not_plain_on_disk(tmp_path: Path) -> None:
    manager, plain = await swarm_with_secrets(tmp_path)
    try:
        rows = raw_rows(tmp_path / "state.db")
        blob = every_file_bytes(tmp_path)
        for what, value in plain.items():
            assert value.encode() not in blob, f"the {what} is on disk in plain text"
        assert SECRET not in blob and CONFIG not in blob
        for (kind, _), data in rows.items():
            assert data.startswith(MAGIC) == (kind in ("secret", "config", "cluster")), kind
        # Tasks, nodes and the rest are not sealed: their path costs nothing more.
        assert any(k == "node" and not d.startswith(MAGIC) for (k, _), d in rows.items())
    finally:
        await manager.close()


async def test_a_restart_with_the_key_reads_them_back(tmp_path: Path) -> None:
    manager, plain = await swarm_with_secrets(tmp_path)
    cluster_id = manager.store.cluster().ID
    await manager.close()
    again = Manager(tmp_path, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    try:
        secret = next(s for s in again.store.list("secret") if s.Spec.Name == "db-pass")
        assert secret.Spec.Data == plain["secret"]
        assert again.store.list("config")[0].Spec.Data == plain["config"]
        assert again.store.cluster().ID == cluster_id
        assert again.store.cluster().JoinTokens.Worker == plain["worker token"]
        assert not again.store.problems
    finally:
        await again.close()


@pytest.mark.parametrize("damage", ["missing", "other swarm's key", "same ID, other bytes", "not a keyring"])
async def test_a_missing_or_wrong_key_refuses_to_start_and_writes_nothing(tmp_path: Path, damage: str) -> None:
    manager, _ = await swarm_with_secrets(tmp_path)
    await manager.close()
    key = tmp_path / KEY_FILE
    before = raw_rows(tmp_path / "state.db")
    if damage == "missing":
        key.unlink()
    elif damage == "other swarm's key":
        key.write_text(Keyring.new().to_json())
    elif damage == "same ID, other bytes":
        ring = Keyring.from_json(key.read_text())
        key.write_text(Keyring(ring.current, {ring.current: os.urandom(32)}).to_json())
    else:
        key.write_text("{not json")
    with pytest.raises(StoreKeyError) as err:
        Manager(tmp_path, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    assert "\n" not in err.value.message and "store.key" in err.value.message
    assert raw_rows(tmp_path / "state.db") == before  # not one row rewritten
    if damage == "missing":
        assert not key.exists()  # and no new key made over a sealed store


async def test_a_sealed_value_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    manager, _ = await swarm_with_secrets(tmp_path)
    await manager.close()
    con = sqlite3.connect(tmp_path / "state.db")
    (sealed,) = con.execute("SELECT data FROM objects WHERE kind='secret'").fetchone()
    con.execute("UPDATE objects SET data=? WHERE kind='config'", (sealed,))  # the secret, read as a config
    con.commit()
    con.close()
    with pytest.raises(StoreKeyError, match="altered"):
        Manager(tmp_path, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")


async def test_plain_rows_of_an_older_shoal_load_and_are_sealed_at_start(tmp_path: Path) -> None:
    manager, plain = await swarm_with_secrets(tmp_path)
    big = base64.b64encode(b"big-secret-" * 5000).decode()  # over several overflow pages
    ops.create_secret(manager.store, SecretSpec(Name="big", Data=big))
    await manager.store.wait_durable(within=10)
    await manager.close()
    # What an older Shoal wrote: the same objects, plain msgpack, and no key file.
    sealer = Sealer(FileKeySource(tmp_path / KEY_FILE))
    con = sqlite3.connect(tmp_path / "state.db")
    for kind, oid, data in list(con.execute("SELECT kind, id, data FROM objects")):
        con.execute("UPDATE objects SET data=? WHERE kind=? AND id=?", (sealer.open(kind, oid, data), kind, oid))
    con.commit()
    con.close()
    (tmp_path / KEY_FILE).unlink()
    assert plain["secret"].encode() in every_file_bytes(tmp_path)

    again = Manager(tmp_path, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    try:
        assert next(x for x in again.store.list("secret") if x.Spec.Name == "db-pass").Spec.Data == plain["secret"]
        assert (tmp_path / KEY_FILE).exists()
        assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
        rows = raw_rows(tmp_path / "state.db")
        assert all(d.startswith(MAGIC) for (k, _), d in rows.items() if k in ("secret", "config", "cluster"))
        # Not left behind in a freed page or an old WAL frame either.
        blob = every_file_bytes(tmp_path)
        assert plain["secret"].encode() not in blob and big[1000:1100].encode() not in blob
    finally:
        await again.close()


async def test_leave_forgets_the_key_and_a_new_swarm_gets_a_new_one(tmp_path: Path) -> None:
    manager, _ = await swarm_with_secrets(tmp_path)
    try:
        first = Keyring.from_json((tmp_path / KEY_FILE).read_text()).current
        await manager.leave(force=True)
        assert not (tmp_path / KEY_FILE).exists()
        await manager.init_swarm(InitRequest(ListenAddr=f"127.0.0.1:{free_port_pair()}",
                                             AdvertiseAddr="127.0.0.1"))
        second = Keyring.from_json((tmp_path / KEY_FILE).read_text()).current
        assert second != first
        await manager.store.wait_durable(within=10)
        (kid,) = {key_id(d) for (k, _), d in raw_rows(tmp_path / "state.db").items() if k == "cluster"}
        assert kid == second  # sealed with the file's key, not a cached one
    finally:
        await manager.close()
    again = Manager(tmp_path, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    await again.close()


def test_task_and_service_rows_are_not_sealed() -> None:
    sealer = Sealer(FileKeySource("/nonexistent/store.key"))  # a seal would fail: no key file
    data = msgspec.msgpack.encode({"ID": "t1"})
    for kind in ("task", "service", "node", "network", "stack"):
        assert sealer.seal(kind, "t1", data) is data


# ---------------------------------------------------------------------------- finding 3: rotation


async def test_rotate_key_seals_everything_with_a_new_key_and_forgets_the_old(tmp_path: Path) -> None:
    manager, plain = await swarm_with_secrets(tmp_path)
    await manager.close()
    stolen = (tmp_path / KEY_FILE).read_text()  # a copy of the old key leaked somewhere
    old = Keyring.from_json(stolen).current

    from shoal.store.rotate import rotate_store_key
    kid, n = await rotate_store_key(tmp_path)
    assert kid != old and n == 3  # the secret, the config, the cluster
    ring = Keyring.from_json((tmp_path / KEY_FILE).read_text())
    assert ring.current == kid and list(ring.keys) == [kid]
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    ids = {key_id(d) for (k, _), d in raw_rows(tmp_path / "state.db").items() if k in ("secret", "config", "cluster")}
    assert ids == {kid}

    again = Manager(tmp_path, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    try:
        assert again.store.list("secret")[0].Spec.Data == plain["secret"]
    finally:
        await again.close()
    (tmp_path / KEY_FILE).write_text(stolen)  # the old key opens nothing any more
    with pytest.raises(StoreKeyError, match="does not hold"):
        Manager(tmp_path, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")


async def test_a_rotation_that_stopped_after_saving_the_new_key_is_finished_at_start(tmp_path: Path) -> None:
    manager, plain = await swarm_with_secrets(tmp_path)
    await manager.close()
    source = FileKeySource(tmp_path / KEY_FILE)
    ring = source.load()
    assert ring is not None
    rotated = ring.rotated()
    source.save(rotated)  # step 1 done, then the machine went down: rows still under the old key
    again = Manager(tmp_path, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    try:
        assert again.store.list("secret")[0].Spec.Data == plain["secret"]
        assert Keyring.from_json((tmp_path / KEY_FILE).read_text()).keys.keys() == {rotated.current}
        ids = {key_id(d) for (k, _), d in raw_rows(tmp_path / "state.db").items() if k == "secret"}
        assert ids == {rotated.current}
        # New writes after the finished rotation are sealed with the new key too.
        ops.create_secret(again.store, SecretSpec(Name="later", Data=base64.b64encode(b"x").decode()))
        await again.store.wait_durable(within=10)
        assert {key_id(d) for (k, _), d in raw_rows(tmp_path / "state.db").items()
                if k == "secret"} == {rotated.current}
    finally:
        await again.close()


async def test_rotate_key_refuses_while_the_daemon_runs_and_changes_nothing(tmp_path: Path) -> None:
    from shoal.errors import Conflict
    from shoal.store.rotate import rotate_store_key

    manager, _ = await swarm_with_secrets(tmp_path)
    try:
        key = (tmp_path / KEY_FILE).read_text()
        with pytest.raises(Conflict, match="in use"):
            await rotate_store_key(tmp_path)
        assert (tmp_path / KEY_FILE).read_text() == key
    finally:
        await manager.close()


def test_rotate_key_cli_says_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    shoal = Path(sys.executable).with_name("shoal")
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([str(shoal), "store", "rotate-key", "--data-root", str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "holds no swarm" in res.stderr and "Traceback" not in res.stderr


async def test_store_commands_refuse_a_data_root_in_use_or_missing(tmp_path: Path) -> None:
    from shoal.errors import Conflict, InvalidArgument
    from shoal.ha import migrate_to_etcd
    from shoal.store.rotate import rotate_store_key

    manager, _ = await swarm_with_secrets(tmp_path)
    try:
        with pytest.raises(Conflict, match="in use"):
            await migrate_to_etcd(tmp_path, ["http://127.0.0.1:1"])
        assert (tmp_path / "state.db").exists() and not (tmp_path / "state.db.migrated").exists()
    finally:
        await manager.close()
    with pytest.raises(InvalidArgument, match="no such directory"):
        await migrate_to_etcd(tmp_path / "nope", [])
    with pytest.raises(InvalidArgument, match="no swarm"):
        await rotate_store_key(tmp_path / "nope")
