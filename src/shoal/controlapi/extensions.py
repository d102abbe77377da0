"""The 400s for a service's label extensions (shoal/extensions.py parses them), at create and update.

A typo in a label would otherwise be a check that silently never runs, a rolling update instead of a
blue-green release, or a job that never fires; so each is refused here, before anything is written,
with a message that names the label. The wording (and whether it is swarmkit's ``rpc error`` form)
is what each check has always said.
"""

from __future__ import annotations

from shoal.controlapi.errors import invalid
from shoal.errors import InvalidArgument
from shoal.extensions import (
    BLUE_GREEN,
    SCHEDULE_LABEL,
    UPDATE_STRATEGY_LABEL,
    parse_autoscale,
    parse_health_check,
    parse_log_stores,
    parse_schedule,
    parse_update_strategy,
)
from shoal.models import ServiceMode, ServiceSpec


def check_health_labels(spec: ServiceSpec) -> None:
    """400 for a malformed ``shoal.health.*`` label."""
    try:
        parse_health_check(spec.Labels)
    except ValueError as e:
        raise InvalidArgument(f"label {e}") from None


def check_update_strategy(spec: ServiceSpec, mode: ServiceMode) -> None:
    """400 for an unknown strategy, a blue-green service that is not replicated, or the reserved
    task label (on a service it would hide every task from traffic)."""
    try:
        strategy = parse_update_strategy(spec.Labels)
    except ValueError as e:
        raise InvalidArgument(f"label {e}") from None
    if strategy.name == BLUE_GREEN and mode.Replicated is None:
        raise InvalidArgument(f"label {UPDATE_STRATEGY_LABEL}: blue-green releases are for replicated services only")


def check_schedule_labels(spec: ServiceSpec) -> None:
    """400 for a bad schedule, or a schedule on a service that is not a job (validate.py calls this
    with the normalised spec)."""
    try:
        sched = parse_schedule(spec.Labels)
    except ValueError as e:
        raise invalid(f"label {e}") from None
    if sched is not None and not (spec.Mode is not None and spec.Mode.is_job):
        raise invalid(f"label {SCHEDULE_LABEL} needs a job mode (replicated-job or global-job)")


def check_autoscale_labels(spec: ServiceSpec, mode: ServiceMode) -> None:
    """400 for a bad autoscaling policy (shoal/extensions.py), or one on a service it cannot scale."""
    try:
        policy = parse_autoscale(spec.Labels)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    if policy is not None and mode.Replicated is None:
        raise InvalidArgument("autoscaling is for replicated services only (a global service runs one task per node)")


def check_log_store_labels(spec: ServiceSpec) -> None:
    """400 for a bad ``aliyun.log_store_<name>`` label, on the service or its containers (where
    Aliyun's Compose files put it): a store that silently collects nothing is worse than a refusal."""
    cs = spec.TaskTemplate.ContainerSpec
    try:
        parse_log_stores(spec.Labels, cs.Labels if cs is not None else None)
    except ValueError as e:
        raise InvalidArgument(f"label {e}") from None
