"""The node agent: one session with the manager, and the node's tasks kept as the manager wants.

Swarmkit's ``agent/agent.go`` + ``session.go``: register, heartbeat, read the assignments stream and
hand it to the worker, report status through the batching reporter. When the session breaks (manager
restarting, network), running containers are left alone and the agent registers again with
exponential back-off (0.1 s doubling to 5 s). The agent is also the node's :class:`LogSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator

from shoal.agent.executor.base import Executor
from shoal.agent.executor.docker import DockerExecutor
from shoal.agent.ingress import IngressProxy
from shoal.agent.network.plumbing import NetworkAgent
from shoal.agent.reporter import StatusReporter
from shoal.agent.worker import Worker
from shoal.dispatcher.merge import merge_streams
from shoal.dispatcher.protocol import DispatcherClient, LogMessage, LogOptions, SessionInfo
from shoal.models import Task

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0


class Agent:
    def __init__(
        self,
        client: DispatcherClient,
        executor: Executor,
        node_id: str,
        addr: str,
        *,
        ingress: IngressProxy | None = None,
        report_interval_s: float = 0.05,
        report_max_batch: int = 100,
    ) -> None:
        self.client = client
        self.executor = executor
        self.node_id = node_id
        self.addr = addr
        # Pass ``ingress=None`` and a proxy of your own to share or disable; default: one per agent.
        self.ingress = ingress if ingress is not None else IngressProxy()
        if isinstance(executor, DockerExecutor) and executor.network is None:
            # Real containers get real overlay networks; the hollow executor plumbs nothing.
            executor.network = NetworkAgent(executor.url, node_id, addr)
        self.reporter = StatusReporter(client, report_interval_s, report_max_batch)
        self.worker: Worker | None = None
        self.session: SessionInfo | None = None
        self.connected = asyncio.Event()  # set while a session is up (tests and the daemon wait on it)

    @property
    def log_source(self) -> Agent:
        """What to give ``Dispatcher.register_log_source(node_id, ...)``."""
        return self

    async def close(self) -> None:
        """After ``run()`` ended: release the executor's engine connection (containers keep running)."""
        await self.ingress.close()
        await self.executor.close()

    async def run(self) -> None:
        """Until cancelled. Containers keep running when it ends; call :meth:`close` afterwards."""
        backoff = BACKOFF_MIN_S
        while True:  # the engine may be starting too: wait for it rather than give up
            try:
                await self.executor.start_events()  # before listing: an exit in between must not be missed
                description = await self.executor.describe()
                existing = await self.executor.list_task_containers(self.node_id)
                break
            except Exception as exc:
                log.warning("agent %s: engine not usable yet: %s", self.node_id, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        self.worker = Worker(self.executor, self.reporter, self.ingress, existing)
        reporter = asyncio.create_task(self.reporter.run())
        backoff = BACKOFF_MIN_S
        try:
            while True:
                try:
                    self.session = await self.client.register(self.node_id, description, self.addr)
                    await self._session(self.session)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any session failure: back off and register again
                    log.warning("agent %s: session ended: %s", self.node_id, exc)
                finally:
                    if self.connected.is_set():
                        backoff = BACKOFF_MIN_S  # it worked for a while: retry quickly
                    self.connected.clear()
                    self.reporter.set_session(None)
                    self.session = None
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            await self.worker.close()
            await self.ingress.close()

    async def _session(self, session: SessionInfo) -> None:
        """Heartbeat and assignments side by side; whichever fails first ends the session."""
        heartbeat = asyncio.create_task(self._heartbeat(session))
        assignments = asyncio.create_task(self._assignments(session))
        try:
            done, _pending = await asyncio.wait({heartbeat, assignments}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # raises the session's error
        finally:
            for t in (heartbeat, assignments):
                t.cancel()
            await asyncio.gather(heartbeat, assignments, return_exceptions=True)

    async def _heartbeat(self, session: SessionInfo) -> None:
        period = session.heartbeat_period_s
        while True:
            await asyncio.sleep(period)
            period = await self.client.heartbeat(session.session_id)

    async def _assignments(self, session: SessionInfo) -> None:
        assert self.worker is not None
        stream = self.client.assignments(session.session_id)
        try:
            async for msg in stream:
                self.worker.apply(msg)
                if msg.full:
                    # Reports wait until the worker has seen the full set (and adopted containers).
                    self.reporter.set_session(session.session_id)
                    self.connected.set()
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        raise ConnectionError("assignments stream ended")

    # ------------------------------------------------------------------ logs (LogSource)

    async def task_logs(self, tasks: list[Task], options: LogOptions) -> AsyncIterator[LogMessage]:
        """Logs of those of ``tasks`` that have a container on this node, merged."""
        streams = []
        for t in tasks:
            if t.NodeID != self.node_id:
                continue
            cid = self.worker.container_of(t) if self.worker is not None else ""
            if not cid and t.Status.ContainerStatus is not None:
                cid = t.Status.ContainerStatus.ContainerID
            if cid:
                streams.append(self.executor.task_logs(t, cid, options))
        async for msg in merge_streams(streams):
            yield msg
