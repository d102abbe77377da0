"""Checks of the Aliyun load-balancer and routing labels (``aliyun.lb.port_*``, ``aliyun.routing.*``).

At create and update, before anything is written: a malformed label, a port the service does not
publish, or a front port / hostname another service already holds is a 400 naming the label — not a
listener that haproxy refuses later, on the leader, where nobody reads it.
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.errors import InvalidArgument
from shoal.lbroute.labels import (
    LB_PREFIX,
    ROUTING_PREFIX,
    LabelError,
    ServiceRouting,
    is_routing_label,
    parse,
    router_port,
)
from shoal.lbroute.plan import match_port
from shoal.models import ServiceSpec
from shoal.store import MemoryStore


def _parse(spec: ServiceSpec) -> ServiceRouting:
    try:
        return parse(spec.Labels)
    except LabelError as e:
        raise InvalidArgument(f"label {e}") from None


def check_routing_labels(spec: ServiceSpec) -> None:
    """400 for a malformed label or an ``aliyun.lb.port_<p>`` whose port the service does not publish."""
    cfg = _parse(spec)
    ports = spec.EndpointSpec.Ports if spec.EndpointSpec is not None else None
    for b in cfg.bindings:
        if match_port(b.port, ports) is None:
            raise InvalidArgument(
                f"label {LB_PREFIX}{b.port}: the service publishes no TCP port {b.port} (publish it, e.g. "
                f"--publish {b.port}:{b.port}: the load balancer sends to the published port)")
    if cfg.routes and not spec.TaskTemplate.Networks and not spec.Networks:
        unpublished = sorted({r.port for r in cfg.routes if not any(
            p.TargetPort == r.port and p.PublishedPort and p.PublishMode != "host" for p in ports or ())})
        if unpublished:
            raise InvalidArgument(
                f"label {ROUTING_PREFIX}{unpublished[0]}: the service is on no overlay network and does not publish "
                f"port {unpublished[0]}, so the router cannot reach its tasks (attach a network)")


def check_routing_conflicts(store: MemoryStore, specs: Iterable[ServiceSpec]) -> None:
    """400 if one of ``specs`` (about to be written; they replace the stored services of their names)
    wants a load balancer port or a hostname another service holds, or the router's own port."""
    specs = [s for s in specs if any(is_routing_label(k) for k in s.Labels or ())]
    if not specs:  # the common case costs nothing: no walk over every service
        return
    writing = {s.Name for s in specs}
    fronts: dict[int, tuple[str, str]] = {}  # front port -> (lb, service)
    hosts: dict[tuple[str, str], str] = {}  # (host, path) -> service
    published: dict[int, str] = {}  # ingress-published port -> service
    for svc in store.list("service"):
        if svc.Spec.Name in writing:
            continue
        for p in (svc.Endpoint.Ports if svc.Endpoint is not None else None) or ():
            if p.PublishedPort and p.PublishMode != "host":
                published[p.PublishedPort] = svc.Spec.Name
        try:
            cfg = parse(svc.Spec.Labels)
        except LabelError:
            continue
        for b in cfg.bindings:
            fronts[b.front] = (b.lb, svc.Spec.Name)
        for r in cfg.routes:
            hosts[(r.host, r.path)] = svc.Spec.Name
    rport = router_port()
    for spec in specs:
        cfg = _parse(spec)
        own = {p.PublishedPort for p in (spec.EndpointSpec.Ports if spec.EndpointSpec else None) or ()}
        for b in cfg.bindings:
            key = f"label {LB_PREFIX}{b.port}"
            if b.front == rport:
                raise InvalidArgument(f"{key}: port {b.front} is the HTTP router's (SHOAL_ROUTER_PORT)")
            held = fronts.get(b.front)
            if held is not None and held != (b.lb, spec.Name):
                raise InvalidArgument(f"{key}: port {b.front} is already load balancer {held[0]}'s, for service "
                                      f"{held[1]}")
            fronts[b.front] = (b.lb, spec.Name)
            # The mesh answers a published port on every node before any listener sees it: a front
            # port that is another service's published port would reach that other service.
            if b.front in published and b.front not in own:
                raise InvalidArgument(f"{key}: port {b.front} is published by service {published[b.front]} (the "
                                      "routing mesh answers it on every node)")
        for r in cfg.routes:
            held_by = hosts.get((r.host, r.path))
            if held_by is not None and held_by != spec.Name:
                raise InvalidArgument(f"label {ROUTING_PREFIX}{r.port}: {r.host}{r.path} is already routed to "
                                      f"service {held_by}")
            hosts[(r.host, r.path)] = spec.Name
