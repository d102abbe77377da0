"""Swarm's predefined networks (``--network host`` / ``bridge``): resolution and Swarm's rules in the
control API, hidden from ``network ls``, never removed; the allocator gives such tasks an attachment
without addresses; the dispatcher plumbs nothing for them; the executor runs them on the engine's
own network."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal.agent.executor.docker import explain_port_conflict
from shoal.agent.executor.spec import container_config
from shoal.allocator import NetworkAllocator
from shoal.api import create_app
from shoal.api.testing import FakeManager
from shoal.controlapi.networks import create_network, get_network
from shoal.controlapi.predefined import ensure_predefined_networks
from shoal.dispatcher.netstate import NetworkIndex
from shoal.models import (
    ContainerSpec,
    Endpoint,
    EndpointSpec,
    InitRequest,
    NetworkAttachment,
    NetworkAttachmentConfig,
    NetworkSpec,
    PortConfig,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    Version,
)
from shoal.netmode import is_predefined, task_network_mode
from shoal.orchestrator import ReplicatedOrchestrator
from shoal.orchestrator.testutils import make_node, make_service, make_store, running, wait_for
from shoal.scheduler import Scheduler

from .test_api_networks import cli_body, snapshot
from .test_api_services import cli_spec


@pytest.fixture
async def manager() -> FakeManager:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    ensure_predefined_networks(m.store)  # the real Manager does this when it takes the lead
    return m


@pytest.fixture
async def client(manager: FakeManager) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(manager))) as c:
        yield c


def on(spec: dict[str, Any], *nets: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec["TaskTemplate"]["Networks"] = list(nets)
    if ports is not None:
        spec["EndpointSpec"] = {"Mode": "vip", "Ports": ports}
    return spec


def test_ensure_is_idempotent_and_objects_look_like_swarmkits() -> None:
    store = make_store()
    made = ensure_predefined_networks(store)
    assert sorted(n.Spec.Name for n in made) == ["bridge", "host"]
    assert ensure_predefined_networks(store) == []  # a second leader start adds nothing
    host = get_network(store, "host")
    assert host.Spec.Labels == {"com.docker.swarm.predefined": "true"}
    assert host.Spec.DriverConfiguration.Name == "host" and host.IPAMOptions is None and is_predefined(host)


async def test_service_on_host_network_resolves_and_shows_as_swarm(client: TestClient, manager: FakeManager) -> None:
    host_id = get_network(manager.store, "host").ID
    r = await client.post("/services/create", json=on(cli_spec("web"), {"Target": "host"},
                                                      ports=[{"Protocol": "tcp", "TargetPort": 8080,
                                                              "PublishedPort": 8080, "PublishMode": "host"}]))
    assert r.status == 201, await r.text()
    svc = await (await client.get("/services/web")).json()
    assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": host_id}]
    # `docker service inspect --pretty` looks the target up with scope=swarm: it must answer "host".
    net = await (await client.get(f"/networks/{host_id}", params={"scope": "swarm"})).json()
    assert (net["Name"], net["Driver"], net["Labels"]) == ("host", "host", {"com.docker.swarm.predefined": "true"})
    # Not listed (the engine lists its own; ingress is swarm init's), never pruned, never removed (Docker's 403).
    assert [n["Name"] for n in await (await client.get("/networks")).json()] == ["ingress"]
    dangling = json.dumps({"dangling": ["true"]})
    listed = await (await client.get("/networks", params={"filters": dangling})).json()
    assert [n["Name"] for n in listed] == ["ingress"]
    assert (await (await client.post("/networks/prune")).json())["NetworksDeleted"] in (None, [])
    r = await client.delete("/networks/bridge")
    assert r.status == 403 and (await r.json())["message"] == "bridge is a pre-defined network and cannot be removed"
    assert get_network(manager.store, "bridge") is not None
    # And it cannot be created by a user either.
    r = await client.post("/networks/create", json=cli_body("host"))
    assert r.status == 403


@pytest.mark.parametrize(
    ("nets", "ports", "status", "words"),
    [
        ([{"Target": "host"}, {"Target": "front"}], None, 400,
         "a service on the host network cannot also be on network front (container cannot be disconnected from "
         "host network or connected to host network)"),
        ([{"Target": "front"}, {"Target": "bridge"}], None, 400, "cannot also be on network front"),
        ([{"Target": "host", "Aliases": ["www"]}], None, 400,
         "network-scoped aliases are only supported for user-defined networks"),
        ([{"Target": "host"}], [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}], 400,
         "port 8080/tcp is published in ingress mode, which needs the ingress network"),
        ([{"Target": "bridge"}], [{"TargetPort": 80, "PublishMode": "ingress"}], 400, "mode=host"),
        ([{"Target": "none"}], None, 404, "swarm services can use the predefined networks bridge and host"),
    ],
)
async def test_swarm_rules_refused_with_nothing_written(
    client: TestClient, manager: FakeManager, nets: list[dict[str, Any]], ports: Any, status: int, words: str
) -> None:
    create_network(manager.store, NetworkSpec(Name="front"))
    before = snapshot(manager)
    r = await client.post("/services/create", json=on(cli_spec("web"), *nets, ports=ports))
    assert r.status == status
    assert words in (await r.json())["message"]
    assert snapshot(manager) == before


async def test_store_without_predefined_networks_says_so() -> None:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    async with TestClient(TestServer(create_app(m))) as c:
        r = await c.post("/services/create", json=on(cli_spec("web"), {"Target": "host"}))
        assert r.status == 404
        assert (await r.json())["message"] == ("could not find the corresponding predefined swarm network: "
                                               "network host not found")


async def test_allocator_gives_an_attachment_without_addresses_and_no_vip() -> None:
    store = make_store()
    make_node(store, "a")
    ensure_predefined_networks(store)
    host = get_network(store, "host")
    alloc = NetworkAllocator(store)
    sched = Scheduler(store)
    sched.allocator = alloc
    tmpl = TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest"),
                    Networks=[NetworkAttachmentConfig(Target=host.ID)])
    async with running(alloc, sched, ReplicatedOrchestrator(store)):
        svc = make_service(store, "web", replicas=2, template=tmpl)

        def assigned() -> list[Any]:
            return [t for t in store.tasks_of_service(svc.ID) if t.Status.State is TaskState.ASSIGNED]

        await wait_for(lambda: len(assigned()) == 2)
        for t in assigned():
            (att,) = t.NetworksAttachments
            assert att.Network.ID == host.ID and not att.Addresses and task_network_mode(t) == "host"
        assert alloc.task_ips == {} and host.ID not in alloc.pools
        cur = store.get("service", svc.ID)
        assert cur.Endpoint is None or not cur.Endpoint.VirtualIPs
        assert store.get("network", host.ID).NodeAddresses is None
        # The dispatcher has nothing to plumb for it on the node.
        index = NetworkIndex(store)
        assert index.nets_of(assigned()[0].NodeID) == [] and host.ID not in index.members


def test_executor_runs_the_container_on_the_engines_network() -> None:
    store = make_store()
    ensure_predefined_networks(store)
    port = PortConfig(Protocol="tcp", TargetPort=8080, PublishedPort=8080, PublishMode="host")
    for name, bindings in (("host", False), ("bridge", True)):
        task = Task(ID="t1", Version=Version(), CreatedAt="", UpdatedAt="", ServiceID="s", NodeID="n", Slot=1,
                    Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")),
                    Status=TaskStatus(State=TaskState.ASSIGNED), DesiredState=TaskState.RUNNING,
                    Endpoint=Endpoint(Spec=EndpointSpec(Ports=[port]), Ports=[port]),
                    NetworksAttachments=[NetworkAttachment(Network=get_network(store, name))])
        body = container_config(task)
        assert body["HostConfig"]["NetworkMode"] == name
        # On the host network the port is the process's own: nothing for the engine to bind.
        assert ("PortBindings" in body["HostConfig"]) is bindings


def test_port_conflict_explained_in_the_tasks_error() -> None:
    port = PortConfig(Protocol="udp", TargetPort=53, PublishedPort=5353, PublishMode="host")
    task = Task(ID="t1", Version=Version(), CreatedAt="", UpdatedAt="", ServiceID="s", NodeID="n", Slot=1,
                Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")),
                Status=TaskStatus(State=TaskState.ASSIGNED), DesiredState=TaskState.RUNNING,
                Endpoint=Endpoint(Spec=EndpointSpec(Ports=[port]), Ports=[port]))
    # dockerd 20.10's words, as seen on this machine with a listener on the port.
    proxy = ("driver failed programming external connectivity on endpoint web.1.x (12ec): Error starting userland "
             "proxy: listen tcp4 0.0.0.0:18777: bind: address already in use")
    assert explain_port_conflict(task, proxy) == (
        f"host-mode port 18777/tcp is already in use on this node (by a process outside Shoal): {proxy}")
    allocated = "driver failed programming external connectivity on endpoint web.1.x: Bind for 0.0.0.0:5353 failed: " \
                "port is already allocated"
    assert explain_port_conflict(task, allocated).startswith(
        "host-mode port 5353/udp is already in use on this node (by another container on this engine): driver")
    assert explain_port_conflict(task, "OCI runtime create failed") == "OCI runtime create failed"
