"""Scheduler settings that Docker's API has no field for: swarm spec labels and service labels.

Cluster-wide (swarm spec labels): ``shoal.strategy`` (spread|binpack|random, default spread),
``shoal.cpu-overcommit`` and ``shoal.memory-overcommit`` (floats >= 1, default 1).
Per service (service labels, copied onto every task): ``shoal.strategy``, ``shoal.priority``.
The control API validates them; here a bad value falls back to the default rather than wedge
the scheduler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STRATEGY_LABEL = "shoal.strategy"
PRIORITY_LABEL = "shoal.priority"
CPU_OVERCOMMIT_LABEL = "shoal.cpu-overcommit"
MEMORY_OVERCOMMIT_LABEL = "shoal.memory-overcommit"
STRATEGIES = ("spread", "binpack", "random")


def parse_strategy(value: str) -> str:
    """Raise ValueError unless ``value`` names a strategy."""
    v = value.strip().lower()
    if v not in STRATEGIES:
        raise ValueError(f"invalid strategy '{value}': must be one of {', '.join(STRATEGIES)}")
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
class ClusterSettings:
    strategy: str = "spread"
    cpu_overcommit: float = 1.0
    memory_overcommit: float = 1.0

    @classmethod
    def from_labels(cls, labels: Mapping[str, str] | None) -> ClusterSettings:
        labels = labels or {}
        out = cls()
        try:
            out = dataclasses.replace(out, strategy=parse_strategy(labels.get(STRATEGY_LABEL, "spread")))
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


def task_strategy(labels: Mapping[str, str] | None, default: str) -> str:
    """The service's own strategy label if valid, else the cluster's."""
    v = (labels or {}).get(STRATEGY_LABEL)
    if v is None:
        return default
    try:
        return parse_strategy(v)
    except ValueError:
        return default


def task_priority(labels: Mapping[str, str] | None) -> int:
    v = (labels or {}).get(PRIORITY_LABEL)
    if v is None:
        return 0
    try:
        return parse_priority(v)
    except ValueError:
        return 0
