"""``/services`` routes."""

from __future__ import annotations

from aiohttp import web

from shoal import controlapi
from shoal.api.common import decode_body, empty_response, json_response, query_bool, query_version, swarm_manager
from shoal.controlapi.services import SERVICE_FILTERS
from shoal.models import ServiceSpec


async def list_services(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    filters = controlapi.parse_filters(request.query.get("filters"), SERVICE_FILTERS)
    services = controlapi.list_services(manager.store, filters, status=query_bool(request, "status"))
    return json_response(services)


async def create(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    spec = await decode_body(request, ServiceSpec)
    svc = controlapi.create_service(manager.store, spec)
    return json_response({"ID": svc.ID, "Warnings": []}, status=201)


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    # insertDefaults is accepted and ignored: stored specs already carry the defaults Docker shows.
    return json_response(controlapi.get_service(manager.store, request.match_info["id"]))


async def update(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    version = query_version(request, "service")
    spec = await decode_body(request, ServiceSpec)
    controlapi.update_service(
        manager.store, request.match_info["id"], version, spec, rollback=request.query.get("rollback") or None
    )
    return json_response({"Warnings": []})


async def remove(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    controlapi.remove_service(manager.store, request.match_info["id"])
    return empty_response()
