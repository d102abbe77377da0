"""Classic Swarm's container API over the engines of every node.

Every container of every node is one of the cluster's: ``docker ps`` lists them all (named
``<node>/<name>``, as classic Swarm did, with the node in ``docker inspect``), and every call about
one goes to the engine that holds it, through the manager's pipes (transport/tunnel.py,
api/engineproxy.py) — start, stop, kill, exec, attach, logs, cp, stats, wait, everything, including
the hijacked streams of ``docker run``/``docker exec -it``. ``docker run`` places its container with
the scheduler's filters (``constraint:``/``affinity:`` in ``Env``, resources, host ports) and the
fewest running containers, then creates it on that node's engine; a container so made is the engine's, as
in classic Swarm: it is not rescheduled when its node fails (a service is).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import quote

import msgspec
from aiohttp import web

from shoal.api import attach, engines
from shoal.api.auth import USER_KEY
from shoal.api.common import json_response
from shoal.api.engineproxy import relay
from shoal.api.engines import EngineError, Located, engine_call, fan_out, locate, node_info, node_name
from shoal.api.forward import to_leader
from shoal.errors import Conflict, InvalidArgument, ShoalError, Unavailable
from shoal.models import (
    ContainerSpec,
    Driver,
    EndpointSpec,
    HealthConfig,
    Mount,
    Node,
    PortConfig,
    ReplicatedService,
    ResourceLimits,
    ResourceRequirements,
    RestartCondition,
    RestartPolicy,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskSpec,
)
from shoal.netmode import engine_network_name
from shoal.scheduler.plan import candidates

_NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
RUNNING_TTL_S = 2.0  # how long a node's count of running containers is taken as it is
CONTAINER_FILTERS = ("ancestor", "before", "expose", "exited", "health", "id", "isolation", "is-task", "label",
                     "name", "network", "publish", "since", "status", "volume")  # and engines.NODE_FILTER


# --------------------------------------------------------------------------- create (placement)


def _list(value: Any, what: str) -> list[str] | None:
    """Docker accepts a string or a list of strings for Cmd/Entrypoint."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidArgument(f"json: cannot unmarshal {type(value).__name__} into Go struct field Config.{what}")


def _bind_mount(bind: str) -> Mount:
    """``src:dst[:opts]`` (``-v``); a source without ``/`` is a named volume."""
    parts = bind.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume specification: '{bind}'")
    opts = parts[2].split(",") if len(parts) > 2 else []
    kind = "bind" if parts[0].startswith("/") else "volume"
    return Mount(Type=kind, Source=parts[0], Target=parts[1], ReadOnly="ro" in opts)


def _ports(bindings: Any) -> list[PortConfig] | None:
    """``PortBindings`` (``-p``) → host-mode published ports: the container's node binds them."""
    if not bindings:
        return None
    out: list[PortConfig] = []
    for key, hosts in dict(bindings).items():
        port, _, proto = str(key).partition("/")
        try:
            target = int(port)
            for h in hosts or [{}]:
                raw = str((h or {}).get("HostPort") or "0")
                out.append(PortConfig(Protocol=proto or "tcp", TargetPort=target, PublishedPort=int(raw),
                                      PublishMode="host"))
        except ValueError:
            raise InvalidArgument(f"invalid port specification: {key}") from None
    return out


def _restart(policy: Any) -> RestartPolicy:
    """Docker's container restart policy as the swarm one (no policy: never restart)."""
    policy = policy or {}
    name = policy.get("Name") or "no"
    if name in ("always", "unless-stopped"):
        return RestartPolicy(Condition=RestartCondition.ANY)
    if name == "on-failure":
        retries = int(policy.get("MaximumRetryCount") or 0)
        return RestartPolicy(Condition=RestartCondition.ON_FAILURE, MaxAttempts=retries)
    if name == "no":
        return RestartPolicy(Condition=RestartCondition.NONE)
    raise InvalidArgument(f"invalid restart policy '{name}'")


