"""``/services`` routes."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shoal import controlapi
from shoal.api.common import decode_body, empty_response, json_response, query_bool, query_version, swarm_manager
from shoal.controlapi.services import SERVICE_FILTERS, insert_defaults
from shoal.models import Service, ServiceSpec


def service_json(svc: Service) -> dict[str, Any]:
    """A service in Docker's shape: ``ForceUpdate`` is always in a TaskTemplate (moby's field has
    no omitempty; our specs omit zero values), ``ServiceStatus`` only when asked for."""
    out: dict[str, Any] = msgspec.to_builtins(svc)
    for key in ("Spec", "PreviousSpec"):
        spec = out.get(key)
        if isinstance(spec, dict):
            spec.setdefault("TaskTemplate", {}).setdefault("ForceUpdate", 0)
    for key in ("ServiceStatus", "JobStatus", "UpdateStatus", "PreviousSpec"):  # omitempty in moby
        if out.get(key) is None:
            out.pop(key, None)
    return out


async def list_services(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    filters = controlapi.parse_filters(request.query.get("filters"), SERVICE_FILTERS)
    services = controlapi.list_services(manager.store, filters, status=query_bool(request, "status"))
    return json_response([service_json(s) for s in services])


async def create(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    spec = await decode_body(request, ServiceSpec)
    svc = controlapi.create_service(manager.store, spec)
    return json_response({"ID": svc.ID, "Warnings": []}, status=201)


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    svc = controlapi.get_service(manager.store, request.match_info["id"])
    if query_bool(request, "insertDefaults"):
        svc = msgspec.structs.replace(svc, Spec=insert_defaults(svc.Spec))
    return json_response(service_json(svc))


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
