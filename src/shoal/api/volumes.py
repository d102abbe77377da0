"""Volumes across the node engines, the way classic Swarm showed them.

Classic Swarm (cluster/swarm/cluster.go, api/handlers.go) is the model:

- ``GET /volumes`` asks every ready engine and lists every volume; a ``local`` volume (one node's
  disk) is named ``<node>/<name>``, a volume of another driver (shared storage: every node sees the
  same one) keeps its bare name and is listed once. Docker's filters go to every engine; classic
  Swarm's ``node`` filter picks the nodes asked.
- ``POST /volumes/create`` makes the volume on every ready node, or on one node when the name is
  ``<node>/<name>``, or on the nodes the ``com.docker.swarm.constraints`` label's expressions (the
  scheduler's classic ``node==…``/``engine.labels…`` rules) select. Driver, DriverOpts and Labels go
  to the engines unchanged.
- ``GET /volumes/{name}``: ``<node>/<name>``, or a name that one node holds (several copies of a
  non-local driver's volume are the same volume: the first is shown); a local name on several
  nodes is ambiguous (409, naming them).
- ``DELETE /volumes/{name}`` removes every copy the name finds (classic Swarm's RemoveVolumes), so
  ``docker volume rm data`` undoes ``docker volume create data``; ``<node>/<name>`` removes one.
- ``POST /volumes/prune`` prunes every engine; the answer is the sum (names ``<node>/<name>``).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from aiohttp import web

from shoal.api import engines
from shoal.api.common import json_response
from shoal.api.engines import EngineError, fan_out, node_by_ref, node_name
from shoal.errors import Conflict, InvalidArgument, NotFound, ShoalError, Unavailable
from shoal.models import ContainerSpec, Node, ServiceSpec, TaskSpec
from shoal.scheduler.plan import candidates
from shoal.sharedvolumes import DRIVERS

VOLUME_FILTERS = ("dangling", "driver", "label", "name")  # and engines.NODE_FILTER
CONSTRAINTS_LABEL = "com.docker.swarm.constraints"  # classic Swarm's: a JSON list of expressions


def _is_local(vol: dict[str, Any]) -> bool:
    return str(vol.get("Driver") or "local") == "local"


def merge_volumes(answers: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Every node's volumes as one list: local ones as ``<node>/<name>``, a shared driver's once."""
    out: list[dict[str, Any]] = []
    shared: set[tuple[str, str]] = set()
    for node, vols in answers:
        for v in vols:
            if _is_local(v):
                out.append({**v, "Name": f"{node}/{v.get('Name', '')}"})
            elif (key := (str(v.get("Driver")), str(v.get("Name")))) not in shared:
                shared.add(key)
                out.append(v)
    out.sort(key=lambda v: str(v.get("Name", "")))
    return out


def _split(m: engines.EngineManager, ref: str) -> tuple[list[Node] | None, str]:
    """``<node>/<name>`` → ([that node], name); a bare name → (None, name). An unknown node finds
    nothing (the caller's 404), as classic Swarm answered."""
    if "/" not in ref:
        return None, ref
    node_ref, _, name = ref.partition("/")
    try:
        node = node_by_ref(m, node_ref)
    except NotFound:
        raise NotFound(f"get {ref}: no such volume") from None
    return [node], name


async def list_volumes(request: web.Request) -> web.Response:
    """``GET /volumes``: every ready engine's volumes, merged (see the module's docstring)."""
    m = engines.manager(request)
    nodes, target = engines.list_query(request, "/volumes", VOLUME_FILTERS)
    answers: list[tuple[str, list[dict[str, Any]]]] = []
    warnings: list[str] = []
    for node, ans in await fan_out(m, "GET", target, nodes=nodes):
        if isinstance(ans, ShoalError):
            warnings.append(f"node {node_name(node)}: {ans.message}")
            continue
        if ans.status != 200:
            raise EngineError(ans.status, ans.message)  # e.g. a bad filter value: every engine says the same
        doc = ans.json() or {}
        answers.append((node_name(node), list(doc.get("Volumes") or ())))
        warnings += [f"node {node_name(node)}: {w}" for w in doc.get("Warnings") or ()]
    return json_response({"Volumes": merge_volumes(answers), "Warnings": warnings or None})


