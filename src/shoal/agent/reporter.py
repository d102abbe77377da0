"""Batched task status reports from an agent to the dispatcher.

Task controllers report every state they pass through; the reporter keeps only the latest per task
and sends a batch every ~50 ms, or at once when 100 are queued, so starting 200 containers costs a
handful of dispatcher calls (and store transactions), not a thousand. While the session is down,
reports wait here and go out when the agent has registered again.
"""

from __future__ import annotations

import asyncio
import logging

from shoal.dispatcher.dispatcher import SessionInvalid
from shoal.dispatcher.protocol import DispatcherClient, TaskStatusUpdate
from shoal.models import TaskStatus

log = logging.getLogger(__name__)

RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0


class StatusReporter:
    def __init__(self, client: DispatcherClient, interval_s: float = 0.05, max_batch: int = 100) -> None:
        self.client = client
        self.interval_s = interval_s
        self.max_batch = max_batch
        self._pending: dict[str, TaskStatus] = {}
        self._session: str | None = None
        self._wake = asyncio.Event()  # something queued, or a session came up
        self._full = asyncio.Event()  # a full batch is waiting: skip the rest of the interval
        self._retry_s = 0.0  # back-off after failed calls

    def report(self, task_id: str, status: TaskStatus) -> None:
        self._pending[task_id] = status  # the latest wins; the dispatcher only needs where a task is now
        self._wake.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()

    def set_session(self, session_id: str | None) -> None:
        self._session = session_id
        if session_id is not None:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        if self._pending:
            self._wake.set()  # started again (the agent restarts a reporter that ended): send what waits
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending or self._session is None:
                continue
            if len(self._pending) < self.max_batch:
                try:
                    await asyncio.wait_for(self._full.wait(), self.interval_s)
                except TimeoutError:
                    pass
            self._full.clear()
            await self._flush()

    async def _flush(self) -> None:
        session = self._session
        if session is None or not self._pending:
            return
        batch, self._pending = self._pending, {}
        updates = [TaskStatusUpdate(tid, st) for tid, st in batch.items()]
        try:
            await self.client.update_task_status(session, updates)
        except asyncio.CancelledError:
            self._requeue(batch)
            raise
        except SessionInvalid:  # the session is over: the agent registers again, then we resend
            self._requeue(batch)
            if self._session == session:
                self._session = None
            return
        except Exception as exc:
            # A failed call (a timeout, a busy manager) says nothing about the session: keep it and
            # resend after a pause. Dropping it here would silence this node until its next
            # full assignment set, which a live session never sends.
            self._requeue(batch)
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S) if self._retry_s else RETRY_MIN_S
            log.info("status report failed (%s); resending in %.1fs", exc, self._retry_s)
            asyncio.get_running_loop().call_later(self._retry_s, self._wake.set)
            return
        self._retry_s = 0.0
        if self._pending:
            self._wake.set()

    def _requeue(self, batch: dict[str, TaskStatus]) -> None:
        for tid, st in batch.items():
            self._pending.setdefault(tid, st)  # a newer report made meanwhile wins
