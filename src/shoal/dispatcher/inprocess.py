"""The in-process transport: an agent in the manager's own process calls the dispatcher directly.

The single-host daemon uses it. Messages stay the protocol's structs, so swapping this for the gRPC
transport changes nothing on either side. Objects are shared, not copied: both ends already treat
stored objects as immutable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from shoal.dispatcher.dispatcher import Dispatcher
from shoal.dispatcher.protocol import Assignments, EngineHealth, LogRecord, SessionInfo, TaskStats, TaskStatusUpdate
from shoal.errors import Unavailable
from shoal.models import NodeDescription

NO_DISPATCHER = "the dispatcher is not running on this manager (it is not the leader)"


class InProcessClient:
    """A :class:`~shoal.dispatcher.protocol.DispatcherClient` bound to a local :class:`Dispatcher`,
    or to whichever one ``dispatcher()`` names at each call (a manager that leads for a while)."""

    def __init__(self, dispatcher: Dispatcher | Callable[[], Dispatcher | None]) -> None:
        self._fixed = dispatcher if isinstance(dispatcher, Dispatcher) else None
        self._resolve = None if isinstance(dispatcher, Dispatcher) else dispatcher

    @property
    def dispatcher(self) -> Dispatcher:
        d = self._fixed if self._resolve is None else self._resolve()
        if d is None:
            raise Unavailable(NO_DISPATCHER)  # the agent backs off and registers again
        return d

    async def register(
        self, node_id: str | None, description: NodeDescription, addr: str, engine: EngineHealth | None = None
    ) -> SessionInfo:
        return await self.dispatcher.register(node_id, description, addr, engine)

    async def heartbeat(self, session_id: str, engine: EngineHealth | None = None) -> float:
        return await self.dispatcher.heartbeat(session_id, engine)

    def assignments(self, session_id: str) -> AsyncIterator[Assignments]:
        return self.dispatcher.assignments(session_id)

    async def update_task_status(self, session_id: str, updates: list[TaskStatusUpdate]) -> None:
        await self.dispatcher.update_task_status(session_id, updates)

    async def report_stats(self, session_id: str, stats: list[TaskStats]) -> None:
        self.dispatcher.report_stats(session_id, stats)

    async def ship_logs(self, session_id: str, records: list[LogRecord]) -> None:
        await self.dispatcher.ship_logs(session_id, records)