def _hosts(extra: list[str] | None) -> list[str] | None:
    """``--add-host name:ip`` → swarm's ``IP name`` lines."""
    if not extra:
        return None
    out = []
    for entry in extra:
        host, sep, ip = entry.partition(":")
        if not sep or not host or not ip:
            raise InvalidArgument(f"invalid extra host: {entry}")
        out.append(f"{ip} {host}")
    return out


def spec_from_config(name: str, cfg: dict[str, Any]) -> ServiceSpec:
    """Docker's container config JSON → the one-task service spec the scheduler places (its filters
    read constraint:/affinity: in ``Env``, resources, host ports). Only placement reads it."""
    image = cfg.get("Image")
    if not image or not isinstance(image, str):
        raise InvalidArgument("image reference must be provided")
    host: dict[str, Any] = cfg.get("HostConfig") or {}
    mounts = [_bind_mount(b) for b in host.get("Binds") or ()]
    try:
        mounts += [msgspec.convert(mt, Mount) for mt in host.get("Mounts") or ()]
        health = msgspec.convert(cfg["Healthcheck"], HealthConfig) if cfg.get("Healthcheck") else None
    except msgspec.ValidationError as e:
        raise InvalidArgument(str(e)) from None
    stop_timeout = cfg.get("StopTimeout")
    cs = ContainerSpec(
        Image=image,
        Labels=cfg.get("Labels") or None,
        Command=_list(cfg.get("Entrypoint"), "Entrypoint"),
        Args=_list(cfg.get("Cmd"), "Cmd"),
        Hostname=cfg.get("Hostname") or "",
        Env=cfg.get("Env") or None,  # kept verbatim: the scheduler reads constraint:/affinity: here
        Dir=cfg.get("WorkingDir") or "",
        User=cfg.get("User") or "",
        Init=host.get("Init"),
        TTY=bool(cfg.get("Tty")),
        OpenStdin=bool(cfg.get("OpenStdin")),
        ReadOnly=bool(host.get("ReadonlyRootfs")),
        Mounts=mounts or None,
        StopSignal=cfg.get("StopSignal") or "",
        StopGracePeriod=int(stop_timeout) * 1_000_000_000 if isinstance(stop_timeout, int) else None,
        Healthcheck=health,
        Hosts=_hosts(host.get("ExtraHosts")),
        CapabilityAdd=host.get("CapAdd") or None,
        CapabilityDrop=host.get("CapDrop") or None,
    )
    limits = ResourceLimits(
        NanoCPUs=int(host.get("NanoCpus") or 0),
        MemoryBytes=int(host.get("Memory") or 0),
        Pids=max(int(host.get("PidsLimit") or 0), 0),
    )
    log_cfg = host.get("LogConfig") or {}
    ports = _ports(host.get("PortBindings"))
    return ServiceSpec(
        Name=name,
        TaskTemplate=TaskSpec(
            ContainerSpec=cs,
            Resources=ResourceRequirements(Limits=limits) if limits != ResourceLimits() else None,
            RestartPolicy=_restart(host.get("RestartPolicy")),
            LogDriver=Driver(Name=log_cfg["Type"], Options=log_cfg.get("Config") or None)
            if log_cfg.get("Type") else None,
        ),
        Mode=ServiceMode(Replicated=ReplicatedService(Replicas=1)),
        EndpointSpec=EndpointSpec(Mode="vip", Ports=ports) if ports else None,
    )


