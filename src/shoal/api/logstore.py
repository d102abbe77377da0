"""``/shoal/logs/*``: collected logs (``aliyun.log_store_*``) and their sinks.

``GET /shoal/logs/query`` reads the leader's file sink (logstore/query.py), so a follower passes
the request on to the leader, as ``service stats`` does. A caller who is not an admin gets the lines
of its teams' services only (api/auth.py's rule for logs). Sinks are admins' (their URLs may carry
credentials): ``GET``/``POST /shoal/logs/sinks``, ``DELETE /shoal/logs/sinks/{name}``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from shoal.api.auth import USER_KEY, identity
from shoal.api.common import decode_body, empty_response, json_response, swarm_manager
from shoal.api.forward import to_leader
from shoal.controlapi import logsinks
from shoal.controlapi.users import TEAM_LABEL
from shoal.errors import Forbidden, InvalidArgument, Unavailable
from shoal.logstore.files import safe_name
from shoal.logstore.query import DEFAULT_LIMIT, MAX_LIMIT, LogQuery, parse_time, run_query
from shoal.models import LogSinkSpec


def _time(request: web.Request, key: str) -> float:
    raw = request.query.get(key, "").strip()
    if not raw:
        return 0.0
    try:
        return parse_time(raw)
    except ValueError as e:
        raise InvalidArgument(f'invalid value for "{key}": {e}') from None


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "").strip()
    if not raw:
        return DEFAULT_LIMIT
    try:
        n = int(raw)
    except ValueError:
        raise InvalidArgument(f'invalid value for "limit": {raw!r} is not a number') from None
    if not 0 < n <= MAX_LIMIT:
        raise InvalidArgument(f'invalid value for "limit": must be 1 to {MAX_LIMIT}, not {n}')
    return n


async def query_logs(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    q = LogQuery(service=request.query.get("service", "").strip(), store=request.query.get("store", "").strip(),
                 since=_time(request, "since"), until=_time(request, "until"),
                 grep=request.query.get("grep", ""), limit=_limit(request))
    if q.since and q.until and q.until < q.since:
        raise InvalidArgument('invalid range: "until" is before "since"')
    if not getattr(manager, "leads", True) and getattr(manager, "leader_api", None) is not None:
        forwarded = await to_leader(request, manager, user=str(request.get(USER_KEY, "")))
        if forwarded is not None:
            return forwarded
    ident = identity(request)
    allowed = None
    if not ident.is_admin:
        # A service's directory is its name; its team is the one its labels name now.
        teams = {safe_name(s.Spec.Name): (s.Spec.Labels or {}).get(TEAM_LABEL) for s in manager.store.list("service")}
        if q.service and not ident.can_read_logs(teams.get(safe_name(q.service))):
            raise Forbidden(f"{ident.role} {ident.name!r} may not read the logs of service {q.service!r}: "
                            f"only of its teams' services")
        allowed = lambda name: ident.can_read_logs(teams.get(name))  # noqa: E731
    root = getattr(manager, "logstore_root", None)  # the manager's own files (ManagerAPI does not name it)
    if root is None:
        raise Unavailable("this manager keeps no collected logs")
    records: list[dict[str, Any]] = await asyncio.to_thread(run_query, Path(root), q, allowed)
    return json_response(records)


async def list_sinks(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    return json_response([logsinks.shown(s) for s in logsinks.list_sinks(manager.store)])


async def create_sink(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    spec = await decode_body(request, LogSinkSpec)
    sink = logsinks.create(manager.store, spec)
    return json_response({"ID": sink.ID}, status=201)


async def remove_sink(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    logsinks.remove(manager.store, request.match_info["name"])
    return empty_response(204)


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/shoal/logs/query", query_logs),
    ("GET", "/shoal/logs/sinks", list_sinks),
    ("POST", "/shoal/logs/sinks", create_sink),
    ("DELETE", "/shoal/logs/sinks/{name}", remove_sink),
]
