"""Overlay networks on the machine's real engine, one node: the agent's NetworkAgent plumbs a
network (engine bridge + VXLAN device + DNS responder on the node's address) from a hand-made
NetworkState, and the DockerExecutor puts two busybox task containers on it; they reach each other
by IP, by service name, by ``tasks.<service>`` and by task name, and outside names still resolve
through the forwarder. Removing the network takes the engine network and the VXLAN device away."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import docker
import pytest

from shoal.agent.executor.base import ExecutorError, container_name
from shoal.agent.executor.docker import DockerExecutor
from shoal.agent.network.overlay import bridge_name, engine_network_name, vxlan_name
from shoal.agent.network.plumbing import LEAVE_GRACE_S, NetworkAgent
from shoal.dispatcher.protocol import NetworkState, ServiceRecord
from shoal.ids import new_id
from shoal.models import (
    SECOND,
    ContainerSpec,
    Driver,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachment,
    NetworkSpec,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    Version,
)

pytestmark = pytest.mark.integration

IMAGE = "busybox:latest"


def overlay(subnet_prefix: str) -> Network:
    return Network(
        ID=new_id(), Version=Version(1), CreatedAt="", UpdatedAt="", Spec=NetworkSpec(Name="ovtest"),
        DriverState=Driver(Name="overlay", Options={"com.docker.network.driver.overlay.vxlanid_list": "4242"}),
        IPAMOptions=IPAMOptions(Configs=[IPAMConfig(Subnet=f"{subnet_prefix}.0/24", Gateway=f"{subnet_prefix}.1")]),
    )


def task(node_id: str, net: Network, service: str, slot: int, addr: str) -> Task:
    return Task(
        ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="",
        Spec=TaskSpec(ContainerSpec=ContainerSpec(Image=IMAGE, Command=["sleep", "300"], StopGracePeriod=SECOND)),
        ServiceID="svc-" + service, Status=TaskStatus(State=TaskState.ASSIGNED), DesiredState=TaskState.RUNNING,
        NodeID=node_id, Slot=slot, ServiceAnnotations={"Name": service},
        NetworksAttachments=[NetworkAttachment(Network=net, Addresses=[addr])],
    )


async def wait_for_value(get: Callable[[], object], want: object, within: float = 5.0) -> None:
    for _ in range(int(within / 0.05)):
        if get() == want:
            return
        await asyncio.sleep(0.05)
    assert get() == want


async def run(engine: docker.DockerClient, cid: str, script: str) -> tuple[int, str]:
    """``sh`` on a worker thread: the DNS responder answering the container lives on this loop."""
    return await asyncio.to_thread(sh, engine, cid, script)


def sh(engine: docker.DockerClient, cid: str, script: str) -> tuple[int, str]:
    res = engine.containers.get(cid).exec_run(["sh", "-c", script])
    return res.exit_code, res.output.decode(errors="replace")


@pytest.fixture
async def plumbed() -> AsyncIterator[tuple[NetworkAgent, DockerExecutor, Network, str, docker.DockerClient]]:
    node_id = "ovtest" + new_id()[:12]
    executor = DockerExecutor()
    agent = NetworkAgent(executor.url, node_id, "127.0.0.1", ready_timeout_s=20)
    executor.network = agent
    engine = docker.from_env()
    # A subnet nobody else on this engine is likely to use at the same moment.
    prefix = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
    net = overlay(prefix)
    try:
        yield agent, executor, net, prefix, engine
    finally:
        for c in engine.containers.list(all=True, sparse=True, filters={"label": f"shoal.node.id={node_id}"}):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True, v=True)
        agent.apply([], [net.ID])
        with contextlib.suppress(Exception):
            await wait_gone(vxlan_name(net.ID), 10)
        await executor.close()
        with contextlib.suppress(docker.errors.APIError):
            engine.networks.get(engine_network_name(net.ID)).remove()
        engine.close()


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def master_of(name: str) -> str:
    return Path(f"/sys/class/net/{name}/master").resolve().name


def zero_fdb(name: str) -> list[str]:
    """Head-end replication entries of a VXLAN device (``bridge fdb``): the peers' addresses."""
    out = subprocess.run(["bridge", "fdb", "show", "dev", name], capture_output=True, text=True, check=True).stdout
    return sorted(w.split()[2] for w in out.splitlines() if w.startswith("00:00:00:00:00:00 dst "))


async def wait_gone(link: str, within: float) -> None:
    for _ in range(int(within / 0.1)):
        if not link_exists(link):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{link} still exists after {within}s")


