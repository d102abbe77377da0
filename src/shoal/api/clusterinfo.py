"""The cluster's side of ``GET /info`` and ``GET /system/df``: every node engine's figures, together.

``/info`` (api/system.py) adds what classic Swarm showed (cluster/swarm/cluster.go ``Info``,
api/handlers.go ``getInfo``): containers (running/paused/stopped) and images summed over the ready
nodes' engines, NCPU and MemTotal totals, and ``SystemStatus``: role, strategy, filters, "Nodes: N",
then each node with its address, ID, status, containers, reserved CPUs and memory (what the
scheduler has booked for the node's tasks), labels, error, last update and engine version. ``/info``
is polled (by the CLI, the SDK, tests), so the engines are asked with a short deadline and the
answer is kept for :data:`CACHE_S`; a node whose engine is slow is shown with its error.

``/system/df`` asks every ready engine and lists everything: images, containers (named
``/<node>/<name>``), volumes (local ones ``<node>/<name>``), build cache; sizes summed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from shoal.api import engines
from shoal.api.common import json_response
from shoal.api.engines import EngineError, engine_call, fan_out, node_name
from shoal.api.volumes import merge_volumes
from shoal.errors import ShoalError, Unavailable
from shoal.extensions import DEFAULT_PLACEMENT_STRATEGY, PLACEMENT_STRATEGY_LABEL
from shoal.models import Node, NodeState, TaskState
from shoal.scheduler.filters import _REGISTRY as FILTER_REGISTRY

INFO_TIMEOUT_S = 2.0  # one engine's /info for the cluster's /info; a slower one is shown with an error
CACHE_S = 1.5
_COUNTS = ("Containers", "ContainersRunning", "ContainersPaused", "ContainersStopped", "Images")
_RESERVING = frozenset({TaskState.ASSIGNED, TaskState.ACCEPTED, TaskState.PREPARING, TaskState.READY,
                        TaskState.STARTING, TaskState.RUNNING})


@dataclass
class InfoCache:
    at: float = 0.0
    value: dict[str, Any] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


CACHE: web.AppKey[InfoCache] = web.AppKey("shoal.cluster_info_cache", InfoCache)


def _bytes(n: float) -> str:
    """go-units BytesSize (binary units, as classic Swarm printed them)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.4g}{units[i]}"


def _reserved(m: engines.EngineManager, node: Node) -> tuple[int, int]:
    """CPUs (whole, as classic Swarm counted them) and memory the scheduler booked on ``node``."""
    cpu = mem = 0
    for t in m.store.tasks_on_node(node.ID):
        res = t.Spec.Resources.Reservations if t.Spec.Resources is not None else None
        if res is not None and t.Status.State in _RESERVING:
            cpu += res.NanoCPUs
            mem += res.MemoryBytes
    return cpu // 1_000_000_000, mem


