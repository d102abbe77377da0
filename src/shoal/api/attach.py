"""Standalone containers on Shoal's overlay networks (``docker run --network``, docker-compose 1.29).

Classic Swarm ran multi-host Compose projects on overlay networks that plain containers could join;
Swarm mode allows it for ``--attachable`` networks, and swarmkit does it with a *network attachment
task*: a task with no service and ``Spec.NetworkAttachmentSpec.ContainerID``, placed on the
container's node, whose address the allocator chooses. Shoal does the same, so nothing downstream
needs a second path: the attachment task makes the dispatcher send that node the network's state
(plumbing, VXLAN peers, DNS records: the container's name and aliases), the allocator keeps its
address, and deleting the task gives it back. The agent runs no controller for such a task
(agent/worker.py); the container is the engine's, made through the manager's pipe.

One attachment task per (container, network). The container is made on the node's engine network
``shl-<id[:10]>`` (the agent's bridge for the overlay) at the allocated address; aliases stay out of
the engine (it would answer them with its own containers only) and go into the task, so the node's
DNS responder answers them with every container carrying them, on any node. Container JSON is shown
back with the Shoal network's name, so clients (compose compares networks by name) see what they
asked for.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import msgspec
from aiohttp import web

from shoal.api import engines
from shoal.api.engines import EngineError, EngineManager, engine_call
from shoal.controlapi.networks import PREDEFINED, Forbidden, get_network
from shoal.errors import InvalidArgument, NotFound, Unavailable
from shoal.ids import new_id
from shoal.models import (
    Network,
    NetworkAttachmentConfig,
    Node,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    Version,
    now_ts,
)
from shoal.netmode import BRIDGE_PREFIX, engine_network_name, is_predefined
from shoal.store import MemoryStore

log = logging.getLogger(__name__)

CONTAINER_KEY = "ContainerID"  # swarmkit's NetworkAttachmentSpec field
PLUMB_TIMEOUT_S = 20.0  # the node's agent makes the engine network once it hears of the attachment
PLUMB_POLL_S = 0.1


def is_attachment(task: Task) -> bool:
    return task.Spec.NetworkAttachmentSpec is not None


def container_of(task: Task) -> str:
    return str((task.Spec.NetworkAttachmentSpec or {}).get(CONTAINER_KEY, ""))


def attachments_of(store: MemoryStore, container_id: str) -> list[Task]:
    return [t for t in store.list("task") if is_attachment(t) and container_of(t) == container_id]


def attachments_on(store: MemoryStore, network_id: str) -> list[Task]:
    return [t for t in store.list("task") if is_attachment(t)
            and any(a.Network.ID == network_id for a in t.NetworksAttachments or ())]


def shoal_network(store: MemoryStore, ref: str) -> Network | None:
    """The overlay network a container's ``NetworkMode``/endpoint names, or None when it is the
    engine's own business (bridge, host, none, ``container:x``, or a name Shoal does not know:
    the node's engine answers for it)."""
    if not ref or ref in PREDEFINED or ":" in ref:
        return None
    try:
        net = get_network(store, ref)
    except (NotFound, InvalidArgument):
        return None
    if is_predefined(net):
        return None
    if net.Spec.Ingress:
        raise Forbidden(f"Could not attach to network {ref}: ingress network cannot be used with non-swarm containers")
    if not net.Spec.Attachable:
        # Docker's text (the engine relays swarmkit's PermissionDenied).
        raise Forbidden(f"Could not attach to network {ref}: rpc error: code = PermissionDenied "
                        f"desc = network {ref} not manually attachable")
    return net


def unknown_network(store: MemoryStore, ref: str) -> bool:
    """Whether ``ref`` would name a user network that this manager's store does not hold (not an
    engine's predefined one, not ``container:x``, not one of ours)."""
    if not ref or ref in PREDEFINED or ":" in ref or ref.startswith(BRIDGE_PREFIX):
        return False
    try:
        get_network(store, ref)
    except NotFound:
        return True
    except InvalidArgument:
        return False
    return False


def network_by_engine_name(store: MemoryStore, name: str) -> Network | None:
    if not name.startswith(BRIDGE_PREFIX):
        return None
    return next((n for n in store.list("network") if engine_network_name(n.ID) == name), None)


