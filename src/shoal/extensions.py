"""Shoal's label extensions: what a ``shoal.*`` label on a service (or on the swarm) means.

Docker's API has no word for a scheduling priority, an agent-run health check, a blue-green release
or a cron schedule, so Shoal carries them in labels: labels survive the docker CLI's read-modify-write
of a spec, and they reach the agent on every task without a protocol change. This module is the one
place that names those labels and turns them into typed values; every layer imports it (the control
API to refuse a bad one with a 400, the orchestrator, scheduler, dispatcher and agent to act on them,
Compose and the CLI to write them), so it sits at the bottom, beside models.py, and imports only the
standard library and bottom-level helpers (models, duration, cronexpr).

Each extension has its label constants, a frozen value and a strict ``parse_*`` function that raises
ValueError with a message fit for a 400 (the control API prefixes ``label ``); readers that must not
wedge on a spec stored before a check existed use the lenient forms (``task_priority``,
``ClusterSettings.from_labels``, the agent's ``task_check``). :func:`service_extensions` parses them
all at once.

- Scheduling (scheduler/): ``shoal.priority`` and ``shoal.strategy`` on a service;
  ``shoal.strategy``, ``shoal.cpu-overcommit``, ``shoal.memory-overcommit`` on the swarm spec.
- Health (agent/health.py runs it): ``shoal.health.*``, a Rancher 1.x style tcp/http check.
- Update strategy (orchestrator/bluegreen.py): ``shoal.update-strategy``, and ``shoal.bluegreen`` on
  standby tasks (reserved on services).
- Schedule (orchestrator/cron.py): ``shoal.schedule*``, a job-mode service run on a cron schedule.
- Autoscaling (orchestrator/autoscale.py): ``shoal.autoscale.*``, or Aliyun's ``aliyun.auto_scaling.*``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from shoal import cronexpr
from shoal.duration import parse_go_duration
from shoal.models import SECOND, Service, Task

Labels = Mapping[str, str] | None

# =========================================================================== scheduling
# Cluster-wide (swarm spec labels): the strategy and overcommit ratios (floats >= 1, default 1).
# Per service (service labels, copied onto every task): the strategy and the priority.

PLACEMENT_STRATEGY_LABEL = "shoal.strategy"
PRIORITY_LABEL = "shoal.priority"
CPU_OVERCOMMIT_LABEL = "shoal.cpu-overcommit"
MEMORY_OVERCOMMIT_LABEL = "shoal.memory-overcommit"
PLACEMENT_STRATEGIES = ("spread", "binpack", "random")
DEFAULT_PLACEMENT_STRATEGY = "spread"


def parse_placement_strategy(value: str) -> str:
    """Raise ValueError unless ``value`` names a strategy."""
    v = value.strip().lower()
    if v not in PLACEMENT_STRATEGIES:
        raise ValueError(f"invalid strategy '{value}': must be one of {', '.join(PLACEMENT_STRATEGIES)}")
    return v


def parse_overcommit(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise ValueError(f"invalid overcommit ratio '{value}': must be a number >= 1") from None
    if not f >= 1 or f == float("inf"):
        raise ValueError(f"invalid overcommit ratio '{value}': must be a number >= 1")
    return f


def parse_priority(value: str) -> int:
    try:
        p = int(value.strip())
    except ValueError:
        raise ValueError(f"invalid priority '{value}': must be an integer >= 0") from None
    if p < 0:
        raise ValueError(f"invalid priority '{value}': must be an integer >= 0")
    return p


@dataclass(frozen=True, slots=True)
class Scheduling:
    """A service's scheduling labels. ``strategy`` None: the cluster's."""

    priority: int = 0
    strategy: str | None = None


def parse_scheduling(labels: Labels) -> Scheduling:
    """A service's ``shoal.priority`` and ``shoal.strategy``, strictly (priority checked first)."""
    labels = labels or {}
    priority = parse_priority(labels[PRIORITY_LABEL]) if PRIORITY_LABEL in labels else 0
    strategy = labels.get(PLACEMENT_STRATEGY_LABEL)
    return Scheduling(priority, parse_placement_strategy(strategy) if strategy is not None else None)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The swarm spec's scheduling labels."""

    strategy: str = DEFAULT_PLACEMENT_STRATEGY
    cpu_overcommit: float = 1.0
    memory_overcommit: float = 1.0

    @classmethod
    def from_labels(cls, labels: Labels) -> ClusterSettings:
        """Leniently, for the scheduler: a bad value falls back to the default rather than wedge it (the
        control API refuses bad ones with :func:`parse_cluster_settings`)."""
        labels = labels or {}
        out = cls()
        try:
            out = dataclasses.replace(
                out, strategy=parse_placement_strategy(labels.get(PLACEMENT_STRATEGY_LABEL, DEFAULT_PLACEMENT_STRATEGY))
            )
        except ValueError:
            pass
        for key, attr in ((CPU_OVERCOMMIT_LABEL, "cpu_overcommit"), (MEMORY_OVERCOMMIT_LABEL, "memory_overcommit")):
            if key in labels:
                try:
                    out = dataclasses.replace(out, **{attr: parse_overcommit(labels[key])})
                except ValueError:
                    pass
        return out

    @classmethod
    def of_cluster(cls, cluster: Any | None) -> ClusterSettings:
        return cls.from_labels(cluster.Spec.Labels if cluster is not None else None)


