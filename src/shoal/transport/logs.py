"""Logs of tasks on other hosts: the manager's :class:`RemoteLogSource` for a node, fed by its agent.

The manager cannot dial an agent, so the agent keeps a ``LogSubscriptions`` stream open; each
``task_logs`` call becomes a subscription sent down it, and the agent answers on a ``PublishLogs``
stream of its own, tagged with the subscription's ID and closed with an end marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.ids import new_id
from shoal.models import Task
from shoal.transport.messages import LogSubscription

_QUEUE_BATCHES = 64  # per subscription: a slow reader holds its agent's sender back (gRPC flow control)
_END = None


class RemoteLogSource:
    """A :class:`~shoal.dispatcher.protocol.LogSource` for the node behind one LogSubscriptions stream."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._outbox: asyncio.Queue[LogSubscription | None] = asyncio.Queue()
        self._subs: dict[str, asyncio.Queue[list[LogMessage] | None]] = {}
        self.closed = False

    async def task_logs(self, tasks: list[Task], options: LogOptions) -> AsyncIterator[LogMessage]:
        if self.closed:
            return
        sid = new_id()
        inbox: asyncio.Queue[list[LogMessage] | None] = asyncio.Queue(_QUEUE_BATCHES)
        self._subs[sid] = inbox
        self._outbox.put_nowait(LogSubscription(id=sid, tasks=tasks, options=options))
        ended = False
        try:
            while True:
                batch = await inbox.get()
                if batch is _END:
                    ended = True
                    return
                for msg in batch:
                    yield msg
        finally:
            self._subs.pop(sid, None)
            if not ended and not self.closed:  # the reader went away first: tell the agent to stop
                self._outbox.put_nowait(LogSubscription(id=sid, cancel=True))

    async def subscriptions(self) -> AsyncIterator[LogSubscription]:
        """What to send down the agent's LogSubscriptions stream, until :meth:`close`."""
        while True:
            sub = await self._outbox.get()
            if sub is None:
                return
            yield sub

    async def publish(self, subscription_id: str, messages: list[LogMessage]) -> None:
        inbox = self._subs.get(subscription_id)
        if inbox is not None and messages:
            await inbox.put(messages)

    async def end(self, subscription_id: str) -> None:
        inbox = self._subs.get(subscription_id)
        if inbox is not None:
            await inbox.put(_END)

    def close(self) -> None:
        """The agent's stream ended: every open subscription ends (its reader sees the lines so far)."""
        if self.closed:
            return
        self.closed = True
        for inbox in self._subs.values():
            _put_end(inbox)
        self._outbox.put_nowait(None)


def _put_end(inbox: asyncio.Queue[list[LogMessage] | None]) -> None:
    """The end marker must get in even when the queue is full: the agent is gone, lines that did
    not fit are dropped rather than leave the reader waiting forever."""
    while True:
        try:
            inbox.put_nowait(_END)
            return
        except asyncio.QueueFull:
            inbox.get_nowait()
