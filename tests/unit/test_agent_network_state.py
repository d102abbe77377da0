"""NetworkAgent bookkeeping without an engine: what a message makes desired or removed, what the
DNS directory holds, and how a container create is configured once its networks are plumbed."""

from __future__ import annotations

import msgspec
import pytest

from shoal.agent.network import mesh
from shoal.agent.network.overlay import OverlayError, engine_network_body, vni_of
from shoal.agent.network.plumbing import NetworkAgent, _shape
from shoal.dispatcher.protocol import NetworkState, ServiceRecord
from shoal.dispatcher.protocol import PublishedPort as PortSpec
from shoal.models import (
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

TS = "2026-11-21T00:00:00Z"


def network(net_id: str, name: str, subnet: str, vni: int) -> Network:
    return Network(
        ID=net_id, Version=Version(1), CreatedAt=TS, UpdatedAt=TS, Spec=NetworkSpec(Name=name),
        DriverState=Driver(Name="overlay", Options={"com.docker.network.driver.overlay.vxlanid_list": str(vni)}),
        IPAMOptions=IPAMOptions(Configs=[IPAMConfig(Subnet=subnet, Gateway=subnet.replace("0/24", "1"))]),
    )


NET_A = network("a" * 25, "front", "10.0.1.0/24", 4097)
NET_B = network("b" * 25, "back", "10.0.2.0/24", 4098)


def state(net: Network, node_addr: str, peers: list[str] | None = None, names: list[str] | None = None) -> NetworkState:
    recs = [ServiceRecord(service_id=n, name=n, addrs=["10.0.1.9"]) for n in names or []]
    return NetworkState(network=net, node_address=node_addr, peers=peers or [], records=recs)


def task(*atts: tuple[Network, str]) -> Task:
    return Task(
        ID="t1", Version=Version(1), CreatedAt=TS, UpdatedAt=TS, Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="x")),
        ServiceID="s1", Status=TaskStatus(State=TaskState.ASSIGNED), DesiredState=TaskState.RUNNING,
        NetworksAttachments=[NetworkAttachment(Network=n, Addresses=[a]) for n, a in atts],
    )


@pytest.fixture
def agent() -> NetworkAgent:
    a = NetworkAgent("unix:///nonexistent.sock", "node1", "10.77.0.1", ready_timeout_s=0.2)
    a._kick = lambda: None  # type: ignore[method-assign]  # no engine here: bookkeeping only
    return a


def test_delta_adds_and_removes(agent: NetworkAgent) -> None:
    agent.apply([state(NET_A, "10.0.1.250/24", names=["web"])], [])
    agent.apply([state(NET_B, "10.0.2.250/24")], [])
    assert set(agent._desired) == {NET_A.ID, NET_B.ID}
    assert agent.directory.lookup("web", [NET_A.ID]) == ["10.0.1.9"]
    agent.apply([], [NET_A.ID])
    assert set(agent._desired) == {NET_B.ID}
    assert set(agent._removing) == {NET_A.ID}
    assert agent.directory.lookup("web", [NET_A.ID]) is None


def test_full_set_removes_what_it_does_not_name_and_sweeps_the_engine(agent: NetworkAgent) -> None:
    agent.apply([state(NET_A, "10.0.1.250/24"), state(NET_B, "10.0.2.250/24")], [])
    agent.apply([state(NET_B, "10.0.2.250/24")], [], full=True)
    assert set(agent._desired) == {NET_B.ID}
    assert set(agent._removing) == {NET_A.ID}
    assert agent._sweep is True


def test_a_network_named_again_is_no_longer_removed(agent: NetworkAgent) -> None:
    agent.apply([state(NET_A, "10.0.1.250/24")], [])
    agent.apply([], [NET_A.ID])
    agent.apply([state(NET_A, "10.0.1.250/24")], [])
    assert not agent._removing
    assert NET_A.ID in agent._desired