async def left_by_a_gone_node(executor: DockerExecutor, prefix: str) -> tuple[Network, str]:
    """An engine network of ours on ``prefix``'s subnet, and its device, as a node that crashed
    leaves them (closing an agent keeps its networks); and that node's ID."""
    stale, gone = overlay(prefix), "gone" + new_id()[:8]
    stale_agent = NetworkAgent(executor.url, gone, "127.0.0.1", ready_timeout_s=20)
    try:
        stale_agent.apply([NetworkState(network=stale, node_address=f"{prefix}.251/24")], [], full=True)
        await wait_for_value(lambda: link_exists(vxlan_name(stale.ID)), True, 10)
    finally:
        await stale_agent.close()
    return stale, gone


async def create_fails(agent: NetworkAgent, executor: DockerExecutor, state: NetworkState, t: Task, said: str) -> None:
    agent.apply([state], [], full=True)
    with pytest.raises(ExecutorError, match=said):
        await asyncio.wait_for(executor.create(t), 30)


async def test_two_tasks_reach_each_other_by_ip_and_by_name(plumbed: tuple) -> None:
    agent, executor, net, prefix, engine = plumbed
    node_addr = f"{prefix}.250"
    ta = task(agent.node_id, net, "alpha", 1, f"{prefix}.5/24")
    tb = task(agent.node_id, net, "beta", 1, f"{prefix}.6/24")
    records = [
        ServiceRecord(service_id=ta.ServiceID, name="alpha", aliases=["first"], addrs=[f"{prefix}.5"],
                      tasks={container_name(ta): f"{prefix}.5"}),
        ServiceRecord(service_id=tb.ServiceID, name="beta", addrs=[f"{prefix}.6"],
                      tasks={container_name(tb): f"{prefix}.6"}),
    ]
    # The create waits for the network: apply after starting the creates, as a slow pass would be.
    creates = asyncio.gather(executor.create(ta), executor.create(tb))
    await asyncio.sleep(0.2)
    agent.apply([NetworkState(network=net, node_address=f"{node_addr}/24", records=records)],
                [], full=True)
    cid_a, cid_b = await asyncio.wait_for(creates, 60)
    for t, cid in ((ta, cid_a), (tb, cid_b)):
        await executor.start(t, cid)

    # What the node has: the engine network with our gateway, the VXLAN device on its bridge, a peer.
    info = engine.networks.get(engine_network_name(net.ID)).attrs
    assert info["IPAM"]["Config"][0] == {"Subnet": f"{prefix}.0/24", "Gateway": node_addr}
    assert info["Options"]["com.docker.network.driver.mtu"] == "1450"
    assert master_of(vxlan_name(net.ID)) == bridge_name(net.ID)
    inspected = engine.containers.get(cid_a).attrs
    assert inspected["HostConfig"]["Dns"][0] == node_addr
    assert inspected["NetworkSettings"]["Networks"][engine_network_name(net.ID)]["IPAddress"] == f"{prefix}.5"

    code, out = await run(engine, cid_b, f"ping -c1 -W2 {prefix}.5")
    assert code == 0, out
    code, out = await run(engine, cid_b, "ping -c1 -W2 alpha && ping -c1 -W2 first")
    assert code == 0, out
    assert f"{prefix}.5" in out
    code, out = await run(engine, cid_b, "nslookup tasks.alpha")
    assert code == 0 and f"{prefix}.5" in out, out
    code, out = await run(engine, cid_a, f"nslookup {container_name(tb)}")
    assert code == 0 and f"{prefix}.6" in out, out
    code, out = await run(engine, cid_a, "nslookup nosuchservice")
    assert f"{prefix}." not in out.split("Name:")[-1], out  # not ours: it went upstream

    # Records change without re-plumbing: a new alias answers at once.
    records[1] = ServiceRecord(service_id=tb.ServiceID, name="beta", aliases=["second"], addrs=[f"{prefix}.6"])
    agent.apply([NetworkState(network=net, node_address=f"{node_addr}/24", records=records)], [])
    code, out = await run(engine, cid_a, "ping -c1 -W2 second")
    assert code == 0 and f"{prefix}.6" in out, out

    # Peers become head-end replication entries (only loopback addresses here: a loopback peer sends
    # this node's broadcasts back into its own bridge, so this comes after the traffic checks).
    peers = ["127.0.0.2", "127.0.0.3"]
    agent.apply([NetworkState(network=net, node_address=f"{node_addr}/24", peers=peers, records=records)], [])
    await wait_for_value(lambda: zero_fdb(vxlan_name(net.ID)), peers)
    agent.apply([NetworkState(network=net, node_address=f"{node_addr}/24", peers=peers[1:], records=records)], [])
    await wait_for_value(lambda: zero_fdb(vxlan_name(net.ID)), peers[1:])

    # Removing the network: it waits for the containers to go, then the bridge and device go.
    agent.apply([], [net.ID])
    await asyncio.sleep(0.5)
    assert link_exists(bridge_name(net.ID))  # still in use
    await executor.remove(cid_a)
    await executor.remove(cid_b)
    await wait_gone(bridge_name(net.ID), 15)
    await wait_gone(vxlan_name(net.ID), 5)


