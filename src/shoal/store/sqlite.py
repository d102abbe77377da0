"""The embedded default backend: one sqlite file, one row per object, msgpack-encoded.

A transaction is one sqlite transaction (WAL journal), so a crash leaves either all of a batch or
none of it. Writes are synchronous on the event loop on purpose: with batching they cost well under
a millisecond each, and a thread hop would cost more than it saves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from shoal.store.base import KINDS, Kind

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
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders = {k: msgspec.msgpack.Decoder(t) for k, t in KINDS.items()}

    def load(self) -> tuple[int, dict[Kind, list[Any]]]:
        row = self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        revision = row[0] if row else 0
        out: dict[Kind, list[Any]] = {k: [] for k in KINDS}
        for kind, data in self._db.execute("SELECT kind, data FROM objects"):
            if kind in self._decoders:
                out[kind].append(self._decoders[kind].decode(data))
        return revision, out

    def commit(
        self, revision: int, puts: Iterable[tuple[Kind, Any]], deletes: Iterable[tuple[Kind, str]]
    ) -> None:
        enc = self._encoder.encode
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO objects (kind, id, data) VALUES (?, ?, ?)",
                [(kind, obj.ID, enc(obj)) for kind, obj in puts],
            )
            db.executemany("DELETE FROM objects WHERE kind=? AND id=?", list(deletes))
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('revision', ?)", (revision,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def wipe(self) -> None:
        self._db.execute("DELETE FROM objects")
        self._db.execute("DELETE FROM meta")

    def close(self) -> None:
        self._db.close()


class NullBackend:
    """No durability: for unit tests and hollow-node benchmarks that measure the manager alone."""

    def load(self) -> tuple[int, dict[Kind, list[Any]]]:
        return 0, {k: [] for k in KINDS}

    def commit(self, revision: int, puts: Iterable[tuple[Kind, Any]], deletes: Iterable[tuple[Kind, str]]) -> None:
        pass

    def wipe(self) -> None:
        pass

    def close(self) -> None:
        pass
