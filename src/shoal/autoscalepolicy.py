"""A service's autoscaling policy, from its labels: Shoal's ``shoal.autoscale.*`` or Aliyun's
``aliyun.auto_scaling.*``. Parsed here, at the bottom, because three layers read it: the control
API refuses a bad policy (400), the orchestrator's autoscaler acts on it, the CLI writes it.

Shoal's labels (also written by ``shoal service autoscale`` and Compose's ``x-shoal-autoscale``):

- ``shoal.autoscale.min`` / ``.max``: the replica bounds (max required; min defaults to 1).
- ``shoal.autoscale.cpu-target``: percent of each task's CPU limit (its ``--limit-cpu``, else its
  node's CPUs) the service's average should stay at; above it for a window → scale out.
- ``shoal.autoscale.memory-target``: the same for memory, in percent of the memory limit.
- ``shoal.autoscale.step``: tasks added or removed at once (default 1).
- ``shoal.autoscale.window``: how long the average must stay past a threshold (default 30s).
- ``shoal.autoscale.cooldown``: after any scaling, how long before a scale-in (default 2m).

A target is one number: out when the average is above it; in when the same load spread over one
step fewer tasks would still stay under it (so a scale-in never causes the next scale-out).

Aliyun's labels (Container Service for Swarm): ``max_cpu`` / ``max_memory`` (out above), ``min_cpu``
/ ``min_memory`` (in below; when absent, the projected rule above), ``step``, ``max_instances``,
``min_instances`` (defaults 1 and 10 here). A service carries one family or the other, not both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shoal.duration import parse_go_duration

PREFIX = "shoal.autoscale."
MIN, MAX, CPU_TARGET, MEMORY_TARGET = PREFIX + "min", PREFIX + "max", PREFIX + "cpu-target", PREFIX + "memory-target"
STEP, WINDOW, COOLDOWN = PREFIX + "step", PREFIX + "window", PREFIX + "cooldown"
SHOAL_LABELS = (MIN, MAX, CPU_TARGET, MEMORY_TARGET, STEP, WINDOW, COOLDOWN)

ALIYUN_PREFIX = "aliyun.auto_scaling."
ALIYUN_KEYS = ("max_cpu", "min_cpu", "max_memory", "min_memory", "step", "max_instances", "min_instances")
ALIYUN_LABELS = tuple(ALIYUN_PREFIX + k for k in ALIYUN_KEYS)

DEFAULT_STEP = 1
DEFAULT_WINDOW_S = 30.0
DEFAULT_COOLDOWN_S = 120.0
ALIYUN_DEFAULT_MAX = 10
MAX_REPLICAS = 10_000  # a typo (100000) must not be able to place that many tasks


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    min_replicas: int
    max_replicas: int
    cpu_high: float | None = None  # % of limit: out above
    cpu_low: float | None = None  # % of limit: in below (None: the projected rule on cpu_high)
    mem_high: float | None = None
    mem_low: float | None = None
    step: int = DEFAULT_STEP
    window_s: float = DEFAULT_WINDOW_S
    cooldown_s: float = DEFAULT_COOLDOWN_S
    source: str = "shoal"  # which labels it came from: "shoal" or "aliyun"


def _int(labels: Mapping[str, str], key: str, default: int | None, lo: int = 0) -> int | None:
    raw = labels.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"label {key}={raw!r}: expected a whole number") from None
    if not lo <= value <= MAX_REPLICAS:
        raise ValueError(f"label {key}={raw!r}: expected {lo} to {MAX_REPLICAS}")
    return value


def _percent(labels: Mapping[str, str], key: str) -> float | None:
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


def _seconds(labels: Mapping[str, str], key: str, default: float) -> float:
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
    ours = [k for k in labels if k.startswith(PREFIX)]
    theirs = [k for k in labels if k.startswith(ALIYUN_PREFIX)]
    if not ours and not theirs:
        return None
    unknown = sorted(k for k in ours if k not in SHOAL_LABELS) + sorted(k for k in theirs if k not in ALIYUN_LABELS)
    if unknown:
        raise ValueError(f"unknown autoscaling label {unknown[0]} (known: "
                         f"{', '.join(SHOAL_LABELS if unknown[0] in ours else ALIYUN_LABELS)})")
    if ours and theirs:
        raise ValueError(f"a service takes {PREFIX}* or {ALIYUN_PREFIX}* labels, not both")
    if ours:
        policy = AutoscalePolicy(
            min_replicas=_int(labels, MIN, 1) or 0, max_replicas=_int(labels, MAX, None, lo=1) or 0,
            cpu_high=_percent(labels, CPU_TARGET), mem_high=_percent(labels, MEMORY_TARGET),
            step=_int(labels, STEP, DEFAULT_STEP, lo=1) or DEFAULT_STEP,
            window_s=_seconds(labels, WINDOW, DEFAULT_WINDOW_S),
            cooldown_s=_seconds(labels, COOLDOWN, DEFAULT_COOLDOWN_S),
        )
        if MAX not in labels:
            raise ValueError(f"label {MAX} is required with autoscaling (the most replicas it may run)")
        if policy.cpu_high is None and policy.mem_high is None:
            raise ValueError(f"autoscaling needs {CPU_TARGET} or {MEMORY_TARGET}")
    else:
        a = ALIYUN_PREFIX
        policy = AutoscalePolicy(
            min_replicas=_int(labels, a + "min_instances", 1) or 0,
            max_replicas=_int(labels, a + "max_instances", ALIYUN_DEFAULT_MAX, lo=1) or ALIYUN_DEFAULT_MAX,
            cpu_high=_percent(labels, a + "max_cpu"), cpu_low=_percent(labels, a + "min_cpu"),
            mem_high=_percent(labels, a + "max_memory"), mem_low=_percent(labels, a + "min_memory"),
            step=_int(labels, a + "step", DEFAULT_STEP, lo=1) or DEFAULT_STEP, source="aliyun",
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