def _create_nodes(m: engines.EngineManager, node_part: str, labels: dict[str, Any]) -> list[Node]:
    """Where a new volume goes: the named node, the nodes the constraints select, or every ready node."""
    ready = engines.engine_nodes(m)
    if node_part:
        node = node_by_ref(m, node_part)
        if node not in ready:
            raise Unavailable(f"node {node_name(node)} is not ready: its engine cannot create volumes now")
        return [node]
    raw = labels.get(CONSTRAINTS_LABEL)
    if raw is None:
        return ready
    try:
        exprs = json.loads(raw) if isinstance(raw, str) and raw.lstrip().startswith("[") else [raw]
    except ValueError:
        exprs = None
    if not isinstance(exprs, list) or not all(isinstance(e, str) and e for e in exprs):
        raise InvalidArgument(f"label {CONSTRAINTS_LABEL} must be a JSON list of constraint expressions, "
                              f'e.g. ["node==host-1"]')
    spec = ServiceSpec(Name="volume", TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(
        Image="volume", Env=[f"constraint:{e}" for e in exprs])))
    fits, why = candidates(m.store, spec)
    chosen = [n for n in ready if n.ID in fits]
    if not chosen:
        raise Unavailable(f"Unable to find a node that satisfies the following conditions: {why or 'no ready node'}")
    return chosen


async def create(request: web.Request) -> web.Response:
    """``POST /volumes/create`` on every ready node, one node (``<node>/<name>``) or the nodes the
    constraints label selects; the engines' own errors come back as they are."""
    m = engines.manager(request)
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON: the volume's options must be an object")
    name = body.get("Name") or ""
    labels = body.get("Labels") or {}
    if not isinstance(name, str) or not isinstance(labels, dict):
        raise InvalidArgument("json: Name must be a string and Labels an object")
    node_part, _, bare = name.rpartition("/")
    if "/" in node_part:
        raise InvalidArgument(f"invalid volume name {name!r}: use <name> or <node>/<name>")
    if body.get("Driver") in DRIVERS:
        # The engines have no such plugin (they would look for one for 15 s, then say "not found"):
        # these volumes exist only as Shoal's own mounts for services' tasks (agent/volumes.py).
        raise InvalidArgument(f"{body['Driver']} volumes are mounted by Shoal's agent for a service's tasks, "
                              "not created on the engines: name the volume in the service's mount "
                              f"(--mount type=volume,source=NAME,target=PATH,volume-driver={body['Driver']},"
                              "volume-opt=...) or in a stack's volumes")
    nodes = _create_nodes(m, node_part, labels)
    if not nodes:
        raise Unavailable("no ready node: no engine to create the volume on")
    engine_body = {**body, "Name": bare}
    if not bare and len(nodes) > 1:
        engine_body["Name"] = os.urandom(32).hex()  # one random name for every copy (classic Swarm)
    made: list[tuple[Node, dict[str, Any]]] = []
    errors: list[tuple[Node, int, str]] = []
    for node, ans in await fan_out(m, "POST", "/volumes/create", engine_body, nodes=nodes):
        if isinstance(ans, ShoalError):
            errors.append((node, ans.status, ans.message))
        elif ans.status == 201:
            made.append((node, ans.json()))
        else:
            errors.append((node, ans.status, ans.message))
    if errors:
        if len(nodes) == 1:
            raise EngineError(errors[0][1], errors[0][2])
        text = "; ".join(f"{node_name(n)}: {msg}" for n, _, msg in errors)
        status = errors[0][1] if all(e[1] == errors[0][1] for e in errors) else 500
        done = f" (created on {', '.join(node_name(n) for n, _ in made)})" if made else ""
        raise EngineError(status, f"volume {engine_body['Name']!r} could not be created on every node: {text}{done}")
    node, vol = made[0]
    if node_part:  # asked for one node by name: answer with the name the cluster lists it by
        vol = {**vol, "Name": f"{node_name(node)}/{vol.get('Name', '')}"}
    return json_response(vol, status=201)


