"""``/nodes`` routes."""

from __future__ import annotations

import msgspec
from aiohttp import web

from shoal import controlapi
from shoal.api.common import decode_body, empty_response, json_response, query_bool, query_version, swarm_manager
from shoal.controlapi.nodes import NODE_FILTERS
from shoal.errors import InvalidArgument
from shoal.models import NodeSpec


async def list_nodes(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    filters = controlapi.parse_filters(request.query.get("filters"), NODE_FILTERS)
    return json_response(controlapi.list_nodes(manager.store, filters))


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    return json_response(controlapi.get_node(manager.store, request.match_info["id"]))


async def update(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    version = query_version(request, "node")
    spec = await decode_body(request, NodeSpec)
    # Role and Availability have defaults in the model, but moby rejects a spec without them rather
    # than silently demoting or re-activating the node: do the same.
    sent = {k.lower(): v for k, v in msgspec.json.decode(await request.read()).items()}
    for key in ("Role", "Availability"):
        if not sent.get(key.lower()):
            raise InvalidArgument(f'invalid {key}: ""')
    controlapi.update_node(manager.store, request.match_info["id"], version, spec)
    return empty_response()


async def remove(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    controlapi.remove_node(manager.store, request.match_info["id"], force=query_bool(request, "force"))
    return empty_response()
