"""Helpers for testing reconcilers against a real MemoryStore (no engine, no network).

Used by the unit tests of the orchestrators and the scheduler, and handy for benchmarks: build
nodes and services, run components as asyncio tasks, and play the agent by writing task states.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from shoal.ids import new_id
from shoal.models import (
    ContainerSpec,
    ContainerStatus,
    GlobalService,
    Node,
    NodeAvailability,
    NodeDescription,
    NodeRole,
    NodeSpec,
    NodeState,
    NodeStatus,
    ReplicatedService,
    Resources,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskState,
    Version,
    now_ts,
)
from shoal.store import MemoryStore, NullBackend


def make_store() -> MemoryStore:
    return MemoryStore(NullBackend())


def make_node(
    store: MemoryStore,
    hostname: str = "",
    *,
    node_id: str | None = None,
    state: NodeState = NodeState.READY,
    availability: NodeAvailability = NodeAvailability.ACTIVE,
    role: NodeRole = NodeRole.WORKER,
    labels: dict[str, str] | None = None,
    nano_cpus: int = 4_000_000_000,
    memory: int = 8 << 30,
    addr: str = "10.0.0.1",
) -> Node:
    node = Node(
        ID=node_id or new_id(),
        Version=Version(),
        CreatedAt="",
        UpdatedAt="",
        Spec=NodeSpec(Name="", Labels=labels, Role=role, Availability=availability),
        Description=NodeDescription(
            Hostname=hostname, Resources=Resources(NanoCPUs=nano_cpus, MemoryBytes=memory)
        ),
        Status=NodeStatus(State=state, Addr=addr),
    )
    with store.tx() as tx:
        tx.create("node", node)
    return node


def update_node(store: MemoryStore, node_id: str, **changes: Any) -> Node:
    """Change a node: ``availability=``, ``state=``, ``labels=`` (spec/status fields)."""
    node: Node = store.get("node", node_id)
    spec, status = node.Spec, node.Status
    if "availability" in changes:
        spec = msgspec.structs.replace(spec, Availability=changes["availability"])
    if "labels" in changes:
        spec = msgspec.structs.replace(spec, Labels=changes["labels"])
    if "state" in changes:
        status = msgspec.structs.replace(status, State=changes["state"])
    new = msgspec.structs.replace(node, Spec=spec, Status=status)
    with store.tx() as tx:
        tx.update("node", new)
    return new


def make_service(
    store: MemoryStore,
    name: str = "web",
    *,
    replicas: int | None = 1,
    global_: bool = False,
    template: TaskSpec | None = None,
    **spec_fields: Any,
) -> Service:
    mode = ServiceMode(Global=GlobalService()) if global_ else ServiceMode(Replicated=ReplicatedService(replicas))
    spec = ServiceSpec(
        Name=name,
        TaskTemplate=template or TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")),
        Mode=mode,
        **spec_fields,
    )
    svc = Service(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec)
    with store.tx() as tx:
        tx.create("service", svc)
    return svc


def update_service(store: MemoryStore, service_id: str, **spec_changes: Any) -> Service:
    """Replace fields of the service's spec (``replicas=`` is a shortcut for the replicated mode)."""
    svc: Service = store.get("service", service_id)
    spec = svc.Spec
    if "replicas" in spec_changes:
        n = spec_changes.pop("replicas")
        spec = msgspec.structs.replace(spec, Mode=ServiceMode(Replicated=ReplicatedService(n)))
    spec = msgspec.structs.replace(spec, **spec_changes)
    new = msgspec.structs.replace(svc, Spec=spec)
    with store.tx() as tx:
        tx.update("service", new)
    return new


def delete_service(store: MemoryStore, service_id: str) -> None:
    with store.tx() as tx:
        tx.delete("service", service_id)


def set_task_state(store: MemoryStore, task_ids: Any, state: TaskState, *, exit_code: int = 0, err: str = "") -> None:
    """Play the agent: report ``state`` for the given task IDs in one batch."""
    if isinstance(task_ids, str):
        task_ids = [task_ids]
    ts = now_ts()
    with store.tx() as tx:
        for tid in task_ids:
            t: Task = store.get("task", tid)
            status = msgspec.structs.replace(
                t.Status,
                State=state,
                Timestamp=ts,
                Err=err,
                ContainerStatus=ContainerStatus(ExitCode=exit_code),
            )
            tx.update("task", msgspec.structs.replace(t, Status=status))


class FakeAgent:
    """Every node's agent in one: runs assigned tasks, stops tasks no longer wanted.

    Reacts to the store like the real dispatcher+agent pair would, in batches. ``paused`` stops it
    from acting, to hold tasks in a state for a while.
    """

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.paused = False

    def step(self) -> int:
        if self.paused:
            return 0
        run, stop = [], []
        assigned, running_ = TaskState.ASSIGNED.order, TaskState.RUNNING.order
        for t in self.store.list("task"):
            order = t.Status.State.order
            if not t.NodeID or not assigned <= order <= running_:
                continue
            if t.DesiredState is TaskState.RUNNING and order < running_:
                run.append(t.ID)
            elif t.DesiredState.order > running_:
                stop.append(t.ID)
        if run:
            set_task_state(self.store, run, TaskState.RUNNING)
        if stop:
            set_task_state(self.store, stop, TaskState.SHUTDOWN)
        return len(run) + len(stop)

    async def run(self) -> None:
        w = self.store.watch("task")
        try:
            self.step()
            while True:
                await w.get()
                w.drain()
                self.step()
        finally:
            w.close()


@contextlib.asynccontextmanager
async def running(*components: Any) -> AsyncIterator[None]:
    """Run components (anything with ``async run()``) as tasks for the duration of the block."""
    tasks = [asyncio.create_task(c.run()) for c in components]
    await asyncio.sleep(0)
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r


async def wait_for(pred: Callable[[], bool], within: float = 3.0, what: str = "condition") -> None:
    """Poll ``pred`` until true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def settle(rounds: int = 20) -> None:
    """Let every ready component run a few times (no timers involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def runnable_tasks(store: MemoryStore, service_id: str) -> list[Task]:
    return [t for t in store.tasks_of_service(service_id) if t.DesiredState.order <= TaskState.RUNNING.order]