async def _copies(request: web.Request, ref: str) -> list[tuple[Node, dict[str, Any]]]:
    """Every node's volume the reference names (``GET /volumes/<name>`` on each engine asked)."""
    m = engines.manager(request)
    nodes, bare = _split(m, ref)
    if not bare:
        raise NotFound(f"get {ref}: no such volume")
    found: list[tuple[Node, dict[str, Any]]] = []
    errors: list[str] = []
    for node, ans in await fan_out(m, "GET", f"/volumes/{quote(bare, safe='')}", nodes=nodes):
        if isinstance(ans, ShoalError):
            errors.append(f"{node_name(node)}: {ans.message}")
        elif ans.status == 200:
            found.append((node, ans.json()))
        elif ans.status != 404:
            raise EngineError(ans.status, ans.message)
    if not found and errors and nodes is not None:
        raise Unavailable(errors[0])
    if not found:
        raise NotFound(f"get {ref}: no such volume")
    return found


async def inspect(request: web.Request) -> web.Response:
    """``GET /volumes/{name}``: the one volume the name finds (see the module's docstring)."""
    ref = request.match_info["name"]
    found = await _copies(request, ref)
    if len(found) > 1:
        shared = [v for _, v in found if not _is_local(v)]
        if not shared:
            where = ", ".join(f"{node_name(n)}/{v.get('Name')}" for n, v in found)
            raise Conflict(f"volume name {ref!r} is ambiguous: it is on more than one node ({where}); "
                           "name one of them as <node>/<name>")
        return json_response(shared[0])
    node, vol = found[0]
    if _is_local(vol):
        vol = {**vol, "Name": f"{node_name(node)}/{vol.get('Name', '')}"}
    return json_response(vol)


async def remove(request: web.Request) -> web.Response:
    """``DELETE /volumes/{name}``: every copy the name finds (classic Swarm); all errors, per node."""
    m = engines.manager(request)
    ref = request.match_info["name"]
    found = await _copies(request, ref)
    query = f"?{request.query_string}" if request.query_string else ""
    errors: list[tuple[int, str]] = []
    for node, ans in await fan_out(m, "DELETE", f"/volumes/{quote(str(found[0][1].get('Name', '')), safe='')}"
                                   f"{query}", nodes=[n for n, _ in found]):
        if isinstance(ans, ShoalError):
            errors.append((ans.status, f"{node_name(node)}: {ans.message}"))
        elif ans.status not in (204, 404):  # 404: gone meanwhile, which is what was asked
            errors.append((ans.status, ans.message if len(found) == 1 else f"{node_name(node)}: {ans.message}"))
    if errors:
        raise EngineError(errors[0][0], "\n".join(msg for _, msg in errors))
    return web.Response(status=204)


async def prune(request: web.Request) -> web.Response:
    """``POST /volumes/prune`` on every ready engine: the removed volumes (``<node>/<name>``), space summed."""
    return await engines.prune(request, "/volumes", "VolumesDeleted",
                               lambda node, name: f"{node_name(node)}/{name}")


_NAME = r"{name:[^/]+(?:/[^/]+)?}"  # a volume name, or classic Swarm's <node>/<name>

ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/volumes", list_volumes),
    ("POST", "/volumes/create", create),
    ("POST", "/volumes/prune", prune),
    ("GET", f"/volumes/{_NAME}", inspect),
    ("DELETE", f"/volumes/{_NAME}", remove),
]
