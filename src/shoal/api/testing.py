"""A stand-in for :class:`shoal.manager.Manager` for API tests, plus helpers that play the orchestrator.

It keeps the real store (so every rule under test runs against real indexes) and fakes only what
needs a running cluster: swarm init/leave and the agents' log streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from shoal.ca.tokens import generate_join_token
from shoal.controlapi.networks import create_network, ingress_spec
from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.errors import Conflict, NotInSwarm, Unavailable
from shoal.ids import new_id
from shoal.models import (
    Cluster,
    ContainerStatus,
    InitRequest,
    JoinRequest,
    JoinTokens,
    ManagerStatus,
    Node,
    NodeDescription,
    NodeRole,
    NodeSpec,
    NodeState,
    NodeStatus,
    OrchestrationConfig,
    Service,
    SwarmSpec,
    Task,
    TaskState,
    TaskStatus,
    TLSInfo,
    Version,
    now_ts,
)
from shoal.store import MemoryStore, NullBackend
from shoal.store.autolock import NOT_LOCKED

FAKE_CA_PEM = "-----BEGIN CERTIFICATE-----\nZmFrZQ==\n-----END CERTIFICATE-----\n"


class FakeManager:
    """Same attributes as the real Manager; ``log_messages`` is what ``logs()`` replays."""

    def __init__(self, store: MemoryStore | None = None, engine_info: dict[str, Any] | None = None) -> None:
        self.store = store if store is not None else MemoryStore(NullBackend())
        self.node_id: str | None = None
        self.engine_info: dict[str, Any] = engine_info or {}
        self.addr = "127.0.0.1"
        self.log_messages: list[LogMessage] = []
        self.log_calls: list[tuple[list[str], LogOptions]] = []
        self.join_requests: list[JoinRequest] = []
        self.ca_rotations = 0

    @property
    def in_swarm(self) -> bool:
        return self.node_id is not None and self.store.cluster() is not None

    @property
    def is_manager(self) -> bool:
        return self.in_swarm

    def require_swarm(self) -> None:
        if not self.in_swarm:
            raise NotInSwarm()

    def rotate_root_ca(self) -> None:
        self.ca_rotations += 1

    def check_unlockable(self) -> None:
        if not self.in_swarm:
            raise Unavailable("This node is not part of a swarm")
        raise Conflict(NOT_LOCKED)  # a fake manager is never locked

    async def unlock(self, key: bytes) -> None:
        raise Conflict(NOT_LOCKED)

    async def apply_autolock(self) -> None:
        """No key files here: the store's cluster object is all there is."""

    async def join(self, req: JoinRequest) -> None:
        if self.in_swarm:
            raise Unavailable(
                'This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and '
                "join another one."
            )
        self.join_requests.append(req)

    async def init_swarm(self, req: InitRequest) -> str:
        if self.in_swarm:
            raise Unavailable(
                'This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and '
                "join another one."
            )
        cluster = Cluster(
            ID=new_id(),
            Version=Version(),
            CreatedAt="",
            UpdatedAt="",
            Spec=req.Spec or SwarmSpec(Name="default", Orchestration=OrchestrationConfig(TaskHistoryRetentionLimit=5)),
            TLSInfo=TLSInfo(TrustRoot=FAKE_CA_PEM),
            DefaultAddrPool=["10.0.0.0/8"],
            JoinTokens=JoinTokens(Worker=generate_join_token(FAKE_CA_PEM), Manager=generate_join_token(FAKE_CA_PEM)),
        )
        node = make_node("manager-host", role=NodeRole.MANAGER, addr=self.addr)
        with self.store.tx() as tx:
            tx.create("cluster", cluster)
            tx.create("node", node)
        create_network(self.store, ingress_spec())  # as the real init does
        self.node_id = node.ID
        return node.ID

    async def leave(self, force: bool) -> None:
        if not self.in_swarm:
            raise Unavailable("This node is not part of a swarm")
        if not force:
            raise Unavailable(
                "You are attempting to leave the swarm on a node that is participating as a manager. "
                "Removing the last manager erases all current state of the swarm. Use `--force` to ignore "
                "this message."
            )
        await self.store.wipe()
        self.node_id = None

    async def logs(self, tasks: list[Task], options: LogOptions) -> AsyncIterator[LogMessage]:
        wanted = {t.ID for t in tasks}
        self.log_calls.append((sorted(wanted), options))
        for msg in self.log_messages:
            if msg.task_id in wanted:
                yield msg
        if options.follow:
            await asyncio.Event().wait()  # a live container: nothing more until the client leaves


def make_node(
    hostname: str,
    role: NodeRole = NodeRole.WORKER,
    state: NodeState = NodeState.READY,
    addr: str = "127.0.0.1",
    labels: dict[str, str] | None = None,
    engine_labels: dict[str, str] | None = None,
) -> Node:
    return Node(
        ID=new_id(),
        Version=Version(),
        CreatedAt="",
        UpdatedAt="",
        Spec=NodeSpec(Role=role, Labels=labels),
        Description=NodeDescription(Hostname=hostname),
        Status=NodeStatus(State=state, Addr=addr),
        ManagerStatus=ManagerStatus(Leader=True, Addr=f"{addr}:2377") if role is NodeRole.MANAGER else None,
    )


def add_node(store: MemoryStore, hostname: str, **kw: Any) -> Node:
    node = make_node(hostname, **kw)
    with store.tx() as tx:
        tx.create("node", node)
    return node


def add_task(
    store: MemoryStore,
    service: Service,
    slot: int = 1,
    state: TaskState = TaskState.RUNNING,
    desired: TaskState = TaskState.RUNNING,
    node_id: str = "",
    container_id: str | None = None,
) -> Task:
    """A task as the orchestrator/scheduler/agent would have left it (per the lifecycle contract)."""
    task = Task(
        ID=new_id(),
        Version=Version(),
        CreatedAt="",
        UpdatedAt="",
        Spec=service.Spec.TaskTemplate,
        ServiceID=service.ID,
        Status=TaskStatus(
            Timestamp=now_ts(),
            State=state,
            ContainerStatus=ContainerStatus(ContainerID=container_id) if container_id else None,
        ),
        DesiredState=desired,
        Slot=slot,
        NodeID=node_id,
        SpecVersion=Version(service.Version.Index),
        Endpoint=service.Endpoint,
        ServiceAnnotations={"Name": service.Spec.Name, "Labels": service.Spec.Labels},
        Labels=service.Spec.Labels,
    )
    with store.tx() as tx:
        tx.create("task", task)
    return task
