"""The worker: turns the dispatcher's assignment messages into task controllers.

Swarmkit's ``agent/worker.go``: a full set replaces what the node runs (tasks missing from it are
removed), a delta adds or updates tasks and removes the listed ones. On the agent's first full set it
also adopts the containers a previous agent left running, and removes the ones whose tasks no
longer exist here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from shoal.agent.executor.base import ContainerInfo, Executor
from shoal.agent.task import Reporter, TaskController
from shoal.dispatcher.protocol import Assignments
from shoal.models import Task

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, executor: Executor, reporter: Reporter, existing: list[ContainerInfo] | None = None) -> None:
        self.executor = executor
        self.reporter = reporter
        self.controllers: dict[str, TaskController] = {}
        # Containers found at start, by task ID; consumed by the first full assignment set.
        self._existing: dict[str, list[ContainerInfo]] | None = None
        if existing is not None:
            self._existing = {}
            for c in existing:
                self._existing.setdefault(c.task_id, []).append(c)
        self._background: set[asyncio.Task[None]] = set()

    def apply(self, msg: Assignments) -> None:
        """Apply one assignments message. Synchronous: controllers do the engine work themselves."""
        secrets = getattr(self.executor, "secrets", None)  # agent/secrets.py; the hollow executor has none
        if secrets is not None:
            secrets.update(msg)  # before any task starts: its container mounts them
        network = getattr(self.executor, "network", None)  # agent/network/; the hollow executor has none
        if network is not None:
            network.apply(msg.networks, msg.removed_networks, full=msg.full)  # creates wait for it
        adopting = msg.full and self._existing is not None
        if msg.full:
            keep = {t.ID for t in msg.tasks}
            volumes = getattr(self.executor, "volumes", None)  # agent/volumes.py (nas/ossfs mounts)
            if volumes is not None:
                self._spawn(volumes.sweep(keep))
            for tid, ctrl in list(self.controllers.items()):
                if tid not in keep:
                    ctrl.remove()
            if self._existing is not None:
                for tid, containers in self._existing.items():
                    if tid not in keep:
                        for c in containers:
                            log.info("removing container %s of task %s: not assigned here", c.id[:12], tid or "?")
                            self._spawn(self.executor.remove(c.id))
        for tid in msg.removed:
            ctrl = self.controllers.get(tid)
            if ctrl is not None:
                ctrl.remove()
        for task in msg.tasks:
            if task.Spec.NetworkAttachmentSpec is not None:
                continue  # a standalone container's place on a network (api/attach.py): plumbing only
            ctrl = self.controllers.get(task.ID)
            if ctrl is not None:
                ctrl.update(task)
            else:
                self._start(task, adopting)
        if adopting:
            self._existing = None

    def _start(self, task: Task, adopting: bool) -> None:
        adopted = None
        if adopting and self._existing is not None:
            containers = self._existing.get(task.ID) or []
            # Prefer a running one; any extra container for the same task is a leftover.
            containers.sort(key=lambda c: not c.running)
            if containers:
                adopted = containers[0]
                for extra in containers[1:]:
                    self._spawn(self.executor.remove(extra.id))
        self.controllers[task.ID] = TaskController(
            task, self.executor, self.reporter, adopted=adopted, adopting=adopting, on_done=self._done
        )

    def _done(self, ctrl: TaskController) -> None:
        if self.controllers.get(ctrl.task.ID) is ctrl:
            del self.controllers[ctrl.task.ID]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception as exc:  # a leftover we failed to clean is only logged
                log.warning("cleanup failed: %s", exc)

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def report_current(self) -> None:
        """Queue every task's current status again: after a new session the manager (restarted, or a
        new leader) has only what was durable, and status reports are acknowledged before that."""
        for ctrl in self.controllers.values():
            ctrl.report_again()

    def container_of(self, task: Task) -> str:
        ctrl = self.controllers.get(task.ID)
        if ctrl is not None and ctrl.container_id:
            return ctrl.container_id
        cs = task.Status.ContainerStatus
        return cs.ContainerID if cs is not None else ""

    async def close(self) -> None:
        """Stop driving tasks; containers keep running (a restarted agent adopts them)."""
        await asyncio.gather(*(c.cancel() for c in list(self.controllers.values())))
        self.controllers.clear()
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
