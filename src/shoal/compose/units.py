"""Go-style durations and Docker-style sizes, as Compose files spell them."""

from __future__ import annotations

import re
from typing import Any

from .. import models as m
from ..duration import parse_go_duration

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": m.SECOND, "m": 60 * m.SECOND, "h": 3600 * m.SECOND}
_BYTES = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40}


def duration(value: Any) -> int:
    """Go-style duration (``1m30s``, ``500ms``; a bare number is seconds) → nanoseconds."""
    if isinstance(value, int | float):
        return int(value * m.SECOND)
    return parse_go_duration(str(value))


def size(value: Any) -> int:
    """``64m``, ``1.5G``, ``1024`` → bytes."""
    if isinstance(value, int | float):
        return int(value)
    mt = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", str(value).strip())
    if not mt or mt.group(2).lower() not in _BYTES:
        raise ValueError(f"invalid size {value!r}")
    return int(float(mt.group(1)) * _BYTES[mt.group(2).lower()])
