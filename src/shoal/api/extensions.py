"""``/shoal/...``: what Docker's API has no word for. Here: the placement plan (a dry run) and the
manager's own health."""

from __future__ import annotations

import collections
import gc

import msgspec
from aiohttp import web

from shoal.api.common import decode_body, json_response, manager_of, swarm_manager
from shoal.controlapi.validate import check_reservation_fits, validate_service_spec
from shoal.models import ServiceSpec
from shoal.scheduler import plan


async def placement_plan(request: web.Request) -> web.Response:
    """``POST /shoal/plan`` with a service spec: where each task would go, and why not; no writes.

    Runs the live scheduler's pipeline and strategy on a copy of its node state, so the answer is
    what ``service create`` would do now (preemptions included, reported, not carried out).
    """
    manager = swarm_manager(request)
    spec = await decode_body(request, ServiceSpec)
    if not spec.Name:  # `service create` would pick a random name; a plan needs none
        spec = msgspec.structs.replace(spec, Name="plan")
    spec = validate_service_spec(spec)
    store = manager.store
    check_reservation_fits(spec, store.list("node"), store.cluster())
    placements = plan(store, spec, live=getattr(manager, "scheduler", None))
    hostnames = {n.ID: n.Description.Hostname for n in store.list("node")}
    return json_response([
        {"Slot": p.slot, "NodeID": p.node_id or "", "Node": hostnames.get(p.node_id or "", ""), "Reason": p.reason}
        for p in placements
    ])


async def manager_health(request: web.Request) -> web.Response:
    """``GET /shoal/debug/manager``: whether this manager keeps up with its own work — event-loop lag,
    how far the store's durable state trails memory, and nodes marked down for missed heartbeats."""
    manager = manager_of(request)
    store = manager.store
    lag = getattr(manager, "loop_lag", None)
    gc_stats = getattr(manager, "gc_stats", None)
    dispatcher = getattr(manager, "dispatcher", None)
    tracked: dict[str, int] | None = None
    if request.query.get("objects"):  # on demand: walking every tracked object takes a while
        counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
        tracked = dict(counts.most_common(15))
    return json_response({
        "TrackedObjects": tracked,
        "LoopLag": lag.summary() if lag is not None else None,
        "GC": gc_stats.summary() if gc_stats is not None else None,
        "Store": {"Revision": store.revision, "Durable": store.writer.durable,
                  "Error": str(store.writer.error) if store.writer.error else "",
                  "Problems": [str(p) for p in store.problems]},
        "NodesMarkedDown": dict(dispatcher.marked_down) if dispatcher is not None else {},
    })
