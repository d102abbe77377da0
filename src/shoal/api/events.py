"""``GET /events`` for the whole cluster: every node engine's events and the swarm's own, as one stream.

Two sources, merged:

- **Node engines** (container, image, network, volume, plugin, daemon events): each ready node's
  engine's own ``/events`` through the manager's pipes, with Docker's filters passed on. Each event
  is marked with its node as classic Swarm did (api/utils.go normalizeEvent): ``node.name``,
  ``node.id``, ``node.addr``, ``node.ip`` in ``Actor.Attributes``, a top-level ``"node": {"Name",
  "Id", "Addr", "Ip"}``, and `` node:<name>`` after ``from``. A node that becomes ready later joins
  the stream (from the moment the request began); a node that goes away is dropped and the stream
  goes on; a broken stream to a node that is still ready is reopened from its last event.
- **The swarm** (service, node, secret, config and swarm-scope network events, ``"scope": "swarm"``):
  made from the store's watch by :class:`SwarmEventLog`, in moby's shapes (daemon/events.go:
  ``Action`` create/update/remove, ``Actor.Attributes.name``, the ``*.old``/``*.new`` attributes of
  node and service updates; the time is the object's CreatedAt/UpdatedAt, or now for a removal).
  Every manager runs one (a follower's store applies the leader's commits, so it sees the same).

``since`` replays what each engine still holds (dockerd keeps its last 256 events) and the swarm
events this manager logged since it started (its last :data:`LOG_SIZE`), merged in time order;
``until`` ends the stream (with ``until`` in the past the answer is that replay alone). Filters are
Docker's, applied by each engine to its own events and here to the swarm's; ``node`` means both
Docker's (that node's swarm node events) and classic Swarm's (events from that node's engine).
Viewers get no secret events (they may not list secrets either).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from shoal.api import engines
from shoal.api.auth import identity
from shoal.api.common import MANAGER, ManagerAPI
from shoal.api.engineproxy import open_stream
from shoal.api.engines import fan_out, node_name
from shoal.api.limits import stream_slot
from shoal.controlapi.filters import Filters, parse_filters
from shoal.controlapi.users import ADMIN, OPERATOR
from shoal.errors import InvalidArgument, ShoalError
from shoal.models import Node, parse_ts
from shoal.store.base import Action, Event

log = logging.getLogger(__name__)

EVENT_FILTERS = ("config", "container", "daemon", "event", "image", "label", "network", "node", "plugin", "scope",
                 "secret", "service", "type", "volume")
ENGINE_TYPES = frozenset({"container", "image", "network", "volume", "plugin", "daemon"})
SWARM_KINDS = {"service": "service", "node": "node", "secret": "secret", "config": "config", "network": "network"}
LOG_SIZE = 1024  # swarm events kept for ``since`` (dockerd keeps 256 of its own)
POLL_S = 1.0  # how often the stream looks for nodes that joined or left, and for a client that left
UNTIL_GRACE_S = 3.0  # after ``until``, how long the engines' streams get to deliver their last events
RETRY_S = 1.0  # before reopening a broken stream to a node that is still ready
_ACTIONS = {Action.CREATE: "create", Action.UPDATE: "update", Action.DELETE: "remove"}


# ---------------------------------------------------------------------------- times


def parse_time(value: str, what: str) -> int | None:
    """Docker's ``since``/``until`` as the CLI sends them (``<seconds>[.<fraction>]``) → nanoseconds."""
    if not value:
        return None
    sec, dot, frac = value.partition(".")
    if not sec.lstrip("-").isdigit() or (dot and not frac.isdigit()):
        raise InvalidArgument(f"invalid value for {what}: {value!r}: a Unix timestamp (seconds[.nanoseconds]) "
                              "is expected")
    return int(sec) * 1_000_000_000 + (int(frac[:9].ljust(9, "0")) if frac else 0)


