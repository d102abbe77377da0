"""The console's own routes: aggregates a page draws from (``/shoal/console/overview``, ``services``,
``visualizer``), its login (``tokens``, ``/console/login``), and :func:`install`, which adds them,
the change stream (stream.py) and the Compose deploy (deploy.py) to the API's app.

Why aggregates: at 1,000 nodes and 100,000 tasks a page must not list tasks to count them. Figures
come from the store's counters (per service: running, completed and desired-running tasks, and
tasks by state, kept on every write) and its per-node task index; nodes (1,000s) and services
(100s) are listed once per request, tasks are walked only by the visualizer, once per request,
node by node through the index.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from shoal.api.auth import CONSOLE_COOKIE, CONSOLE_SESSIONS, identity
from shoal.api.common import json_response, manager_of, swarm_manager
from shoal.api.events import EVENT_LOG
from shoal.console import deploy, static_routes, stream
from shoal.console.sessions import SESSION_IDLE_S, VIA, Sessions
from shoal.controlapi.services import service_status
from shoal.controlapi.users import ADMIN, OPERATOR
from shoal.errors import Forbidden, InvalidArgument, Unavailable
from shoal.models import NodeState, Service, TaskState

NAMESPACE = "com.docker.stack.namespace"
MAX_NOT_CONVERGED = 50
RECENT_EVENTS = 50
DEFAULT_PER_NODE = 50
MAX_PER_NODE = 1000
UPDATING = frozenset({"updating", "rollback_started", "paused", "rollback_paused"})
# Tasks by state, as the overview counts them: "pending" is everything not yet running.
PENDING = frozenset({TaskState.NEW, TaskState.ALLOCATED, TaskState.PENDING, TaskState.ASSIGNED, TaskState.ACCEPTED,
                     TaskState.PREPARING, TaskState.READY, TaskState.STARTING})
FAILED = frozenset({TaskState.FAILED, TaskState.REJECTED})
# A task the visualizer shows: one that is, or is meant to be, running (not history).
LIVE_DESIRED = frozenset(s for s in TaskState if s.order <= TaskState.RUNNING.order)

SESSIONS: web.AppKey[Sessions] = web.AppKey("shoal.console.sessions", Sessions)
# The visualizer's last answer by (store, revision, per_node): the one route that walks tasks, and the
# one every open page re-asks after each change; its answer holds nothing a viewer may not see.
VISUALIZER_CACHE: web.AppKey[dict[tuple[int, int, int], bytes]] = web.AppKey("shoal.console.visualizer", dict)


def _mode(svc: Service) -> str:
    mode = svc.Spec.Mode
    if mode is None or mode.Replicated is not None:
        return "replicated"
    if mode.Global is not None:
        return "global"
    return "replicated-job" if mode.ReplicatedJob is not None else "global-job"


def _image(svc: Service) -> str:
    cs = svc.Spec.TaskTemplate.ContainerSpec
    image = cs.Image if cs is not None else ""
    return image.split("@", 1)[0]  # `service ls` shows no digest either


def _update_state(svc: Service) -> str:
    return svc.UpdateStatus.State if svc.UpdateStatus is not None else ""


# ---------------------------------------------------------------------------- overview


async def overview(request: web.Request) -> web.Response:
    """``GET /shoal/console/overview``: the cluster at a glance (common15.md has the shape)."""
    manager = swarm_manager(request)
    store = manager.store
    nodes = {"ready": 0, "down": 0, "unknown": 0, "disconnected": 0, "drain": 0, "pause": 0, "active": 0,
             "managers": 0}
    cpus = mem = 0
    for n in store.list("node"):
        nodes[str(n.Status.State)] = nodes.get(str(n.Status.State), 0) + 1
        nodes[str(n.Spec.Availability)] = nodes.get(str(n.Spec.Availability), 0) + 1
        nodes["managers"] += n.ManagerStatus is not None or n.Spec.Role == "manager"
        if n.Status.State == NodeState.READY:  # what can run tasks now
            cpus += n.Description.Resources.NanoCPUs
            mem += n.Description.Resources.MemoryBytes
    services = store.list("service")
    total = converged = updating = 0
    not_converged: list[dict[str, Any]] = []
    for svc in sorted(services, key=lambda s: s.Spec.Name):
        total += 1
        st = service_status(store, svc)
        busy = _update_state(svc) in UPDATING
        updating += busy
        if st.RunningTasks >= st.DesiredTasks and not busy:
            converged += 1
        elif len(not_converged) < MAX_NOT_CONVERGED:
            not_converged.append({"ID": svc.ID, "Name": svc.Spec.Name, "Running": st.RunningTasks,
                                  "Desired": st.DesiredTasks, "UpdateState": _update_state(svc)})
    by_state: dict[str, int] = {}
    for counts in store.task_state_counts().values():
        for state, n in counts.items():
            by_state[state] = by_state.get(state, 0) + n
    reserved_cpu, reserved_mem = _reserved(manager, services)
    return json_response({
        "Nodes": nodes,
        "Services": {"total": total, "converged": converged, "updating": updating, "not_converged": not_converged},
        "Tasks": {"running": by_state.get(TaskState.RUNNING, 0),
                  "pending": sum(by_state.get(s, 0) for s in PENDING),
                  "failed": sum(by_state.get(s, 0) for s in FAILED),
                  "total": store.count("task")},
        "Resources": {"NanoCPUs": cpus, "MemoryBytes": mem, "ReservedNanoCPUs": reserved_cpu,
                      "ReservedMemoryBytes": reserved_mem},
        "Events": recent_events(request),
    })


def _reserved(manager: Any, services: list[Service]) -> tuple[int, int]:
    """CPU and memory reserved by tasks on nodes: the leader's scheduler keeps them per node; a
    manager without one (a follower) estimates from each service's reservation times its running tasks."""
    scheduler = getattr(manager, "scheduler", None)
    infos = getattr(scheduler, "nodes", None)
    if infos:
        return (sum(i.reserved_cpu for i in infos.values()), sum(i.reserved_mem for i in infos.values()))
    cpu = mem = 0
    for svc in services:
        res = svc.Spec.TaskTemplate.Resources
        resv = res.Reservations if res is not None else None
        if resv is not None and (resv.NanoCPUs or resv.MemoryBytes):
            running = manager.store.task_counts(svc.ID)[0]
            cpu += resv.NanoCPUs * running
            mem += resv.MemoryBytes * running
    return cpu, mem