async def create(request: web.Request) -> web.Response:
    """``POST /containers/create``: place, then create on the chosen node's engine."""
    m = engines.manager(request)
    name = request.query.get("name", "").lstrip("/")
    if name and not _NAME_RE.match(name):
        raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    raw = await request.read()
    try:
        cfg = json.loads(raw or b"null")
    except ValueError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise InvalidArgument("Config cannot be empty in order to create a container")
    if getattr(m, "leader_api", None) is not None and _may_name_a_shoal_network(m, cfg):
        # Only the leader allocates a network address: a follower passes the whole create on.
        forwarded = await to_leader(request, m, user=str(request.get(USER_KEY, "")))
        if forwarded is not None:
            return forwarded
    spec = spec_from_config(name or "container", cfg)
    if name:
        await _name_free(request, name)
    fits, why = candidates(m.store, spec)
    ready = {n.ID: n for n in engines.engine_nodes(m)}
    choices = [nid for nid in fits if nid in ready]
    if not choices:
        raise Unavailable(f"Unable to find a node that satisfies the following conditions: {why or 'no ready node'}")
    idx = engines.index(request)
    async with idx.placing:  # one choice at a time, each counted before the next (compose creates at once)
        load = await _running(request, m, [ready[nid] for nid in choices])
        node = ready[min(choices, key=lambda nid: (load[nid], node_name(ready[nid])))]
        _count(idx, node.ID, +1)
    joined: list[Task] | None = None
    try:
        joined = await _join_networks(m, node, name, cfg)
        if joined is not None:
            raw = json.dumps(cfg).encode()
        ans = await engine_call(m, node, "POST", f"/containers/create?{request.query_string}", raw,
                                headers={"Content-Type": "application/json"})
    except BaseException:
        attach.detach(m, joined or [])
        _count(idx, node.ID, -1)
        raise
    if ans.status == 201:
        cid = str(ans.json().get("Id", ""))
        idx.learn(idx.containers, cid, node.ID)
        for t in joined or ():
            attach.set_container(m, t, cid)
    else:
        attach.detach(m, joined or [])
        _count(idx, node.ID, -1)
    return web.Response(status=ans.status, body=ans.body, content_type="application/json")


def _may_name_a_shoal_network(m: engines.EngineManager, cfg: dict[str, Any]) -> bool:
    """Whether the container names one of the swarm's networks, or a network this manager does not
    know yet: a follower's store trails the leader's by a moment, and a network just created through
    the leader (`docker network create` then `docker run --network`) must not go to the engine as an
    unknown name (the engine would create the container and fail its start, "network ... not found").
    The leader decides; a name it does not know either is the engine's business there."""
    host = cfg.get("HostConfig")
    mode = host.get("NetworkMode") if isinstance(host, dict) else None
    netcfg = cfg.get("NetworkingConfig")
    eps = netcfg.get("EndpointsConfig") if isinstance(netcfg, dict) else None
    names = [n for n in [mode, *(eps if isinstance(eps, dict) else ())] if isinstance(n, str) and n]
    return any(attach.shoal_network(m.store, n) is not None or attach.unknown_network(m.store, n) for n in names)


async def _join_networks(m: engines.EngineManager, node: Node, name: str, cfg: dict[str, Any]) -> list[Task] | None:
    """A container naming one of Shoal's overlay networks (``--network``, compose's networks) joins
    it as swarmkit's attachable networks are joined (api/attach.py): an attachment task holds its
    address, the node's agent plumbs the network, and ``cfg`` is rewritten to the node's engine
    network at that address. None when the container stays on the engine's own networks."""
    host = cfg.setdefault("HostConfig", {}) if isinstance(cfg.get("HostConfig"), dict | None) else None
    netcfg = cfg.get("NetworkingConfig") or {}
    eps = netcfg.get("EndpointsConfig") if isinstance(netcfg, dict) else None
    eps = eps if isinstance(eps, dict) else {}
    if host is None:
        raise InvalidArgument("json: cannot unmarshal HostConfig")
    mode = host.get("NetworkMode") or ""
    net = attach.shoal_network(m.store, mode) if isinstance(mode, str) else None
    if net is None:
        for key in eps:  # the SDK may name the network in EndpointsConfig only
            net = attach.shoal_network(m.store, key)
            if net is not None:
                mode = key
                break
    if net is None:
        return None
    if len(eps) > 1:
        raise InvalidArgument("Container cannot be connected to network endpoints: "
                              + ", ".join(sorted(eps)))  # the engine's rule for API 1.41 (connect the rest)
    given = eps.get(mode) or next(iter(eps.values()), None)
    aliases = [a for a in (given or {}).get("Aliases") or () if isinstance(a, str)]
    ep = attach.endpoint("", given)  # refuses a fixed address before anything is written
    task = attach.attach(m, node, net, "", name or "", aliases)
    try:
        await attach.wait_plumbed(m, node, net)
    except BaseException:
        attach.detach(m, [task])
        raise
    ep["IPAMConfig"] = {"IPv4Address": attach.address(task)}
    engine_net = engine_network_name(net.ID)
    host["NetworkMode"] = engine_net
    gw = attach.node_address(m, net, node)
    if gw:  # the node's DNS responder (on its address there) answers the network's names
        host["Dns"] = [gw] + [d for d in host.get("Dns") or [] if d != gw]
    cfg["NetworkingConfig"] = {"EndpointsConfig": {engine_net: ep}}
    return [task]


