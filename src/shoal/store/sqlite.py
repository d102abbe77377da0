"""The embedded default backend: one sqlite file, one row per object, msgpack-encoded.

A persisted batch is one sqlite transaction (WAL journal, fsynced at every commit: see
sqlite_writer.py), so a crash of the process or of the machine leaves either all of a batch or none
of it, and a batch reported durable stays so. The fsync per transaction is affordable because the
write-behind writer merges the commits that queue up meanwhile into one.

The manager reads the file once, at start, on its own connection. Writes go to a child process
(:mod:`shoal.store.sqlite_writer`) that owns the write connection: the manager encodes each object
(msgspec) and hands the batch over a pipe; the child binds and commits it. A thread would share the
interpreter's lock with the event loop and crawl (see that module for the figures).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import msgspec

from shoal.store.base import KINDS, Kind, Problem, Snapshot, gc_paused
from shoal.store.sqlite_writer import HEADER, connect

log = logging.getLogger(__name__)

_ENCODE_SLICE = 5_000  # objects encoded between two yields to the event loop


class WriterFailed(Exception):
    """The writer process could not commit a batch (nothing of it was written)."""


class SqliteBackend:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
            with gc_paused():
                for kind, oid, data in db.execute("SELECT kind, id, data FROM objects"):
                    decoder = self._decoders.get(kind)
                    if decoder is None:
                        bad.append(Problem(kind, oid, "unknown kind of object (written by a newer Shoal?)"))
                        continue
                    try:
                        out[kind].append(decoder.decode(data))
                    except (msgspec.DecodeError, msgspec.ValidationError) as e:
                        # Left in the file untouched: a newer Shoal may read it, an operator may look.
                        bad.append(Problem(kind, oid, f"cannot be decoded: {e}"))
            return Snapshot(row[0] if row else 0, out, bad)
        finally:
            db.close()

    async def persist(
        self, revision: int, puts: list[tuple[Kind, Any]], deletes: list[tuple[Kind, str]]
    ) -> list[Problem]:
        """Encode here (objects that cannot be encoded are left out and returned), commit in the
        writer process."""
        enc = self._encoder.encode
        rows: list[tuple[str, str, bytes]] = []
        rejected: list[Problem] = []
        for i, (kind, obj) in enumerate(puts):
            try:
                rows.append((kind, obj.ID, enc(obj)))
            except (TypeError, ValueError, OverflowError) as e:
                rejected.append(Problem(kind, obj.ID, f"cannot be encoded: {e}"))
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
