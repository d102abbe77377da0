"""The dispatcher's delivery of network state, secrets and configs, with the real allocator,
scheduler and orchestrator on a store: whole NetworkStates when they change, peers and records
kept right, removals, nodes without networked tasks told nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec
import pytest

from shoal import controlapi
from shoal.allocator import NetworkAllocator
from shoal.controlapi.networks import create_network, ingress_spec
from shoal.dispatcher.dispatcher import Dispatcher, SessionInvalid
from shoal.dispatcher.netstate import NetworkIndex
from shoal.dispatcher.protocol import Assignments, NetworkState
from shoal.ids import new_id
from shoal.models import (
    Config,
    ConfigReference,
    ConfigSpec,
    ContainerSpec,
    EndpointSpec,
    NetworkAttachmentConfig,
    NetworkSpec,
    NodeState,
    Placement,
    PortConfig,
    ReplicatedService,
    Secret,
    SecretReference,
    SecretSpec,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
    TaskState,
    Version,
)
from shoal.orchestrator import ReplicatedOrchestrator
from shoal.orchestrator.testutils import make_node, make_service, make_store, running, set_task_state
from shoal.scheduler import Scheduler
from shoal.store import MemoryStore


@dataclass
class View:
    """What an agent holds after applying every message it got."""

    nets: dict[str, NetworkState] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    tasks: dict[str, object] = field(default_factory=dict)
    secrets: dict[str, Secret] = field(default_factory=dict)
    configs: dict[str, Config] = field(default_factory=dict)
    messages: list[Assignments] = field(default_factory=list)


class Agent:
    def __init__(self, stream: AsyncIterator[Assignments]) -> None:
        self.view = View()
        self.task = asyncio.create_task(self._pump(stream))

    async def _pump(self, stream: AsyncIterator[Assignments]) -> None:
        with contextlib.suppress(SessionInvalid):  # the dispatcher stops at teardown
            await self._read(stream)

    async def _read(self, stream: AsyncIterator[Assignments]) -> None:
        async for msg in stream:
            v = self.view
            v.messages.append(msg)
            for t in msg.tasks:
                v.tasks[t.ID] = t
            for st in msg.networks:
                v.nets[st.network.ID] = st
            for nid in msg.removed_networks:
                v.nets.pop(nid, None)
                v.removed.append(nid)
            v.secrets.update({s.ID: s for s in msg.secrets})
            v.configs.update({c.ID: c for c in msg.configs})

    async def until(self, pred: Callable[[View], bool], what: str, within: float = 3.0) -> None:
        deadline = time.monotonic() + within
        while not pred(self.view):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.view.nets}")
            await asyncio.sleep(0.005)


def template(net_id: str, *, avoid: str = "", **cs: object) -> TaskSpec:
    return TaskSpec(
        ContainerSpec=ContainerSpec(Image="busybox:latest", **cs),  # type: ignore[arg-type]
        Networks=[NetworkAttachmentConfig(Target=net_id, Aliases=["api"])],
        Placement=Placement(Constraints=[f"node.hostname!={avoid}"]) if avoid else None,
    )


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[MemoryStore, Dispatcher, dict[str, str]]]:
    store = make_store()
    nodes = {h: make_node(store, h, addr=f"192.168.5.{i}").ID for i, h in enumerate(("a", "b", "c"), 1)}
    d = Dispatcher(store, heartbeat_period_s=5.0)
    alloc = NetworkAllocator(store)
    sched = Scheduler(store)
    sched.allocator = alloc
    async with running(d, alloc, sched, ReplicatedOrchestrator(store)):
        yield store, d, nodes


async def connect(d: Dispatcher, node_id: str, addr: str) -> Agent:
    node = d.store.get("node", node_id)
    info = await d.register(node_id, node.Description, addr)
    return Agent(d.assignments(info.session_id))


async def test_network_state_peers_records_and_removal(cluster) -> None:
    store, d, nodes = cluster
    a, b, c = [await connect(d, nodes[h], f"192.168.5.{i}") for i, h in enumerate("abc", 1)]
    net = create_network(store, NetworkSpec(Name="front"))
    svc = make_service(store, "web", replicas=2, template=template(net.ID, avoid="c"))
    other = make_service(store, "plain", replicas=1)  # no networks: may land anywhere, c included

    await a.until(lambda v: net.ID in v.nets and v.nets[net.ID].peers == ["192.168.5.2"], "a sees b as peer")
    await b.until(lambda v: net.ID in v.nets and v.nets[net.ID].peers == ["192.168.5.1"], "b sees a as peer")
    st = a.view.nets[net.ID]
    stored = store.get("network", net.ID)
    assert st.node_address == stored.NodeAddresses[nodes["a"]]
    assert b.view.nets[net.ID].node_address == stored.NodeAddresses[nodes["b"]]
    assert st.network.DriverState.Options["com.docker.network.driver.overlay.vxlanid_list"] == "4096"
    # Not running yet: the service is known (name, aliases, VIP) but has no addresses.
    await a.until(lambda v: any(r.vip for r in v.nets[net.ID].records), "VIP in the record")
    (rec,) = a.view.nets[net.ID].records
    assert rec.name == "web" and rec.aliases == ["api"] and rec.addrs == [] and rec.service_id == svc.ID

    tasks = sorted(store.tasks_of_service(svc.ID), key=lambda t: t.Slot)
    set_task_state(store, [t.ID for t in tasks], TaskState.RUNNING)
    ips = sorted(t.NetworksAttachments[0].Addresses[0].split("/")[0] for t in tasks)
    await a.until(lambda v: v.nets[net.ID].records[0].addrs == ips, "running addresses")
    rec = a.view.nets[net.ID].records[0]
    assert rec.tasks == {f"web.{t.Slot}.{t.ID}": t.NetworksAttachments[0].Addresses[0].split("/")[0] for t in tasks}
    vip = store.get("service", svc.ID).Endpoint.VirtualIPs[0].Addr.split("/")[0]
    assert rec.vip == vip
    await b.until(lambda v: v.nets[net.ID].records[0].addrs == ips, "b's records too")

    # The task on b stops: b drops the network, a loses its peer and the address.
    on_b = next(t for t in tasks if t.NodeID == nodes["b"])
    n_before = len(b.view.messages)
    set_task_state(store, on_b.ID, TaskState.FAILED)
    await b.until(lambda v: v.removed == [net.ID], "b told to remove the network")
    assert net.ID not in b.view.nets and len(b.view.messages) > n_before
    await a.until(lambda v: v.nets[net.ID].peers == [] and len(v.nets[net.ID].records[0].addrs) == 1, "a updated")

    # c never had a networked task: it heard nothing about networks.
    await asyncio.sleep(0.05)
    assert all(not m.networks and not m.removed_networks for m in c.view.messages)
    assert store.get("service", other.ID) is not None


async def test_status_churn_before_running_sends_no_network_state(cluster) -> None:
    store, d, nodes = cluster
    a = await connect(d, nodes["a"], "192.168.5.1")
    net = create_network(store, NetworkSpec(Name="front"))
    svc = make_service(store, "web", replicas=1, template=TaskSpec(
        ContainerSpec=ContainerSpec(Image="busybox:latest"),
        Networks=[NetworkAttachmentConfig(Target=net.ID)],
        Placement=Placement(Constraints=["node.hostname==a"])))
    await a.until(lambda v: net.ID in v.nets and any(r.vip for r in v.nets[net.ID].records), "network state")
    (t,) = store.tasks_of_service(svc.ID)
    sent = sum(len(m.networks) for m in a.view.messages)
    for state in (TaskState.ACCEPTED, TaskState.PREPARING, TaskState.STARTING):
        set_task_state(store, t.ID, state)
    await asyncio.sleep(0.05)
    assert sum(len(m.networks) for m in a.view.messages) == sent
    set_task_state(store, t.ID, TaskState.RUNNING)
    await a.until(lambda v: v.nets[net.ID].records[0].addrs != [], "running address sent")


async def test_full_message_after_reconnect_holds_networks(cluster) -> None:
    store, d, nodes = cluster
    a = await connect(d, nodes["a"], "192.168.5.1")
    net = create_network(store, NetworkSpec(Name="front"))
    make_service(store, "web", replicas=1, template=TaskSpec(
        ContainerSpec=ContainerSpec(Image="busybox:latest"),
        Networks=[NetworkAttachmentConfig(Target=net.ID)],
        Placement=Placement(Constraints=["node.hostname==a"])))
    await a.until(lambda v: net.ID in v.nets, "network state")
    again = await connect(d, nodes["a"], "192.168.5.1")
    await again.until(lambda v: bool(v.messages), "full message")
    full = again.view.messages[0]
    assert full.full and [s.network.ID for s in full.networks] == [net.ID]
    assert full.networks[0].node_address == store.get("network", net.ID).NodeAddresses[nodes["a"]]


async def test_secrets_and_configs_travel_with_their_tasks(cluster) -> None:
    store, d, nodes = cluster
    a = await connect(d, nodes["a"], "192.168.5.1")
    sec = Secret(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="",
                 Spec=SecretSpec(Name="pw", Data="aHVudGVyMg=="))
    cfg = Config(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="",
                 Spec=ConfigSpec(Name="conf", Data="a2V5PXZhbHVl"))
    unused = Secret(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=SecretSpec(Name="other"))
    with store.tx() as tx:
        tx.create("secret", sec)
        tx.create("secret", unused)
        tx.create("config", cfg)
    make_service(store, "web", replicas=1, template=TaskSpec(
        ContainerSpec=ContainerSpec(
            Image="busybox:latest",
            Secrets=[SecretReference(SecretID=sec.ID, SecretName="pw")],
            Configs=[ConfigReference(ConfigID=cfg.ID, ConfigName="conf")],
        ),
        Placement=Placement(Constraints=["node.hostname==a"])))
    await a.until(lambda v: bool(v.tasks), "the task")
    msg = next(m for m in a.view.messages if m.tasks)
    assert [s.ID for s in msg.secrets] == [sec.ID] and msg.secrets[0].Spec.Data == "aHVudGVyMg=="
    assert [c.ID for c in msg.configs] == [cfg.ID] and msg.configs[0].Spec.Data == "a2V5PXZhbHVl"
    # A session's full message carries them too.
    again = await connect(d, nodes["a"], "192.168.5.1")
    await again.until(lambda v: bool(v.messages), "full message")
    assert [s.ID for s in again.view.messages[0].secrets] == [sec.ID]


def test_index_ignores_tasks_without_networks_and_rebuilds() -> None:
    store = make_store()
    n = make_node(store, "a")
    net = create_network(store, NetworkSpec(Name="front"))
    alloc = NetworkAllocator(store)
    svc = make_service(store, "web", replicas=1, template=template(net.ID))
    plain = make_service(store, "plain", replicas=1)
    from shoal.orchestrator.task import new_task

    tasks = [msgspec.structs.replace(new_task(s, 1), NodeID=n.ID) for s in (svc, plain)]
    tasks = [msgspec.structs.replace(t, Status=msgspec.structs.replace(t.Status, State=TaskState.RUNNING))
             for t in tasks]
    out, _, nets = alloc.attach_tasks(tasks)
    with store.tx() as tx:
        for x in nets:
            tx.update("network", x)
        for t in out:
            tx.create("task", t)
    idx = NetworkIndex(store)
    assert idx.nets_of(n.ID) == [net.ID]
    assert set(idx._tasks) == {out[0].ID}  # the task without networks is not indexed
    st = idx.state(net.ID, n.ID)
    assert st is not None and st.records[0].addrs == [out[0].NetworksAttachments[0].Addresses[0].split("/")[0]]
    assert idx.state(net.ID, "elsewhere") is None
    # Nodes without networked tasks have nothing.
    assert idx.nets_of("elsewhere") == []


async def test_routing_mesh_state_reaches_every_node_and_follows_the_tasks(cluster) -> None:
    """The ingress network: every node hears it while a service publishes (tasks there or not);
    records hold only tasks that take traffic; nothing at all is sent while nobody publishes."""
    store, d, nodes = cluster
    ingress = create_network(store, ingress_spec())
    a, b, c = [await connect(d, nodes[h], f"192.168.5.{i}") for i, h in enumerate("abc", 1)]
    plain = make_service(store, "plain", replicas=1, template=TaskSpec(ContainerSpec=ContainerSpec(Image="x")))
    await asyncio.sleep(0.05)
    assert all(not m.networks for agent in (a, b, c) for m in agent.view.messages)  # nobody publishes

    spec = ServiceSpec(
        Name="web", Mode=ServiceMode(Replicated=ReplicatedService(Replicas=2)),
        TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest"),
                              Placement=Placement(Constraints=["node.hostname!=c"])),
        EndpointSpec=EndpointSpec(Ports=[PortConfig(TargetPort=80, PublishedPort=8080)]),
    )
    svc = controlapi.create_service(store, spec)
    await c.until(lambda v: ingress.ID in v.nets and v.nets[ingress.ID].records, "c on ingress")
    st = c.view.nets[ingress.ID]
    assert st.peers == ["192.168.5.1", "192.168.5.2"] and st.node_address.startswith("10.255.")
    (rec,) = st.records
    assert [(p.protocol, p.port, p.target_port) for p in rec.ports] == [("tcp", 8080, 80)] and rec.addrs == []

    tasks = await wait_tasks(store, svc.ID, 2)
    set_task_state(store, [t.ID for t in tasks], TaskState.RUNNING)
    ips = sorted(t.NetworksAttachments[-1].Addresses[0].split("/")[0] for t in tasks)
    await c.until(lambda v: v.nets[ingress.ID].records[0].addrs == ips, "both tasks as backends on c")

    # b goes Down: its task leaves every node's balancer before anything replaces it.
    on_b = next(t for t in tasks if t.NodeID == nodes["b"])
    node_b = store.get("node", nodes["b"])
    with store.tx() as tx:
        tx.update("node", msgspec.structs.replace(node_b, Status=msgspec.structs.replace(
            node_b.Status, State=NodeState.DOWN)))
    keep = [ip for t, ip in zip(sorted(tasks, key=lambda t: t.NetworksAttachments[-1].Addresses[0]), ips, strict=True)
            if t.ID != on_b.ID]
    await c.until(lambda v: v.nets[ingress.ID].records[0].addrs == keep, "b's task out of c's balancer")
    await a.until(lambda v: v.nets[ingress.ID].records[0].addrs == keep, "and out of a's")

    # A task told to stop leaves the balancers while it still runs (it drains, then stops).
    on_a = next(t for t in tasks if t.NodeID == nodes["a"])
    with store.tx() as tx:
        cur = tx.get("task", on_a.ID)
        tx.update("task", msgspec.structs.replace(cur, DesiredState=TaskState.SHUTDOWN))
    await c.until(lambda v: v.nets[ingress.ID].records[0].addrs == [], "stopping task out")
    assert store.get("task", on_a.ID).Status.State is TaskState.RUNNING

    # The last publisher goes: every node is told to leave the ingress network.
    controlapi.remove_service(store, svc.ID)
    await c.until(lambda v: ingress.ID in v.removed, "c leaves ingress")
    assert store.get("service", plain.ID) is not None


async def wait_tasks(store: MemoryStore, service_id: str, n: int) -> list:
    for _ in range(300):
        tasks = [t for t in store.tasks_of_service(service_id) if t.NetworksAttachments and t.NodeID]
        if len(tasks) == n:
            return tasks
        await asyncio.sleep(0.01)
    raise AssertionError(f"{n} tasks of {service_id} not assigned")