def parse_cluster_settings(labels: Labels) -> ClusterSettings:
    """The swarm spec's scheduling labels, strictly (for swarm init/update)."""
    labels = labels or {}
    out = ClusterSettings()
    if PLACEMENT_STRATEGY_LABEL in labels:
        out = dataclasses.replace(out, strategy=parse_placement_strategy(labels[PLACEMENT_STRATEGY_LABEL]))
    if CPU_OVERCOMMIT_LABEL in labels:
        out = dataclasses.replace(out, cpu_overcommit=parse_overcommit(labels[CPU_OVERCOMMIT_LABEL]))
    if MEMORY_OVERCOMMIT_LABEL in labels:
        out = dataclasses.replace(out, memory_overcommit=parse_overcommit(labels[MEMORY_OVERCOMMIT_LABEL]))
    return out


def task_strategy(labels: Labels, default: str) -> str:
    """The service's own strategy label if valid, else the cluster's."""
    v = (labels or {}).get(PLACEMENT_STRATEGY_LABEL)
    if v is None:
        return default
    try:
        return parse_placement_strategy(v)
    except ValueError:
        return default


def task_priority(labels: Labels) -> int:
    """The service's priority if valid, else 0."""
    v = (labels or {}).get(PRIORITY_LABEL)
    if v is None:
        return 0
    try:
        return parse_priority(v)
    except ValueError:
        return 0


# =========================================================================== health
# Agent-run checks in Rancher 1.x's shape (agent/health.py probes and keeps the state): a TCP connect
# to a port, or an HTTP request line whose answer must be 2xx/3xx.

HEALTH_PREFIX = "shoal.health."
HEALTH_PORT_LABEL = HEALTH_PREFIX + "port"
HEALTH_REQUEST_LINE_LABEL = HEALTH_PREFIX + "request-line"
HEALTH_INTERVAL_LABEL = HEALTH_PREFIX + "interval"
HEALTH_RESPONSE_TIMEOUT_LABEL = HEALTH_PREFIX + "response-timeout"
HEALTH_HEALTHY_THRESHOLD_LABEL = HEALTH_PREFIX + "healthy-threshold"
HEALTH_UNHEALTHY_THRESHOLD_LABEL = HEALTH_PREFIX + "unhealthy-threshold"
HEALTH_INITIALIZING_TIMEOUT_LABEL = HEALTH_PREFIX + "initializing-timeout"
HEALTH_REINITIALIZING_TIMEOUT_LABEL = HEALTH_PREFIX + "reinitializing-timeout"
HEALTH_STRATEGY_LABEL = HEALTH_PREFIX + "strategy"
HEALTH_LABELS = (
    HEALTH_PORT_LABEL,
    HEALTH_REQUEST_LINE_LABEL,
    HEALTH_INTERVAL_LABEL,
    HEALTH_RESPONSE_TIMEOUT_LABEL,
    HEALTH_HEALTHY_THRESHOLD_LABEL,
    HEALTH_UNHEALTHY_THRESHOLD_LABEL,
    HEALTH_INITIALIZING_TIMEOUT_LABEL,
    HEALTH_REINITIALIZING_TIMEOUT_LABEL,
    HEALTH_STRATEGY_LABEL,
)
HEALTH_STRATEGIES = ("recreate", "none")
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT")


