"""The ingress network's subnet at init, and every node's address on it while a service publishes."""

from __future__ import annotations

import msgspec

from shoal.allocator import NetworkAllocator
from shoal.allocator.ingress import INGRESS_SUBNET, choose_ingress_subnet, find_ingress
from shoal.controlapi.networks import create_network, ingress_spec
from shoal.models import Endpoint, EndpointSpec, PortConfig
from shoal.orchestrator.testutils import make_node, make_service, make_store
from shoal.store import Action, Event


def test_the_ingress_subnet_skips_what_the_host_already_routes() -> None:
    assert choose_ingress_subnet([]) == INGRESS_SUBNET == "10.255.0.0/16"
    # The default route and host routes elsewhere change nothing.
    assert choose_ingress_subnet(["0.0.0.0/0", "192.168.1.0/24", "10.77.0.254/32"]) == "10.255.0.0/16"
    # Another swarm's ingress bridge on this engine (and a route inside the next /16) are skipped.
    assert choose_ingress_subnet(["10.255.0.0/16", "10.254.7.0/24", "bogus"]) == "10.253.0.0/16"
    # The host's name server (reached over its default route) must not land on the ingress bridge.
    assert choose_ingress_subnet(["0.0.0.0/0", "10.255.255.53/32"]) == "10.254.0.0/16"
    # A route covering every candidate: the default (the engine then says what overlaps).
    assert choose_ingress_subnet(["10.0.0.0/8"]) == INGRESS_SUBNET


def test_every_node_gets_an_ingress_address_while_a_service_publishes() -> None:
    store = make_store()
    ingress = create_network(store, ingress_spec())
    a = make_node(store, "a")
    alloc = NetworkAllocator(store)
    alloc.reconcile_all()
    assert store.get("network", ingress.ID).NodeAddresses is None  # nobody publishes: nothing

    port = PortConfig(TargetPort=80, PublishedPort=8080)
    svc = make_service(store, "web", EndpointSpec=EndpointSpec(Ports=[port]))
    with store.tx() as tx:
        tx.update("service", msgspec.structs.replace(svc, Endpoint=Endpoint(Spec=svc.Spec.EndpointSpec, Ports=[port])))
    alloc.reconcile_all()
    assert list(store.get("network", ingress.ID).NodeAddresses) == [a.ID]
    b = make_node(store, "b")  # joins later: its address comes with its node event
    alloc.handle([Event("node", Action.CREATE, b, None, store.revision)])
    addrs = find_ingress(store.list("network")).NodeAddresses
    assert set(addrs) == {a.ID, b.ID} and len(set(addrs.values())) == 2
    assert all(v.startswith("10.255.255.") for v in addrs.values())  # from the top of the range