def test_records_alone_do_not_change_the_plumbing_shape() -> None:
    before = state(NET_A, "10.0.1.250/24", ["10.77.0.2"], names=["web"])
    after = state(NET_A, "10.0.1.250/24", ["10.77.0.2"], names=["web", "db"])
    assert _shape(before) == _shape(after)
    assert _shape(before) != _shape(state(NET_A, "10.0.1.250/24", ["10.77.0.2", "10.77.0.3"]))


def test_engine_network_body_uses_the_node_address_as_gateway() -> None:
    body = engine_network_body(state(NET_A, "10.0.1.250/24"), "node1")
    assert body["Driver"] == "bridge"
    assert body["IPAM"]["Config"] == [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.250"}]
    assert body["Options"]["com.docker.network.bridge.name"] == "shl-aaaaaaaaaa"
    assert body["Options"]["com.docker.network.driver.mtu"] == "1450"
    assert body["Labels"]["shoal.network.node"] == "node1"
    assert vni_of(NET_A) == 4097


async def test_configure_puts_the_first_network_in_the_body_and_returns_the_rest(agent: NetworkAgent) -> None:
    sa, sb = state(NET_A, "10.0.1.250/24"), state(NET_B, "10.0.2.250/24")
    agent.apply([sa, sb], [])
    agent._plumbed = {NET_A.ID: _shape(sa), NET_B.ID: _shape(sb)}  # as a pass would leave it
    port = await agent.responder.listen(NET_A.ID, "127.0.0.1", 0)
    assert port
    try:
        body: dict = {"HostConfig": {"Dns": ["9.9.9.9"]}}
        extra = await agent.configure(task((NET_A, "10.0.1.5/24"), (NET_B, "10.0.2.5/24")), body)
    finally:
        await agent.close()
    assert body["HostConfig"]["NetworkMode"] == "shl-aaaaaaaaaa"
    assert body["HostConfig"]["Dns"] == ["10.0.1.250", "9.9.9.9"]
    endpoint = {"IPAMConfig": {"IPv4Address": "10.0.1.5"}}
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"shl-aaaaaaaaaa": endpoint}}
    assert extra == [(NET_B.ID, {"IPAMConfig": {"IPv4Address": "10.0.2.5"}})]
    # The container on A is also on B: its queries on A see B's names.
    assert agent.directory.scope(NET_A.ID, "10.0.1.5") == [NET_A.ID, NET_B.ID]


async def test_configure_waits_then_fails_for_a_network_whose_state_never_came(agent: NetworkAgent) -> None:
    with pytest.raises(OverlayError, match="has not arrived"):
        await agent.configure(task((NET_A, "10.0.1.5/24")), {})


async def test_configure_reports_a_plumbing_error(agent: NetworkAgent) -> None:
    agent.apply([state(NET_A, "10.0.1.250/24")], [])
    agent._errors[NET_A.ID] = "engine network shl-aaaaaaaaaa: pool overlaps"
    with pytest.raises(OverlayError, match="pool overlaps"):
        await agent.configure(task((NET_A, "10.0.1.5/24")), {})


async def test_a_task_without_attachments_is_left_alone(agent: NetworkAgent) -> None:
    body: dict = {"HostConfig": {}}
    assert await agent.configure(task(), body) == []
    assert body == {"HostConfig": {}}


INGRESS = msgspec.structs.replace(network("i" * 25, "ingress", "10.255.0.0/24", 4096),
                                  Spec=NetworkSpec(Name="ingress", Ingress=True))


class RecordingMesh(mesh.Mesh):
    """The kernel side replaced: records what the agent asks for, or fails like a node without nft."""

    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__()
        self.fail = fail
        self.calls: list[tuple[list[mesh.PublishedPort], list[mesh.VirtualService], str | None]] = []

    async def apply(self, ports: list[mesh.PublishedPort], vips: list[mesh.VirtualService],
                    ingress_bridge: str | None) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.append((ports, vips, ingress_bridge))


