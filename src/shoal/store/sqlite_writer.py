"""The process that writes the sqlite file (started by :class:`shoal.store.sqlite.SqliteBackend`).

Why a process and not a thread: Python's sqlite3 module takes the GIL back for every row it binds,
and a thread that needs the GIL thousands of times a second while the event loop's thread keeps it
busy waits up to the switch interval (5 ms) each time. Measured here: 10,000 rows commit in 0.1 s
on an idle interpreter and in 9.5 s beside one busy thread. In a process of its own the writer has
an interpreter of its own, and the manager's share of a batch is one msgspec encode per object
(about 1 us each) and one pipe write.

Protocol on stdin/stdout, one request at a time, each frame a 4-byte big-endian length and a
msgpack body. Request: ``["commit", revision, [[kind, id, data], ...], [[kind, id], ...]]`` or
``["wipe"]``. Answer: ``[true, ""]`` once the transaction is committed (fsynced), or
``[false, "error message"]`` with nothing written. EOF on stdin ends the process.
"""

from __future__ import annotations

import sqlite3
import struct
import sys
from typing import BinaryIO

import msgspec

HEADER = struct.Struct(">I")
SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL,
                                    PRIMARY KEY (kind, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def connect(path: str) -> sqlite3.Connection:
    """The file's connection, set up the same way by the reader (the manager) and the writer."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every commit, so an answered commit survives a machine crash.
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


def apply(db: sqlite3.Connection, request: list) -> None:
    op = request[0]
    db.execute("BEGIN")
    try:
        if op == "commit":
            _, revision, rows, deletes = request
            db.executemany("INSERT OR REPLACE INTO objects (kind, id, data) VALUES (?, ?, ?)", rows)
            db.executemany("DELETE FROM objects WHERE kind=? AND id=?", deletes)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('revision', ?)", (revision,))
        elif op == "wipe":
            db.execute("DELETE FROM objects")
            db.execute("DELETE FROM meta")
        else:
            raise ValueError(f"unknown request {op!r}")
        db.execute("COMMIT")
    except BaseException:
        # sqlite has already rolled back after some errors (a full disk): a second ROLLBACK would
        # raise "no transaction is active" and hide the real error.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


def serve(path: str, inp: BinaryIO, out: BinaryIO) -> None:
    db = connect(path)
    try:
        while (frame := read_frame(inp)) is not None:
            try:
                apply(db, msgspec.msgpack.decode(frame))
                answer = [True, ""]
            except Exception as e:  # disk full, I/O error, a bad request: the manager retries
                answer = [False, f"{type(e).__name__}: {e}" if not isinstance(e, sqlite3.Error) else str(e)]
            body = msgspec.msgpack.encode(answer)
            out.write(HEADER.pack(len(body)) + body)
            out.flush()
    finally:
        db.close()


def main(path: str) -> None:
    serve(path, sys.stdin.buffer, sys.stdout.buffer)
