"""``/secrets`` and ``/configs`` routes, with moby's shapes: create answers ``{"ID"}`` with 201,
update and remove answer empty bodies (200 and 204). A secret's data never leaves the manager
through this API; a config's does (``docker config inspect`` shows it)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shoal.api.common import decode_body, empty_response, json_response, query_version, swarm_manager
from shoal.controlapi import parse_filters
from shoal.controlapi import secrets as ops
from shoal.models import ConfigSpec, SecretSpec


def _routes(kind: ops.Kind, spec_type: type[Any]) -> list[tuple[str, str, Any]]:
    """The five routes of one kind; secrets are redacted on every way out."""
    base = f"/{kind.name}s"
    show = ops.redacted if kind is ops.SECRET else (lambda o: o)

    async def list_all(request: web.Request) -> web.Response:
        manager = swarm_manager(request)
        filters = parse_filters(request.query.get("filters"), ops.SECRET_FILTERS)
        return json_response([show(o) for o in ops.list_objects(manager.store, kind, filters)])

    async def create(request: web.Request) -> web.Response:
        manager = swarm_manager(request)
        spec = await decode_body(request, spec_type)
        obj = ops.create(manager.store, kind, spec)
        return json_response({"ID": obj.ID}, status=201)

    async def inspect(request: web.Request) -> web.Response:
        manager = swarm_manager(request)
        return json_response(show(ops.get(manager.store, kind, request.match_info["id"])))

    async def update(request: web.Request) -> web.Response:
        manager = swarm_manager(request)
        version = query_version(request, kind.name)
        spec = await decode_body(request, spec_type)
        ops.update(manager.store, kind, request.match_info["id"], version, spec)
        return empty_response()

    async def remove(request: web.Request) -> web.Response:
        manager = swarm_manager(request)
        ops.remove(manager.store, kind, request.match_info["id"])
        return empty_response(204)

    return [
        ("GET", base, list_all),
        ("POST", f"{base}/create", create),
        ("GET", f"{base}/{{id}}", inspect),
        ("POST", f"{base}/{{id}}/update", update),
        ("DELETE", f"{base}/{{id}}", remove),
    ]


ROUTES: list[tuple[str, str, Any]] = [*_routes(ops.SECRET, SecretSpec), *_routes(ops.CONFIG, ConfigSpec)]
