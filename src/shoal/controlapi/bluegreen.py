"""Validation of the update-strategy label (``shoal.update-strategy``), at create and update time.

Docker's API has no word for a blue-green release, so the strategy rides on a service label, which
also survives the docker CLI's read-modify-write of a spec. A bad value would otherwise be a silent
rolling update, so it is a 400 here, before anything is written.
"""

from __future__ import annotations

from shoal.errors import InvalidArgument
from shoal.models import ServiceMode, ServiceSpec
from shoal.orchestrator.bluegreen import BLUE_GREEN, STANDBY_LABEL, STRATEGIES, STRATEGY_LABEL


def check_update_strategy(spec: ServiceSpec, mode: ServiceMode) -> None:
    """400 for an unknown strategy, a blue-green service that is not replicated, or the reserved
    task label (on a service it would hide every task from traffic)."""
    labels = spec.Labels or {}
    if STANDBY_LABEL in labels:
        raise InvalidArgument(f"label {STANDBY_LABEL} is reserved for Shoal's blue-green releases")
    strategy = labels.get(STRATEGY_LABEL)
    if strategy is None:
        return
    if strategy not in STRATEGIES:
        raise InvalidArgument(
            f"label {STRATEGY_LABEL}: unknown update strategy {strategy!r} (expected {' or '.join(STRATEGIES)})"
        )
    if strategy == BLUE_GREEN and (mode.Replicated is None):
        raise InvalidArgument(f"label {STRATEGY_LABEL}: blue-green releases are for replicated services only")