def status_lines(m: engines.EngineManager, nodes: list[Node], answers: dict[str, dict[str, Any] | str]
                 ) -> list[list[str]]:
    """Classic Swarm's ``SystemStatus`` pairs (cluster.go ``Info``), one block per node."""
    cluster = m.store.cluster()
    labels = (cluster.Spec.Labels or {}) if cluster is not None else {}
    terms = getattr(m, "terms", None)
    out = [["Role", "replica" if terms is not None and not terms.is_leader else "primary"],
           ["Strategy", labels.get(PLACEMENT_STRATEGY_LABEL, DEFAULT_PLACEMENT_STRATEGY)],
           ["Filters", ", ".join(name for name, _ in FILTER_REGISTRY)],
           ["Nodes", str(len(nodes))]]
    for node in nodes:
        desc = node.Description
        res = desc.Resources if desc is not None else None
        ans = answers.get(node.ID)
        out.append([f" {node_name(node)}", node.Status.Addr])
        out.append(["  └ ID", node.ID])
        healthy = node.Status.State == NodeState.READY and isinstance(ans, dict)
        out.append(["  └ Status", "Healthy" if healthy else "Unhealthy"])
        if isinstance(ans, dict):
            out.append(["  └ Containers", f"{ans.get('Containers', 0)} ({ans.get('ContainersRunning', 0)} Running, "
                                          f"{ans.get('ContainersPaused', 0)} Paused, "
                                          f"{ans.get('ContainersStopped', 0)} Stopped)"])
        cpu, mem = _reserved(m, node)
        total_cpu = (res.NanoCPUs // 1_000_000_000) if res is not None else 0
        out.append(["  └ Reserved CPUs", f"{cpu} / {total_cpu}"])
        out.append(["  └ Reserved Memory", f"{_bytes(mem)} / {_bytes(res.MemoryBytes if res is not None else 0)}"])
        node_labels = {**((desc.Engine.Labels or {}) if desc is not None and desc.Engine is not None else {}),
                       **(node.Spec.Labels or {})}
        out.append(["  └ Labels", ", ".join(f"{k}={v}" for k, v in sorted(node_labels.items()))])
        error = ans if isinstance(ans, str) else (node.Status.Message if node.Status.State != NodeState.READY else "")
        out.append(["  └ Error", error or "(none)"])
        out.append(["  └ UpdatedAt", node.UpdatedAt])
        version = desc.Engine.EngineVersion if desc is not None and desc.Engine is not None else ""
        out.append(["  └ ServerVersion", version])
    return out


async def _engine_infos(m: engines.EngineManager, nodes: list[Node]) -> dict[str, dict[str, Any] | str]:
    async def one(node: Node) -> dict[str, Any] | str:
        try:
            async with asyncio.timeout(INFO_TIMEOUT_S):
                ans = await engine_call(m, node, "GET", "/info")
        except ShoalError as e:
            return e.message
        except TimeoutError:
            return f"the engine did not answer within {INFO_TIMEOUT_S:g}s"
        if ans.status != 200:
            return ans.message
        doc = ans.json()
        return doc if isinstance(doc, dict) else "the engine's /info is not an object"

    if not hasattr(m, "open_engine"):  # a manager without pipes to the engines (in-process tests)
        return {}
    ready = [n for n in nodes if n.Status.State == NodeState.READY]
    got = await asyncio.gather(*(one(n) for n in ready))
    return {n.ID: a for n, a in zip(ready, got, strict=True)}


async def cluster_info(request: web.Request) -> dict[str, Any]:
    """The fields a manager's ``/info`` adds for the whole cluster (cached briefly)."""
    m = engines.manager(request)
    cache = request.app[CACHE]
    async with cache.lock:  # one fan-out at a time: concurrent pollers share it
        if time.monotonic() - cache.at < CACHE_S:
            return cache.value
        nodes = sorted(m.store.list("node"), key=node_name)
        answers = await _engine_infos(m, nodes)
        docs = [a for a in answers.values() if isinstance(a, dict)]
        out: dict[str, Any] = {k: sum(int(d.get(k) or 0) for d in docs) for k in _COUNTS}
        out["NCPU"] = sum(int(d.get("NCPU") or 0) for d in docs)
        out["MemTotal"] = sum(int(d.get("MemTotal") or 0) for d in docs)
        out["SystemStatus"] = status_lines(m, nodes, answers)
        cache.at, cache.value = time.monotonic(), out
        return out


# ---------------------------------------------------------------------------- /system/df


def merge_df(answers: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Every node's ``/system/df`` as one answer (see the module's docstring)."""
    out: dict[str, Any] = {"LayersSize": 0, "Images": [], "Containers": [], "Volumes": [], "BuildCache": []}
    builder = 0
    vols: list[tuple[str, list[dict[str, Any]]]] = []
    for node, doc in answers:
        out["LayersSize"] += int(doc.get("LayersSize") or 0)
        out["Images"] += doc.get("Images") or []
        for c in doc.get("Containers") or ():
            c["Names"] = [f"/{node}{n}" for n in c.get("Names") or ()]
            out["Containers"].append(c)
        vols.append((node, list(doc.get("Volumes") or ())))
        out["BuildCache"] += doc.get("BuildCache") or []
        builder += int(doc.get("BuilderSize") or 0)
    out["Volumes"] = merge_volumes(vols)
    if builder:
        out["BuilderSize"] = builder
    return out


async def system_df(request: web.Request) -> web.Response:
    m = engines.manager(request)
    target = "/system/df" + (f"?{request.query_string}" if request.query_string else "")
    answers: list[tuple[str, dict[str, Any]]] = []
    errors: list[str] = []
    for node, ans in await fan_out(m, "GET", target):
        if isinstance(ans, ShoalError):
            errors.append(f"{node_name(node)}: {ans.message}")
        elif ans.status != 200:
            raise EngineError(ans.status, ans.message)
        else:
            answers.append((node_name(node), ans.json() or {}))
    if errors and not answers:
        raise Unavailable("; ".join(errors))
    return json_response(merge_df(answers))


ROUTES: list[tuple[str, str, Any]] = [("GET", "/system/df", system_df)]