def parse_duration_s(value: str | int | float) -> float:
    """A Go duration (``2s``, ``1m30s``, ``500ms``) or, as rancher-compose.yml wrote them, a bare
    integer of milliseconds (``2000``) → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value) / 1000
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return int(text) / 1000
    try:
        return parse_go_duration(text) / SECOND
    except ValueError:
        raise ValueError(f"invalid duration {value!r}: use a Go duration (2s, 500ms) or milliseconds") from None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One service's agent-run check. Defaults are Rancher's UI defaults."""

    port: int
    request_line: str = ""  # empty: a TCP connect
    interval_s: float = 2.0
    response_timeout_s: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    initializing_timeout_s: float = 60.0
    reinitializing_timeout_s: float = 60.0
    strategy: str = "recreate"  # recreate: unhealthy fails the task; none: only reported

    @property
    def kind(self) -> str:
        return "http" if self.request_line else "tcp"


def _positive_int(key: str, value: str) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise ValueError(f"{key}={value!r}: must be a whole number") from None
    if n < 1:
        raise ValueError(f"{key}={value!r}: must be at least 1")
    return n


def _duration(key: str, value: str) -> float:
    try:
        s = parse_duration_s(value)
    except ValueError as e:
        raise ValueError(f"{key}={value!r}: {e}") from None
    if s <= 0:
        raise ValueError(f"{key}={value!r}: must be more than 0")
    return s


def check_request_line(line: str) -> None:
    """``METHOD /path [HTTP/1.x]``, as HAProxy's ``option httpchk`` takes it."""
    parts = line.split()
    if not (2 <= len(parts) <= 3) or parts[0].upper() not in _METHODS or not parts[1].startswith("/"):
        raise ValueError(f"{HEALTH_REQUEST_LINE_LABEL}={line!r}: expected 'METHOD /path [HTTP/1.0|HTTP/1.1]'")
    if len(parts) == 3 and parts[2].upper() not in ("HTTP/1.0", "HTTP/1.1"):
        raise ValueError(f"{HEALTH_REQUEST_LINE_LABEL}={line!r}: the version must be HTTP/1.0 or HTTP/1.1")


