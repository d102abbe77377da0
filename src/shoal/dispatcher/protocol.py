"""The agent protocol: what a node's agent and the leader's dispatcher say to each other.

Swarmkit's dispatcher calls, reduced to four: register, heartbeat, a stream of assignments, and
batched task status updates, plus a log stream the manager asks of an agent. Messages are msgspec
structs so that one transport runs them in-process (a single-host daemon) and another carries them
over gRPC with mutual TLS between hosts, without either side changing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec

from shoal.models import Config, Network, NodeDescription, Secret, Task, TaskStatus


class EngineHealth(msgspec.Struct):
    """Whether the node's container engine answers, as the agent last saw it. ``reason`` says why
    not, in a few words ("cannot connect to unix:///var/run/docker.sock"). Sent with register and
    every heartbeat; a message without it (an older agent) leaves the node's state as it is."""

    up: bool = True
    reason: str = ""


class TaskStats(msgspec.Struct, frozen=True):
    """One sample of a running task's container, as its agent read it from the engine.

    ``cpu_percent`` is Docker's (``docker stats``): 100 is one CPU fully used. ``cpu_limit_percent``
    is the same usage over the container's CPU limit (its NanoCPUs, else the node's CPUs), the
    figure an autoscaling target compares with. Counters (network, CPU time) are cumulative; ``at``
    is the agent's wall clock (Unix seconds) when it read them."""

    task_id: str
    service_id: str
    node_id: str
    at: float
    cpu_percent: float = 0.0
    cpu_limit_percent: float = 0.0
    cpu_total_ns: int = 0
    mem_bytes: int = 0
    mem_limit_bytes: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    pids: int = 0
    service_name: str = ""
    slot: int = 0
    container_id: str = ""


class SessionInfo(msgspec.Struct):
    node_id: str
    session_id: str
    heartbeat_period_s: float
    # Every manager's cluster address, the leader's first: where an agent goes when its manager
    # stops answering (swarmkit's session message carries the same list).
    managers: list[str] = msgspec.field(default_factory=list)


class TaskStatusUpdate(msgspec.Struct):
    task_id: str
    status: TaskStatus


class PublishedPort(msgspec.Struct, frozen=True):
    """A port a service publishes in ingress mode: answered on every node (the routing mesh)."""

    protocol: str  # "tcp" | "udp"
    port: int  # the published port
    target_port: int


class ServiceRecord(msgspec.Struct):
    """What one service answers to on one network: its name and aliases, and the addresses of the
    tasks that take traffic (bare IPs: running, healthy if checked, not being stopped, not a
    blue-green standby, on a node that is up). ``vip`` is the service's virtual IP there, if it has
    one (endpoint mode vip): the name resolves to it and the node balances it over ``addrs``.
    ``ports`` is set on the ingress network only: the service's ingress-published ports."""

    service_id: str
    name: str
    aliases: list[str] = msgspec.field(default_factory=list)
    addrs: list[str] = msgspec.field(default_factory=list)
    # Task name (``<service>.<slot>.<task id>``) → address, for ``tasks.<service>`` style lookups.
    tasks: dict[str, str] = msgspec.field(default_factory=dict)
    vip: str = ""
    ports: list[PublishedPort] = msgspec.field(default_factory=list)


class NetworkState(msgspec.Struct):
    """Everything a node needs to plumb one overlay network: the network as allocated, this node's
    own address on it (CIDR, for its bridge end), the underlay addresses of the other nodes that have
    tasks on it (VXLAN peers), and the service records its DNS responder serves. Always whole."""

    network: Network
    node_address: str
    peers: list[str] = msgspec.field(default_factory=list)
    records: list[ServiceRecord] = msgspec.field(default_factory=list)


class Assignments(msgspec.Struct):
    """``full``: ``tasks`` is the node's whole set (first message of a session); otherwise a delta.

    ``networks`` carries the whole current state of each network that changed for this node (all of
    them when ``full``); ``removed_networks`` the IDs the node has no more tasks on. ``secrets`` and
    ``configs`` are those referenced by the tasks in this message, with their data, so an agent
    always holds what a task mounts before it starts it.
    """

    full: bool
    tasks: list[Task]
    removed: list[str] = msgspec.field(default_factory=list)
    networks: list[NetworkState] = msgspec.field(default_factory=list)
    removed_networks: list[str] = msgspec.field(default_factory=list)
    secrets: list[Secret] = msgspec.field(default_factory=list)
    configs: list[Config] = msgspec.field(default_factory=list)


class LogOptions(msgspec.Struct):
    follow: bool = False
    tail: int = -1  # -1: all lines
    since: float = 0.0  # seconds since the epoch; 0: from the start
    timestamps: bool = False
    stdout: bool = True
    stderr: bool = True


class LogMessage(msgspec.Struct):
    task_id: str
    service_id: str
    node_id: str
    stream: int  # 1 stdout, 2 stderr
    timestamp: str  # RFC 3339, as the engine gave it
    data: bytes  # one line, newline included


class LogRecord(msgspec.Struct, frozen=True, gc=False):
    """One collected log line (``aliyun.log_store_<name>``): what the agent read, where from.

    ``source`` is ``stdout``/``stderr`` or the file's path inside the container; ``time`` is the
    engine's timestamp of the line (stdout) or when the agent read it (files), Unix seconds."""

    time: float
    service_id: str
    service: str  # the service's name when the task was made
    task_id: str
    node_id: str
    store: str
    source: str
    line: str  # without its newline; cut at the agent's line limit


class DispatcherClient(Protocol):
    """What an agent calls. The in-process transport and the gRPC one both implement it."""

    async def register(
        self, node_id: str | None, description: NodeDescription, addr: str, engine: EngineHealth | None = None
    ) -> SessionInfo:
        """``engine`` down: the node registers but takes no tasks (``description`` may then be a
        placeholder; the manager keeps the one it has)."""
        ...

    async def heartbeat(self, session_id: str, engine: EngineHealth | None = None) -> float:
        """Returns the heartbeat period (seconds) the manager wants next."""
        ...

    def assignments(self, session_id: str) -> AsyncIterator[Assignments]: ...

    async def update_task_status(self, session_id: str, updates: list[TaskStatusUpdate]) -> None: ...

    async def report_stats(self, session_id: str, stats: list[TaskStats]) -> None:
        """The latest usage sample of the node's running tasks (agent/stats.py); best effort."""
        ...

    async def ship_logs(self, session_id: str, records: list[LogRecord]) -> None:
        """Collected log lines of the node's tasks (agent/logship.py), for the leader's sinks."""
        ...


class LogSource(Protocol):
    """What the manager asks an agent for when a client wants a service's logs."""

    def task_logs(self, tasks: list[Task], options: LogOptions) -> AsyncIterator[LogMessage]: ...
