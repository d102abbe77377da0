"""The ingress network: what the routing mesh runs on, and which services and tasks use it.

As in Swarm, ``swarm init`` makes one overlay network named ``ingress`` (``Spec.Ingress``). A task
of a service that publishes a port in ingress mode gets an address on it (after its own networks),
and while any service publishes such a port every node has an address on it too: each node's
kernel forwards a published port to those task addresses (agent/network/mesh.py), whatever node
they run on. While no service publishes one, nodes are not put on it, so a cluster that never
publishes pays nothing for it (the 1,000-node benchmark included).

Swarm's default is 10.0.0.0/24; one /24 holds 254 nodes and tasks, far fewer than the 1,000 nodes
Shoal aims at, so Shoal's default is Docker 1.12's 10.255.0.0/16 (``docker network create --ingress
--subnet …`` after removing it picks another).
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.dispatcher.protocol import PublishedPort
from shoal.models import Endpoint, Network, Service, Task

INGRESS_NAME = "ingress"
INGRESS_SUBNET = "10.255.0.0/16"


def find_ingress(networks: Iterable[Network]) -> Network | None:
    return next((n for n in networks if n.Spec.Ingress), None)


def endpoint_ingress_ports(ep: Endpoint | None) -> tuple[PublishedPort, ...]:
    """The ingress-mode ports of an endpoint that have a published port (the allocated ``Ports``
    win over the spec's, which may still ask for a dynamic one)."""
    if ep is None:
        return ()
    ports = ep.Ports if ep.Ports is not None else (ep.Spec.Ports if ep.Spec is not None else None)
    return tuple(
        PublishedPort(protocol=p.Protocol or "tcp", port=p.PublishedPort, target_port=p.TargetPort)
        for p in ports or ()
        if p.PublishMode == "ingress" and p.PublishedPort and p.TargetPort
    )


def service_ingress_ports(svc: Service | None) -> tuple[PublishedPort, ...]:
    return endpoint_ingress_ports(svc.Endpoint) if svc is not None else ()


def task_on_ingress(task: Task) -> bool:
    """Whether a task gets an ingress address: its endpoint publishes a port in ingress mode."""
    return bool(endpoint_ingress_ports(task.Endpoint))