def parse_health_check(labels: Labels) -> HealthCheck | None:
    """The check the service's labels describe, or None when there are no ``shoal.health.*`` labels.
    Raises ValueError with a message fit for a 400 (the key, the value and what is expected)."""
    labels = labels or {}
    mine = {k: v for k, v in labels.items() if k.startswith(HEALTH_PREFIX)}
    if not mine:
        return None
    unknown = sorted(set(mine) - set(HEALTH_LABELS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown health check setting (known: {', '.join(HEALTH_LABELS)})")
    if HEALTH_PORT_LABEL not in mine:
        raise ValueError(f"{HEALTH_PORT_LABEL} is required with the other {HEALTH_PREFIX}* labels")
    port = _positive_int(HEALTH_PORT_LABEL, mine[HEALTH_PORT_LABEL])
    if port > 65535:
        raise ValueError(f"{HEALTH_PORT_LABEL}={mine[HEALTH_PORT_LABEL]!r}: must be a port number (1-65535)")
    kw: dict[str, Any] = {"port": port}
    line = mine.get(HEALTH_REQUEST_LINE_LABEL, "").strip()
    if line:
        check_request_line(line)
        kw["request_line"] = line
    for key, attr in (
        (HEALTH_INTERVAL_LABEL, "interval_s"),
        (HEALTH_RESPONSE_TIMEOUT_LABEL, "response_timeout_s"),
        (HEALTH_INITIALIZING_TIMEOUT_LABEL, "initializing_timeout_s"),
        (HEALTH_REINITIALIZING_TIMEOUT_LABEL, "reinitializing_timeout_s"),
    ):
        if key in mine:
            kw[attr] = _duration(key, mine[key])
    for key, attr in (
        (HEALTH_HEALTHY_THRESHOLD_LABEL, "healthy_threshold"),
        (HEALTH_UNHEALTHY_THRESHOLD_LABEL, "unhealthy_threshold"),
    ):
        if key in mine:
            kw[attr] = _positive_int(key, mine[key])
    if HEALTH_STRATEGY_LABEL in mine:
        raw = mine[HEALTH_STRATEGY_LABEL]
        strategy = raw.strip().lower()
        if strategy not in HEALTH_STRATEGIES:
            raise ValueError(f"{HEALTH_STRATEGY_LABEL}={raw!r}: must be one of {', '.join(HEALTH_STRATEGIES)}")
        kw["strategy"] = strategy
    return HealthCheck(**kw)


# =========================================================================== update strategy
# A replicated service labelled blue-green is released beside the old version, then switched at once
# (orchestrator/bluegreen.py). Its new tasks carry STANDBY_LABEL until the switch; the records
# (routing mesh, VIPs, DNS) leave them out. Why labels: the task is what reaches the agent, and a
# label needs no protocol change.

UPDATE_STRATEGY_LABEL = "shoal.update-strategy"
ROLLING = "rolling"
BLUE_GREEN = "blue-green"
UPDATE_STRATEGIES = (ROLLING, BLUE_GREEN)
STANDBY_LABEL = "shoal.bluegreen"  # on tasks only; reserved on services
STANDBY = "standby"


@dataclass(frozen=True, slots=True)
class UpdateStrategy:
    name: str = ROLLING

    @property
    def blue_green(self) -> bool:
        return self.name == BLUE_GREEN


def parse_update_strategy(labels: Labels) -> UpdateStrategy:
    """A service's update strategy (rolling when unlabelled). Whether the service's mode allows it is
    the control API's check (it needs the normalised mode)."""
    labels = labels or {}
    if STANDBY_LABEL in labels:  # on a service it would hide every task from traffic
        raise ValueError(f"{STANDBY_LABEL} is reserved for Shoal's blue-green releases")
    strategy = labels.get(UPDATE_STRATEGY_LABEL)
    if strategy is None:
        return UpdateStrategy()
    if strategy not in UPDATE_STRATEGIES:
        raise ValueError(
            f"{UPDATE_STRATEGY_LABEL}: unknown update strategy {strategy!r} (expected {' or '.join(UPDATE_STRATEGIES)})"
        )
    return UpdateStrategy(strategy)


def is_blue_green(service: Service) -> bool:
    labels = service.Spec.Labels
    return bool(labels) and labels.get(UPDATE_STRATEGY_LABEL) == BLUE_GREEN  # type: ignore[union-attr]


def is_standby(task: Task) -> bool:
    """A new-version task of a release in progress: running, but not to be sent traffic yet."""
    labels = task.Labels
    return bool(labels) and labels.get(STANDBY_LABEL) == STANDBY  # type: ignore[union-attr]


# =========================================================================== schedule
# A scheduled job is a job-mode service (replicated-job or global-job) carrying these labels; the
# cron scheduler (orchestrator/cron.py) starts a new job iteration at each scheduled time.
#
# - shoal.schedule: a cron expression (cronexpr.py: five fields or @hourly, @daily ...).
# - .timezone: an IANA zone name (Europe/Paris); UTC when absent.
# - .concurrency: what a due run does while the previous iteration still has tasks running.
#   forbid (default): skipped. replace: the running tasks are stopped and the new iteration starts.
#   allow: a Swarm job has one iteration at a time, so two runs cannot overlap; allow means "never
#   skip and never kill": the due run waits and starts when the previous iteration ends (at most one
#   waits; further due times meanwhile join it).
# - .history: how many finished iterations keep their tasks (default 3); the cluster's per-slot
#   TaskHistoryRetentionLimit still applies, so the smaller wins.
# - .missed: a scheduled time reached more than MISSED_AFTER_S late (manager down, leader change) is
#   missed. run-once (default): run once, however many were missed; skip: wait for the next one.

SCHEDULE_LABEL = "shoal.schedule"
SCHEDULE_TIMEZONE_LABEL = "shoal.schedule.timezone"
SCHEDULE_CONCURRENCY_LABEL = "shoal.schedule.concurrency"
SCHEDULE_HISTORY_LABEL = "shoal.schedule.history"
SCHEDULE_MISSED_LABEL = "shoal.schedule.missed"
SCHEDULE_LABELS = (
    SCHEDULE_LABEL,
    SCHEDULE_TIMEZONE_LABEL,
    SCHEDULE_CONCURRENCY_LABEL,
    SCHEDULE_HISTORY_LABEL,
    SCHEDULE_MISSED_LABEL,
)
CONCURRENCY_POLICIES = ("allow", "forbid", "replace")
MISSED_POLICIES = ("run-once", "skip")
DEFAULT_CONCURRENCY = "forbid"
DEFAULT_HISTORY = 3
DEFAULT_MISSED = "run-once"
MAX_HISTORY = 1000
# A scheduled time reached later than this is "missed" (manager down, leader change, long stall);
# anything sooner is an on-time run that was merely a little late.
MISSED_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed, valid schedule. Times are epoch seconds; zones only matter inside."""

    expr: str  # canonical (cronexpr.parse_cron)
    tz: ZoneInfo
    concurrency: str = DEFAULT_CONCURRENCY
    history: int = DEFAULT_HISTORY
    missed: str = DEFAULT_MISSED

    def next_after(self, ts: float) -> float:
        """The first scheduled time strictly after ``ts``."""
        return cronexpr.next_after(self.expr, self.tz, ts)

    def is_due_within(self, since: float, until: float) -> bool:
        """Whether a scheduled time falls in ``(since, until]``."""
        return self.next_after(since) <= until


def _choice(labels: Mapping[str, str], key: str, choices: tuple[str, ...], default: str) -> str:
    value = labels.get(key, default)
    if value not in choices:
        raise ValueError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    return value


def parse_schedule(labels: Labels) -> Schedule | None:
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
        expr = cronexpr.parse_cron(labels[SCHEDULE_LABEL])
    except ValueError as e:
        raise ValueError(f"{SCHEDULE_LABEL}: {e}") from None
    try:
        tz = cronexpr.parse_timezone(labels.get(SCHEDULE_TIMEZONE_LABEL, ""))
    except ValueError as e:
        raise ValueError(f"{SCHEDULE_TIMEZONE_LABEL}: {e}") from None
    concurrency = _choice(labels, SCHEDULE_CONCURRENCY_LABEL, CONCURRENCY_POLICIES, DEFAULT_CONCURRENCY)
    missed = _choice(labels, SCHEDULE_MISSED_LABEL, MISSED_POLICIES, DEFAULT_MISSED)
    raw = labels.get(SCHEDULE_HISTORY_LABEL, str(DEFAULT_HISTORY))
    try:
        history = int(raw)
    except ValueError:
        raise ValueError(f"{SCHEDULE_HISTORY_LABEL}={raw!r}: expected a whole number") from None
    if not 0 <= history <= MAX_HISTORY:
        raise ValueError(f"{SCHEDULE_HISTORY_LABEL}={raw!r}: expected 0 to {MAX_HISTORY}")
    return Schedule(expr=expr, tz=tz, concurrency=concurrency, history=history, missed=missed)


# =========================================================================== autoscaling
# A service's autoscaling policy, from its labels: Shoal's ``shoal.autoscale.*`` or Aliyun's
# ``aliyun.auto_scaling.*``. Parsed here, at the bottom, because three layers read it: the control
# API refuses a bad policy (400), the orchestrator's autoscaler acts on it, the CLI writes it.
#
# Shoal's labels (also written by ``shoal service autoscale`` and Compose's ``x-shoal-autoscale``):
#
# - ``shoal.autoscale.min`` / ``.max``: the replica bounds (max required; min defaults to 1).
# - ``shoal.autoscale.cpu-target``: percent of each task's CPU limit (its ``--limit-cpu``, else its
#   node's CPUs) the service's average should stay at; above it for a window → scale out.
# - ``shoal.autoscale.memory-target``: the same for memory, in percent of the memory limit.
# - ``shoal.autoscale.step``: tasks added or removed at once (default 1).
# - ``shoal.autoscale.window``: how long the average must stay past a threshold (default 30s).
# - ``shoal.autoscale.cooldown``: after any scaling, how long before a scale-in (default 2m).
#
# A target is one number: out when the average is above it; in when the same load spread over one
# step fewer tasks would still stay under it (so a scale-in never causes the next scale-out).
#
# Aliyun's labels (Container Service for Swarm): ``max_cpu`` / ``max_memory`` (out above), ``min_cpu``
# / ``min_memory`` (in below; when absent, the projected rule above), ``step``, ``max_instances``,
# ``min_instances`` (defaults 1 and 10 here). A service carries one family or the other, not both.

AUTOSCALE_PREFIX = "shoal.autoscale."
AUTOSCALE_MIN_LABEL = AUTOSCALE_PREFIX + "min"
AUTOSCALE_MAX_LABEL = AUTOSCALE_PREFIX + "max"
AUTOSCALE_CPU_TARGET_LABEL = AUTOSCALE_PREFIX + "cpu-target"
AUTOSCALE_MEMORY_TARGET_LABEL = AUTOSCALE_PREFIX + "memory-target"
AUTOSCALE_STEP_LABEL = AUTOSCALE_PREFIX + "step"
AUTOSCALE_WINDOW_LABEL = AUTOSCALE_PREFIX + "window"
AUTOSCALE_COOLDOWN_LABEL = AUTOSCALE_PREFIX + "cooldown"
AUTOSCALE_LABELS = (AUTOSCALE_MIN_LABEL, AUTOSCALE_MAX_LABEL, AUTOSCALE_CPU_TARGET_LABEL, AUTOSCALE_MEMORY_TARGET_LABEL,
                    AUTOSCALE_STEP_LABEL, AUTOSCALE_WINDOW_LABEL, AUTOSCALE_COOLDOWN_LABEL)

ALIYUN_AUTOSCALE_PREFIX = "aliyun.auto_scaling."
ALIYUN_AUTOSCALE_KEYS = ("max_cpu", "min_cpu", "max_memory", "min_memory", "step", "max_instances", "min_instances")
ALIYUN_AUTOSCALE_LABELS = tuple(ALIYUN_AUTOSCALE_PREFIX + k for k in ALIYUN_AUTOSCALE_KEYS)

AUTOSCALE_DEFAULT_STEP = 1
AUTOSCALE_DEFAULT_WINDOW_S = 30.0
AUTOSCALE_DEFAULT_COOLDOWN_S = 120.0
ALIYUN_AUTOSCALE_DEFAULT_MAX = 10
AUTOSCALE_MAX_REPLICAS = 10_000  # a typo (100000) must not be able to place that many tasks


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    min_replicas: int
    max_replicas: int
    cpu_high: float | None = None  # % of limit: out above
    cpu_low: float | None = None  # % of limit: in below (None: the projected rule on cpu_high)
    mem_high: float | None = None
    mem_low: float | None = None
    step: int = AUTOSCALE_DEFAULT_STEP
    window_s: float = AUTOSCALE_DEFAULT_WINDOW_S
    cooldown_s: float = AUTOSCALE_DEFAULT_COOLDOWN_S
    source: str = "shoal"  # which labels it came from: "shoal" or "aliyun"


def _autoscale_int(labels: Mapping[str, str], key: str, default: int | None, lo: int = 0) -> int | None:
    raw = labels.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"label {key}={raw!r}: expected a whole number") from None
    if not lo <= value <= AUTOSCALE_MAX_REPLICAS:
        raise ValueError(f"label {key}={raw!r}: expected {lo} to {AUTOSCALE_MAX_REPLICAS}")
    return value


def _autoscale_percent(labels: Mapping[str, str], key: str) -> float | None:
    raw = labels.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = float(str(raw).strip().rstrip("%"))
    except ValueError:
        raise ValueError(f"label {key}={raw!r}: expected a percentage such as 70") from None
    if not 0 < value <= 1000:  # a target over 100 % makes sense for tasks allowed several CPUs
        raise ValueError(f"label {key}={raw!r}: expected a percentage above 0 and at most 1000")
    return value


def _autoscale_seconds(labels: Mapping[str, str], key: str, default: float) -> float:
    raw = labels.get(key)
    if raw is None or raw == "":
        return default
    try:
        ns = parse_go_duration(str(raw).strip())
    except ValueError:
        raise ValueError(f"label {key}={raw!r}: expected a duration such as 30s or 2m") from None
    if ns <= 0:
        raise ValueError(f"label {key}={raw!r}: expected a duration above 0")
    return ns / 1e9


def parse_autoscale(labels: Mapping[str, str] | None) -> AutoscalePolicy | None:
    """The policy these service labels describe; None without one; ValueError if bad."""
    labels = labels or {}
    ours = [k for k in labels if k.startswith(AUTOSCALE_PREFIX)]
    theirs = [k for k in labels if k.startswith(ALIYUN_AUTOSCALE_PREFIX)]
    if not ours and not theirs:
        return None
    unknown = (sorted(k for k in ours if k not in AUTOSCALE_LABELS)
               + sorted(k for k in theirs if k not in ALIYUN_AUTOSCALE_LABELS))
    if unknown:
        raise ValueError(f"unknown autoscaling label {unknown[0]} (known: "
                         f"{', '.join(AUTOSCALE_LABELS if unknown[0] in ours else ALIYUN_AUTOSCALE_LABELS)})")
    if ours and theirs:
        raise ValueError(f"a service takes {AUTOSCALE_PREFIX}* or {ALIYUN_AUTOSCALE_PREFIX}* labels, not both")
    step = _autoscale_int(labels, AUTOSCALE_STEP_LABEL if ours else ALIYUN_AUTOSCALE_PREFIX + "step",
                          AUTOSCALE_DEFAULT_STEP, lo=1) or AUTOSCALE_DEFAULT_STEP
    if ours:
        policy = AutoscalePolicy(
            min_replicas=_autoscale_int(labels, AUTOSCALE_MIN_LABEL, 1) or 0,
            max_replicas=_autoscale_int(labels, AUTOSCALE_MAX_LABEL, None, lo=1) or 0,
            cpu_high=_autoscale_percent(labels, AUTOSCALE_CPU_TARGET_LABEL),
            mem_high=_autoscale_percent(labels, AUTOSCALE_MEMORY_TARGET_LABEL),
            step=step,
            window_s=_autoscale_seconds(labels, AUTOSCALE_WINDOW_LABEL, AUTOSCALE_DEFAULT_WINDOW_S),
            cooldown_s=_autoscale_seconds(labels, AUTOSCALE_COOLDOWN_LABEL, AUTOSCALE_DEFAULT_COOLDOWN_S),
        )
        if AUTOSCALE_MAX_LABEL not in labels:
            raise ValueError(f"label {AUTOSCALE_MAX_LABEL} is required with autoscaling "
                             "(the most replicas it may run)")
        if policy.cpu_high is None and policy.mem_high is None:
            raise ValueError(f"autoscaling needs {AUTOSCALE_CPU_TARGET_LABEL} or {AUTOSCALE_MEMORY_TARGET_LABEL}")
    else:
        a = ALIYUN_AUTOSCALE_PREFIX
        policy = AutoscalePolicy(
            min_replicas=_autoscale_int(labels, a + "min_instances", 1) or 0,
            max_replicas=(_autoscale_int(labels, a + "max_instances", ALIYUN_AUTOSCALE_DEFAULT_MAX, lo=1)
                          or ALIYUN_AUTOSCALE_DEFAULT_MAX),
            cpu_high=_autoscale_percent(labels, a + "max_cpu"), cpu_low=_autoscale_percent(labels, a + "min_cpu"),
            mem_high=_autoscale_percent(labels, a + "max_memory"), mem_low=_autoscale_percent(labels, a + "min_memory"),
            step=step, source="aliyun",
        )
        if policy.cpu_high is None and policy.mem_high is None:
            raise ValueError(f"autoscaling needs {a}max_cpu or {a}max_memory")
        for low, high, what in ((policy.cpu_low, policy.cpu_high, "cpu"), (policy.mem_low, policy.mem_high, "memory")):
            if low is not None and high is not None and low >= high:
                raise ValueError(f"label {a}min_{what}={low:g} must be below {a}max_{what}={high:g}")
    if policy.min_replicas > policy.max_replicas:
        raise ValueError(f"autoscaling: the minimum ({policy.min_replicas}) is above the maximum "
                         f"({policy.max_replicas})")
    return policy


# =========================================================================== all at once


@dataclass(frozen=True, slots=True)
class ServiceExtensions:
    """Every extension a service's labels carry."""

    scheduling: Scheduling
    health: HealthCheck | None
    update: UpdateStrategy
    schedule: Schedule | None
    autoscale: AutoscalePolicy | None


def service_extensions(labels: Labels) -> ServiceExtensions:
    """Parse every extension of a service's labels, strictly: the first bad label raises ValueError (in
    the order the control API checks them). Checks that need more than the labels (a blue-green or
    scheduled service's mode) are the control API's."""
    return ServiceExtensions(
        scheduling=parse_scheduling(labels),
        health=parse_health_check(labels),
        update=parse_update_strategy(labels),
        schedule=parse_schedule(labels),
        autoscale=parse_autoscale(labels),
    )


# =========================================================================== log stores

# Aliyun's ``aliyun.log_store_<name>: stdout`` (the container's output) or ``...: /var/log/app/*.log``
# (files inside the container, a glob): the node's agent collects that stream and ships it to the
# leader (agent/logship.py), which writes it to its sinks (logstore/). Aliyun's files put them among
# a service's container labels (Compose ``labels:``); service labels (``--label``) are read too.
LOG_STORE_PREFIX = "aliyun.log_store_"
LOG_STORE_STDOUT = "stdout"
LOG_STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
LOG_STORE_MAX = 16  # stores per service: each file glob is a tailer on every node running a task


def parse_log_stores(*label_sets: Labels) -> dict[str, str]:
    """Store name → ``stdout`` or an absolute glob inside the container, from the labels given
    (later sets win); ValueError naming the label when one is bad."""
    out: dict[str, str] = {}
    for labels in label_sets:
        for key, value in (labels or {}).items():
            if not key.startswith(LOG_STORE_PREFIX):
                continue
            name, source = key[len(LOG_STORE_PREFIX):], str(value).strip()
            if not LOG_STORE_NAME.fullmatch(name):
                raise ValueError(f"{key}: the store name must be 1-63 letters, digits, '_', '.' or '-'")
            if source != LOG_STORE_STDOUT and not source.startswith("/"):
                raise ValueError(f"{key}: must be 'stdout' or an absolute path (a glob) inside the "
                                 f"container, not {source!r}")
            if "\x00" in source or "/../" in source + "/":
                raise ValueError(f"{key}: the path may not contain '..' or NUL")
            out[name] = source
    if len(out) > LOG_STORE_MAX:
        raise ValueError(f"{LOG_STORE_PREFIX}*: at most {LOG_STORE_MAX} log stores per service, not {len(out)}")
    return out


def task_log_stores(task: Task) -> dict[str, str]:
    """The log stores of a task's service, leniently (a label stored before the check: skipped)."""
    ann = task.ServiceAnnotations or {}
    cs = task.Spec.ContainerSpec
    try:
        return parse_log_stores(ann.get("Labels"), cs.Labels if cs is not None else None)
    except ValueError:
        return {}
