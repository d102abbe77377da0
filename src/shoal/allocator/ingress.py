"""The ingress network: what the routing mesh runs on, and which services and tasks use it.

As in Swarm, ``swarm init`` makes one overlay network named ``ingress`` (``Spec.Ingress``). A task
of a service that publishes a port in ingress mode gets an address on it (after its own networks),
and while any service publishes such a port every node has an address on it too: each node's
kernel forwards a published port to those task addresses (agent/network/mesh.py), whatever node
they run on. While no service publishes one, nodes are not put on it, so a cluster that never
publishes pays nothing for it (the 1,000-node benchmark included).

Swarm's default is 10.0.0.0/24; one /24 holds 254 nodes and tasks, far fewer than the 1,000 nodes
Shoal aims at, so Shoal's default is Docker 1.12's 10.255.0.0/16, or the next /16 down when the
initialising host already routes it (another swarm's ingress on the same engine: the engine refuses
overlapping bridge networks) or resolves names through it (a name server at 10.255.255.53 would
otherwise be routed onto the ingress bridge). ``docker network create --ingress --subnet …`` after removing it picks
any other.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from shoal.dispatcher.protocol import PublishedPort
from shoal.models import Endpoint, Network, Service, Task

log = logging.getLogger(__name__)

INGRESS_NAME = "ingress"
INGRESS_SUBNET = "10.255.0.0/16"
_CANDIDATES = [f"10.{b}.0.0/16" for b in range(255, 239, -1)]


def choose_ingress_subnet(routed: Iterable[str]) -> str:
    """The first candidate /16 (10.255, 10.254, …, 10.240) that overlaps none of ``routed`` (the
    host's IPv4 route destinations); the default when all of them do."""
    nets = []
    for r in routed:
        try:
            nets.append(ipaddress.IPv4Network(r, strict=False))
        except ValueError:
            continue
    nets = [n for n in nets if n.prefixlen > 0]  # the default route overlaps everything
    for cand in _CANDIDATES:
        c = ipaddress.IPv4Network(cand)
        if not any(c.overlaps(n) for n in nets):
            return cand
    return INGRESS_SUBNET


def host_routes() -> list[str]:
    """This host's IPv4 route destinations (main table), for :func:`choose_ingress_subnet`."""
    from pyroute2 import IPRoute  # netlink: only the manager's init needs it

    out = []
    try:
        with IPRoute() as ipr:
            for r in ipr.get_routes(family=2):
                dst = r.get_attr("RTA_DST")
                if dst:
                    out.append(f"{dst}/{r['dst_len']}")
    except OSError as e:
        log.warning("could not read this host's routes: %s", e)
    return out


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
