"""What the load balancers and the router must do, computed from the store, and rendered for haproxy.

A :class:`Plan` is plain data (listeners, routes, their servers), so that the config text is a pure
function of it and unit tests need neither a store nor haproxy. Backends:

- a load balancer's listener sends to every READY node's address on the published port: the
  routing mesh answers a published port on every node (or, for a host-mode port, to the nodes
  running a task that takes traffic, where the engine bound it);
- a route sends to the container port of each task that takes traffic, at its address on the
  service's first overlay network (reachable from the leader's host through that network's bridge
  when the leader's node is on the network) — or, if the service publishes that container port
  through the mesh, to every node's published port instead, which every node can reach.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shoal.extensions import is_standby
from shoal.lbroute.labels import LbBinding, Route, parse
from shoal.models import Node, NodeState, PortConfig, Service, Task, TaskState
from shoal.store import MemoryStore

_RUNNING = TaskState.RUNNING.order


@dataclass(frozen=True, order=True)
class Server:
    name: str
    addr: str
    port: int


@dataclass(frozen=True, order=True)
class Listener:
    lb: str
    front: int
    scheme: str  # tcp | http
    service: str  # the service's name, for comments and logs
    servers: tuple[Server, ...]


@dataclass(frozen=True, order=True)
class RouteTarget:
    host: str
    path: str
    service: str
    backend: str  # one haproxy backend per (service, container port)
    sticky: bool
    servers: tuple[Server, ...]


@dataclass(frozen=True)
class Plan:
    listeners: tuple[Listener, ...] = ()
    routes: tuple[RouteTarget, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.listeners or self.routes)


def match_port(port: int, ports: list[PortConfig] | None) -> PortConfig | None:
    """The TCP port config an ``aliyun.lb.port_<port>`` label means: the one published on ``port``,
    else the one whose container port it is (Aliyun's reading) and which is published."""
    tcp = [p for p in ports or () if p.Protocol == "tcp"]
    for p in tcp:
        if p.PublishedPort == port:
            return p
    for p in tcp:
        if p.TargetPort == port:
            return p
    return None


def serving(task: Task) -> bool:
    """A task takes traffic as in the routing mesh's records (dispatcher/netstate.py): running
    (so healthy, if checked), not being stopped, not a blue-green standby."""
    return task.Status.State is TaskState.RUNNING and task.DesiredState.order <= _RUNNING and not is_standby(task)


def _node_addr(node: Node) -> str:
    addr = node.Status.Addr
    return "127.0.0.1" if addr in ("", "0.0.0.0") else addr


def _task_addr(task: Task) -> str | None:
    """The task's address on its first network other than ingress (bare IP), if any."""
    for a in task.NetworksAttachments or ():
        if a.Addresses and not a.Network.Spec.Ingress:
            return a.Addresses[0].split("/", 1)[0]
    return None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def build(store: MemoryStore, services: list[Service] | None = None) -> Plan:
    """The plan for the current store (``services``: those with labels, if the caller keeps them)."""
    nodes = [n for n in store.list("node") if n.Status.State is NodeState.READY]
    node_by_id = {n.ID: n for n in nodes}
    everywhere = tuple(sorted(Server(f"node-{n.ID[:12]}", _node_addr(n), 0) for n in nodes))
    listeners: list[Listener] = []
    routes: list[RouteTarget] = []
    for svc in services if services is not None else store.list("service"):
        try:
            cfg = parse(svc.Spec.Labels)
        except ValueError:
            continue  # checked at create/update; one written by an older version is skipped, not fatal
        if not cfg:
            continue
        tasks = [t for t in store.tasks_of_service(svc.ID) if serving(t) and t.NodeID in node_by_id]
        ports = svc.Endpoint.Ports if svc.Endpoint is not None else None
        for b in cfg.bindings:
            servers = _lb_servers(b, ports, everywhere, tasks, node_by_id)
            listeners.append(Listener(b.lb, b.front, b.scheme, svc.Spec.Name, servers))
        for r in cfg.routes:
            servers = _route_servers(r, ports, everywhere, tasks)
            routes.append(RouteTarget(r.host, r.path, svc.Spec.Name, _safe(f"{svc.Spec.Name}_{svc.ID[:8]}_{r.port}"),
                                      cfg.sticky, servers))
    return Plan(tuple(sorted(listeners)), tuple(sorted(routes)))


def _lb_servers(b: LbBinding, ports: list[PortConfig] | None, everywhere: tuple[Server, ...], tasks: list[Task],
                node_by_id: dict[str, Node]) -> tuple[Server, ...]:
    pc = match_port(b.port, ports)
    if pc is None or not pc.PublishedPort:
        return ()
    if pc.PublishMode == "host":
        on = {t.NodeID for t in tasks}
        return tuple(sorted(Server(f"node-{nid[:12]}", _node_addr(node_by_id[nid]), pc.PublishedPort) for nid in on))
    return tuple(Server(s.name, s.addr, pc.PublishedPort) for s in everywhere)


def _route_servers(r: Route, ports: list[PortConfig] | None, everywhere: tuple[Server, ...],
                   tasks: list[Task]) -> tuple[Server, ...]:
    meshed = [p for p in ports or () if p.Protocol == "tcp" and p.TargetPort == r.port and p.PublishedPort
              and p.PublishMode != "host"]
    if meshed:
        return tuple(Server(s.name, s.addr, meshed[0].PublishedPort) for s in everywhere)
    out = []
    for t in tasks:
        addr = _task_addr(t)
        if addr is not None:
            out.append(Server(f"task-{t.ID[:12]}", addr, r.port))
    return tuple(sorted(out))


# --------------------------------------------------------------------------- haproxy's config


def render(plan: Plan, *, router_port: int, bind: str = "", admin_socket: str = "") -> str:
    """haproxy.cfg for ``plan``. Unknown Host headers get a 404 from the router; a known host whose
    service has no task taking traffic gets haproxy's 503."""
    out = [
        "# Written by Shoal (lbroute): load balancers (aliyun.lb.port_*) and the HTTP router",
        "# (aliyun.routing.port_*). Rewritten from the store on every change; do not edit.",
        "global",
        "    log stderr format short local0 warning",
        # A reload must not leave old workers behind for ever with a client that never hangs up.
        "    hard-stop-after 10m",
    ]
    if admin_socket:
        # The new worker of a reload takes the listening sockets over from the old one: no refused
        # connection during a reload.
        out.append(f"    stats socket {admin_socket} mode 600 level admin expose-fd listeners")
    out += [
        "defaults",
        "    log global",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout http-request 30s",
        "    retries 2",
        "    option redispatch",
        "",
    ]
    for ls in plan.listeners:
        name = _safe(f"lb_{ls.lb}_{ls.front}")
        out += [
            f"# load balancer {ls.lb}, port {ls.front}: service {ls.service}",
            f"frontend {name}",
            f"    bind {bind}:{ls.front}",
            f"    mode {ls.scheme}",
            f"    default_backend {name}",
            f"backend {name}",
            f"    mode {ls.scheme}",
            "    balance roundrobin",
        ]
        out += [f"    server {s.name} {s.addr}:{s.port} check inter 2s fall 2 rise 1" for s in ls.servers]
        out.append("")
    if plan.routes:
        out += [
            "frontend router",
            f"    bind {bind}:{router_port}",
            "    mode http",
            "    option forwardfor",
            "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
        ]
        # Longest path first, so /api/v2 wins over /api and both over the bare host.
        for rt in sorted(plan.routes, key=lambda r: (-len(r.path), r.host)):
            cond = f"{{ var(txn.host) -m str {rt.host} }}"
            if rt.path:
                cond += f" {{ path -m beg {rt.path}/ }} || {cond} {{ path -m str {rt.path} }}"
            out.append(f"    use_backend {rt.backend} if {cond}")
        out += ["    default_backend no_route", "",
                "backend no_route",
                "    mode http",
                '    http-request return status 404 content-type text/plain string "no route for this host\\n"',
                ""]
        done: set[str] = set()
        for rt in plan.routes:
            if rt.backend in done:
                continue
            done.add(rt.backend)
            out += [f"# service {rt.service}", f"backend {rt.backend}", "    mode http", "    balance roundrobin"]
            if rt.sticky:
                out.append("    cookie SHOAL_ROUTE insert indirect nocache")
            for s in rt.servers:
                cookie = f" cookie {s.name}" if rt.sticky else ""
                out.append(f"    server {s.name} {s.addr}:{s.port}{cookie}")
            out.append("")
    return "\n".join(out) + "\n"
