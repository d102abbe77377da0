"""The node engines as one: which nodes to ask, asking them all at once, and where an object is.

Classic Swarm answered an engine call for the whole cluster by asking every engine and merging, and
sent a call about one container to the engine holding it. This module is that for Shoal's API:
:func:`fan_out` asks every ready node's engine (through the manager's pipes, transport/tunnel.py),
:class:`EngineIndex` remembers where containers and exec instances are, and :func:`locate` finds the
engine a reference (full ID, name, ID prefix, or ``node/name``) belongs to, with Docker's rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from aiohttp import web

from shoal.api.common import MANAGER, ManagerAPI, json_response
from shoal.api.engineproxy import EngineResponse, call
from shoal.controlapi.filters import parse_filters
from shoal.errors import Conflict, InvalidArgument, NotFound, ShoalError, Unavailable
from shoal.models import Node, NodeState
from shoal.transport.tunnel import Pipe

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 15.0  # one node's answer to a fan-out call; a slower node is left out
INDEX_LIMIT = 100_000  # containers and execs remembered (then the oldest are forgotten)


class EngineManager(ManagerAPI, Protocol):
    async def open_engine(self, node_id: str) -> Pipe: ...


class EngineError(ShoalError):
    """An engine's own error answer, passed on with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Located:
    node: Node
    id: str  # the engine's full ID of the object


def node_name(node: Node) -> str:
    return node.Description.Hostname if node.Description is not None else node.ID