def published(net: Network, addrs: list[str]) -> NetworkState:
    rec = ServiceRecord(service_id="s1", name="web", addrs=addrs,
                        ports=[PortSpec(protocol="tcp", port=8080, target_port=80)])
    return NetworkState(network=net, node_address="10.255.0.250/24", records=[rec])


async def test_the_mesh_gets_ingress_ports_and_other_networks_vips_once_plumbed() -> None:
    kernel = RecordingMesh()
    agent = NetworkAgent("unix:///nonexistent.sock", "node1", "10.77.0.1", kernel=kernel)
    agent._kick = lambda: None  # type: ignore[method-assign]
    vip = NetworkState(network=NET_A, node_address="10.0.1.250/24", records=[
        ServiceRecord(service_id="s2", name="api", vip="10.0.1.2", addrs=["10.0.1.5", "10.0.1.6"]),
        ServiceRecord(service_id="s3", name="rr", addrs=["10.0.1.7"]),  # dnsrr: no VIP, nothing to balance
    ])
    ing = published(INGRESS, ["10.255.0.5"])
    agent.apply([vip, ing], [])
    assert not await agent._program_mesh()
    assert kernel.calls[-1] == ([], [], None)  # nothing plumbed yet: no bridge to send to
    agent._plumbed = {NET_A.ID: _shape(vip), INGRESS.ID: _shape(ing)}
    assert not await agent._program_mesh()
    ports, vips, bridge = kernel.calls[-1]
    assert ports == [mesh.PublishedPort("tcp", 8080, 80, ("10.255.0.5",), "web")]
    assert vips == [mesh.VirtualService("10.0.1.2", ("10.0.1.5", "10.0.1.6"), "api")]
    assert bridge == "shl-iiiiiiiiii"


async def test_without_nft_tasks_publishing_through_ingress_fail_with_a_clear_error() -> None:
    no_nft = mesh.MeshUnavailable("the routing mesh needs nftables: the nft binary is not installed")
    kernel = RecordingMesh(fail=no_nft)
    agent = NetworkAgent("unix:///nonexistent.sock", "node1", "10.77.0.1", kernel=kernel, ready_timeout_s=0.2)
    agent._kick = lambda: None  # type: ignore[method-assign]
    ing = published(INGRESS, [])
    agent.apply([ing], [])
    agent._plumbed = {INGRESS.ID: _shape(ing)}
    assert not await agent._program_mesh()  # not retried: nft does not appear by itself
    with pytest.raises(OverlayError, match="routing mesh here: the routing mesh needs nftables"):
        await agent.configure(task((INGRESS, "10.255.0.5/24")), {})


async def test_a_state_arriving_during_a_plumb_is_plumbed_even_with_the_shape_recorded_before(
        agent: NetworkAgent) -> None:
    """A node on the network leaves and joins again at once (docker-compose reconnects each container
    before its start): this node hears peers [a], then [], then [a]. The [] arrives and its plumb
    starts; the second [a] arrives while it runs. The kernel then holds [], and the [a] must be
    plumbed again although [a] is the shape recorded before."""
    plumbed: list[list[str]] = []

    async def plumb(st: NetworkState) -> None:  # what the kernel holds, in order
        plumbed.append(list(st.peers))
        if not st.peers:  # the join arrives while this plumb runs
            agent.apply([state(NET_A, "10.0.1.250/24", ["10.77.0.2"])], [])

    agent._plumb = plumb  # type: ignore[method-assign]
    agent.apply([state(NET_A, "10.0.1.250/24", ["10.77.0.2"])], [])
    await agent._plumb_all()
    agent.apply([state(NET_A, "10.0.1.250/24", [])], [])
    await agent._plumb_all()
    await agent._plumb_all()  # the pass the join's wake-up runs
    assert plumbed == [["10.77.0.2"], [], ["10.77.0.2"]]