def attach(m: EngineManager, node: Node, net: Network, container_id: str, name: str,
           aliases: list[str] | None) -> Task:
    """Write the attachment task of a container on ``node`` with its address on ``net`` (chosen
    by the allocator, in the same transaction as the node's own address there, as the scheduler
    does). Synchronous from the allocation to the write, so the scheduler cannot interleave."""
    allocator = getattr(getattr(m, "scheduler", None), "allocator", None)
    if allocator is None:
        raise Unavailable("containers join swarm networks through the leader: this manager is not it")
    ts = now_ts()
    tid = new_id()
    task = Task(
        ID=tid,
        Version=Version(),
        CreatedAt=ts,
        UpdatedAt=ts,
        Spec=TaskSpec(NetworkAttachmentSpec={CONTAINER_KEY: container_id},
                      Networks=[NetworkAttachmentConfig(Target=net.ID, Aliases=aliases or None)]),
        # Its own ID as service: the DNS records group a network's members by service, and each
        # container is its own name (shown as ServiceAnnotations' Name when no service exists).
        ServiceID=tid,
        ServiceAnnotations={"Name": name},
        Status=TaskStatus(Timestamp=ts, State=TaskState.RUNNING, Message="network attachment"),
        DesiredState=TaskState.RUNNING,
        NodeID=node.ID,
    )
    tasks, failed, updates = allocator.attach_tasks([task])
    if failed:
        raise InvalidArgument(f"network {net.Spec.Name}: {failed[0][1]}")
    try:
        with m.store.tx() as tx:
            tx.create("task", tasks[0])
            for n in updates:
                tx.update("network", n)
    except Exception:
        allocator.rebuild()
        raise
    return tasks[0]  # type: ignore[no-any-return]


def set_container(m: EngineManager, task: Task, container_id: str) -> None:
    """Name the container in an attachment made before the engine gave it its ID."""
    cur = m.store.get("task", task.ID)
    if cur is None:
        return
    spec = msgspec.structs.replace(cur.Spec, NetworkAttachmentSpec={CONTAINER_KEY: container_id})
    with m.store.tx() as tx:
        tx.update("task", msgspec.structs.replace(cur, Spec=spec, UpdatedAt=now_ts()))


def detach(m: EngineManager, tasks: list[Task]) -> None:
    """Delete attachment tasks (their addresses go back to the pool; a node left with none leaves
    the network)."""
    if not tasks:
        return
    with m.store.tx() as tx:
        for t in tasks:
            if m.store.get("task", t.ID) is not None:
                tx.delete("task", t.ID)


def address(task: Task) -> str:
    att = (task.NetworksAttachments or [None])[0]
    if att is None or not att.Addresses:
        raise InvalidArgument("network attachment has no address")
    return att.Addresses[0].split("/", 1)[0]


def node_address(m: EngineManager, net: Network, node: Node) -> str:
    cur = m.store.get("network", net.ID) or net
    return str((cur.NodeAddresses or {}).get(node.ID, "")).split("/", 1)[0]


async def wait_plumbed(m: EngineManager, node: Node, net: Network) -> None:
    """Until the node's engine has the network's bridge network (its agent makes it once the
    dispatcher sends the node the network's state)."""
    name = engine_network_name(net.ID)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PLUMB_TIMEOUT_S
    while True:
        ans = await engine_call(m, node, "GET", f"/networks/{name}")
        if ans.status == 200:
            return
        if loop.time() >= deadline:
            raise Unavailable(f"network {net.Spec.Name} is not ready on node "
                              f"{node.Description.Hostname if node.Description else node.ID}: "
                              f"its agent has not made it within {PLUMB_TIMEOUT_S:g}s")
        await asyncio.sleep(PLUMB_POLL_S)