def node_info(node: Node) -> dict[str, Any]:
    """Classic Swarm's ``Node`` field of a container."""
    desc = node.Description
    res = desc.Resources if desc is not None else None
    return {
        "ID": node.ID,
        "IP": node.Status.Addr,
        "Addr": node.Status.Addr,
        "Name": node_name(node),
        "Cpus": (res.NanoCPUs // 1_000_000_000) if res is not None else 0,
        "Memory": res.MemoryBytes if res is not None else 0,
        "Labels": dict(desc.Engine.Labels or {}) if desc is not None and desc.Engine is not None else {},
    }


def manager(request: web.Request) -> EngineManager:
    m = request.app[MANAGER]
    m.require_swarm()
    return m  # type: ignore[return-value]


def engine_nodes(m: ManagerAPI) -> list[Node]:
    """The nodes whose engines answer for the cluster: ready ones (a down node's engine is not
    reachable, and classic Swarm left unhealthy engines out of its answers too)."""
    return sorted((n for n in m.store.list("node") if n.Status.State == NodeState.READY), key=node_name)


def node_by_ref(m: ManagerAPI, ref: str) -> Node:
    """A node by ID, unique ID prefix or hostname (``docker node inspect``'s rules)."""
    nodes = m.store.list("node")
    for n in nodes:
        if n.ID == ref:
            return n
    named = [n for n in nodes if node_name(n) == ref]
    if len(named) == 1:
        return named[0]
    prefixed = [n for n in nodes if n.ID.startswith(ref)]
    if len(prefixed) == 1:
        return prefixed[0]
    if len(named) > 1 or len(prefixed) > 1:
        raise InvalidArgument(f"node {ref} is ambiguous ({len(named) or len(prefixed)} matches)")
    raise NotFound(f"node {ref} not found")


NODE_FILTER = "node"  # classic Swarm's filter of every list call: which nodes' engines are asked


def list_query(request: web.Request, path: str, accepted: tuple[str, ...],
               keep: tuple[str, ...] = ()) -> tuple[list[Node], str]:
    """A cluster list call (``docker ps``/``images``/``volume ls``): the nodes to ask (classic
    Swarm's ``node`` filter picks them; every ready one otherwise) and the engine's target, with
    Docker's other filters and the ``keep`` query parameters passed on as they are."""
    m = manager(request)
    filters = parse_filters(request.query.get("filters"), (*accepted, NODE_FILTER))
    wanted = filters.pop(NODE_FILTER, None)
    nodes = engine_nodes(m)
    if wanted:
        nodes = [n for n in nodes if n.ID in wanted or node_name(n) in wanted]
    query: dict[str, str] = {k: v for k, v in request.query.items() if k in keep}
    if filters:
        query["filters"] = json.dumps(filters)
    return nodes, path + (f"?{urlencode(query)}" if query else "")


async def engine_call(m: EngineManager, node: Node, method: str, target: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> EngineResponse:
    pipe = await m.open_engine(node.ID)
    async with asyncio.timeout(CALL_TIMEOUT_S):
        return await call(pipe, method, target, body, headers=headers)


async def fan_out(m: EngineManager, method: str, target: str, body: Any = None, *,
                  nodes: list[Node] | None = None,
                  headers: dict[str, str] | None = None) -> list[tuple[Node, EngineResponse | ShoalError]]:
    """Ask every ready node's engine (or ``nodes``) at once; each answer, or why there is none."""
    targets = engine_nodes(m) if nodes is None else nodes

    async def one(node: Node) -> EngineResponse | ShoalError:
        try:
            return await engine_call(m, node, method, target, body, headers)
        except ShoalError as e:
            return e
        except TimeoutError:
            return Unavailable(f"node {node_name(node)}'s engine did not answer within {CALL_TIMEOUT_S:g}s")

    answers = await asyncio.gather(*(one(n) for n in targets))
    for node, ans in zip(targets, answers, strict=True):
        if isinstance(ans, ShoalError):
            log.debug("%s %s on node %s: %s", method, target, node_name(node), ans.message)
    return list(zip(targets, answers, strict=True))


async def prune(request: web.Request, path: str, field: str,
                mark: Callable[[Node, Any], Any] | None = None) -> web.Response:
    """``POST <path>/prune`` on every ready engine: what each removed (``field``, each item as
    ``mark`` names it, once) and the space, summed. An engine's refusal (a bad filter: every engine
    says the same) is passed on; an engine that does not answer is left out."""
    m = manager(request)
    query = f"?{request.query_string}" if request.query_string else ""
    deleted: list[Any] = []
    space = 0
    for node, ans in await fan_out(m, "POST", f"{path}/prune{query}"):
        if isinstance(ans, ShoalError):
            continue
        if ans.status != 200:
            raise EngineError(ans.status, ans.message)
        doc = ans.json() or {}
        for item in doc.get(field) or ():
            item = mark(node, item) if mark is not None else item
            if item not in deleted:
                deleted.append(item)
        space += int(doc.get("SpaceReclaimed") or 0)
    return json_response({field: deleted or None, "SpaceReclaimed": space})


# ---------------------------------------------------------------------------- where things are


class EngineIndex:
    """Where containers and exec instances are (node ID by full ID): learnt from every answer that
    names one, checked by the engine itself on use (a stale entry costs one 404 and a look-up)."""

    def __init__(self) -> None:
        self.containers: dict[str, str] = {}
        self.execs: dict[str, str] = {}
        self.running: dict[str, tuple[int, float]] = {}  # node ID → (running containers, counted at)
        self.placing = asyncio.Lock()  # docker run's placement decisions, one at a time

    def learn(self, table: dict[str, str], obj_id: str, node_id: str) -> None:
        table.pop(obj_id, None)
        table[obj_id] = node_id
        while len(table) > INDEX_LIMIT:
            table.pop(next(iter(table)))

    def forget_node(self, node_id: str) -> None:
        for table in (self.containers, self.execs):
            for k in [k for k, v in table.items() if v == node_id]:
                del table[k]


ENGINE_INDEX: web.AppKey[EngineIndex] = web.AppKey("engine_index")


def index(request: web.Request) -> EngineIndex:
    return request.app[ENGINE_INDEX]


def _not_found(kind: str, ref: str) -> NotFound:
    return NotFound(f"No such {kind}: {ref}")


async def locate(request: web.Request, kind: str, ref: str) -> Located:
    """The node and full ID of container (or exec instance) ``ref``.

    ``node/name`` asks that node only. A full ID the index knows goes straight to its node.
    Otherwise every ready engine is asked (``GET /containers/<ref>/json``), so the answer follows
    each engine's own rules (ID, then name, then unique ID prefix); a reference that more than one
    engine knows is ambiguous, and the error names the nodes."""
    m = manager(request)
    idx = index(request)
    table = idx.containers if kind == "container" else idx.execs
    inspect = "/containers/{}/json" if kind == "container" else "/exec/{}/json"
    bare = ref.lstrip("/") if kind == "container" else ref
    if not bare:
        raise _not_found(kind, ref)
    nodes: list[Node] | None = None
    if kind == "container" and "/" in bare:
        node_ref, _, bare = bare.partition("/")
        try:
            nodes = [node_by_ref(m, node_ref)]
        except NotFound:
            raise _not_found(kind, ref) from None
    node_id = table.get(bare)
    if nodes is None and node_id is not None:
        node = m.store.get("node", node_id)
        if node is not None:
            return Located(node, bare)
    hits: list[Located] = []
    errors: list[str] = []
    for node, ans in await fan_out(m, "GET", inspect.format(quote(bare, safe="")), nodes=nodes):
        if isinstance(ans, ShoalError):
            errors.append(f"{node_name(node)}: {ans.message}")
        elif ans.status == 200:
            full = str(ans.json().get("ID") or ans.json().get("Id") or bare)
            idx.learn(table, full, node.ID)
            hits.append(Located(node, full))
        elif ans.status == 400 and "multiple" in ans.message.lower():  # an ambiguous prefix on one engine
            raise InvalidArgument(ans.message)
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        where = ", ".join(sorted(f"{node_name(h.node)}/{bare}" for h in hits))
        raise Conflict(f"{kind} name {bare!r} is ambiguous: it is on more than one node ({where}); "
                       f"name one of them as <node>/<name>")
    if errors and nodes is not None:
        raise Unavailable(errors[0])
    away = sorted(node_name(n) for n in m.store.list("node") if n.Status.State != NodeState.READY)
    if nodes is None and (away or errors):  # it may be on an engine that did not answer: say so
        unasked = ", ".join(away + [e.split(":", 1)[0] for e in errors])
        raise NotFound(f"No such {kind}: {ref} (not on any reachable node; not asked: {unasked})")
    raise _not_found(kind, ref)
