"""Go's ``time.ParseDuration`` syntax (``1m30s``, ``1.5h``, ``300ms``, ``0``), which Docker uses for
every duration it accepts as text. One parser for the CLI's flags, Compose files and the agent's
health-check labels; each adds only its own reading of a bare number."""

from __future__ import annotations

import re
from decimal import Decimal

UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(value: str) -> int:
    """Nanoseconds for a Go duration; negatives are refused. ValueError with a one-line message."""
    s = value.strip()
    if s in ("0", "+0", "-0"):
        return 0
    if s.startswith("-"):
        raise ValueError(f'invalid duration "{value}": duration cannot be negative')
    s = s.removeprefix("+")
    total = Decimal(0)
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m or m.group(1) in ("", "."):
            raise ValueError(
                f'invalid duration "{value}" (use a number and a unit: ns, us, ms, s, m, h, e.g. 1m30s)'
            )
        total += Decimal(m.group(1)) * UNITS_NS[m.group(2)]
        pos = m.end()
    if not s:
        raise ValueError(f'invalid duration "{value}"')
    return int(total)
