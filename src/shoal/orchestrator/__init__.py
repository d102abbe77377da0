"""Reconcilers that turn services into tasks: replicated, global, restarts, rolling updates, reaping."""

from shoal.orchestrator.global_ import GlobalOrchestrator
from shoal.orchestrator.reaper import TaskReaper
from shoal.orchestrator.replicated import ReplicatedOrchestrator
from shoal.orchestrator.restart import RestartSupervisor
from shoal.orchestrator.task import new_task
from shoal.orchestrator.update import Updater

__all__ = [
    "GlobalOrchestrator",
    "ReplicatedOrchestrator",
    "RestartSupervisor",
    "TaskReaper",
    "Updater",
    "new_task",
]
