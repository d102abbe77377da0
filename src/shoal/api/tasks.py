"""``/tasks`` routes."""

from __future__ import annotations

from aiohttp import web

from shoal import controlapi
from shoal.api.common import json_response, swarm_manager
from shoal.api.services import shown, shown_task
from shoal.controlapi.tasks import TASK_FILTERS


async def list_tasks(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    filters = controlapi.parse_filters(request.query.get("filters"), TASK_FILTERS)
    return json_response(shown(controlapi.list_tasks(manager.store, filters)))


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    return json_response(shown_task(controlapi.get_task(manager.store, request.match_info["id"])))
