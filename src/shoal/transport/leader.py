"""A manager's own agent: the dispatcher in its process while that manager leads, the leader's over
gRPC (with the manager's node certificate) while it follows.

The choice is made at each register and kept for the session: a new term ends every session (the
old dispatcher closes them, or the new one does not know them), so the agent registers again and
lands wherever the dispatcher now is.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from shoal.dispatcher.dispatcher import Dispatcher
from shoal.dispatcher.inprocess import InProcessClient
from shoal.dispatcher.protocol import (
    Assignments,
    DispatcherClient,
    EngineHealth,
    LogRecord,
    SessionInfo,
    TaskStats,
    TaskStatusUpdate,
)
from shoal.errors import Unavailable
from shoal.models import NodeDescription
from shoal.transport.bootstrap import NodeCredentials
from shoal.transport.client import GrpcDispatcherClient

NO_LEADER = "no leader is known yet"


class LeaderClient:
    """A :class:`~shoal.dispatcher.protocol.DispatcherClient` that follows the leader."""

    def __init__(
        self,
        local: Callable[[], Dispatcher | None],
        leader_addr: Callable[[], str | None],
        credentials: Callable[[], NodeCredentials | None],
        cert_dir: str | Path,
    ) -> None:
        self._local = local
        self._leader_addr = leader_addr
        self._credentials = credentials
        self.cert_dir = Path(cert_dir)
        self._current: DispatcherClient | None = None
        self.remote: GrpcDispatcherClient | None = None  # the last leader's connection, kept while it leads
        self._switched = asyncio.Event()  # a registration happened: serve_tunnels looks again

    async def _pick(self) -> DispatcherClient:
        dispatcher = self._local()
        if dispatcher is not None:
            return InProcessClient(dispatcher)
        target = self._leader_addr()
        if not target:
            raise Unavailable(NO_LEADER)
        if self.remote is None or self.remote.creds.manager != target:
            creds = self._credentials()
            if creds is None:
                raise Unavailable("this manager has no node certificate yet")
            await self.close()
            self.remote = GrpcDispatcherClient(dataclasses.replace(creds, manager=target, managers=()), self.cert_dir)
        return self.remote

    def _session_client(self) -> DispatcherClient:
        if self._current is None:
            raise Unavailable(NO_LEADER)
        return self._current

    async def register(
        self, node_id: str | None, description: NodeDescription, addr: str, engine: EngineHealth | None = None
    ) -> SessionInfo:
        self._current = None
        client = await self._pick()
        info = await client.register(node_id, description, addr, engine)
        self._current = client
        self._switched.set()
        return info

    async def heartbeat(self, session_id: str, engine: EngineHealth | None = None) -> float:
        return await self._session_client().heartbeat(session_id, engine)

    def assignments(self, session_id: str) -> AsyncIterator[Assignments]:
        return self._session_client().assignments(session_id)

    async def update_task_status(self, session_id: str, updates: list[TaskStatusUpdate]) -> None:
        await self._session_client().update_task_status(session_id, updates)

    async def report_stats(self, session_id: str, stats: list[TaskStats]) -> None:
        await self._session_client().report_stats(session_id, stats)

    async def ship_logs(self, session_id: str, records: list[LogRecord]) -> None:
        await self._session_client().ship_logs(session_id, records)

    async def serve_tunnels(self, engine_url: str) -> None:
        """Until cancelled: while this manager follows, open the pipes to its engine that the leader
        asks for (its agent's session is with the leader then; a leader reaches its own engine
        directly). Follows the connection in use as registrations change it."""
        while True:
            remote = self._following()
            serving = asyncio.create_task(remote.serve_tunnels(engine_url)) if remote is not None else None
            try:
                while self._following() is remote:
                    await self._switched.wait()
                    self._switched.clear()
            finally:
                if serving is not None:
                    serving.cancel()
                    await asyncio.gather(serving, return_exceptions=True)

    def _following(self) -> GrpcDispatcherClient | None:
        return self.remote if self.remote is not None and self._current is self.remote else None

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.close()
            self.remote = None
