"""The agent's log collection: what a service's ``aliyun.log_store_<name>`` labels name, shipped to the leader.

- ``stdout``: the container's output (stdout and stderr, ``source`` says which) through the engine's
  logs API with ``follow`` — the same stream ``docker logs -f`` reads, whatever log driver keeps it
  (json-file, local, journald; not ``none``).
- a path glob (``/var/log/app/*.log``): files inside the container, read through
  ``/proc/<pid>/root`` of its main process. That path sees the container's own mount namespace —
  its image layers, volumes and tmpfs alike, for any storage driver — where GraphDriver's MergedDir
  would miss volumes and exists for overlay only. Paths are resolved inside that root
  (:func:`resolve_in_root`): a symlink a container plants (``app.log -> /etc/shadow``) resolves
  within the container, never onto the host.

Files are tailed by identity (device, inode), not by name, so logrotate's rename moves a tail along
without reading the file again; a file that leaves the glob is read to its end through the
descriptor still open; a file that shrank was truncated (``copytruncate``) and is read from 0.

Cost is bounded: each interval ships at most ``max_bytes`` (files not yet read wait on disk, and
the stdout readers stop reading while the buffer is full — the engine holds the lines), in batches
of at most ``batch_bytes``; a line is cut at ``MAX_LINE`` bytes. Delivery is at least once: a
batch the leader did not take is sent again, and an agent that restarts reads its tasks' stores
from the start again.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shoal.dispatcher.protocol import LogOptions, LogRecord
from shoal.extensions import LOG_STORE_STDOUT, task_log_stores
from shoal.models import Task, parse_ts

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
MAX_BYTES = 1024 * 1024  # shipped per interval, all stores of the node together
BATCH_BYTES = 256 * 1024  # per ShipLogs call (the manager takes up to 4 MiB)
BUFFER_BYTES = 2 * 1024 * 1024  # read but not yet shipped; the stdout readers wait above it
MAX_LINE = 16 * 1024
MAX_FILES = 64  # tailed per store and container: a glob matching thousands is a mistake
READ_CHUNK = 64 * 1024
_RECORD_OVERHEAD = 96  # bytes a record costs beyond its line (ids, names) on the wire, roughly


def resolve_in_root(root: str, path: str, max_links: int = 40) -> str | None:
    """``path`` (absolute, inside the container) as a host path under ``root``, its symlinks followed
    as the container would follow them; None if it does not exist or loops."""
    parts = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    links = 0
    while parts:
        p = parts.pop(0)
        if p == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, p)
        try:
            st = os.lstat(here)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_links:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [x for x in target.split("/") if x and x != "."] + parts
            continue
        done.append(p)
    return os.path.join(root, *done)


@dataclass(eq=False)
class _Tail:
    fd: int
    path: str  # inside the container
    offset: int = 0
    partial: bytes = b""
    seen: bool = True  # matched the glob at the last scan


@dataclass(eq=False)
class FileStore:
    """The files of one glob in one container: scanned and read by :meth:`poll` (blocking)."""

    root: str
    pattern: str
    tails: dict[tuple[int, int], _Tail] = field(default_factory=dict)

    def scan(self) -> None:
        for t in self.tails.values():
            t.seen = False
        matched = sorted(glob.glob(self.pattern.lstrip("/"), root_dir=self.root))[:MAX_FILES]
        for rel in matched:
            inside = "/" + rel
            host = resolve_in_root(self.root, inside)
            if host is None:
                continue
            try:
                fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if not stat.S_ISREG(st.st_mode) or key in self.tails:
                os.close(fd)
                if key in self.tails:  # the same file (perhaps renamed by a rotation): keep its offset
                    self.tails[key].seen = True
                    self.tails[key].path = inside
                continue
            self.tails[key] = _Tail(fd, inside)

    def poll(self, budget: int, now: float) -> tuple[list[tuple[str, str, float]], int]:
        """Up to ``budget`` bytes of new lines: ([(path, line, time)], bytes read)."""
        out: list[tuple[str, str, float]] = []
        used = 0
        for key, t in list(self.tails.items()):
            if used >= budget:
                break
            try:
                size = os.fstat(t.fd).st_size
                if size < t.offset:  # truncated in place (copytruncate): it starts over
                    t.offset, t.partial = 0, b""
                data = os.pread(t.fd, min(READ_CHUNK, budget - used, max(size - t.offset, 0)), t.offset)
            except OSError:
                data = b""
            t.offset += len(data)
            used += len(data)
            buf = t.partial + data
            *lines, t.partial = buf.split(b"\n")
            if len(t.partial) > MAX_LINE:  # a line with no end in sight: ship what we have
                lines.append(t.partial)
                t.partial = b""
            out.extend((t.path, _text(line), now) for line in lines)
            if not t.seen and t.offset >= size:  # gone from the glob and read to its end
                if t.partial:
                    out.append((t.path, _text(t.partial), now))
                os.close(t.fd)
                del self.tails[key]
        return out, used

    def close(self) -> None:
        for t in self.tails.values():
            os.close(t.fd)
        self.tails.clear()


def _text(line: bytes) -> str:
    return line[:MAX_LINE].rstrip(b"\r").decode("utf-8", "replace")


@dataclass(eq=False)
class _Container:
    task: Task
    container_id: str
    stores: dict[str, str]
    files: dict[str, FileStore] = field(default_factory=dict)
    follower: asyncio.Task[None] | None = None


class LogShipper:
    """Collects the log stores of the node's running tasks and ships them with ``send``."""

    def __init__(self, executor: Any, running: Callable[[], list[tuple[Task, str]]],
                 send: Callable[[list[LogRecord]], Awaitable[None]], node_id: str, *,
                 interval_s: float = INTERVAL_S, max_bytes: int = MAX_BYTES, batch_bytes: int = BATCH_BYTES,
                 buffer_bytes: int = BUFFER_BYTES) -> None:
        self.executor = executor
        self.running = running
        self.send = send
        self.node_id = node_id
        self.interval_s = interval_s
        self.max_bytes = max_bytes
        self.batch_bytes = batch_bytes
        self.buffer_bytes = buffer_bytes
        self.buffer: list[LogRecord] = []
        self.buffered = 0  # bytes in ``buffer``
        self.shipped = 0  # records, since start (tests, figures)
        self._room = asyncio.Event()
        self._room.set()
        self._containers: dict[str, _Container] = {}
        self._stores: dict[str, dict[str, str]] = {}  # task ID → its stores (labels parsed once)

    def _record(self, c: _Container, store: str, source: str, line: str, at: float) -> LogRecord:
        ann = c.task.ServiceAnnotations or {}
        return LogRecord(time=at, service_id=c.task.ServiceID, service=str(ann.get("Name") or ""),
                         task_id=c.task.ID, node_id=self.node_id, store=store, source=source, line=line)

    def _buffer(self, records: list[LogRecord]) -> None:
        self.buffer.extend(records)
        self.buffered += sum(len(r.line) + _RECORD_OVERHEAD for r in records)
        if self.buffered >= self.buffer_bytes:
            self._room.clear()

    async def run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                await self._sync()
                await self._read_files()
                await self._ship()
                await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))
        finally:
            for c in list(self._containers.values()):
                await self._drop(c)

    # ------------------------------------------------------------------ containers

    async def _sync(self) -> None:
        want: dict[str, tuple[Task, str]] = {}
        known: dict[str, dict[str, str]] = {}
        for task, cid in self.running():
            stores = self._stores.get(task.ID)
            if stores is None:
                stores = task_log_stores(task)
            known[task.ID] = stores
            if stores:
                want[cid] = (task, cid)
        self._stores = known
        for cid in [c for c in self._containers if c not in want]:
            c = self._containers.pop(cid)
            await self._read_files([c])  # what it wrote last, through descriptors still open
            await self._drop(c)
        for cid, (task, _) in want.items():
            if cid not in self._containers:
                self._containers[cid] = await self._start(task, cid)

    async def _start(self, task: Task, cid: str) -> _Container:
        c = _Container(task, cid, task_log_stores(task))
        globs = {name: src for name, src in c.stores.items() if src != LOG_STORE_STDOUT}
        if globs:
            try:
                pid = (await self.executor.inspect(cid)).pid
            except Exception as e:
                pid = 0
                log.warning("log stores of task %s: cannot inspect its container: %s", task.ID, e)
            root = f"/proc/{pid}/root"
            if pid and await asyncio.to_thread(os.path.isdir, root):
                c.files = {name: FileStore(root, pattern) for name, pattern in globs.items()}
            else:
                log.warning("log stores of task %s: its files are not readable from this host (pid %s)",
                            task.ID, pid)
        stdout = [name for name, src in c.stores.items() if src == LOG_STORE_STDOUT]
        if stdout:
            c.follower = asyncio.create_task(self._follow(c, stdout), name=f"logship-{cid[:12]}")
        return c

    async def _drop(self, c: _Container) -> None:
        if c.follower is not None:
            c.follower.cancel()
            await asyncio.gather(c.follower, return_exceptions=True)
        for f in c.files.values():
            f.close()
        c.files.clear()

    async def _follow(self, c: _Container, stores: list[str]) -> None:
        """The container's output, from its start, until it ends (one record per store naming stdout)."""
        try:
            async for msg in self.executor.task_logs(c.task, c.container_id, LogOptions(follow=True)):
                await self._room.wait()
                line = _text(msg.data.rstrip(b"\n"))
                at = parse_ts(msg.timestamp) if msg.timestamp else time.time()
                source = "stderr" if msg.stream == 2 else "stdout"
                self._buffer([self._record(c, s, source, line, at) for s in stores])
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a log driver without reading (none, syslog ...) or the engine gone
            log.warning("log stores of task %s: its output cannot be read: %s", c.task.ID, e)

    # ------------------------------------------------------------------ files and shipping

    async def _read_files(self, containers: list[_Container] | None = None) -> None:
        todo = [(c, name, fs) for c in (containers or list(self._containers.values())) for name, fs in c.files.items()]
        if not todo:
            return
        budget = max(0, min(self.max_bytes, self.buffer_bytes - self.buffered))

        def read() -> list[tuple[_Container, str, list[tuple[str, str, float]]]]:
            nonlocal budget
            out = []
            now = time.time()
            for c, name, fs in todo:
                fs.scan()
                lines, used = fs.poll(budget, now)
                budget -= used
                out.append((c, name, lines))
            return out

        for c, name, lines in await asyncio.to_thread(read):
            self._buffer([self._record(c, name, path, line, at) for path, line, at in lines])

    async def _ship(self) -> None:
        """At most ``max_bytes`` of the buffer, in batches; a batch the leader did not take stays."""
        budget = self.max_bytes
        while self.buffer and budget > 0:
            n, size = 0, 0
            while n < len(self.buffer) and size < min(self.batch_bytes, budget):
                size += len(self.buffer[n].line) + _RECORD_OVERHEAD
                n += 1
            batch = self.buffer[:n]
            try:
                await self.send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("log batch not shipped (kept for the next interval): %s", e)
                return
            del self.buffer[:n]
            self.buffered -= size
            self.shipped += n
            budget -= size
            if self.buffered < self.buffer_bytes:
                self._room.set()
