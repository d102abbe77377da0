"""Cron expressions and their times, for scheduled jobs (``shoal.schedule``, shoal/extensions.py).

The standard five fields (minute hour day-of-month month day-of-week) or one of ``@yearly @annually
@monthly @weekly @daily @midnight @hourly``; croniter does the arithmetic. Times are wall-clock
times in the schedule's zone: across a DST change, a time that does not exist that day runs at the
jump (as cron does), and a time that happens twice runs once when the hour field is fixed
(``30 2 * * *``) but at each real occurrence when it is not (``0 * * * *``), as ISC cron does.

Its own module because it is self-contained and the only user of croniter; extensions.py keeps to
what the labels mean.
"""

from __future__ import annotations

import datetime as _dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_FIXED_HOUR_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight")
UTC = ZoneInfo("UTC")


def parse_cron(expr: str) -> str:
    """A cron expression made canonical (single spaces), or ValueError saying what is wrong."""
    text = " ".join(expr.split())
    if not text:
        raise ValueError("empty cron expression")
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise ValueError(f"unknown cron macro {text!r} (expected one of {', '.join(MACROS)})")
        return text.lower()
    fields = text.split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"cron expression {text!r} has {len(fields)} fields; expected 5 (minute hour day-of-month month "
            "day-of-week)"
        )
    try:
        croniter(text, _dt.datetime(2000, 1, 1, tzinfo=UTC)).get_next(float)
    except (CroniterBadCronError, CroniterNotAlphaError, ValueError, KeyError) as e:
        raise ValueError(f"invalid cron expression {text!r}: {e}") from None
    except CroniterBadDateError:
        raise ValueError(f"cron expression {text!r} never fires") from None
    return text


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA zone; UTC for the empty name."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as Europe/Paris)") from None


def _fixed_hour(expr: str) -> bool:
    if expr.startswith("@"):
        return expr in _FIXED_HOUR_MACROS
    return "*" not in expr.split()[1]


def _second_occurrence(t: _dt.datetime) -> bool:
    """Whether ``t`` is the second of two equal wall-clock times (the repeated hour of a DST end)."""
    wall = t.replace(tzinfo=None)
    first = wall.replace(tzinfo=t.tzinfo, fold=0).utcoffset()
    second = wall.replace(tzinfo=t.tzinfo, fold=1).utcoffset()
    return first != second and t.utcoffset() == second


def next_after(expr: str, tz: ZoneInfo, ts: float) -> float:
    """The first time (epoch seconds) strictly after ``ts`` that a canonical ``expr`` names in ``tz``."""
    it = croniter(expr, _dt.datetime.fromtimestamp(ts, tz))
    fixed = _fixed_hour(expr)
    for _ in range(4):
        t: _dt.datetime = it.get_next(_dt.datetime)
        if not (fixed and _second_occurrence(t)):
            return t.timestamp()
    return t.timestamp()  # pragma: no cover - a repeated hour cannot repeat four times
