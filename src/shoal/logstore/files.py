"""The built-in file sink: one JSON record a line under ``<root>/<service>/<store>.log``, rotated by size.

Rotation is logrotate's numbered scheme (``x.log`` → ``x.log.1`` → ... → ``x.log.<keep>``, the oldest
dropped), checked before each write, so a store never takes more than ``max_bytes * (keep + 1)``.
Writes are plain appends from a worker thread: the leader's event loop never waits for the disk.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from shoal.dispatcher.protocol import LogRecord

MAX_BYTES = 16 * 1024 * 1024  # per file before it rotates
KEEP = 4  # rotated files kept per store
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_encode = msgspec.json.Encoder().encode


# The last whole second formatted (lines come in bursts of the same second). One tuple, read and
# replaced whole: the file sink's thread and the event loop (sink encoders) both call rfc3339.
_second: tuple[int, str] = (-1, "")


def rfc3339(ts: float) -> str:
    """Unix seconds → RFC 3339 in UTC with microseconds (what Loki, Elasticsearch and docker read)."""
    global _second
    sec, frac = divmod(round(ts * 1_000_000), 1_000_000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, dt.datetime.fromtimestamp(sec, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{frac:06d}Z"


def record_json(r: LogRecord) -> dict[str, Any]:
    return {"time": rfc3339(r.time), "ts": r.time, "service": r.service, "service_id": r.service_id,
            "task": r.task_id, "node": r.node_id, "store": r.store, "source": r.source, "line": r.line}


def safe_name(name: str) -> str:
    """A path component from a service or store name (both are checked already; this is the last word
    on what reaches the filesystem: no separators, no dot-dot)."""
    out = _SAFE.sub("_", name).lstrip(".")
    return out or "_"


def store_path(root: Path, service: str, store: str) -> Path:
    return root / safe_name(service) / f"{safe_name(store)}.log"


class FileSink:
    """Appends records to their store's file under ``root``, rotating at ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.keep = keep

    def write(self, records: Iterable[LogRecord]) -> None:
        """Blocking (the collector runs it in a thread). Records are grouped by file, in order."""
        by_file: dict[Path, list[bytes]] = {}
        for r in records:
            path = store_path(self.root, r.service or r.service_id, r.store)
            by_file.setdefault(path, []).append(_encode(record_json(r)) + b"\n")
        for path, lines in by_file.items():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            chunk: list[bytes] = []
            size = path.stat().st_size if path.exists() else 0
            for line in lines:
                if size and size + len(line) > self.max_bytes:
                    self._append(path, chunk)
                    chunk = []
                    self.rotate(path)
                    size = 0
                chunk.append(line)
                size += len(line)
            self._append(path, chunk)

    @staticmethod
    def _append(path: Path, lines: list[bytes]) -> None:
        if not lines:
            return
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(lines))
        finally:
            os.close(fd)

    def rotate(self, path: Path) -> None:
        oldest = path.with_name(f"{path.name}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            src = path.with_name(f"{path.name}.{i}")
            if src.exists():
                src.rename(path.with_name(f"{path.name}.{i + 1}"))
        if self.keep > 0:
            path.rename(path.with_name(f"{path.name}.1"))
        else:
            path.unlink()


def files_of(root: Path, service: str | None = None, store: str | None = None) -> Iterator[Path]:
    """Every file of the matching stores, each store's oldest rotation first (so lines come in order)."""
    if not root.is_dir():
        return
    services = [root / safe_name(service)] if service else sorted(p for p in root.iterdir() if p.is_dir())
    for sdir in services:
        if not sdir.is_dir():
            continue
        names = [f"{safe_name(store)}.log"] if store else sorted(p.name for p in sdir.glob("*.log"))
        for name in names:
            rotated = sorted(sdir.glob(f"{name}.[0-9]*"), key=lambda p: -int(p.suffix[1:] or 0))
            yield from rotated
            if (sdir / name).exists():
                yield sdir / name
