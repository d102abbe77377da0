"""What an agent needs from a container runtime, so the Docker executor and the hollow (simulated)
executor for scale tests are interchangeable.

Modelled on swarmkit's ``agent/exec`` interfaces, flattened: the agent's task controller holds the
state machine, the executor only does engine operations, one call each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.models import NodeDescription, PortConfig, Task

# Labels on every container a task runs in (see the lifecycle contract in the project brief).
LABEL_TASK_ID = "shoal.task.id"
LABEL_SERVICE_ID = "shoal.service.id"
LABEL_SERVICE_NAME = "shoal.service.name"
LABEL_NODE_ID = "shoal.node.id"
LABEL_SLOT = "shoal.task.slot"


class ExecutorError(Exception):
    """An engine operation failed; ``str(err)`` is what the task's Status.Err shows."""


class EngineUnavailable(ExecutorError):
    """The engine does not answer at all (stopped, socket gone, stuck). ``timed_out``: it may only
    be slow (a connection that was refused is certain)."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.timed_out = timed_out


class ImageNotFound(ExecutorError):
    pass


class ContainerNotFound(ExecutorError):
    pass


@dataclass(slots=True)
class ContainerInfo:
    """A task's container as the engine reports it (list, inspect, or after start)."""

    id: str
    task_id: str = ""
    state: str = ""  # created, running, exited, dead ...
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    ports: list[PortConfig] = field(default_factory=list)  # host-published, actual host ports
    ip: str = ""  # address on its (first) network (the agent-run health checks connect to it)

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting", "paused")


@dataclass(slots=True)
class ExitInfo:
    exit_code: int
    error: str = ""
    oom_killed: bool = False


class Executor(Protocol):
    async def start_events(self) -> None:
        """Begin watching the engine (before listing or starting containers, so no exit is missed)."""
        ...

    async def describe(self) -> NodeDescription: ...

    async def ping(self) -> None:
        """Raises if the engine does not answer (the agent's health probe, agent/engine.py)."""
        ...

    async def list_task_containers(self, node_id: str) -> list[ContainerInfo]:
        """Every container (running or not) labelled as belonging to ``node_id``."""
        ...

    async def create(self, task: Task) -> str:
        """Create the task's container (pulling the image if it is missing); returns its ID.
        Raises :class:`ImageNotFound` or :class:`ExecutorError` (the task is rejected)."""
        ...

    async def start(self, task: Task, container_id: str) -> ContainerInfo:
        """Start it; the result carries published ports and the IP when the task publishes any."""
        ...

    async def wait_exit(self, container_id: str) -> ExitInfo:
        """Until the container stops running."""
        ...

    async def wait_health(self, container_id: str) -> bool:
        """Until the next health verdict: True healthy, False unhealthy."""
        ...

    async def inspect(self, container_id: str) -> ContainerInfo:
        """Raises :class:`ContainerNotFound`."""
        ...

    async def stop(self, container_id: str, grace_s: float, signal: str = "") -> None: ...

    async def remove(self, container_id: str) -> None:
        """Force-remove with anonymous volumes; a missing container is not an error."""
        ...

    async def remove_all(self, node_id: str) -> int:
        """Remove every container of the node (``swarm leave``)."""
        ...

    def task_logs(self, task: Task, container_id: str, options: LogOptions) -> AsyncIterator[LogMessage]: ...

    async def close(self) -> None: ...


def service_name(task: Task) -> str:
    ann = task.ServiceAnnotations or {}
    return str(ann.get("Name") or task.ServiceID)


def container_name(task: Task) -> str:
    """``<service>.<slot>.<taskid>``; global tasks (slot 0) use the node ID, as Swarm does."""
    return f"{service_name(task)}.{task.Slot or task.NodeID}.{task.ID}"


def task_labels(task: Task) -> dict[str, str]:
    """The container's labels: the spec's own, then ours (ours win, so adoption can trust them)."""
    spec = task.Spec.ContainerSpec
    labels = dict(spec.Labels or {}) if spec is not None else {}
    labels.update(
        {
            LABEL_TASK_ID: task.ID,
            LABEL_SERVICE_ID: task.ServiceID,
            LABEL_SERVICE_NAME: service_name(task),
            LABEL_NODE_ID: task.NodeID,
            LABEL_SLOT: str(task.Slot),
            "com.docker.swarm.task": "",
            "com.docker.swarm.task.id": task.ID,
            "com.docker.swarm.task.name": container_name(task),
            "com.docker.swarm.service.id": task.ServiceID,
            "com.docker.swarm.service.name": service_name(task),
            "com.docker.swarm.node.id": task.NodeID,
        }
    )
    return labels


def task_ports(task: Task, mode: str) -> list[PortConfig]:
    """The task's endpoint ports with PublishMode ``mode`` ("host" or "ingress"). The allocated
    ``Endpoint.Ports`` win over the spec's (the allocator fills ingress PublishedPorts in)."""
    ep = task.Endpoint
    if ep is None:
        return []
    ports = ep.Ports if ep.Ports is not None else (ep.Spec.Ports if ep.Spec is not None else None)
    return [p for p in ports or [] if p.PublishMode == mode]
