"""Assigns pending tasks to nodes: filter pipeline, spread strategy, batched writes."""

from shoal.scheduler.constraints import parse_constraints
from shoal.scheduler.filters import Filter, Pipeline, register_filter
from shoal.scheduler.scheduler import Scheduler

__all__ = ["Filter", "Pipeline", "Scheduler", "parse_constraints", "register_filter"]
