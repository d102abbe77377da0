"""``/swarm`` routes: init, join, leave, inspect, update (token rotation), autolock's unlock and key."""

from __future__ import annotations

from typing import Any

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
from shoal.models import Cluster, InitRequest, JoinRequest, JoinTokens, SwarmSpec, UnlockRequest
from shoal.store.autolock import parse_human_key


def public_cluster(cluster: Cluster) -> dict[str, Any]:
    """The cluster in Docker's shape: the unlock key is only ever shown by GET /swarm/unlockkey."""
    out: dict[str, Any] = msgspec.to_builtins(cluster)
    out.pop("UnlockKey", None)
    return out


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    cluster = controlapi.inspect_cluster(manager.store)
    if not identity(request).is_admin:  # a join token lets its holder add a node: admins' business
        cluster = msgspec.structs.replace(cluster, JoinTokens=JoinTokens())
    return json_response(public_cluster(cluster))


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
        rotate_unlock_key=query_bool(request, "rotateManagerUnlockKey"),
    )
    if rotate:  # `docker swarm ca --rotate` bumps ForceRotate
        manager.rotate_root_ca()
    # Autolock turned on or off, or its key rotated: this manager's key files follow once the new
    # key is durable in the store (the others follow from their copy), before the answer, so that
    # a restart right after the CLI printed the key comes up locked under that key.
    await manager.apply_autolock()
    return empty_response()


async def unlock_key(request: web.Request) -> web.Response:
    """The unlock key; "" while autolock is off (moby's GetUnlockKey; the CLI then says
    "no unlock key is set")."""
    manager = swarm_manager(request)
    return json_response({"UnlockKey": controlapi.inspect_cluster(manager.store).UnlockKey})


async def unlock(request: web.Request) -> web.Response:
    """``docker swarm unlock``: a manager that came up locked opens its keys and starts serving."""
    req = await decode_body(request, UnlockRequest)
    manager = manager_of(request)
    manager.check_unlockable()  # not in a swarm: 503; not locked: 409 — before the key is looked at
    await manager.unlock(parse_human_key(req.UnlockKey))
    return empty_response()
