"""``shoal daemon``: the API server, the manager and this host's agent in one process.

The agent talks to the manager through the in-process transport of the agent protocol, so the
same agent code later runs on other hosts over gRPC. Stopping the daemon leaves containers
running: a restarted daemon adopts them instead of starting them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

import aiodocker

from shoal.agent.agent import Agent
from shoal.agent.executor.docker import DockerExecutor
from shoal.api.server import create_app, serve
from shoal.dispatcher.inprocess import InProcessClient
from shoal.manager import Manager

log = logging.getLogger("shoal.daemon")


async def engine_info(url: str) -> dict[str, Any]:
    """The engine's ``/info``; fails with one clear line when the engine is not there."""
    docker = aiodocker.Docker(url=url)
    try:
        return dict(await docker.system.info())
    except Exception as e:  # aiodocker raises several connection error types
        raise SystemExit(f"shoal: cannot reach the Docker engine at {url}: {e}") from None
    finally:
        await docker.close()


class Daemon:
    """Wires the pieces together and owns their lifetimes."""

    def __init__(self, hosts: list[str], data_root: str, engine: str, advertise_addr: str | None) -> None:
        self.hosts = hosts
        self.data_root = Path(data_root)
        self.engine = engine
        self.advertise_addr = advertise_addr
        self.manager: Manager | None = None
        self.agent: Agent | None = None
        self._agent_task: asyncio.Task[None] | None = None
        self._executor: DockerExecutor | None = None

    async def start(self) -> None:
        info = await engine_info(self.engine)
        self.manager = Manager(self.data_root, engine_info=info, advertise_addr=self.advertise_addr)
        self.manager.on_join = self._start_agent
        self.manager.on_leave = self._stop_agent_and_clean
        self._runner = await serve(create_app(self.manager), self.hosts)
        await self.manager.start()
        log.info("shoal daemon listening on %s", ", ".join(self.hosts))

    async def _start_agent(self, node_id: str) -> None:
        assert self.manager is not None and self.manager.dispatcher is not None
        self._executor = DockerExecutor(self.engine)
        self.agent = Agent(InProcessClient(self.manager.dispatcher), self._executor, node_id, self.manager.addr)
        self.manager.dispatcher.register_log_source(node_id, self.agent)
        self._agent_task = asyncio.create_task(self.agent.run(), name="agent")
        # `swarm init` returns once this host is registered, so the first `node ls` already shows
        # its full description and nothing about the node changes under the user's feet after.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.agent.connected.wait(), timeout=10)

    async def _stop_agent(self) -> None:
        if self._agent_task is not None:
            self._agent_task.cancel()
            await asyncio.gather(self._agent_task, return_exceptions=True)
            self._agent_task = None
        if self.agent is not None:
            with contextlib.suppress(Exception):
                await self.agent.close()
            self.agent = None

    async def _stop_agent_and_clean(self, node_id: str) -> None:
        """``swarm leave``: the node's tasks stop and their containers go, as in Swarm mode."""
        await self._stop_agent()
        executor = DockerExecutor(self.engine)
        try:
            await executor.remove_all(node_id)
        finally:
            await executor.close()

    async def stop(self) -> None:
        await self._stop_agent()
        if self.manager is not None:
            await self.manager.stop()
        with contextlib.suppress(Exception):
            await self._runner.cleanup()
        if self.manager is not None:
            self.manager.store.backend.close()


async def _amain(hosts: list[str], data_root: str, engine: str, advertise_addr: str | None) -> None:
    daemon = Daemon(hosts, data_root, engine, advertise_addr)
    await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down; containers keep running")
    await daemon.stop()


def run_daemon(hosts: list[str], data_root: str, engine: str, advertise_addr: str | None = None,
               log_level: str = "info") -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_amain(hosts, data_root, engine, advertise_addr))
