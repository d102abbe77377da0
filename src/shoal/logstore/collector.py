"""The leader's log collector: lines shipped by agents, fanned out to the file sink and the user's sinks.

Each sink is an outlet with its own bounded queue and worker: ``add`` (called by the dispatcher for
every ShipLogs batch) only appends, so neither a slow disk nor a slow receiver ever holds an agent's
call. A queue over its bound drops its oldest lines (counted, logged once a minute) — the agents
already bound what they send, this bounds what the leader holds. The user's sinks are read from the
store once a second, so a sink added (or removed) on any manager, or before a failover, takes effect
on whichever manager leads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from shoal.dispatcher.protocol import LogRecord
from shoal.logstore.files import FileSink
from shoal.logstore.sinks import HttpSink
from shoal.models import LogSink, LogSinkSpec
from shoal.store import MemoryStore

log = logging.getLogger(__name__)

BUILTIN = "files"  # the built-in sink's name (not a store object: always on)
QUEUE_RECORDS = 50_000  # per sink
BATCH_RECORDS = 2_000  # per write or push
SYNC_S = 1.0  # how often the user's sinks are read from the store


class Outlet:
    """One sink's queue and the worker that empties it in batches."""

    def __init__(self, name: str, send: Callable[[list[LogRecord]], Awaitable[object]],
                 limit: int = QUEUE_RECORDS, batch: int = BATCH_RECORDS) -> None:
        self.name = name
        self.send = send
        self.limit = limit
        self.batch = batch
        self.queue: deque[LogRecord] = deque()
        self.dropped = 0
        self.busy = False
        self._wake = asyncio.Event()
        self._warned = 0.0

    def put(self, records: list[LogRecord]) -> None:
        self.queue.extend(records)
        excess = len(self.queue) - self.limit
        if excess > 0:
            for _ in range(excess):
                self.queue.popleft()
            self.dropped += excess
            now = time.monotonic()
            if now - self._warned > 60:
                self._warned = now
                log.warning("log sink %s is behind: %d line(s) dropped so far", self.name, self.dropped)
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
            n = min(len(self.queue), self.batch)
            batch = [self.queue.popleft() for _ in range(n)]
            self.busy = True
            try:
                await self.send(batch)
            except Exception:
                log.exception("log sink %s: %d line(s) lost", self.name, len(batch))
            finally:
                self.busy = False

    @property
    def idle(self) -> bool:
        return not self.queue and not self.busy


class LogCollector:
    """A leader component (``run`` until cancelled); the dispatcher's ``log_sink`` is :meth:`add`."""

    def __init__(self, store: MemoryStore, root: Path) -> None:
        self.store = store
        self.root = Path(root)
        self.files = FileSink(self.root)
        self.outlets: dict[str, Outlet] = {BUILTIN: Outlet(BUILTIN, self._write_files)}
        self._specs: dict[str, LogSinkSpec] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.received = 0

    def add(self, records: list[LogRecord]) -> None:
        self.received += len(records)
        for outlet in self.outlets.values():
            outlet.put(records)

    async def _write_files(self, records: list[LogRecord]) -> None:
        await asyncio.to_thread(self.files.write, records)

    async def run(self) -> None:
        self._session = aiohttp.ClientSession()
        self._start(BUILTIN)
        try:
            while True:
                self.sync()
                await asyncio.sleep(SYNC_S)
        finally:
            for t in self._tasks.values():
                t.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()
            await self._session.close()
            self._session = None

    def _start(self, name: str) -> None:
        self._tasks[name] = asyncio.create_task(self.outlets[name].run(), name=f"log-sink-{name}")

    def sync(self) -> None:
        """Outlets for the sinks the store holds now: new ones start, removed or changed ones stop."""
        if self._session is None:
            return
        sinks: list[LogSink] = self.store.list("logsink")
        want = {s.Spec.Name: s.Spec for s in sinks}
        for name in [n for n in self._specs if want.get(n) != self._specs[n]]:
            self._specs.pop(name)
            self.outlets.pop(name, None)
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
        for name, spec in want.items():
            if name in self._specs or name == BUILTIN:
                continue
            self._specs[name] = spec
            if spec.Type == "file":
                files = FileSink(Path(spec.URL))
                self.outlets[name] = Outlet(name, lambda rs, f=files: asyncio.to_thread(f.write, rs))
            else:
                self.outlets[name] = Outlet(name, HttpSink(spec, self._session).send)
            self._start(name)

    @property
    def idle(self) -> bool:
        """Every queue empty and no batch in flight (what tests wait for)."""
        return all(o.idle for o in self.outlets.values())
