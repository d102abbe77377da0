"""``GET /services/{id}/logs`` and ``GET /tasks/{id}/logs``: agents' log lines as Docker stdcopy frames.

Each frame carries exactly one line, ``[<timestamp> ]<details> <line>``, because the docker CLI's
``service logs`` splits every frame on its first spaces to find the details (node, service and task
IDs) it turns into ``web.1.abc@host |``. With ``follow`` the stream also picks up tasks of the
service that start after the request, and ends only when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from urllib.parse import quote_plus

import msgspec
from aiohttp import web

from shoal import controlapi
from shoal.api.common import ManagerAPI, query_bool, swarm_manager
from shoal.api.limits import stream_slot
from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.errors import InvalidArgument
from shoal.models import Task, TaskState, now_ts, parse_ts
from shoal.store import Action

log = logging.getLogger(__name__)

RAW_STREAM = "application/vnd.docker.raw-stream"
_HEADER = struct.Struct(">BxxxI")
_RAN = frozenset({TaskState.STARTING, TaskState.RUNNING, TaskState.COMPLETE})
_DISCONNECT_POLL_S = 1.0
_BATCH = 256


def task_has_run(task: Task) -> bool:
    """A task whose container exists or existed: the only ones with logs to read."""
    if not task.NodeID:
        return False
    cs = task.Status.ContainerStatus
    return bool(cs is not None and cs.ContainerID) or task.Status.State in _RAN


def frame(stream: int, payload: bytes) -> bytes:
    """One stdcopy frame: [stream, 0, 0, 0, big-endian uint32 length] + payload."""
    return _HEADER.pack(stream, len(payload)) + payload


def details_of(msg: LogMessage) -> bytes:
    """Docker's log details for swarm logs: sorted, query-escaped ``key=value`` pairs, comma-joined."""
    attrs = (
        ("com.docker.swarm.node.id", msg.node_id),
        ("com.docker.swarm.service.id", msg.service_id),
        ("com.docker.swarm.task.id", msg.task_id),
    )
    return ",".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in attrs).encode()


def render(msg: LogMessage, timestamps: bool, details: bool, tty: bool) -> bytes:
    """The bytes for one message: one frame per line (raw lines for a TTY service)."""
    lines = msg.data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    prefix = b""
    if timestamps:
        prefix += (msg.timestamp or now_ts()).encode() + b" "
    if details:
        prefix += details_of(msg) + b" "
    stream = 2 if msg.stream == 2 else 1
    out = bytearray()
    for line in lines:
        payload = prefix + line + b"\n"
        out += payload if tty else frame(stream, payload)
    return bytes(out)


def parse_options(request: web.Request) -> tuple[LogOptions, bool]:
    """LogOptions from Docker's query parameters, plus whether to prefix details."""
    stdout, stderr = query_bool(request, "stdout"), query_bool(request, "stderr")
    if not (stdout or stderr):
        raise InvalidArgument("Bad parameters: you must choose at least one stream")
    tail_raw = request.query.get("tail", "all").strip()
    if tail_raw in ("", "all"):
        tail = -1
    else:
        try:
            tail = int(tail_raw)
        except ValueError:
            raise InvalidArgument(f'tail value must be a positive integer or "all", not "{tail_raw}"') from None
        tail = -1 if tail < 0 else tail
    since_raw = request.query.get("since", "").strip()
    since = 0.0
    if since_raw:
        try:
            since = float(since_raw)
        except ValueError:
            try:
                since = parse_ts(since_raw)
            except ValueError:
                raise InvalidArgument(f"invalid value for \"since\": {since_raw}") from None
    opts = LogOptions(
        follow=query_bool(request, "follow"),
        tail=tail,
        since=since,
        timestamps=query_bool(request, "timestamps"),
        stdout=stdout,
        stderr=stderr,
    )
    return opts, query_bool(request, "details")