async def _running(request: web.Request, m: engines.EngineManager, nodes: list[Node]) -> dict[str, int]:
    """Running containers per node, as the engines count them (tasks' included): classic Swarm's
    spread measure. Counted afresh when older than ``RUNNING_TTL_S``; each create here adds one."""
    idx = engines.index(request)
    now = time.monotonic()
    stale = [n for n in nodes if now - idx.running.get(n.ID, (0, -RUNNING_TTL_S))[1] >= RUNNING_TTL_S]
    for node, ans in await fan_out(m, "GET", "/containers/json", nodes=stale) if stale else ():
        if not isinstance(ans, ShoalError) and ans.status == 200:
            idx.running[node.ID] = (len(ans.json() or ()), now)
    return {n.ID: idx.running.get(n.ID, (0, 0.0))[0] for n in nodes}


def _count(idx: engines.EngineIndex, node_id: str, delta: int) -> None:
    """A container placed on (or, its create failed, not on) a node, until the next count."""
    count, at = idx.running.get(node_id, (0, 0.0))
    idx.running[node_id] = (max(count + delta, 0), at)


async def _name_free(request: web.Request, name: str) -> None:
    """Names are the cluster's: one in use on any node is taken (Docker's text for the clash)."""
    m = engines.manager(request)
    for node, ans in await fan_out(m, "GET", f"/containers/{quote(name, safe='')}/json"):
        if not isinstance(ans, ShoalError) and ans.status == 200 and ans.json().get("Name") == f"/{name}":
            raise Conflict(
                f'Conflict. The container name "/{name}" is already in use by container '
                f'"{ans.json().get("Id")}" on node {node_name(node)}. You have to remove (or rename) that '
                "container to be able to reuse that name."
            )


# --------------------------------------------------------------------------- every node's containers


async def list_containers(request: web.Request) -> web.Response:
    """``GET /containers/json``: every engine's answer to the same query, merged, newest first;
    names carry their node (``/<node>/<name>``). Docker's filters go to each engine; ``node``
    (classic Swarm's) picks the nodes asked."""
    m = engines.manager(request)
    nodes, target = engines.list_query(request, "/containers/json", CONTAINER_FILTERS, ("all", "size", "limit"))
    out: list[dict[str, Any]] = []
    idx = engines.index(request)
    for node, ans in await fan_out(m, "GET", target, nodes=nodes):
        if isinstance(ans, ShoalError):
            continue  # a node that does not answer is left out, as classic Swarm left out unhealthy engines
        if ans.status != 200:
            raise EngineError(ans.status, ans.message)  # a bad filter value: every engine says the same
        for c in ans.json() or ():
            idx.learn(idx.containers, c["Id"], node.ID)
            c["Names"] = [f"/{node_name(node)}{n}" for n in c.get("Names") or ()]
            attach.show_names(m.store, c)
            out.append(c)
    out.sort(key=lambda c: c.get("Created", 0), reverse=True)
    limit = request.query.get("limit", "")
    if limit.lstrip("-").isdigit() and int(limit) > 0:
        out = out[: int(limit)]
    return json_response(out)


