"""The embedded default backend: one sqlite file, one row per object, msgpack-encoded.

A persisted batch is one sqlite transaction (WAL journal), so a crash leaves either all of a batch
or none of it. ``synchronous=FULL``: the WAL is fsynced at every commit, so a batch the writer
reports durable (and anything acknowledged after it) survives a crash of the process *and* of the
machine. That costs one fsync per transaction; the write-behind writer merges the commits that
queue up meanwhile, so under load there are few, large transactions rather than many small ones.

Writes run on one thread of their own: encoding and sqlite's I/O happen off the event loop (sqlite
releases the GIL while it writes), and one thread keeps them in order on one connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from shoal.store.base import KINDS, Kind, Problem, Snapshot

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL,
                                    PRIMARY KEY (kind, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqliteBackend:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders = {k: msgspec.msgpack.Decoder(t) for k, t in KINDS.items()}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")

    def load(self) -> Snapshot:
        row = self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        out: dict[Kind, list[Any]] = {k: [] for k in KINDS}
        bad: list[Problem] = []
        for kind, oid, data in self._db.execute("SELECT kind, id, data FROM objects"):
            decoder = self._decoders.get(kind)
            if decoder is None:
                bad.append(Problem(kind, oid, "unknown kind of object (written by a newer Shoal?)"))
                continue
            try:
                out[kind].append(decoder.decode(data))
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                # Left in the file untouched: a newer Shoal may read it, an operator may inspect it.
                bad.append(Problem(kind, oid, f"cannot be decoded: {e}"))
        return Snapshot(row[0] if row else 0, out, bad)

    async def persist(
        self, revision: int, puts: list[tuple[Kind, Any]], deletes: list[tuple[Kind, str]]
    ) -> list[Problem]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.commit, revision, puts, deletes)

    def commit(self, revision: int, puts: list[tuple[Kind, Any]], deletes: list[tuple[Kind, str]]) -> list[Problem]:
        """One atomic transaction (on the writer thread); objects that cannot be encoded are left
        out and returned, the rest is written."""
        enc = self._encoder.encode
        rows: list[tuple[str, str, bytes]] = []
        rejected: list[Problem] = []
        for kind, obj in puts:
            try:
                rows.append((kind, obj.ID, enc(obj)))
            except (TypeError, ValueError, OverflowError) as e:
                rejected.append(Problem(kind, obj.ID, f"cannot be encoded: {e}"))
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO objects (kind, id, data) VALUES (?, ?, ?)", rows)
            db.executemany("DELETE FROM objects WHERE kind=? AND id=?", deletes)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('revision', ?)", (revision,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return rejected

    async def wipe(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._wipe)

    def _wipe(self) -> None:
        self._db.execute("DELETE FROM objects")
        self._db.execute("DELETE FROM meta")

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._db.close()


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

    def close(self) -> None:
        pass
