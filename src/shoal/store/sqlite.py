"""The embedded default backend: one sqlite file, one row per object, msgpack-encoded.

A persisted batch is one sqlite transaction (WAL journal, fsynced at every commit: see
sqlite_writer.py), so a crash of the process or of the machine leaves either all of a batch or none
of it, and a batch reported durable stays so. The fsync per transaction is affordable because the
write-behind writer merges the commits that queue up meanwhile into one.

The manager reads the file once, at start, on its own connection. Writes go to a child process
(:mod:`shoal.store.sqlite_writer`) that owns the write connection: the manager encodes each object
(msgspec) and hands the batch over a pipe; the child binds and commits it. A thread would share the
interpreter's lock with the event loop and crawl (see that module for the figures).

Secrets, configs and the cluster are sealed here, before they go to the writer (store/sealing.py),
and opened at load; a load also seals the rows an older Shoal wrote plain, or an unfinished key
rotation left under an older key. The file, its WAL and its shared-memory file are 0600 (sqlite
gives the -wal and -shm files the database file's mode).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from shoal.store.base import KINDS, Kind, Problem, Snapshot, gc_paused
from shoal.store.sealing import KEY_FILE, SEALED_KINDS, FileKeySource, Sealer
from shoal.store.sqlite_writer import HEADER, connect

log = logging.getLogger(__name__)

_ENCODE_SLICE = 5_000  # objects encoded between two yields to the event loop


class WriterFailed(Exception):
    """The writer process could not commit a batch (nothing of it was written)."""


def private_file(path: Path) -> None:
    """Create ``path`` 0600 if it does not exist; tighten it (and sqlite's -wal and -shm beside it)
    if an older Shoal left them readable by others."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = part.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(part, 0o600)
            log.warning("store: %s was readable by others (mode %o); now 0600", part, mode)


class SqliteBackend:
    def __init__(self, path: str | Path, sealer: Sealer | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The keyring beside the file by default, made on the first seal if there is none.
        self.sealer = sealer or Sealer(FileKeySource(self.path.parent / KEY_FILE), create=True)
        private_file(self.path)
        self.resealed = 0  # rows the last load sealed again (plain, or under an older key)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders = {k: msgspec.msgpack.Decoder(t) for k, t in KINDS.items()}
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()  # one request in flight to the writer process
        connect(str(self.path)).close()  # creates the file and schema, so a new swarm loads empty

    def load(self) -> Snapshot:
        db = connect(str(self.path))
        try:
            row = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
            out: dict[Kind, list[Any]] = {k: [] for k in KINDS}
            bad: list[Problem] = []
            stale: list[tuple[str, str, bytes]] = []  # (kind, id, plain value) to seal again
            sealer = self.sealer
            with gc_paused():
                for kind, oid, data in db.execute("SELECT kind, id, data FROM objects"):
                    decoder = self._decoders.get(kind)
                    if decoder is None:
                        bad.append(Problem(kind, oid, "unknown kind of object (written by a newer Shoal?)"))
                        continue
                    # A key that cannot open a row raises StoreKeyError: the store does not load
                    # at all (and so writes nothing) rather than start without those rows.
                    plain = sealer.open(kind, oid, data)
                    try:
                        out[kind].append(decoder.decode(plain))
                    except (msgspec.DecodeError, msgspec.ValidationError) as e:
                        # Left in the file untouched: a newer Shoal may read it, an operator may look.
                        bad.append(Problem(kind, oid, f"cannot be decoded: {e}"))
                        continue
                    if sealer.stale(kind, data):
                        stale.append((kind, oid, plain))
            self.resealed = len(stale)
            if stale:
                self._reseal(db, stale)
            return Snapshot(row[0] if row else 0, out, bad)
        finally:
            db.close()

    def _reseal(self, db: Any, stale: list[tuple[str, str, bytes]]) -> None:
        """Seal with the current key, in one transaction, the rows that are plain or sealed with an
        older key; then drop the keys no row uses any more. Runs at load, before the writer
        process starts, so nothing else writes meanwhile. A crash before the commit leaves the rows
        as they were (every key they need still in the ring); after it, only the pruning is left."""
        seal = self.sealer.seal
        rows = [(seal(kind, oid, plain), kind, oid) for kind, oid, plain in stale]
        # The plain values must not linger in freed pages (secure_delete zeroes them) nor in the
        # WAL's older frames (the checkpoint truncates it).
        db.execute("PRAGMA secure_delete=ON")
        db.execute("BEGIN")
        try:
            db.executemany("UPDATE objects SET data=? WHERE kind=? AND id=?", rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log.info("store: sealed %d rows with the current data key", len(rows))
        self.prune_keys()

    def prune_keys(self) -> None:
        """Forget the older keys once every row is sealed with the current one."""
        ring, source = self.sealer.ring, self.sealer.source
        if ring is not None and source is not None and len(ring.keys) > 1:
            source.save(ring.pruned())
            self.sealer.use(ring.pruned())

    async def persist(
        self, revision: int, puts: list[tuple[Kind, Any]], deletes: list[tuple[Kind, str]]
    ) -> list[Problem]:
        """Encode here (objects that cannot be encoded are left out and returned), commit in the
        writer process."""
        enc = self._encoder.encode
        seal = self.sealer.seal
        rows: list[tuple[str, str, bytes]] = []
        rejected: list[Problem] = []
        for i, (kind, obj) in enumerate(puts):
            try:
                data = enc(obj)
            except (TypeError, ValueError, OverflowError) as e:
                rejected.append(Problem(kind, obj.ID, f"cannot be encoded: {e}"))
            else:
                # No key to seal with (StoreKeyError) fails the whole batch: it is retried, and
                # nothing is written plain meanwhile.
                rows.append((kind, obj.ID, seal(kind, obj.ID, data) if kind in SEALED_KINDS else data))
            if i % _ENCODE_SLICE == _ENCODE_SLICE - 1:
                await asyncio.sleep(0)
        await self._request(["commit", revision, rows, deletes])
        return rejected

    async def wipe(self) -> None:
        await self._request(["wipe"])

    async def _request(self, request: list[Any]) -> None:
        body = msgspec.msgpack.encode(request)
        async with self._lock:
            proc = await self._writer()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(HEADER.pack(len(body)) + body)
                await proc.stdin.drain()
                head = await proc.stdout.readexactly(HEADER.size)
                ok, error = msgspec.msgpack.decode(await proc.stdout.readexactly(HEADER.unpack(head)[0]))
            except asyncio.CancelledError:
                # Mid-request: its answer would be read as the next one's. Let this writer finish
                # alone (EOF makes it exit); the batch is persisted again, which is harmless.
                if proc.stdin is not None:
                    proc.stdin.close()
                self._proc = None
                raise
            except (OSError, asyncio.IncompleteReadError) as e:
                # The writer died (killed, out of memory): the batch is retried on a new one.
                await self._stop_writer()
                raise WriterFailed(f"the store's writer process ended: {e or type(e).__name__}") from None
        if not ok:
            raise WriterFailed(error)

    async def _writer(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "import sys; from shoal.store.sqlite_writer import main; main(sys.argv[1])",
                str(self.path),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                umask=0o077,  # anything sqlite creates there is this user's only
            )
        return self._proc

    async def _stop_writer(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: the writer finishes and exits
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        async with self._lock:
            await self._stop_writer()


class NullBackend:
    """No durability: for unit tests and hollow-node benchmarks that measure the manager alone."""

    immediate = True  # the writer treats every commit as durable at once

    def load(self) -> Snapshot:
        return Snapshot(0, {k: [] for k in KINDS})

    async def persist(
        self, revision: int, puts: list[tuple[Kind, Any]], deletes: list[tuple[Kind, str]]
    ) -> list[Problem]:
        return []

    async def wipe(self) -> None:
        pass

    async def close(self) -> None:
        pass