async def prune(request: web.Request) -> web.Response:
    """``POST /containers/prune`` on every engine: the removed containers and space, summed."""
    return await engines.prune(request, "/containers", "ContainersDeleted")


# --------------------------------------------------------------------------- one container


def _target(request: web.Request, kind: str, at: Located, tail: str) -> str:
    base = f"/{kind}/{at.id}" + (f"/{tail}" if tail else "")
    return base + (f"?{request.query_string}" if request.query_string else "")


async def container_call(request: web.Request) -> web.StreamResponse:
    """Any ``/containers/{id}[/...]`` call: to the engine holding the container, answer as it comes."""
    m = engines.manager(request)
    ref, tail = request.match_info["id"], request.match_info.get("tail", "")
    at = await locate(request, "container", ref)
    removing = request.method == "DELETE" and not tail
    if removing and attach.attachments_of(m.store, at.id) and getattr(m, "leader_api", None) is not None:
        # Its network addresses go back in the store, which only the leader writes.
        forwarded = await to_leader(request, m, user=str(request.get(USER_KEY, "")))
        if forwarded is not None:
            return forwarded
    pipe = await m.open_engine(at.node.ID)
    idx = engines.index(request)
    transform = None
    if request.method == "GET" and tail == "json":
        def transform(doc: Any) -> Any:
            if isinstance(doc, dict):
                doc["Node"] = node_info(at.node)
            return attach.show_names(m.store, doc)
    elif request.method == "POST" and tail == "exec":
        def transform(doc: Any) -> Any:
            if isinstance(doc, dict) and doc.get("Id"):
                idx.learn(idx.execs, str(doc["Id"]), at.node.ID)
            return doc
    resp = await relay(request, pipe, _target(request, "containers", at, tail), transform=transform)
    if removing and resp.status == 204:
        idx.containers.pop(at.id, None)
        attach.detach(m, attach.attachments_of(m.store, at.id))  # its addresses go back
    return resp


async def exec_call(request: web.Request) -> web.StreamResponse:
    """``/exec/{id}/...`` (start, resize, json): to the engine where the exec instance was made."""
    m = engines.manager(request)
    at = await locate(request, "exec instance", request.match_info["id"])
    pipe = await m.open_engine(at.node.ID)
    return await relay(request, pipe, _target(request, "exec", at, request.match_info.get("tail", "")))


# The engine's own routes (API 1.41), each sent to the node holding its container or exec instance.
CONTAINER_ACTIONS: dict[str, tuple[str, ...]] = {
    "GET": ("json", "top", "logs", "changes", "export", "stats", "archive", "attach/ws"),
    "HEAD": ("archive",),
    "PUT": ("archive",),
    "POST": ("resize", "start", "stop", "restart", "kill", "pause", "unpause", "rename", "update", "attach",
             "wait", "exec"),
}
EXEC_ACTIONS: dict[str, tuple[str, ...]] = {"GET": ("json",), "POST": ("start", "resize")}
# A container reference in a path: an ID or name, or classic Swarm's ``<node>/<name>`` (the docker CLI
# puts it in the path as it is).
_REF = r"[^/]+(?:/[^/]+)?"

ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/containers/create", create),
    ("GET", "/containers/json", list_containers),
    ("POST", "/containers/prune", prune),
    ("DELETE", f"/containers/{{id:{_REF}}}", container_call),
    *((method, f"/containers/{{id:{_REF}}}/{{tail:{action}}}", container_call)
      for method, actions in CONTAINER_ACTIONS.items() for action in actions),
    *((method, f"/exec/{{id}}/{{tail:{action}}}", exec_call)
      for method, actions in EXEC_ACTIONS.items() for action in actions),
]
