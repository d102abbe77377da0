"""A simulated engine for scale tests: containers are dictionary entries, not processes.

Kubemark's "hollow node" idea: a real agent (real session, real task controllers, real reports)
over an engine that only pretends. Thousands of them fit in one process, so a real manager can be
measured at 1,000 nodes on one machine. ``create`` returns at once, ``start`` takes
``start_delay_s`` (the engine's usual cost, so the manager sees a realistic STARTING → RUNNING
gap), and a container runs until it is stopped, removed, or ``crash``-ed by a test.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from shoal.agent.executor.base import ContainerInfo, ContainerNotFound, ExecutorError, ExitInfo
from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.models import SECOND, EngineDescription, NodeDescription, Platform, Resources, Task

HOLLOW_ENGINE_VERSION = "hollow"
_ids = itertools.count(1)


@dataclass(slots=True)
class HollowContainer:
    id: str
    task_id: str
    node_id: str
    state: str = "created"  # created → running → exited
    exit_code: int = 0
    exited: asyncio.Future[ExitInfo] | None = None

    def info(self) -> ContainerInfo:
        return ContainerInfo(id=self.id, task_id=self.task_id, state=self.state, pid=0, exit_code=self.exit_code)


@dataclass
class HollowExecutor:
    """An :class:`~shoal.agent.executor.base.Executor` whose containers exist only in memory."""

    hostname: str = "hollow-0"
    nano_cpus: int = 16 * SECOND
    memory_bytes: int = 64 << 30
    labels: dict[str, str] = field(default_factory=dict)
    start_delay_s: float = 0.5
    fail_images: frozenset[str] = frozenset()  # images whose create is rejected (as if missing)
    containers: dict[str, HollowContainer] = field(default_factory=dict)
    closed: bool = False

    # ------------------------------------------------------------------ engine and node

    async def start_events(self) -> None:
        return None  # exits are resolved directly by stop/remove/crash: no event stream to follow

    engine_always_up = True  # the agent's engine monitor probes once and stops (agent/engine.py)

    async def ping(self) -> None:
        return None  # a simulated engine is always there

    async def describe(self) -> NodeDescription:
        return NodeDescription(
            Hostname=self.hostname,
            Platform=Platform(OS="linux", Architecture="x86_64"),
            Resources=Resources(NanoCPUs=self.nano_cpus, MemoryBytes=self.memory_bytes),
            Engine=EngineDescription(EngineVersion=HOLLOW_ENGINE_VERSION, Labels=dict(self.labels) or None),
        )

    async def list_task_containers(self, node_id: str) -> list[ContainerInfo]:
        return [c.info() for c in self.containers.values() if c.node_id == node_id]

    # ------------------------------------------------------------------ containers

    async def create(self, task: Task) -> str:
        image = task.Spec.ContainerSpec.Image if task.Spec.ContainerSpec is not None else ""
        if image in self.fail_images:
            raise ExecutorError(f"No such image: {image}")
        cid = f"hollow{next(_ids):058x}"  # 64 hex-ish characters, like an engine's ID
        self.containers[cid] = HollowContainer(cid, task.ID, task.NodeID)
        return cid

    def _get(self, container_id: str) -> HollowContainer:
        c = self.containers.get(container_id)
        if c is None:
            raise ContainerNotFound(f"No such container: {container_id}")
        return c

    async def start(self, task: Task, container_id: str) -> ContainerInfo:
        c = self._get(container_id)
        if self.start_delay_s > 0:
            await asyncio.sleep(self.start_delay_s)
        if self.containers.get(container_id) is not c:
            raise ExecutorError(f"container {container_id} was removed while starting")
        c.state = "running"
        return c.info()

    async def wait_exit(self, container_id: str) -> ExitInfo:
        c = self._get(container_id)
        if c.state == "exited":
            return ExitInfo(c.exit_code)
        if c.exited is None:
            c.exited = asyncio.get_running_loop().create_future()
        return await asyncio.shield(c.exited)

    async def wait_health(self, container_id: str) -> bool:
        self._get(container_id)
        return True  # a hollow container is healthy as soon as it is asked

    async def inspect(self, container_id: str) -> ContainerInfo:
        return self._get(container_id).info()

    def crash(self, container_id: str, exit_code: int = 1) -> None:
        """Tests: the container's process exits on its own with ``exit_code``."""
        self._exit(self._get(container_id), exit_code)

    @staticmethod
    def _exit(c: HollowContainer, exit_code: int) -> None:
        if c.state == "exited":
            return
        c.state, c.exit_code = "exited", exit_code
        if c.exited is not None and not c.exited.done():
            c.exited.set_result(ExitInfo(exit_code))

    async def stop(self, container_id: str, grace_s: float, signal: str = "") -> None:
        c = self.containers.get(container_id)
        if c is not None and c.state == "running":
            self._exit(c, 0)  # a hollow process always honours SIGTERM at once
        elif c is not None:
            c.state = "exited" if c.state == "created" else c.state

    async def remove(self, container_id: str) -> None:
        c = self.containers.pop(container_id, None)
        if c is not None:
            self._exit(c, 137)

    async def remove_all(self, node_id: str) -> int:
        ids = [c.id for c in self.containers.values() if c.node_id == node_id]
        for cid in ids:
            await self.remove(cid)
        return len(ids)

    @property
    def running(self) -> int:
        return sum(1 for c in self.containers.values() if c.state == "running")

    async def task_logs(self, task: Task, container_id: str, options: LogOptions) -> AsyncIterator[LogMessage]:
        self._get(container_id)
        return
        yield  # an async generator that yields nothing: hollow containers print nothing

    async def close(self) -> None:
        self.closed = True
