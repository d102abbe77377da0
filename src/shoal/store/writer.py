"""Write-behind: committed batches reach the backend in order, on a thread and event loop of their own.

:meth:`MemoryStore.commit` applies a batch to memory and publishes it at once, so every component
keeps reading one consistent, current view and a commit never fails for a reason outside the
batch itself. The batch is then handed here. The writer persists batches in commit order; batches
that queue up while a write is in flight are merged into one (the latest version of each object
wins), so a burst of fifty commits costs one disk transaction, and the durable state is always the
state of some revision — a prefix of what memory went through.

The writer runs the backend's ``persist`` on an event loop in a thread of its own. On the manager's
loop it would wait behind every reconcile pass at each of its awaits (measured: batches of 8,000
objects took a second to persist in the scale benchmark, most of it queueing on the busy loop), and
every API answer waits for it. Here it needs the interpreter lock only to encode and to switch
coroutines, never once per row (see sqlite_writer.py for why that matters).

What leaves the manager waits for :meth:`WriteBehind.wait`: an API answer, an assignment sent to
an agent, the acknowledgment of a status report. So nothing is acknowledged before it is durable,
and a crash loses only what nobody was told about (the new leader or the restarted manager then
reconciles from the durable state, as after any restart).

A failed write (disk full, no etcd quorum) is retried with back-off until it succeeds; the error is
kept in :attr:`WriteBehind.error` so the API can refuse new writes with a clear 503 meanwhile. An
object that the backend rejects on its own (it cannot be encoded) is dropped from persistence and
reported, so one bad object never blocks the rest of its batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shoal.errors import FencedOut, StoreUnavailable
from shoal.store.base import Backend, Kind, Problem

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[Kind, str]
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
_LOG_EVERY_S = 30.0  # a persisting failure is logged when it changes, and then this often


def backend_name(backend: object) -> str:
    """``SqliteBackend`` → ``sqlite``; a wrapper (the leader's fenced etcd writer) may say its own
    ``name``."""
    name = getattr(backend, "name", None)
    return name if isinstance(name, str) else type(backend).__name__.removesuffix("Backend").lower()


class WriteBehind:
    """The ordered, coalescing persister between a :class:`MemoryStore` and its :class:`Backend`.

    ``add``, ``wait``, ``check_writable``, ``run`` and ``close`` are called on the manager's loop;
    ``_run`` and the backend's coroutines run on the writer's loop. The pending writes are shared
    under ``_lock``; ``durable`` and ``error`` are plain attributes written by the writer only."""

    def __init__(
        self,
        backend: Backend,
        revision: int,
        on_problem: Callable[[Problem], None] | None = None,
        on_fenced: Callable[[FencedOut], None] | None = None,
        on_persisted: Callable[[str, float, int], None] | None = None,
    ) -> None:
        self.backend = backend
        # Told of each durable batch (backend name, seconds, objects), on the writer's thread.
        self._on_persisted = on_persisted
        self._backend_name = backend_name(backend)
        self.durable = revision  # every revision up to this one is in the backend
        self.error: Exception | None = None  # the last write's failure, None once one succeeds
        # A leader's write refused because its term is over (etcd): this writer stops for good and
        # ``on_fenced`` tells the manager to step down; nothing it still holds will ever be durable.
        self.fenced: FencedOut | None = None
        self._on_fenced = on_fenced
        self._failed_rev = 0  # the revision that failing write would have brought the backend to
        self._queued = revision  # the revision the pending writes bring the backend to
        self._puts: dict[Key, Any] = {}
        self._deletes: set[Key] = set()
        self._lock = threading.Lock()
        self._on_problem = on_problem
        self._progress: asyncio.Event | None = None  # on the manager's loop; set on any progress
        self._loop: asyncio.AbstractEventLoop | None = None  # the manager's loop
        self._wloop: asyncio.AbstractEventLoop | None = None  # the writer's loop
        self._more: asyncio.Event | None = None  # on the writer's loop
        self._thread: threading.Thread | None = None
        self._closing = False
        self._abandoned = False
        self._logged: tuple[str, float] = ("", 0.0)
        # A backend that keeps nothing (unit tests, hollow benchmarks) is durable at once.
        self._immediate = bool(getattr(backend, "immediate", False))

    # ------------------------------------------------------------------ manager side

    def mark_durable(self, revision: int) -> None:
        """A follower's view moved to ``revision``, which the leader has already made durable."""
        assert self._immediate, "only a writer that keeps nothing follows another's revisions"
        self.durable = self._queued = revision

    def add(self, revision: int, puts: list[tuple[Kind, Any]], deletes: list[Key]) -> None:
        """Queue one committed batch (called by the store, in commit order)."""
        if self._immediate:
            self.durable = self._queued = revision
            return
        with self._lock:
            for kind, obj in puts:
                key = (kind, obj.ID)
                self._deletes.discard(key)
                self._puts[key] = obj
            for key in deletes:
                self._puts.pop(key, None)
                self._deletes.add(key)
            self._queued = revision
        if self._thread is None:
            self._start()
        elif self._wloop is not None and self._more is not None:
            with contextlib.suppress(RuntimeError):  # the writer's loop ended (fenced, closing)
                self._wloop.call_soon_threadsafe(self._more.set)

    def _start(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next add on a loop starts the writer
        self._progress = asyncio.Event()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="store-writer", daemon=True)
        self._thread.start()
        ready.wait()

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._wloop = loop
        self._more = asyncio.Event()
        self._more.set()  # what was queued before the thread started
        ready.set()
        try:
            loop.run_until_complete(self._run())
            loop.run_until_complete(self.backend.close())  # its pipes and sockets live on this loop
        except Exception:
            log.exception("store: the writer thread failed")
        finally:
            loop.close()

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run a backend coroutine (``wipe``) on the writer's loop, after what is queued."""
        if self._wloop is None:
            return await make()
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(_later(make), self._wloop)
        return await asyncio.wrap_future(fut)

    @property
    def lag(self) -> int:
        """Revisions committed in memory but not yet durable."""
        return self._queued - self.durable

    async def wait(self, revision: int | None = None, within: float | None = None, fail_fast: bool = False) -> None:
        """Return once ``revision`` (default: everything committed so far) is durable.

        With ``within`` (seconds), raise :class:`StoreUnavailable` naming the backend's error when
        it has not become durable in time; with ``fail_fast``, as soon as an attempt to persist it
        failed. Either way the write stays queued and is retried."""
        target = self._queued if revision is None else revision
        deadline = None if within is None else time.monotonic() + within
        while self.durable < target:
            if self.fenced is not None:
                raise self.fenced
            remaining = None if deadline is None else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0) or (
                fail_fast and self.error is not None and self._failed_rev >= target
            ):
                raise StoreUnavailable(self._unavailable_message())
            if self._progress is None:
                self._start()
                if self._progress is None:
                    raise StoreUnavailable("the store's writer is not running")
            self._progress.clear()
            if self.durable >= target:
                break
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                continue

    def check_writable(self) -> None:
        """Raise :class:`StoreUnavailable` while the backend is failing (refuse new API writes)."""
        if self.fenced is not None:
            raise self.fenced
        if self.error is not None:
            raise StoreUnavailable(self._unavailable_message())

    def _unavailable_message(self) -> str:
        why = f": {self.error}" if self.error is not None else " in time"
        return f"the cluster store is not accepting writes (changes not yet durable{why})"

    async def close(self, grace_s: float = 10.0) -> None:
        """Persist what is queued (retrying for up to ``grace_s``), stop the writer and close the
        backend (daemon shutdown)."""
        if self._thread is None:
            if not self._immediate and (self._puts or self._deletes):
                self._start()  # commits made without a loop: persist them now
            if self._thread is None:
                await self.backend.close()
                return
        try:
            await self.wait(within=grace_s)
        except StoreUnavailable as e:
            log.error("store: shutting down with revisions %d..%d not durable: %s",
                      self.durable + 1, self._queued, e)
        await self._stop_thread()

    async def abandon(self) -> None:
        """Stop without waiting for what is queued (a leader whose term ended: the next leader's
        state is the durable one, and this manager reloads it)."""
        self._abandoned = True
        if self._thread is None:
            await self.backend.close()
            return
        await self._stop_thread()

    async def _stop_thread(self) -> None:
        self._closing = True
        assert self._wloop is not None and self._more is not None
        with contextlib.suppress(RuntimeError):  # its loop already ended (fenced)
            self._wloop.call_soon_threadsafe(self._more.set)
        thread = self._thread
        assert thread is not None
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._thread = None

    # ------------------------------------------------------------------ writer side

    def _take(self) -> tuple[int, list[tuple[Kind, Any]], list[Key]]:
        with self._lock:
            rev = self._queued
            puts = [(kind, obj) for (kind, _), obj in self._puts.items()]
            deletes = list(self._deletes)
            self._puts, self._deletes = {}, set()
        return rev, puts, deletes

    def _put_back(self, puts: list[tuple[Kind, Any]], deletes: list[Key]) -> None:
        """Return a failed batch under whatever was queued since (newer writes win)."""
        with self._lock:
            newer_puts, newer_deletes = self._puts, self._deletes
            self._puts = {(kind, obj.ID): obj for kind, obj in puts}
            self._deletes = set(deletes)
            for key in newer_deletes:
                self._puts.pop(key, None)
                self._deletes.add(key)
            for key, obj in newer_puts.items():
                self._deletes.discard(key)
                self._puts[key] = obj

    async def _run(self) -> None:
        assert self._more is not None
        delay = RETRY_FIRST_S
        while True:
            await self._more.wait()
            self._more.clear()
            if self._abandoned:
                return
            with self._lock:
                idle = not self._puts and not self._deletes
            if idle:
                if self._closing:
                    return
                self._done(self._queued)
                continue
            rev, puts, deletes = self._take()
            t0 = time.perf_counter()
            try:
                rejected = await self.backend.persist(rev, puts, deletes)
            except FencedOut as e:  # our term is over: retrying cannot help, and must not
                self._fence(e)
                return
            except Exception as e:  # any backend failure: keep the batch, retry with back-off
                self._put_back(puts, deletes)
                self._failed_rev = rev
                self._failed(e)
                if self._closing:
                    return  # close() already waited its grace period
                self._more.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            if self._on_persisted is not None:
                try:
                    self._on_persisted(self._backend_name, time.perf_counter() - t0, len(puts) + len(deletes))
                except Exception:  # metrics must never stop the store's writes
                    log.exception("store: recording a write's duration failed")
            for problem in rejected:
                self._report(problem)
            if self.error is not None:
                log.warning("store: writes are durable again (up to revision %d)", rev)
                self.error = None
            self._done(rev)

    def _notify(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the manager's loop (it may be gone at shutdown)."""
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(fn)
            except RuntimeError:
                pass

    def _done(self, rev: int) -> None:
        self.durable = max(self.durable, rev)
        if self._progress is not None:
            self._notify(self._progress.set)

    def _failed(self, e: Exception) -> None:
        self.error = e
        if self._progress is not None:
            self._notify(self._progress.set)
        msg, last = self._logged
        now = time.monotonic()
        if str(e) != msg or now - last > _LOG_EVERY_S:
            log.error("store: persisting revision %d failed, retrying with back-off: %s", self._queued, e)
            self._logged = (str(e), now)

    def _fence(self, e: FencedOut) -> None:
        log.warning("store: revision %d was refused: %s", self._queued, e)
        self.error = self.fenced = e
        if self._progress is not None:
            self._notify(self._progress.set)
        if self._on_fenced is not None:
            cb = self._on_fenced
            self._notify(lambda: cb(e))

    def _report(self, problem: Problem) -> None:
        log.error("store: %s; kept in memory only", problem)
        if self._on_problem is not None:
            cb = self._on_problem
            self._notify(lambda: cb(problem))


async def _later(make: Callable[[], Awaitable[T]]) -> T:
    return await make()