def recent_events(request: web.Request) -> list[dict[str, Any]]:
    """The swarm's last events (api/events.py's log, the one ``/events`` replays), newest last;
    viewers see no secret events, as on ``/events``."""
    log_ = request.app.get(EVENT_LOG)
    if log_ is None:
        return []
    secrets_ok = identity(request).role in (ADMIN, OPERATOR)
    out: list[dict[str, Any]] = []
    for ev in reversed(log_.history):
        if secrets_ok or ev.get("Type") != "secret":
            out.append(ev)
            if len(out) >= RECENT_EVENTS:
                break
    out.reverse()
    return out


# ---------------------------------------------------------------------------- services


async def services(request: web.Request) -> web.Response:
    """``GET /shoal/console/services``: every service's row, from counters (no task walk)."""
    store = swarm_manager(request).store
    nets = {n.ID: n.Spec.Name for n in store.list("network")}
    state_counts = store.task_state_counts()
    out = []
    for svc in sorted(store.list("service"), key=lambda s: s.Spec.Name):
        st = service_status(store, svc)
        spec = svc.Spec
        ports = (svc.Endpoint.Ports if svc.Endpoint is not None and svc.Endpoint.Ports else None) or (
            spec.EndpointSpec.Ports if spec.EndpointSpec is not None else None) or []
        attached = spec.TaskTemplate.Networks or spec.Networks or []
        out.append({
            "ID": svc.ID, "Name": spec.Name, "Stack": (spec.Labels or {}).get(NAMESPACE, ""), "Mode": _mode(svc),
            "Image": _image(svc), "Running": st.RunningTasks, "Desired": st.DesiredTasks,
            "Completed": st.CompletedTasks, "UpdateState": _update_state(svc),
            "Ports": [{"Protocol": p.Protocol, "TargetPort": p.TargetPort, "PublishedPort": p.PublishedPort,
                       "PublishMode": p.PublishMode} for p in ports],
            "Networks": [nets.get(a.Target, a.Target) for a in attached],
            "Pending": state_counts.get(svc.ID, {}).get(TaskState.PENDING, 0),
            "UpdatedAt": svc.UpdatedAt,
        })
    return json_response(out)


# ---------------------------------------------------------------------------- visualizer