class _Done:
    """A source finished."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = _Done()


class _Merger:
    """Merges several ``manager.logs`` streams into one bounded queue (back-pressure on the agents)."""

    def __init__(self, manager: ManagerAPI) -> None:
        self.manager = manager
        self.queue: asyncio.Queue[LogMessage | _Done | _Failed] = asyncio.Queue(maxsize=4 * _BATCH)
        self.active = 0
        self._pumps: set[asyncio.Task[None]] = set()

    def add(self, tasks: list[Task], opts: LogOptions) -> None:
        self.active += 1
        pump = asyncio.create_task(self._pump(tasks, opts))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)

    async def _pump(self, tasks: list[Task], opts: LogOptions) -> None:
        try:
            async for msg in self.manager.logs(tasks, opts):
                await self.queue.put(msg)
        except Exception as e:  # an agent failing must not kill the other streams
            log.warning("log stream for %d task(s) failed: %s", len(tasks), e)
            await self.queue.put(_Failed(e))
        await self.queue.put(_DONE)

    async def close(self) -> None:
        for p in list(self._pumps):
            p.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


async def _follow_new_tasks(manager: ManagerAPI, watcher, service_id: str, seen: set[str],
                            merger: _Merger, opts: LogOptions) -> None:
    """In follow mode, start streaming each task of the service once it gets a container."""
    new_opts = msgspec.structs.replace(opts, tail=-1)
    async for events in watcher:
        for e in events:
            t = e.obj
            if e.action is Action.DELETE or t.ServiceID != service_id or t.ID in seen or not task_has_run(t):
                continue
            seen.add(t.ID)
            merger.add([t], new_opts)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream_logs(request: web.Request, manager: ManagerAPI, tasks: list[Task], tty: bool,
                      follow_service: str | None) -> web.StreamResponse:
    """Stream ``tasks``' logs; the caller holds one of its stream slots (api/limits.py) meanwhile, so
    a client cannot tie up the manager and the agents with thousands of ``--follow`` streams."""
    opts, details = parse_options(request)
    with stream_slot(request):
        return await _stream(request, manager, tasks, tty, follow_service, opts, details)


async def _stream(request: web.Request, manager: ManagerAPI, tasks: list[Task], tty: bool,
                  follow_service: str | None, opts: LogOptions, details: bool) -> web.StreamResponse:
    merger = _Merger(manager)
    watcher = manager.store.watch("task") if opts.follow and follow_service else None
    follower: asyncio.Task[None] | None = None
    resp = web.StreamResponse(headers={"Content-Type": RAW_STREAM})
    try:
        # The caller selected `tasks` and the watcher starts here with no await in between, so no
        # task can start unseen in the gap.
        seen = {t.ID for t in tasks}
        if tasks:
            merger.add(tasks, opts)
        if watcher is not None and follow_service is not None:
            follower = asyncio.create_task(
                _follow_new_tasks(manager, watcher, follow_service, seen, merger, opts)
            )
        await resp.prepare(request)
        while opts.follow or merger.active:
            try:
                item = await asyncio.wait_for(merger.queue.get(), _DISCONNECT_POLL_S)
            except TimeoutError:
                if _gone(request):
                    break
                continue
            out = bytearray()
            for _ in range(_BATCH):
                if isinstance(item, _Done):
                    merger.active -= 1
                elif isinstance(item, _Failed):
                    line = f"Error grabbing logs: {item.error}\n".encode()
                    out += line if tty else frame(2, line)
                elif (item.stream == 2 and opts.stderr) or (item.stream != 2 and opts.stdout):
                    out += render(item, opts.timestamps, details, tty)
                if merger.queue.empty():
                    break
                item = merger.queue.get_nowait()
            if out:
                await resp.write(bytes(out))
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away: nothing more to send
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        if watcher is not None:
            watcher.close()
        await merger.close()
    return resp


async def service_logs(request: web.Request) -> web.StreamResponse:
    manager = swarm_manager(request)
    svc = controlapi.get_service(manager.store, request.match_info["id"])
    parse_options(request)  # reject bad parameters before anything is streamed
    tasks = [t for t in manager.store.tasks_of_service(svc.ID) if task_has_run(t)]
    tasks.sort(key=lambda t: (t.Slot, t.NodeID, t.CreatedAt))
    cs = svc.Spec.TaskTemplate.ContainerSpec
    return await stream_logs(request, manager, tasks, bool(cs and cs.TTY), svc.ID)


async def task_logs(request: web.Request) -> web.StreamResponse:
    manager = swarm_manager(request)
    task = controlapi.get_task(manager.store, request.match_info["id"])
    parse_options(request)
    cs = task.Spec.ContainerSpec
    return await stream_logs(request, manager, [task] if task_has_run(task) else [], bool(cs and cs.TTY), None)
