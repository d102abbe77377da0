"""The node agent: one session with the manager, and the node's tasks kept as the manager wants.

Swarmkit's ``agent/agent.go`` + ``session.go``: register, heartbeat, read the assignments stream and
hand it to the worker, report status through the batching reporter. When the session breaks (manager
restarting, network), running containers are left alone and the agent registers again with
exponential back-off (0.1 s doubling to 5 s). The agent is also the node's :class:`LogSource`.

The engine is watched (agent/engine.py) and its health rides on every heartbeat, sent at once when
it changes. An agent whose engine is not there yet still registers (reporting it down: the node
runs nothing but is known, and a manager's API works), and as soon as the engine answers it starts
its worker and registers again, so the new session's full assignment set reaches the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import AsyncIterator

import msgspec

from shoal.agent.engine import EngineMonitor
from shoal.agent.executor.base import Executor
from shoal.agent.executor.docker import DockerExecutor
from shoal.agent.logship import LogShipper
from shoal.agent.network.plumbing import NetworkAgent
from shoal.agent.reporter import StatusReporter
from shoal.agent.stats import INTERVAL_S as STATS_INTERVAL_S
from shoal.agent.stats import StatsCollector
from shoal.agent.worker import Worker
from shoal.dispatcher.merge import merge_streams
from shoal.dispatcher.protocol import (
    DispatcherClient,
    EngineHealth,
    LogMessage,
    LogOptions,
    LogRecord,
    SessionInfo,
    TaskStats,
)
from shoal.models import NodeDescription, Task, TaskState

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
WORKER_START_TIMEOUT_S = 10.0  # the engine answered its ping but not the calls the worker needs
RESTART_REPORTER_S = 0.2  # after the status reporter ended on its own


class Agent:
    def __init__(
        self,
        client: DispatcherClient,
        executor: Executor,
        node_id: str,
        addr: str,
        *,
        report_interval_s: float = 0.05,
        report_max_batch: int = 100,
        engine: EngineMonitor | None = None,
        hostname: str | None = None,
        stats_interval_s: float = STATS_INTERVAL_S,
    ) -> None:
        self.client = client
        # The node's name in the swarm when the daemon was given one (--hostname): it replaces the
        # engine's in the description, so the node keeps the name it joined with.
        self.hostname = hostname
        self.executor = executor
        self.node_id = node_id
        self.addr = addr
        if isinstance(executor, DockerExecutor) and executor.network is None:
            # Real containers get real overlay networks; the hollow executor plumbs nothing.
            executor.network = NetworkAgent(executor.url, node_id, addr)
        self.reporter = StatusReporter(client, report_interval_s, report_max_batch)
        self.engine = engine if engine is not None else EngineMonitor(executor)
        self.worker: Worker | None = None  # made once the engine first answers
        self._worker_error = ""  # why the worker could not start (the engine answers pings only)
        self._description: NodeDescription | None = None
        self.session: SessionInfo | None = None
        self.connected = asyncio.Event()  # set while a session is up (tests and the daemon wait on it)
        # Usage samples of the running tasks, for the leader (agent/stats.py). The hollow executor
        # has no engine to sample: scale tests run without.
        self.stats: StatsCollector | None = None
        if hasattr(executor, "container_stats") and stats_interval_s > 0:
            self.stats = StatsCollector(executor, self._running_containers, self._send_stats,  # type: ignore[arg-type]
                                        interval_s=stats_interval_s)
        # The log stores (aliyun.log_store_*) of the running tasks, shipped to the leader
        # (agent/logship.py); like stats, only with a real engine to read them from.
        self.logs: LogShipper | None = None
        if hasattr(executor, "container_stats"):
            self.logs = LogShipper(executor, self._running_containers, self._send_logs, node_id)

    @property
    def log_source(self) -> Agent:
        """What to give ``Dispatcher.register_log_source(node_id, ...)``."""
        return self

    async def close(self) -> None:
        """After ``run()`` ended: release the executor's engine connection (containers keep running)."""
        await self.executor.close()

    async def run(self) -> None:
        """Until cancelled. Containers keep running when it ends; call :meth:`close` afterwards."""
        monitor = asyncio.create_task(self.engine.run(), name=f"engine-monitor-{self.node_id}")
        reporter = asyncio.create_task(self._keep_reporting(), name=f"status-reporter-{self.node_id}")
        stats = asyncio.create_task(self.stats.run(), name=f"stats-{self.node_id}") if self.stats else None
        logs = asyncio.create_task(self.logs.run(), name=f"logship-{self.node_id}") if self.logs else None
        backoff = BACKOFF_MIN_S
        try:
            await self._start_worker()
            while True:
                again = False
                try:
                    description = self._description or NodeDescription(Hostname=self.hostname or
                                                                        socket.gethostname())
                    self.session = await self.client.register(
                        self.node_id, description, self.addr, self.engine_health()
                    )
                    again = await self._session(self.session)
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
                if again:  # the worker just started: a new session brings it the full set
                    backoff = BACKOFF_MIN_S
                    continue
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            background = [t for t in (monitor, reporter, stats, logs) if t is not None]
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self.worker is not None:
                await self.worker.close()

    async def _keep_reporting(self) -> None:
        """The status reporter, started again if it ever ends on its own: without it the node's
        tasks run but the manager never hears of it (a CancelledError raised by a closed gRPC
        channel once stopped it for good)."""
        while True:
            try:
                await self.reporter.run()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                log.error("agent %s: status reporter stopped by a stray cancellation; restarting it", self.node_id)
            except Exception:
                log.exception("agent %s: status reporter failed; restarting it", self.node_id)
            await asyncio.sleep(RESTART_REPORTER_S)

    def _running_containers(self) -> list[tuple[Task, str]]:
        worker = self.worker
        if worker is None:
            return []
        return [(c.task, c.container_id) for c in list(worker.controllers.values())
                if c.state == TaskState.RUNNING and c.container_id]

    async def _send_stats(self, stats: list[TaskStats]) -> None:
        session = self.session
        if session is not None and self.connected.is_set():
            await self.client.report_stats(session.session_id, stats)

    async def _send_logs(self, records: list[LogRecord]) -> None:
        session = self.session
        if session is None or not self.connected.is_set():
            raise ConnectionError("no session with a manager")  # the shipper keeps the batch
        await self.client.ship_logs(session.session_id, records)

    def engine_health(self) -> EngineHealth:
        """What the manager is told: the probe's verdict, but an engine that answers pings and not
        the worker's first calls is not usable either."""
        health = self.engine.health or EngineHealth(up=False, reason="not checked yet")
        if health.up and self.worker is None:
            return EngineHealth(up=False, reason=self._worker_error or "engine starting")
        return health

    async def _start_worker(self) -> bool:
        """Once the engine answers: follow its events (before listing, so no exit in between is
        missed), describe the node, list the containers a previous agent left. True when done."""
        if self.worker is not None:
            return True
        if not self.engine.up:
            await self.engine.check()
            if not self.engine.up:
                return False
        try:
            await asyncio.wait_for(self.executor.start_events(), timeout=WORKER_START_TIMEOUT_S)
            described = await self.executor.describe()
            if self.hostname:
                described = msgspec.structs.replace(described, Hostname=self.hostname)
            self._description = described
            secrets = getattr(self.executor, "secrets", None)  # config templates render .Node from it
            if secrets is not None:
                secrets.node = described
            existing = await self.executor.list_task_containers(self.node_id)
        except Exception as exc:
            self._worker_error = f"engine not usable: {exc or type(exc).__name__}"
            log.warning("agent %s: %s", self.node_id, self._worker_error)
            return False
        self._worker_error = ""
        self.worker = Worker(self.executor, self.reporter, existing)
        return True

    async def _until_worker(self) -> None:
        """While the engine has never answered: wait for it, then start the worker."""
        while not await self._start_worker():
            flip = self.engine.flipped()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flip.wait(), timeout=BACKOFF_MAX_S)

    async def _session(self, session: SessionInfo) -> bool:
        """Heartbeat and assignments side by side; whichever fails first ends the session. Without a
        worker, also wait for the engine: True when the session ended because the worker started."""
        heartbeat = asyncio.create_task(self._heartbeat(session))
        assignments = asyncio.create_task(self._assignments(session))
        tasks = {heartbeat, assignments}
        waiter = asyncio.create_task(self._until_worker()) if self.worker is None else None
        if waiter is not None:
            tasks.add(waiter)
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # raises the session's error
            return waiter is not None and waiter in done
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _heartbeat(self, session: SessionInfo) -> None:
        """A heartbeat every period, and one at once when the engine goes down or comes back, so
        the manager moves the node's tasks without waiting a period."""
        period = session.heartbeat_period_s
        while True:
            flip = self.engine.flipped()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flip.wait(), timeout=period)
            period = await self.client.heartbeat(session.session_id, self.engine_health())

    async def _assignments(self, session: SessionInfo) -> None:
        # Without a worker (no engine yet) the messages are read and dropped: the session that
        # follows the worker's start sends the full set again.
        worker = self.worker
        stream = self.client.assignments(session.session_id)
        try:
            async for msg in stream:
                if worker is not None:
                    worker.apply(msg)
                if msg.full:
                    # Reports wait until the worker has seen the full set (and adopted containers).
                    if worker is not None:
                        worker.report_current()
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