async def visualizer(request: web.Request) -> web.Response:
    """``GET /shoal/console/visualizer[?per_node=50]``: nodes with the tasks on them that run or
    are meant to (Swarm's visualizer), at most ``per_node`` each (``TaskCount`` says how many)."""
    store = swarm_manager(request).store
    raw = request.query.get("per_node", "")
    try:
        per_node = int(raw) if raw else DEFAULT_PER_NODE
        if not 0 <= per_node <= MAX_PER_NODE:
            raise ValueError
    except ValueError:
        raise InvalidArgument(f"invalid per_node {raw!r}: a whole number from 0 to {MAX_PER_NODE}") from None
    cache = request.app.get(VISUALIZER_CACHE)
    key = (id(store), store.revision, per_node)
    if cache is not None and key in cache:  # nothing changed since: every open page asks after each change
        return web.Response(body=cache[key], content_type="application/json")
    names = {s.ID: s.Spec.Name for s in store.list("service")}
    # Stable between refreshes (the page redraws in place): by service name, then slot. One integer
    # key per task (the service's rank, then its slot): 100,000 tuple keys cost more than the sort.
    rank = {sid: i << 32 for i, sid in enumerate(sorted(names, key=lambda sid: (names[sid], sid)))}
    unknown = len(rank) << 32
    live = LIVE_DESIRED
    truncated = False
    rows = []
    for n in sorted(store.list("node"), key=lambda n: (n.Description.Hostname, n.ID)):
        tasks = [t for t in store.tasks_on_node(n.ID) if t.DesiredState in live]
        if len(tasks) > per_node:
            truncated = True
        tasks.sort(key=lambda t: rank.get(t.ServiceID, unknown) + t.Slot)
        rows.append({
            "ID": n.ID, "Hostname": n.Description.Hostname, "State": n.Status.State,
            "Availability": n.Spec.Availability, "Role": n.Spec.Role, "Leader": bool(
                n.ManagerStatus is not None and n.ManagerStatus.Leader),
            "NanoCPUs": n.Description.Resources.NanoCPUs, "MemoryBytes": n.Description.Resources.MemoryBytes,
            "TaskCount": len(tasks),
            "Tasks": [[names.get(t.ServiceID, t.ServiceID), t.Status.State, t.ID] for t in tasks[:per_node]],
        })
    resp = json_response({"Nodes": rows, "Truncated": truncated})
    if cache is not None:
        cache.clear()  # one revision's answers only (a few MiB at 1,000 nodes)
        cache[key] = resp.body  # type: ignore[assignment]
    return resp


# ---------------------------------------------------------------------------- login


async def mint_token(request: web.Request) -> web.Response:
    """``POST /shoal/console/tokens``: a one-time login link for the caller's own identity."""
    sessions = request.app.get(SESSIONS)
    if sessions is None:
        raise Unavailable("this daemon serves no console")
    ident = identity(request)
    if ident.via == VIA:  # a session stands for a credential; it does not make new ones
        raise Forbidden("a console session cannot mint login tokens: run 'shoal console --url', or call this "
                        "with your token or certificate")
    manager = manager_of(request)
    token = sessions.mint(ident, manager.store if manager.in_swarm else None)
    return json_response({"Token": token, "Path": f"/console/login?token={token}", "ExpiresIn": 60})


_EXPIRED_PAGE = (b"<!doctype html><meta charset=utf-8><title>Shoal console</title>"
                 b"<p>This login link was used already or has expired. Run <code>shoal console --url</code> "
                 b"for a new one.</p>")


async def login(request: web.Request) -> web.Response:
    """``GET /console/login?token=``: swap the token for the session cookie, then go to the console."""
    sessions = request.app.get(SESSIONS)
    cookie = sessions.redeem(request.query.get("token", "")) if sessions is not None else None
    if cookie is None:
        return web.Response(status=401, body=_EXPIRED_PAGE, content_type="text/html",
                            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    resp = web.Response(status=303, headers={"Location": "/console/", "Cache-Control": "no-store",
                                             "Referrer-Policy": "no-referrer"})
    set_cookie(resp, cookie, secure=request.secure)
    return resp


def set_cookie(resp: web.StreamResponse, value: str, secure: bool) -> None:
    # HttpOnly: the page's script never reads it; SameSite=Strict: no other site's page sends it.
    resp.set_cookie(CONSOLE_COOKIE, value, path="/", httponly=True, samesite="Strict", secure=secure,
                    max_age=int(SESSION_IDLE_S))


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/shoal/console/overview", overview),
    ("GET", "/shoal/console/services", services),
    ("GET", "/shoal/console/visualizer", visualizer),
    ("GET", "/shoal/console/stream", stream.stream),
    ("POST", "/shoal/console/deploy", deploy.deploy),
    ("POST", "/shoal/console/tokens", mint_token),
]
PAGE_ROUTES: list[tuple[str, str, Any]] = [("GET", "/console/login", login)]  # a browser's: no version prefix


def install(app: web.Application) -> web.Application:
    """Add the console's routes and sessions to the API's ``app`` (the daemon's). The console sits
    above the API (it uses its helpers and the Compose loader), so the API does not import it:
    authentication reads the sessions through :data:`shoal.api.auth.CONSOLE_SESSIONS`."""
    sessions = Sessions()
    app[SESSIONS] = sessions
    app[CONSOLE_SESSIONS] = sessions
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, r"/v{api_version:[0-9][0-9.]*}" + path, handler)
    for method, path, handler in PAGE_ROUTES:
        app.router.add_route(method, path, handler)
    static_routes.install(app)  # the page and its files (the UI)
    app[stream.STOPPING] = asyncio.Event()
    app[VISUALIZER_CACHE] = {}
    app.on_shutdown.append(stream.stop_streams)
    return app
