"""A user-space stand-in for the routing mesh, for a single host.

For every service port published in ``ingress`` mode, listen on its PublishedPort (all addresses,
TCP) and forward each connection, round-robin, to this node's running tasks of that service at
``<container IP>:<TargetPort>``. Listeners open when a service's first task runs here and close when
its last one stops.

The networking issue replaces this with nftables load balancing in the kernel (an ingress network
spanning nodes, so any node's port reaches any node's tasks); this proxy only reaches local tasks,
and UDP is not forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, field

from shoal.agent.executor.base import task_ports
from shoal.models import Task
from shoal.orchestrator.bluegreen import is_standby

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


@dataclass(eq=False)
class _Service:
    ports: dict[int, int] = field(default_factory=dict)  # published → target (tcp)
    backends: dict[str, str] = field(default_factory=dict)  # task ID → container IP
    turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(self) -> list[str]:
        """Backends in the order to try them: round-robin start, the rest as fallbacks."""
        ips = list(self.backends.values())
        if not ips:
            return []
        start = next(self.turn) % len(ips)
        return ips[start:] + ips[:start]


class IngressProxy:
    def __init__(self, host: str = "0.0.0.0") -> None:
        self.host = host
        self._services: dict[str, _Service] = {}
        self._servers: dict[int, tuple[asyncio.Server, str]] = {}  # published port → (server, service ID)
        self.errors: dict[int, str] = {}  # ports that could not be bound, and why
        self._dirty = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ what runs here

    def task_running(self, task: Task, ip: str) -> None:
        if is_standby(task):
            # A blue-green release's new task: it runs, but gets traffic only after the switch
            # (the controller calls again when the label goes).
            self.task_stopped(task)
            return
        ports = {p.PublishedPort: p.TargetPort for p in task_ports(task, "ingress") if p.Protocol in ("tcp", "")}
        ports = {pub: tgt for pub, tgt in ports.items() if pub}  # the allocator has not placed it yet
        if not ports or not ip:
            return
        svc = self._services.setdefault(task.ServiceID, _Service())
        svc.ports = ports
        svc.backends[task.ID] = ip
        self._changed()

    def task_stopped(self, task: Task) -> None:
        svc = self._services.get(task.ServiceID)
        if svc is None or svc.backends.pop(task.ID, None) is None:
            return
        if not svc.backends:
            del self._services[task.ServiceID]
        self._changed()

    def _changed(self) -> None:
        self._dirty.set()
        if self._syncer is None or self._syncer.done():
            self._syncer = asyncio.create_task(self._sync_loop())

    # ------------------------------------------------------------------ listeners

    async def _sync_loop(self) -> None:
        while self._dirty.is_set():
            self._dirty.clear()
            await self._sync()

    async def _sync(self) -> None:
        want: dict[int, str] = {}
        for sid, svc in self._services.items():
            for pub in svc.ports:
                want.setdefault(pub, sid)
        for port, (server, sid) in list(self._servers.items()):
            if want.get(port) != sid:
                del self._servers[port]
                server.close()
                log.info("ingress: stopped listening on port %d", port)
        for port, sid in want.items():
            if port in self._servers:
                continue
            try:
                server = await asyncio.start_server(
                    lambda r, w, _p=port: self._handle(r, w, _p), self.host, port, reuse_address=True
                )
            except OSError as exc:
                if self.errors.get(port) != str(exc):
                    log.error("ingress: cannot listen on port %d for service %s: %s", port, sid, exc)
                self.errors[port] = str(exc)
                continue
            self.errors.pop(port, None)
            self._servers[port] = (server, sid)
            log.info("ingress: listening on port %d for service %s", port, sid)

    @property
    def ports(self) -> list[int]:
        return sorted(self._servers)

    async def close(self) -> None:
        if self._syncer is not None:
            self._syncer.cancel()
        for server, _ in self._servers.values():
            server.close()
        self._servers.clear()
        self._services.clear()
        for t in list(self._conns):
            t.cancel()

    # ------------------------------------------------------------------ connections

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            entry = self._servers.get(port)
            svc = self._services.get(entry[1]) if entry else None
            if svc is None:
                return
            target = svc.ports.get(port)
            upstream = None
            for ip in svc.pick():
                try:
                    upstream = await asyncio.wait_for(asyncio.open_connection(ip, target), 5)
                    break
                except (OSError, TimeoutError) as exc:
                    log.debug("ingress: %s:%s unreachable: %s", ip, target, exc)
            if upstream is None:
                return
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be talking
    except (ConnectionError, OSError):
        with contextlib.suppress(Exception):
            writer.close()
