"""``/shoal/stacks``: Compose projects as objects (create or update, list, inspect, scale, remove)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shoal.api.common import (
    decode_body,
    empty_response,
    json_response,
    query_bool,
    query_version,
    swarm_manager,
)
from shoal.controlapi import stacks
from shoal.errors import Conflict, InvalidArgument
from shoal.models import Stack, StackSpec


def _shown(st: Stack) -> Stack:
    return st  # secrets' and configs' data never reach the stack object (see stacks._without_data)


async def deploy(request: web.Request) -> web.Response:
    """``POST /shoal/stacks?prune=1&dryRun=1`` with a StackSpec: create the stack or bring it to the
    new spec (only what changed). 200 with the changes; nothing is written on a dry run."""
    manager = swarm_manager(request)
    spec = await decode_body(request, StackSpec)
    result = stacks.deploy_stack(
        manager.store, spec, prune=query_bool(request, "prune"), dry_run=query_bool(request, "dryRun"),
        live_scheduler=getattr(manager, "scheduler", None),
    )
    return json_response(result.to_json())


async def update(request: web.Request) -> web.Response:
    """``POST /shoal/stacks/{name}/update[?version=N]``: like a deploy, but the stack must exist
    (404 otherwise) and, given a version, still be at it (409 if someone deployed in between)."""
    manager = swarm_manager(request)
    name = request.match_info["name"]
    spec = await decode_body(request, StackSpec)
    if spec.Name and spec.Name != name:
        raise InvalidArgument(f"stack name {spec.Name!r} in the body does not match {name!r} in the path")
    cur = stacks.get_stack(manager.store, name)
    if "version" in request.query and query_version(request, "stack") != cur.Version.Index:
        raise Conflict(f"update out of sequence: stack {name} is at version {cur.Version.Index}")
    result = stacks.deploy_stack(
        manager.store, msgspec.structs.replace(spec, Name=cur.Spec.Name), prune=query_bool(request, "prune"),
        dry_run=query_bool(request, "dryRun"), live_scheduler=getattr(manager, "scheduler", None),
    )
    return json_response(result.to_json())


async def list_stacks(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    return json_response(stacks.list_stacks(manager.store))


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    return json_response(_shown(stacks.get_stack(manager.store, request.match_info["name"])))


async def scale(request: web.Request) -> web.Response:
    """``POST /shoal/stacks/{name}/scale`` with ``{"worker": 3, "result": 2}``."""
    manager = swarm_manager(request)
    try:
        body: Any = msgspec.json.decode(await request.read())
    except msgspec.DecodeError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from None
    if not isinstance(body, dict) or not body:
        raise InvalidArgument('the body must be an object of service names and replica counts, e.g. {"worker": 3}')
    services = stacks.scale_stack(manager.store, request.match_info["name"], body)
    return json_response([{"ID": s.ID, "Name": s.Spec.Name} for s in services])


async def remove(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    warnings = stacks.remove_stack(manager.store, request.match_info["name"])
    if warnings:
        return json_response({"Warnings": warnings})
    return empty_response()


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/shoal/stacks", list_stacks),
    ("POST", "/shoal/stacks", deploy),
    ("GET", "/shoal/stacks/{name}", inspect),
    ("POST", "/shoal/stacks/{name}/update", update),
    ("POST", "/shoal/stacks/{name}/scale", scale),
    ("DELETE", "/shoal/stacks/{name}", remove),
]