def endpoint(ip: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """The engine's endpoint settings: the allocated address; no aliases (they are the task's)."""
    out = {k: v for k, v in (given or {}).items() if k not in ("Aliases", "IPAMConfig", "NetworkID", "EndpointID")}
    ipam = dict((given or {}).get("IPAMConfig") or {})
    if ipam.get("IPv4Address") or ipam.get("IPv6Address"):
        raise InvalidArgument("a fixed address (ipv4_address/--ip) is not supported on Shoal's overlay networks: "
                              "the manager's allocator chooses it")
    out["IPAMConfig"] = {"IPv4Address": ip}
    return out


# --------------------------------------------------------------------------- container JSON


def show_names(store: MemoryStore, doc: Any) -> Any:
    """A container's JSON (inspect or list entry) with engine network names as Shoal's."""
    if not isinstance(doc, dict):
        return doc
    host = doc.get("HostConfig")
    if isinstance(host, dict) and isinstance(host.get("NetworkMode"), str):
        net = network_by_engine_name(store, host["NetworkMode"])
        if net is not None:
            host["NetworkMode"] = net.Spec.Name
    settings = doc.get("NetworkSettings")
    nets = settings.get("Networks") if isinstance(settings, dict) else None
    if isinstance(nets, dict) and any(k.startswith(BRIDGE_PREFIX) for k in nets):
        renamed: dict[str, Any] = {}
        for key, val in nets.items():
            net = network_by_engine_name(store, key)
            if net is not None and isinstance(val, dict):
                val["NetworkID"] = net.ID
                att = _aliases(store, doc.get("Id") or doc.get("ID") or "", net.ID)
                if att:
                    val["Aliases"] = att
            renamed[net.Spec.Name if net is not None else key] = val
        settings["Networks"] = renamed
    return doc


def _aliases(store: MemoryStore, container_id: str, net_id: str) -> list[str] | None:
    for t in attachments_of(store, container_id):
        for a in t.NetworksAttachments or ():
            if a.Network.ID == net_id:
                return list(a.Aliases or ()) or None
    return None


# --------------------------------------------------------------------------- connect, disconnect


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        doc = json.loads(await request.read() or b"{}")
    except ValueError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Container"), str) or not doc["Container"]:
        raise InvalidArgument("a container is required (\"Container\")")
    return doc


def _network(m: EngineManager, ref: str) -> Network:
    net = get_network(m.store, ref)  # 404 "network X not found", as the engine
    if is_predefined(net):
        raise Forbidden(f"{net.Spec.Name} is an engine network: connect to it on the container's node")
    found = shoal_network(m.store, net.ID)  # attachable? not ingress?
    assert found is not None
    return found


async def connect(request: web.Request) -> web.Response:
    """``POST /networks/{id}/connect`` (``docker network connect``, compose before each start): an
    attachment task for the container on its node, then the engine's connect at that address."""
    m = engines.manager(request)
    doc = await _body(request)
    net = _network(m, request.match_info["id"])
    at = await engines.locate(request, "container", doc["Container"])
    if any(a.Network.ID == net.ID for t in attachments_of(m.store, at.id) for a in t.NetworksAttachments or ()):
        raise Forbidden(f"endpoint with name {doc['Container']} already exists in network {net.Spec.Name}")
    given = doc.get("EndpointConfig") if isinstance(doc.get("EndpointConfig"), dict) else None
    aliases = [a for a in (given or {}).get("Aliases") or () if isinstance(a, str)]
    ep = endpoint("", given)
    name = await _container_name(m, at.node, at.id)
    task = attach(m, at.node, net, at.id, name, aliases)
    try:
        await wait_plumbed(m, at.node, net)
        ep["IPAMConfig"] = {"IPv4Address": address(task)}
        body = {"Container": at.id, "EndpointConfig": ep}
        ans = await engine_call(m, at.node, "POST", f"/networks/{engine_network_name(net.ID)}/connect",
                                json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    except BaseException:
        detach(m, [task])
        raise
    if ans.status != 200:
        detach(m, [task])
        raise EngineError(ans.status, ans.message)
    return web.Response(status=200, body=b"OK", content_type="text/plain")


async def disconnect(request: web.Request) -> web.Response:
    """``POST /networks/{id}/disconnect``: the engine's disconnect, then the attachment goes."""
    m = engines.manager(request)
    doc = await _body(request)
    net = _network(m, request.match_info["id"])
    at = await engines.locate(request, "container", doc["Container"])
    body = {"Container": at.id, "Force": bool(doc.get("Force"))}
    ans = await engine_call(m, at.node, "POST", f"/networks/{engine_network_name(net.ID)}/disconnect",
                            json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    mine = [t for t in attachments_of(m.store, at.id)
            if any(a.Network.ID == net.ID for a in t.NetworksAttachments or ())]
    if ans.status == 200 or (ans.status == 404 and mine):  # (no engine network left: the container is off it)
        detach(m, mine)
        return web.Response(status=200, body=b"OK", content_type="text/plain")
    if ans.status == 404 and not mine:
        raise Forbidden(f"container {at.id} is not connected to network {net.Spec.Name}")
    raise EngineError(ans.status, ans.message)


async def _container_name(m: EngineManager, node: Node, cid: str) -> str:
    ans = await engine_call(m, node, "GET", f"/containers/{cid}/json")
    return str(ans.json().get("Name") or "").lstrip("/") if ans.status == 200 else ""


ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/networks/{id}/connect", connect),
    ("POST", "/networks/{id}/disconnect", disconnect),
]