async def test_stale_network_with_the_same_subnet_gives_way_and_leave_removes_ours(plumbed: tuple) -> None:
    agent, executor, net, prefix, engine = plumbed
    # Left by a node that is gone: an engine network of ours on the same subnet, unused, and its device.
    stale, _ = await left_by_a_gone_node(executor, prefix)

    t = task(agent.node_id, net, "gamma", 1, f"{prefix}.7/24")
    agent.apply([NetworkState(network=net, node_address=f"{prefix}.250/24")], [], full=True)
    cid = await asyncio.wait_for(executor.create(t), 30)
    await executor.start(t, cid)
    assert not link_exists(vxlan_name(stale.ID))
    with pytest.raises(docker.errors.NotFound):
        engine.networks.get(engine_network_name(stale.ID))

    # `swarm leave`: the node's containers go, then its networks and devices.
    assert await executor.remove_all(agent.node_id) == 1
    assert not link_exists(vxlan_name(net.ID))
    with pytest.raises(docker.errors.NotFound):
        engine.networks.get(engine_network_name(net.ID))


async def test_a_network_left_for_a_moment_stays_while_a_created_container_names_it(plumbed: tuple) -> None:
    """docker-compose disconnects and reconnects each container just before starting it, so a node
    whose only container that is leaves the network and joins it again at once: the network waits
    a moment before it goes (the same engine network is still there when the node is back). And
    the engine would remove a network that only created (not running) containers name, their start
    then failing "network ... not found": the agent keeps it while any container is on it."""
    agent, executor, net, prefix, engine = plumbed
    state = NetworkState(network=net, node_address=f"{prefix}.250/24")
    agent.apply([state], [], full=True)
    t = task(agent.node_id, net, "delta", 1, f"{prefix}.8/24")
    cid = await asyncio.wait_for(executor.create(t), 30)  # created, not started
    first = engine.networks.get(engine_network_name(net.ID)).id
    agent.apply([], [net.ID])  # the node leaves and is back at once: nothing is torn down
    await asyncio.sleep(0.2)
    agent.apply([state], [])
    assert engine.networks.get(engine_network_name(net.ID)).id == first

    agent.apply([], [net.ID])  # it leaves for longer: the removal is tried, and refused ...
    await wait_for_value(lambda: net.ID in agent._held_since, True, 10)
    assert engine.networks.get(engine_network_name(net.ID)).id == first  # ... while the container names it
    agent.apply([state], [])  # back: the container starts on it
    await executor.start(t, cid)
    assert engine.containers.get(cid).status == "running"

    agent.apply([], [net.ID])  # left with the container gone: the network goes
    await executor.remove(cid)
    await wait_gone(vxlan_name(net.ID), 15)
    with pytest.raises(docker.errors.NotFound):
        engine.networks.get(engine_network_name(net.ID))


async def test_what_holds_an_overlapping_subnet_is_named_when_it_cannot_go(plumbed: tuple) -> None:
    """The engine refuses a network whose subnet overlaps one of its own. What Shoal cannot clear
    away is named in the task's error, so that the user knows what to remove; once it is gone, the
    network is made at the next try."""
    agent, executor, net, prefix, engine = plumbed
    state = NetworkState(network=net, node_address=f"{prefix}.250/24")
    # Somebody's own network on the subnet: not Shoal's to remove.
    theirs = engine.networks.create("ovtest-theirs-" + new_id()[:6], driver="bridge",
                                    ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=f"{prefix}.0/24")]))
    try:
        said = rf"its subnet {prefix}\.0/24 overlaps engine network {theirs.name}, not made by Shoal"
        await create_fails(agent, executor, state, task(agent.node_id, net, "eps", 1, f"{prefix}.9/24"), said)
    finally:
        theirs.remove()

    # Left by a node that is gone, with a (stopped) container still on it: kept, and named.
    agent.apply([], [net.ID])
    stale, gone = await left_by_a_gone_node(executor, prefix)
    leftover = engine.containers.create(IMAGE, ["true"], name="ovtest-leftover-" + new_id()[:6],
                                        network=engine_network_name(stale.ID), labels={"shoal.node.id": gone})
    try:
        await asyncio.sleep(LEAVE_GRACE_S + 0.5)
        t = task(agent.node_id, net, "eps", 2, f"{prefix}.10/24")
        said = rf"made for network ovtest of node {gone}\), still used by container {leftover.name}"
        await create_fails(agent, executor, state, t, said)
    finally:
        leftover.remove(force=True)
    await wait_for_value(lambda: net.ID in agent._errors, False, 15)  # the next try: the stale network goes
    cid = await asyncio.wait_for(executor.create(t), 30)
    await executor.start(t, cid)
    assert engine.containers.get(cid).status == "running"
    with pytest.raises(docker.errors.NotFound):
        engine.networks.get(engine_network_name(stale.ID))
