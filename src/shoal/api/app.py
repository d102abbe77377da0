"""The aiohttp application: routes (each also under ``/v<major>.<minor>``), version check, errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

import shoal
from shoal.api import (
    attach,
    clusterinfo,
    containers,
    events,
    extensions,
    images,
    logs,
    logstore,
    networks,
    nodes,
    secrets,
    services,
    stacks,
    stats,
    swarm,
    system,
    tasks,
    users,
    volumes,
)
from shoal.api.auth import SECURITY, USER_KEY, Security, auth_middleware
from shoal.api.common import MANAGER, ManagerAPI, json_response
from shoal.api.engines import ENGINE_INDEX, EngineIndex
from shoal.api.forward import REVISION, is_engine, is_local, to_leader
from shoal.api.limits import STREAM_SLOTS, StreamSlots
from shoal.errors import InvalidArgument, ShoalError
from shoal.metrics import METRICS_KEY, Metrics, metrics_middleware, serve_metrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        raise InvalidArgument(f"invalid API version: {v}") from None


_MAX = _version_tuple(shoal.API_VERSION)
_MIN = _version_tuple(shoal.MIN_API_VERSION)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes Docker's ``{"message": ...}`` with the right status."""
    try:
        return await handler(request)
    except ShoalError as e:
        return json_response({"message": e.message}, status=e.status)
    except web.HTTPNotFound:
        return json_response({"message": "page not found"}, status=404)
    except web.HTTPMethodNotAllowed:
        return json_response({"message": "method not allowed"}, status=405)
    except web.HTTPException as e:
        return json_response({"message": e.text or e.reason}, status=e.status)
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return json_response({"message": str(e) or type(e).__name__}, status=500)


@web.middleware
async def version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reject a ``/vX.Y`` prefix outside [MinAPIVersion, APIVersion], with moby's wording."""
    raw = request.match_info.get("api_version")
    if raw:
        v = _version_tuple(raw)
        if v > _MAX:
            raise InvalidArgument(
                f"client version {raw} is too new. Maximum supported API version is {shoal.API_VERSION}"
            )
        if v < _MIN:
            raise InvalidArgument(
                f"client version {raw} is too old. Minimum supported API version is {shoal.MIN_API_VERSION}, "
                "please upgrade your client to a newer version"
            )
    return await handler(request)


_READS = frozenset({"GET", "HEAD", "OPTIONS"})
DURABLE_TIMEOUT_S = 30.0  # how long a write's answer waits for the store before it says 503


@web.middleware
async def forward_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A write to a manager that does not lead goes to the leader (see api/forward.py)."""
    if request.method in _READS or is_local(request.path):
        return await handler(request)
    manager = request.app[MANAGER]
    if getattr(manager, "leader_api", None) is None:  # a test double without HA
        return await handler(request)
    response = await to_leader(request, manager, user=str(request.get(USER_KEY, "")))
    return await handler(request) if response is None else response


@web.middleware
async def durable_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A write is answered only once it is durable (the store persists behind memory, see
    store/writer.py); while the store cannot persist, new writes are refused with its error, and a
    write whose persisting failed gets that error (503) at once — it stays queued and lands when
    the store recovers, like a write whose answer timed out."""
    if request.method in _READS or is_engine(request.path):
        return await handler(request)
    store = request.app[MANAGER].store
    store.writer.check_writable()
    response = await handler(request)
    if not response.prepared:  # a streamed answer has already told the client what it could
        await store.wait_durable(within=DURABLE_TIMEOUT_S, fail_fast=True)
        response.headers[REVISION] = str(store.revision)
    return response


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = system.SERVER_HEADER


_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/_ping", system.ping),
    ("HEAD", "/_ping", system.ping),
    ("GET", "/version", system.version),
    ("GET", "/info", system.info),
    ("GET", "/swarm", swarm.inspect),
    ("POST", "/swarm/init", swarm.init),
    ("POST", "/swarm/join", swarm.join),
    ("POST", "/swarm/leave", swarm.leave),
    ("POST", "/swarm/update", swarm.update),
    ("GET", "/swarm/unlockkey", swarm.unlock_key),
    ("POST", "/swarm/unlock", swarm.unlock),
    ("GET", "/nodes", nodes.list_nodes),
    ("GET", "/nodes/{id}", nodes.inspect),
    ("POST", "/nodes/{id}/update", nodes.update),
    ("DELETE", "/nodes/{id}", nodes.remove),
    ("GET", "/services", services.list_services),
    ("POST", "/services/create", services.create),
    ("GET", "/services/{id}", services.inspect),
    ("POST", "/services/{id}/update", services.update),
    ("DELETE", "/services/{id}", services.remove),
    ("GET", "/services/{id}/logs", logs.service_logs),
    ("GET", "/tasks", tasks.list_tasks),
    ("GET", "/tasks/{id}", tasks.inspect),
    ("GET", "/tasks/{id}/logs", logs.task_logs),
    ("POST", "/shoal/plan", extensions.placement_plan),
    ("GET", "/shoal/debug/manager", extensions.manager_health),
    ("GET", "/shoal/services/{id}/stats", stats.service_stats),
    ("GET", "/metrics", serve_metrics),  # Prometheus text (shoal/metrics.py)
    *containers.ROUTES,
    *images.ROUTES,
    *networks.ROUTES,
    *attach.ROUTES,
    *secrets.ROUTES,
    *stacks.ROUTES,
    *users.ROUTES,
    *logstore.ROUTES,
    *volumes.ROUTES,
    *events.ROUTES,
    *clusterinfo.ROUTES,
]


def create_app(manager: ManagerAPI, security: Security | None = None) -> web.Application:
    """The Docker Engine API (swarm part) over ``manager``; serve it with :func:`shoal.api.serve`.

    Without ``security`` every caller is an admin (in-process test clients); the daemon always
    passes one (see api/auth.py). Authorization runs before a write is forwarded to the leader."""
    middlewares = [metrics_middleware, errors_middleware, version_middleware, auth_middleware, forward_middleware,
                   durable_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=16 * 1024**2)
    app[MANAGER] = manager
    # The manager's registry (the daemon's); a test double without one gets its own.
    metrics = getattr(manager, "metrics", None)
    app[METRICS_KEY] = metrics if isinstance(metrics, Metrics) else Metrics()
    app[SECURITY] = security or Security()
    app[STREAM_SLOTS] = StreamSlots()
    app[ENGINE_INDEX] = EngineIndex()
    app[clusterinfo.CACHE] = clusterinfo.InfoCache()
    for method, path, handler in _ROUTES:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, r"/v{api_version:[0-9][0-9.]*}" + path, handler)
    app.on_response_prepare.append(_server_header)
    app.on_startup.append(events.start_log)  # the swarm's events, for every /events stream
    app.on_cleanup.append(events.stop_log)
    return app
