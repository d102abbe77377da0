"""Published ports: conflict checks against other services and dynamic ingress allocation.

Ingress ports are cluster-wide (the routing mesh listens on every node), so a published port and
protocol belong to one service. Host-mode ports may repeat across services (the scheduler keeps
them apart per node) but may not reuse a port another service publishes through ingress.
A port asked for as 0 in ingress mode gets the lowest free one in 30000-32767, and keeps it across
updates of the same service.
"""

from __future__ import annotations

import msgspec

from shoal.allocator.ingress import find_ingress
from shoal.controlapi.errors import invalid
from shoal.models import Endpoint, EndpointSpec, EndpointVirtualIP, PortConfig, Service, ServiceSpec
from shoal.store import MemoryStore

DYNAMIC_PORTS = range(30000, 32768)


def _published(svc: Service) -> list[PortConfig]:
    """Every port a service holds: its spec's and its allocated ones (which include dynamic ports)."""
    out = list(svc.Spec.EndpointSpec.Ports or ()) if svc.Spec.EndpointSpec else []
    if svc.Endpoint is not None and svc.Endpoint.Ports:
        out.extend(svc.Endpoint.Ports)
    return out


def _check_conflicts(store: MemoryStore, ports: list[PortConfig], service_id: str | None) -> set[tuple[int, str]]:
    """Raise on a clash; return the (port, protocol) pairs other services hold through ingress."""
    ingress = {(p.PublishedPort, p.Protocol) for p in ports if p.PublishMode == "ingress" and p.PublishedPort}
    host = {(p.PublishedPort, p.Protocol) for p in ports if p.PublishMode == "host" and p.PublishedPort}
    dynamic = any(p.PublishMode == "ingress" and not p.PublishedPort for p in ports)
    taken: set[tuple[int, str]] = set()
    if not (ingress or host or dynamic):
        return taken
    for svc in store.list("service"):
        if svc.ID == service_id:
            continue
        for p in _published(svc):
            if not p.PublishedPort:
                continue
            key = (p.PublishedPort, p.Protocol)
            if p.PublishMode == "ingress":
                taken.add(key)
                if key in ingress or key in host:
                    raise invalid(
                        f"port '{p.PublishedPort}' is already in use by service '{svc.Spec.Name}' "
                        f"({svc.ID}) as an ingress port"
                    )
            elif p.PublishMode == "host":
                # Not a conflict with this service's host ports (two services may share a host port
                # on different nodes), but never hand it out as a dynamic ingress port.
                taken.add(key)
                if key not in ingress:
                    continue
                raise invalid(
                    f"port '{p.PublishedPort}' is already in use by service '{svc.Spec.Name}' "
                    f"({svc.ID}) as a host-published port"
                )
    return taken


def _previous_dynamic(old: Service | None) -> dict[tuple[str, int, str], int]:
    """Ports this service was given dynamically before, by (name, target port, protocol)."""
    if old is None or old.Endpoint is None or not old.Endpoint.Ports:
        return {}
    asked = {
        (p.Name, p.TargetPort, p.Protocol)
        for p in (old.Spec.EndpointSpec.Ports or () if old.Spec.EndpointSpec else ())
        if p.PublishMode == "ingress" and not p.PublishedPort
    }
    return {
        (p.Name, p.TargetPort, p.Protocol): p.PublishedPort
        for p in old.Endpoint.Ports
        if p.PublishMode == "ingress" and (p.Name, p.TargetPort, p.Protocol) in asked
    }


def allocate_endpoint(store: MemoryStore, spec: ServiceSpec, old: Service | None) -> Endpoint:
    """The service's Endpoint for ``spec``: ports with their published ports assigned.

    Raises before anything is written when a port is taken or the dynamic range is exhausted.
    """
    ep_spec = spec.EndpointSpec if spec.EndpointSpec is not None else EndpointSpec()
    ports = list(ep_spec.Ports or ())
    if any(p.PublishMode == "ingress" for p in ports) and find_ingress(store.list("network")) is None:
        raise invalid(
            "service needs ingress network, but no ingress network is present: create one with "
            "'docker network create --ingress -d overlay ingress', or publish with mode=host"
        )
    taken = _check_conflicts(store, ports, old.ID if old else None)
    used = taken | {(p.PublishedPort, p.Protocol) for p in ports if p.PublishedPort}
    reuse = _previous_dynamic(old)
    allocated: list[PortConfig] = []
    cursor = {proto: DYNAMIC_PORTS.start for proto in ("tcp", "udp", "sctp")}
    for p in ports:
        if p.PublishMode != "ingress" or p.PublishedPort:
            allocated.append(p)
            continue
        port = reuse.get((p.Name, p.TargetPort, p.Protocol), 0)
        if not port or (port, p.Protocol) in used:
            port = cursor[p.Protocol]
            while port in DYNAMIC_PORTS and (port, p.Protocol) in used:
                port += 1
            if port not in DYNAMIC_PORTS:
                raise invalid("could not allocate a published port: the dynamic range 30000-32767 is exhausted")
            cursor[p.Protocol] = port + 1
        used.add((port, p.Protocol))
        allocated.append(msgspec.structs.replace(p, PublishedPort=port))
    return Endpoint(Spec=ep_spec, Ports=allocated or None, VirtualIPs=_kept_vips(spec, old))


def _kept_vips(spec: ServiceSpec, old: Service | None) -> list[EndpointVirtualIP]:
    """The old VIPs on networks the service stays on: an update keeps its addresses (and the
    allocator need not write them back, which would bump the service's version again)."""
    if old is None or old.Endpoint is None or not old.Endpoint.VirtualIPs:
        return []
    nets = {n.Target for n in (spec.TaskTemplate.Networks or spec.Networks or ())}
    return [v for v in old.Endpoint.VirtualIPs if v.NetworkID in nets]
