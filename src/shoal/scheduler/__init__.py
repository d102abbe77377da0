"""Assigns pending tasks to nodes: filter pipeline, strategies, preferences, preemption, batched writes."""

from shoal.scheduler.constraints import parse_constraints
from shoal.scheduler.expressions import parse_rules
from shoal.scheduler.filters import Filter, Pipeline, register_filter
from shoal.scheduler.plan import Placement, plan
from shoal.scheduler.scheduler import Scheduler

__all__ = [
    "Filter",
    "Pipeline",
    "Placement",
    "Scheduler",
    "parse_constraints",
    "parse_rules",
    "plan",
    "register_filter",
]
