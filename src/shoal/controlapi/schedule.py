"""Scheduled jobs: the ``shoal.schedule*`` service labels, their parsing and their checks.

A scheduled job is a job-mode service (replicated-job or global-job) carrying these labels; the
cron scheduler (orchestrator/cron.py) starts a new job iteration at each scheduled time. The
settings ride on labels because Docker's API has no word for them and labels survive the docker
CLI's read-modify-write of a spec. They are checked here at create/update time, so a typo is a 400
with nothing stored, not a job that silently never runs.

- ``shoal.schedule``: a cron expression, the standard five fields (minute hour day-of-month month
  day-of-week) or one of ``@yearly @annually @monthly @weekly @daily @midnight @hourly``.
- ``shoal.schedule.timezone``: an IANA zone name (``Europe/Paris``); UTC when absent. Times are
  wall-clock times in that zone: across a DST change, a time that does not exist that day runs at
  the jump (as cron does), and a time that happens twice runs once when the hour field is fixed
  (``30 2 * * *``) but at each real occurrence when it is not (``0 * * * *``), as ISC cron does.
- ``shoal.schedule.concurrency``: what a due run does while the previous iteration still has tasks
  running. ``forbid`` (default): the run is skipped. ``replace``: the running tasks are stopped and
  the new iteration starts. ``allow``: a Swarm job has one iteration at a time (a new iteration
  stops the old one's tasks), so two runs cannot overlap; ``allow`` therefore means "never skip and
  never kill": the due run waits and starts as soon as the previous iteration ends (at most one
  waits; further due times meanwhile join it).
- ``shoal.schedule.history``: how many finished iterations keep their tasks (default 3). The
  cluster's task history limit (TaskHistoryRetentionLimit, per slot) still applies on top, so the
  effective history is the smaller of the two.
- ``shoal.schedule.missed``: a scheduled time that the manager reached more than
  :data:`MISSED_AFTER_S` late (it was down, or the leader changed) is *missed*. ``run-once``
  (default): run once, however many were missed; ``skip``: wait for the next scheduled time.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

from shoal.controlapi.errors import invalid
from shoal.models import ServiceMode, ServiceSpec

SCHEDULE_LABEL = "shoal.schedule"
TIMEZONE_LABEL = "shoal.schedule.timezone"
CONCURRENCY_LABEL = "shoal.schedule.concurrency"
HISTORY_LABEL = "shoal.schedule.history"
MISSED_LABEL = "shoal.schedule.missed"
SCHEDULE_LABELS = (SCHEDULE_LABEL, TIMEZONE_LABEL, CONCURRENCY_LABEL, HISTORY_LABEL, MISSED_LABEL)

CONCURRENCY_POLICIES = ("allow", "forbid", "replace")
MISSED_POLICIES = ("run-once", "skip")
DEFAULT_CONCURRENCY = "forbid"
DEFAULT_HISTORY = 3
DEFAULT_MISSED = "run-once"
MAX_HISTORY = 1000
# A scheduled time reached later than this is "missed" (manager down, leader change, long stall);
# anything sooner is an on-time run that was merely a little late.
MISSED_AFTER_S = 60.0

_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_FIXED_HOUR_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight")
_UTC = ZoneInfo("UTC")


@dataclass(frozen=True)
class Schedule:
    """A parsed, valid schedule. Times are epoch seconds; zones only matter inside."""

    expr: str
    tz: ZoneInfo
    concurrency: str = DEFAULT_CONCURRENCY
    history: int = DEFAULT_HISTORY
    missed: str = DEFAULT_MISSED

    @property
    def _fixed_hour(self) -> bool:
        if self.expr.startswith("@"):
            return self.expr in _FIXED_HOUR_MACROS
        return "*" not in self.expr.split()[1]

    def next_after(self, ts: float) -> float:
        """The first scheduled time strictly after ``ts``."""
        it = croniter(self.expr, _dt.datetime.fromtimestamp(ts, self.tz))
        for _ in range(4):
            t: _dt.datetime = it.get_next(_dt.datetime)
            if not (self._fixed_hour and _second_occurrence(t)):
                return t.timestamp()
        return t.timestamp()  # pragma: no cover - a repeated hour cannot repeat four times

    def is_due_within(self, since: float, until: float) -> bool:
        """Whether a scheduled time falls in ``(since, until]``."""
        return self.next_after(since) <= until


def _second_occurrence(t: _dt.datetime) -> bool:
    """Whether ``t`` is the second of two equal wall-clock times (the repeated hour of a DST end)."""
    wall = t.replace(tzinfo=None)
    first = wall.replace(tzinfo=t.tzinfo, fold=0).utcoffset()
    second = wall.replace(tzinfo=t.tzinfo, fold=1).utcoffset()
    return first != second and t.utcoffset() == second


def parse_cron(expr: str) -> str:
    """A cron expression made canonical (single spaces), or ValueError saying what is wrong."""
    text = " ".join(expr.split())
    if not text:
        raise ValueError("empty cron expression")
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise ValueError(f"unknown cron macro {text!r} (expected one of {', '.join(_MACROS)})")
        return text.lower()
    fields = text.split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"cron expression {text!r} has {len(fields)} fields; expected 5 (minute hour day-of-month month "
            "day-of-week)"
        )
    try:
        croniter(text, _dt.datetime(2000, 1, 1, tzinfo=_UTC)).get_next(float)
    except (CroniterBadCronError, CroniterNotAlphaError, ValueError, KeyError) as e:
        raise ValueError(f"invalid cron expression {text!r}: {e}") from None
    except CroniterBadDateError:
        raise ValueError(f"cron expression {text!r} never fires") from None
    return text


def parse_timezone(name: str) -> ZoneInfo:
    if not name:
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as Europe/Paris)") from None


def _choice(labels: dict[str, str], key: str, choices: tuple[str, ...], default: str) -> str:
    value = labels.get(key, default)
    if value not in choices:
        raise ValueError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    return value


def parse_schedule(labels: dict[str, str] | None) -> Schedule | None:
    """The schedule these service labels describe; None without ``shoal.schedule``; ValueError if bad."""
    labels = labels or {}
    unknown = sorted(k for k in labels if k.startswith(SCHEDULE_LABEL + ".") and k not in SCHEDULE_LABELS)
    if unknown:
        raise ValueError(f"unknown schedule label {unknown[0]} (known: {', '.join(SCHEDULE_LABELS)})")
    if SCHEDULE_LABEL not in labels:
        stray = [k for k in SCHEDULE_LABELS if k in labels]
        if stray:
            raise ValueError(f"{stray[0]} needs a {SCHEDULE_LABEL} label")
        return None
    try:
        expr = parse_cron(labels[SCHEDULE_LABEL])
    except ValueError as e:
        raise ValueError(f"{SCHEDULE_LABEL}: {e}") from None
    try:
        tz = parse_timezone(labels.get(TIMEZONE_LABEL, ""))
    except ValueError as e:
        raise ValueError(f"{TIMEZONE_LABEL}: {e}") from None
    concurrency = _choice(labels, CONCURRENCY_LABEL, CONCURRENCY_POLICIES, DEFAULT_CONCURRENCY)
    missed = _choice(labels, MISSED_LABEL, MISSED_POLICIES, DEFAULT_MISSED)
    raw = labels.get(HISTORY_LABEL, str(DEFAULT_HISTORY))
    try:
        history = int(raw)
    except ValueError:
        raise ValueError(f"{HISTORY_LABEL}={raw!r}: expected a whole number") from None
    if not 0 <= history <= MAX_HISTORY:
        raise ValueError(f"{HISTORY_LABEL}={raw!r}: expected 0 to {MAX_HISTORY}")
    return Schedule(expr=expr, tz=tz, concurrency=concurrency, history=history, missed=missed)


def is_job_mode(mode: ServiceMode | None) -> bool:
    return mode is not None and mode.is_job


def check_schedule_labels(spec: ServiceSpec) -> None:
    """400 for a bad schedule, or a schedule on a service that is not a job (validate.py calls this
    with the normalised spec, before anything is written)."""
    try:
        sched = parse_schedule(spec.Labels)
    except ValueError as e:
        raise invalid(f"label {e}") from None
    if sched is not None and not is_job_mode(spec.Mode):
        raise invalid(f"label {SCHEDULE_LABEL} needs a job mode (replicated-job or global-job)")
