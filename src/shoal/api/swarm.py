"""``/swarm`` routes: init, join, leave, inspect, update (token rotation) and the unlock key."""

from __future__ import annotations

import msgspec
from aiohttp import web

from shoal import controlapi
from shoal.api.auth import identity
from shoal.api.common import (
    decode_body,
    empty_response,
    json_response,
    manager_of,
    query_bool,
    query_version,
    swarm_manager,
)
from shoal.errors import InvalidArgument
from shoal.models import InitRequest, JoinRequest, JoinTokens, SwarmSpec


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    cluster = controlapi.inspect_cluster(manager.store)
    if not identity(request).is_admin:  # a join token lets its holder add a node: admins' business
        cluster = msgspec.structs.replace(cluster, JoinTokens=JoinTokens())
    return json_response(cluster)


async def init(request: web.Request) -> web.Response:
    req = await decode_body(request, InitRequest)
    node_id = await manager_of(request).init_swarm(req)
    return json_response(node_id)


async def join(request: web.Request) -> web.Response:
    req = await decode_body(request, JoinRequest)
    if not req.JoinToken:
        raise InvalidArgument("join token is required")
    if not req.RemoteAddrs:
        raise InvalidArgument("at least 1 RemoteAddr is required to join")
    await manager_of(request).join(req)
    return empty_response()


async def leave(request: web.Request) -> web.Response:
    await manager_of(request).leave(query_bool(request, "force"))
    return empty_response()


async def update(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    version = query_version(request, "swarm")
    spec = await decode_body(request, SwarmSpec)
    before = controlapi.inspect_cluster(manager.store).Spec.CAConfig
    rotate = spec.CAConfig is not None and spec.CAConfig.ForceRotate > (before.ForceRotate if before else 0)
    controlapi.update_cluster(
        manager.store,
        version,
        spec,
        rotate_worker_token=query_bool(request, "rotateWorkerToken"),
        rotate_manager_token=query_bool(request, "rotateManagerToken"),
    )
    if rotate:  # `docker swarm ca --rotate` bumps ForceRotate
        manager.rotate_root_ca()
    return empty_response()


async def unlock_key(request: web.Request) -> web.Response:
    swarm_manager(request)
    # Autolock is not offered: the store holds no encrypted raft log to lock.
    return json_response({"UnlockKey": ""})
