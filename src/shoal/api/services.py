"""``/services`` routes."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shoal import controlapi
from shoal.api.common import decode_body, empty_response, json_response, query_bool, query_version, swarm_manager
from shoal.controlapi.services import SERVICE_FILTERS
from shoal.models import Service, ServiceSpec


def service_json(svc: Service) -> Service | dict[str, Any]:
    """The service as Docker shows it. Go clients decode time fields strictly, so an UpdateStatus
    timestamp that is not set yet (CompletedAt while an update runs) must be left out, not sent as "".
    """
    us = svc.UpdateStatus
    if us is None or (us.StartedAt and us.CompletedAt):
        return svc
    out = msgspec.to_builtins(svc)
    out["UpdateStatus"] = {k: v for k, v in out["UpdateStatus"].items() if v or k not in ("StartedAt", "CompletedAt")}
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
    # insertDefaults is accepted and ignored: stored specs already carry the defaults Docker shows.
    return json_response(service_json(controlapi.get_service(manager.store, request.match_info["id"])))


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