def format_time(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _ts_ns(ts: str) -> int:
    try:
        return int(parse_ts(ts) * 1e9) if ts else time.time_ns()
    except ValueError:
        return time.time_ns()


# ---------------------------------------------------------------------------- Docker's filters


def _fuzzy(filters: Filters, key: str, source: str) -> bool:
    values = filters.get(key)
    return values is None or any(source.startswith(v) for v in values)


def _exact(filters: Filters, key: str, source: str) -> bool:
    values = filters.get(key)
    return values is None or source in values


def _strip_tag(image: str) -> str:
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


def matches(filters: Filters, ev: dict[str, Any]) -> bool:
    """moby's daemon/events/filter.go ``Include``, for the events made here."""
    actor = ev.get("Actor") or {}
    attrs: dict[str, str] = actor.get("Attributes") or {}
    aid = str(actor.get("ID", ""))
    action = str(ev.get("Action", ""))
    kind = str(ev.get("Type", ""))
    events_wanted = filters.get("event") or []
    if any(e in ("health_status", "exec_create", "exec_start") for e in events_wanted):
        if not _fuzzy(filters, "event", action):
            return False
    elif not _exact(filters, "event", action):
        return False
    if not _exact(filters, "type", kind) or not _exact(filters, "scope", str(ev.get("scope", ""))):
        return False
    for key in ("daemon", "container", "plugin", "volume", "network", "node", "service", "secret", "config"):
        if not (_fuzzy(filters, key, aid) or _fuzzy(filters, key, attrs.get("name", ""))):
            return False
    image = attrs.get("name" if kind == "image" else "image", "")
    if "image" in filters and not any(_exact(filters, "image", s) for s in (aid, image, _strip_tag(aid),
                                                                             _strip_tag(image))):
        return False
    for want in filters.get("label") or ():
        key, sep, value = want.partition("=")
        if key not in attrs or (sep and attrs[key] != value):
            return False
    return True


# ---------------------------------------------------------------------------- swarm events


def _lower(value: Any) -> str:
    return str(getattr(value, "value", value)).lower()


def _replicas(svc: Any) -> int | None:
    mode = svc.Spec.Mode
    rep = getattr(mode, "Replicated", None) if mode is not None else None
    return rep.Replicas if rep is not None else None


def _image(svc: Any) -> str:
    cs = svc.Spec.TaskTemplate.ContainerSpec if svc.Spec.TaskTemplate is not None else None
    return cs.Image if cs is not None else ""


def swarm_message(ev: Event, now_ns: int | None = None) -> dict[str, Any] | None:
    """A store event as the event Docker's daemon logs for it (daemon/events.go), or None."""
    kind = SWARM_KINDS.get(ev.kind)
    if kind is None:
        return None
    obj, old = ev.obj, ev.old
    action = _ACTIONS[ev.action]
    spec = getattr(obj, "Spec", None)
    name = getattr(spec, "Name", "") or ""
    if kind == "node" and not name and obj.Description is not None:
        name = obj.Description.Hostname
    attrs = {"name": name}
    if action == "update" and old is not None:
        if kind == "node":
            if obj.Status.State != old.Status.State:
                attrs["state.old"], attrs["state.new"] = _lower(old.Status.State), _lower(obj.Status.State)
            if obj.Spec.Role != old.Spec.Role:
                attrs["role.old"], attrs["role.new"] = _lower(old.Spec.Role), _lower(obj.Spec.Role)
            if obj.Spec.Availability != old.Spec.Availability:
                attrs["availability.old"] = _lower(old.Spec.Availability)
                attrs["availability.new"] = _lower(obj.Spec.Availability)
        elif kind == "service":
            if _image(obj) != _image(old):
                attrs["image.old"], attrs["image.new"] = _image(old), _image(obj)
            r_old, r_new = _replicas(old), _replicas(obj)
            if r_old is not None and r_new is not None and r_old != r_new:
                attrs["replicas.old"], attrs["replicas.new"] = str(r_old), str(r_new)
            us_new, us_old = obj.UpdateStatus, old.UpdateStatus
            if us_new is not None and us_new.State:
                if us_old is None or not us_old.State:
                    attrs["updatestate.new"] = us_new.State
                elif us_old.State != us_new.State:
                    attrs["updatestate.old"], attrs["updatestate.new"] = us_old.State, us_new.State
            as_new, as_old = obj.AutoscaleStatus, old.AutoscaleStatus
            if as_new is not None and (as_old is None or as_new.Decisions != as_old.Decisions):
                attrs["autoscale.reason"] = as_new.Reason  # the autoscaler's decision (orchestrator/autoscale.py)
    if action == "create":
        ns = _ts_ns(obj.CreatedAt)
    elif action == "update":
        ns = _ts_ns(obj.UpdatedAt)
    else:
        ns = now_ns if now_ns is not None else time.time_ns()
    return {"Type": kind, "Action": action, "Actor": {"ID": obj.ID, "Attributes": attrs}, "scope": "swarm",
            "time": ns // 1_000_000_000, "timeNano": ns}


class SwarmEventLog:
    """The swarm's events as this manager saw them: the last :data:`LOG_SIZE` for ``since``, and each
    new one to every open ``/events`` stream. Follows the manager's store when it is replaced
    (swarm init/join/leave, a follower taking over): the objects a new store starts with are not
    news."""

    def __init__(self, manager: ManagerAPI) -> None:
        self.manager = manager
        self.history: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self.listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self.task: asyncio.Task[None] | None = None

    def publish(self, msg: dict[str, Any]) -> None:
        self.history.append(msg)
        for q in list(self.listeners):
            q.put_nowait(msg)  # unbounded: a stream's writer drains it; a dead stream is removed in its finally

    def since(self, since_ns: int | None, until_ns: int) -> list[dict[str, Any]]:
        lo = since_ns if since_ns is not None else 0
        return [m for m in self.history if lo <= m["timeNano"] <= until_ns]

    async def run(self) -> None:
        while True:
            store = self.manager.store
            watcher = store.watch(*SWARM_KINDS)
            try:
                while self.manager.store is store:
                    try:
                        batch = await asyncio.wait_for(watcher.get(), POLL_S)
                    except TimeoutError:
                        continue
                    now = time.time_ns()
                    for ev in batch:
                        try:
                            msg = swarm_message(ev, now)
                        except Exception:  # one odd object must not end the log
                            log.exception("no event for %s %s", ev.kind, ev.action)
                            continue
                        if msg is not None:
                            self.publish(msg)
            finally:
                watcher.close()

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self.run(), name="swarm-event-log")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


EVENT_LOG: web.AppKey[SwarmEventLog] = web.AppKey("shoal.swarm_event_log", SwarmEventLog)


async def start_log(app: web.Application) -> None:
    app[EVENT_LOG] = log_ = SwarmEventLog(app[MANAGER])
    log_.start()


async def stop_log(app: web.Application) -> None:
    if EVENT_LOG in app:
        await app[EVENT_LOG].stop()


# ---------------------------------------------------------------------------- engine events


def mark_node(ev: dict[str, Any], node: Node) -> dict[str, Any]:
    """Classic Swarm's marks of the node an engine event came from."""
    name, addr = node_name(node), node.Status.Addr
    actor = ev.setdefault("Actor", {})
    attrs = actor.get("Attributes") or {}
    attrs.update({"node.name": name, "node.id": node.ID, "node.addr": addr, "node.ip": addr})
    actor["Attributes"] = attrs
    if ev.get("from"):
        ev["from"] = f"{ev['from']} node:{name}"
    ev["node"] = {"Name": name, "Id": node.ID, "Addr": addr, "Ip": addr}
    return ev


def _engine_query(since_ns: int | None, until_ns: int | None, filters: Filters) -> str:
    q: dict[str, str] = {}
    if since_ns is not None:
        q["since"] = format_time(since_ns)
    if until_ns is not None:
        q["until"] = format_time(until_ns)
    engine_filters = {k: v for k, v in filters.items() if k != "node"}  # classic Swarm's meaning: chosen here
    if engine_filters:
        q["filters"] = json.dumps(engine_filters)
    return "/events" + (f"?{urlencode(q)}" if q else "")


async def _node_stream(m: engines.EngineManager, node: Node, since_ns: int, until_ns: int | None,
                       filters: Filters, out: asyncio.Queue[dict[str, Any]]) -> None:
    """One node engine's live events into ``out`` until the engine ends the stream (``until``) or
    the node stops being ready; a broken stream is reopened from the last event seen."""
    last = since_ns
    while True:
        try:
            pipe = await m.open_engine(node.ID)
            stream = await open_stream(pipe, "GET", _engine_query(last, until_ns, filters))
            try:
                if stream.status != 200:
                    log.info("events of node %s: the engine answered %s", node_name(node), stream.status)
                    return
                buf = b""
                async for data in stream.chunks():
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            ev = json.loads(line)
                            last = max(last, int(ev.get("timeNano") or 0) + 1)
                            out.put_nowait(mark_node(ev, node))
            finally:
                stream.close()
            if until_ns is not None:
                return  # the engine reached ``until``
        except (ShoalError, ConnectionError, OSError, ValueError) as e:
            log.info("events of node %s broke off: %s", node_name(node), e)
        if until_ns is not None and time.time_ns() > until_ns:
            return
        await asyncio.sleep(RETRY_S)  # still ready (the caller cancels this task otherwise): reopen


# ---------------------------------------------------------------------------- the handler


def _wanted_nodes(m: engines.EngineManager, filters: Filters) -> list[Node]:
    nodes = engines.engine_nodes(m)
    wanted = filters.get("node")
    if wanted:
        nodes = [n for n in nodes if any(n.ID.startswith(w) or node_name(n) == w for w in wanted)]
    return nodes


def _sources(filters: Filters) -> tuple[bool, bool]:
    """(engine events wanted, swarm events wanted), by the ``type`` and ``scope`` filters."""
    types = set(filters.get("type") or ())
    scopes = set(filters.get("scope") or ())
    engine = (not types or bool(types & ENGINE_TYPES)) and (not scopes or "local" in scopes)
    swarm = (not types or bool(types & set(SWARM_KINDS.values()))) and (not scopes or "swarm" in scopes)
    return engine, swarm


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _visible(may_see_secrets: bool) -> Any:
    def ok(ev: dict[str, Any]) -> bool:
        return may_see_secrets or ev.get("Type") != "secret"
    return ok


async def _write(resp: web.StreamResponse, evs: Iterable[dict[str, Any]]) -> None:
    data = b"".join(json.dumps(ev, separators=(",", ":")).encode() + b"\n" for ev in evs)
    if data:
        await resp.write(data)


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /events``: see the module's docstring."""
    m = engines.manager(request)
    since_ns = parse_time(request.query.get("since", ""), "since")
    until_ns = parse_time(request.query.get("until", ""), "until")
    filters = parse_filters(request.query.get("filters"), EVENT_FILTERS)
    want_engine, want_swarm = _sources(filters)
    visible = _visible(identity(request).role in (ADMIN, OPERATOR))
    swarm_log = request.app.get(EVENT_LOG)
    with stream_slot(request):
        live: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        if want_swarm and swarm_log is not None:
            swarm_log.listeners.add(live)  # before t0: nothing committed from here on is missed
        t0 = time.time_ns()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        streams: dict[str, asyncio.Task[None]] = {}
        try:
            await resp.prepare(request)  # the CLI waits for the headers before it prints anything
            # The past first (``since``), every source's in one time order.
            if since_ns is not None or (until_ns is not None and until_ns <= t0):
                end = min(t0, until_ns) if until_ns is not None else t0
                past: list[dict[str, Any]] = []
                if want_swarm and swarm_log is not None:
                    past += [e for e in swarm_log.since(since_ns, end) if matches(filters, e)]
                if want_engine:
                    nodes = _wanted_nodes(m, filters)
                    for node, ans in await fan_out(m, "GET", _engine_query(since_ns, end, filters), nodes=nodes):
                        if isinstance(ans, ShoalError) or ans.status != 200:
                            continue
                        for line in ans.body.splitlines():
                            if line.strip():
                                with contextlib.suppress(ValueError):
                                    past.append(mark_node(json.loads(line), node))
                past.sort(key=lambda e: int(e.get("timeNano") or 0))
                await _write(resp, filter(visible, past))
                if until_ns is not None and until_ns <= t0:
                    await resp.write_eof()
                    return resp
            # Then live, until ``until`` (if any) or the client leaves.
            deadline = None if until_ns is None else time.monotonic() + (until_ns - time.time_ns()) / 1e9
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    done = [t for t in streams.values() if not t.done()]
                    if done:  # the engines end their own streams at ``until``; give them a moment
                        await asyncio.wait(done, timeout=UNTIL_GRACE_S)
                    while not live.empty():
                        ev = live.get_nowait()
                        if "node" in ev or (matches(filters, ev) and ev["timeNano"] <= until_ns):
                            await _write(resp, filter(visible, [ev]))
                    break
                if want_engine:
                    ready = {n.ID: n for n in _wanted_nodes(m, filters)}
                    for nid in [nid for nid in streams if nid not in ready or streams[nid].done()]:
                        if nid not in ready:
                            streams.pop(nid).cancel()  # the node went away: dropped, the stream goes on
                        elif until_ns is not None:
                            pass  # finished at ``until``: not reopened
                        else:
                            streams.pop(nid)
                    for nid, node in ready.items():
                        if nid not in streams:
                            streams[nid] = asyncio.create_task(
                                _node_stream(m, node, t0 + 1, until_ns, filters, live), name=f"events-{nid[:12]}")
                if _gone(request):
                    break
                wait = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - now))
                try:
                    ev = await asyncio.wait_for(live.get(), wait)
                except TimeoutError:
                    continue
                batch = [ev]
                while not live.empty() and len(batch) < 256:
                    batch.append(live.get_nowait())
                out = [e for e in batch if "node" in e or (e["timeNano"] > t0 and matches(filters, e))]
                await _write(resp, filter(visible, out))
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            if swarm_log is not None:
                swarm_log.listeners.discard(live)
            for task in streams.values():
                task.cancel()
            for task in streams.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        return resp


ROUTES: list[tuple[str, str, Any]] = [("GET", "/events", events)]
