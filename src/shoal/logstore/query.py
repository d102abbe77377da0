"""``shoal logs query``: collected lines from the file sink, by service, store, time and text.

Times are what ``docker logs --since`` takes: a Unix timestamp (``1700000000.5``), RFC 3339 (a date,
a date and time, with or without an offset; without one it is local time, as docker reads it), or
a Go duration meaning that long ago (``10m``, ``1h30m``).
"""

from __future__ import annotations

import datetime as dt
import heapq
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from shoal.duration import parse_go_duration
from shoal.logstore.files import files_of

DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000
_decode = msgspec.json.Decoder().decode


def parse_time(value: str, now: float | None = None) -> float:
    """Unix seconds for a ``--since``/``--until`` value; ValueError with docker's wording if bad."""
    v = value.strip()
    now = time.time() if now is None else now
    try:
        return float(v)
    except ValueError:
        pass
    if v and v[-1] in "smhµu" and v[0].isdigit() and "-" not in v and ":" not in v:
        try:
            return now - parse_go_duration(v) / 1e9
        except ValueError:
            pass
    try:
        parsed = dt.datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"invalid time {value!r}: use RFC 3339 (2006-01-02T15:04:05Z), a Unix timestamp "
                         f"or a duration ago (10m)") from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # local time, as docker's --since reads it
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class LogQuery:
    service: str = ""
    store: str = ""
    since: float = 0.0
    until: float = 0.0  # 0: no end
    grep: str = ""  # a substring of the line (case-sensitive, as grep without -i)
    limit: int = DEFAULT_LIMIT  # the last ``limit`` matching lines

    def matches(self, rec: dict[str, Any]) -> bool:
        ts = rec.get("ts", 0.0)
        if self.since and ts < self.since:
            return False
        if self.until and ts > self.until:
            return False
        return not self.grep or self.grep in rec.get("line", "")


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for raw in f:
            try:
                rec = _decode(raw)
            except msgspec.DecodeError:
                continue  # a line cut by a crash mid-write: the rest of the file is still good
            if isinstance(rec, dict):
                yield rec


def run_query(root: Path, q: LogQuery, allowed: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """The last ``q.limit`` matching records, oldest first. ``allowed(service)`` says which services'
    lines the caller may read (None: all). Blocking: the API runs it in a thread."""
    per_file: list[list[dict[str, Any]]] = []
    for path in files_of(root, q.service or None, q.store or None):
        if allowed is not None and not allowed(path.parent.name):
            continue
        try:
            if q.since and path.stat().st_mtime < q.since - 1:
                continue  # last written before the range began: none of its lines can be in it
            kept: deque[dict[str, Any]] = deque(maxlen=q.limit or None)  # 0: no limit
            for rec in _records(path):
                if q.matches(rec):
                    kept.append(rec)
        except FileNotFoundError:
            continue  # rotated away while we read
        per_file.append(list(kept))
    merged = list(heapq.merge(*per_file, key=lambda r: r.get("ts", 0.0)))
    return merged[-q.limit:] if q.limit else merged
