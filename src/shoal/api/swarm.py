"""``/swarm`` routes: init, join, leave, inspect, update (token rotation) and the unlock key."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shoal import controlapi
from shoal.api.common import (
    decode_body,
    empty_response,
    json_response,
    manager_of,
    query_bool,
    query_version,
    swarm_manager,
)
from shoal.controlapi.errors import NotImplementedYet
from shoal.errors import Unavailable
from shoal.models import InitRequest, SwarmSpec

ALREADY_IN_SWARM = (
    'This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and join another one.'
)


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    return json_response(controlapi.inspect_cluster(manager.store))


async def init(request: web.Request) -> web.Response:
    req = await decode_body(request, InitRequest)
    node_id = await manager_of(request).init_swarm(req)
    return json_response(node_id)


async def join(request: web.Request) -> web.Response:
    # Joining another manager needs the multi-host transport; until then answer 501 (Docker's status
    # for "not implemented"), after the same "already in a swarm" check Docker makes first.
    await decode_body(request, dict[str, Any])
    if manager_of(request).in_swarm:
        raise Unavailable(ALREADY_IN_SWARM)
    raise NotImplementedYet(
        "joining an existing swarm is not supported by this Shoal release yet; "
        'use "docker swarm init" to create a single-host swarm'
    )


async def leave(request: web.Request) -> web.Response:
    await manager_of(request).leave(query_bool(request, "force"))
    return empty_response()


async def update(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    version = query_version(request, "swarm")
    spec = await decode_body(request, SwarmSpec)
    controlapi.update_cluster(
        manager.store,
        version,
        spec,
        rotate_worker_token=query_bool(request, "rotateWorkerToken"),
        rotate_manager_token=query_bool(request, "rotateManagerToken"),
    )
    return empty_response()


async def unlock_key(request: web.Request) -> web.Response:
    swarm_manager(request)
    # Autolock is not offered: the store holds no encrypted raft log to lock.
    return json_response({"UnlockKey": ""})
