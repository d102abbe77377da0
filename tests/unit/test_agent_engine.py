"""The agent's engine watch, end to end at unit level: the real Agent and DockerExecutor (its health
probe, its event stream) talk to a small fake engine on a unix socket that the test starts and
stops; the real Dispatcher records what the agent reports on the node."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from shoal.agent.agent import Agent
from shoal.agent.engine import EngineMonitor
from shoal.agent.executor.base import EngineUnavailable
from shoal.agent.executor.docker import DockerExecutor
from shoal.agent.executor.hollow import HollowExecutor
from shoal.dispatcher.dispatcher import Dispatcher
from shoal.dispatcher.inprocess import InProcessClient
from shoal.models import NodeState
from shoal.orchestrator.testutils import make_node, make_store
from shoal.store import MemoryStore

INFO = {"Name": "fake-engine", "OSType": "linux", "Architecture": "x86_64", "NCPU": 3, "MemTotal": 1 << 30,
        "ServerVersion": "20.10.99", "Labels": ["zone=a"]}


class FakeEngine:
    """Just enough of the Engine API for an agent with no tasks: ping, info, lists, an event stream
    held open until the engine stops (as dockerd closes it when it shuts down)."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.runner: web.AppRunner | None = None
        self.pings = 0
        self.streams: set[web.StreamResponse] = set()
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        self.stopping = asyncio.Event()
        app = web.Application()
        app.router.add_get("/_ping", self._ping)
        app.router.add_get("/v1.41/_ping", self._ping)
        app.router.add_get("/v1.41/info", self._info)
        app.router.add_get("/v1.41/events", self._events)
        app.router.add_get("/v1.41/{what}/json", self._empty_list)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.sock)).start()

    async def stop(self) -> None:
        assert self.runner is not None
        self.stopping.set()
        for s in list(self.streams):
            with contextlib.suppress(Exception):
                await s.write_eof()
        await self.runner.cleanup()
        self.runner = None
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()

    async def _ping(self, _req: web.Request) -> web.Response:
        self.pings += 1
        return web.Response(text="OK")

    async def _info(self, _req: web.Request) -> web.Response:
        return web.json_response(INFO)

    async def _empty_list(self, _req: web.Request) -> web.Response:
        return web.json_response([])

    async def _events(self, req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(req)
        self.streams.add(resp)
        try:
            await self.stopping.wait()
        finally:
            self.streams.discard(resp)
        return resp


async def until(pred: Callable[[], bool], within: float, what: str) -> float:
    """Seconds it took for ``pred`` to hold; fails after ``within``."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > within:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[MemoryStore, Dispatcher, str]]:
    store = make_store()
    d = Dispatcher(store, heartbeat_period_s=5.0)  # long: the flips must not wait for a period
    node = make_node(store, "placeholder")
    runner = asyncio.create_task(d.run())
    yield store, d, node.ID
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def test_probe_reasons_for_a_missing_socket_and_a_silent_one(tmp_path: Path) -> None:
    ex = DockerExecutor(f"unix://{tmp_path}/none.sock")
    with pytest.raises(EngineUnavailable) as e:
        await ex.ping()
    assert str(e.value) == f"cannot connect to unix://{tmp_path}/none.sock: No such file or directory"
    assert not e.value.timed_out
    await ex.close()

    silent = await asyncio.start_unix_server(lambda r, w: None, path=str(tmp_path / "silent.sock"))
    ex = DockerExecutor(f"unix://{tmp_path}/silent.sock")
    with pytest.raises(EngineUnavailable) as e:
        await ex.ping(timeout_s=0.3)
    assert e.value.timed_out and "did not answer within 0.3 s" in str(e.value)
    await ex.close()
    silent.close()


async def test_one_slow_ping_is_not_a_dead_engine() -> None:
    class Slow(HollowExecutor):
        fails = 0

        async def ping(self) -> None:
            if self.fails:
                self.fails -= 1
                raise EngineUnavailable("e did not answer within 5 s", timed_out=True)

    ex = Slow()
    mon = EngineMonitor(ex, timeouts_down=2)
    assert (await mon.check()).up
    ex.fails = 1
    assert (await mon.check()).up  # one timeout: still up
    assert (await mon.check()).up
    ex.fails = 2
    await mon.check()
    assert not (await mon.check()).up  # two in a row: down
    assert mon.health is not None and "did not answer" in mon.health.reason


async def test_an_agent_without_its_engine_registers_down_then_works_once_it_answers(
    tmp_path: Path, cluster: tuple[MemoryStore, Dispatcher, str]
) -> None:
    store, d, node_id = cluster
    sock = tmp_path / "engine.sock"
    ex = DockerExecutor(f"unix://{sock}")
    agent = Agent(InProcessClient(d), ex, node_id, "10.0.0.7",
                  # Probes while up are 30 s apart: only the broken event stream can tell it quickly.
                  engine=EngineMonitor(ex, interval_up_s=30, interval_down_s=0.1))
    run = asyncio.create_task(agent.run())
    engine = FakeEngine(sock)
    try:
        # Registered although the engine is not there: the node is known, down, and says why.
        await asyncio.wait_for(agent.connected.wait(), 5)
        node = store.get("node", node_id)
        assert node.Status.State is NodeState.DOWN
        assert node.Status.Message == f"engine unavailable: cannot connect to unix://{sock}: No such file or directory"
        assert node.Description.Hostname == "placeholder"  # nothing better to say yet
        assert agent.worker is None

        # The engine appears: the worker starts, the agent registers again with the real description.
        await engine.start()
        took = await until(lambda: store.get("node", node_id).Status.State is NodeState.READY, 5, "ready")
        node = store.get("node", node_id)
        assert node.Status.Message == "" and node.Description.Hostname == "fake-engine"
        assert node.Description.Resources.NanoCPUs == 3_000_000_000
        assert agent.worker is not None and took < 2
        await until(agent.connected.is_set, 2, "session")

        # It stops: its event stream breaks, the agent probes at once and heartbeats (the period is
        # 5 s, so this is not the periodic heartbeat).
        await engine.stop()
        took = await until(lambda: store.get("node", node_id).Status.State is NodeState.DOWN, 3, "down")
        assert took < 2
        assert store.get("node", node_id).Status.Message.startswith("engine unavailable: cannot connect to")
        assert agent.connected.is_set()  # the session lives on: the agent is fine

        # Back: ready again in the same session, no restart of anything.
        session = agent.session
        await engine.start()
        took = await until(lambda: store.get("node", node_id).Status.State is NodeState.READY, 3, "ready again")
        assert took < 2 and agent.session is session
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await agent.close()
        if engine.runner is not None:
            await engine.stop()


async def test_the_hollow_engine_is_always_up(cluster: tuple[MemoryStore, Dispatcher, str]) -> None:
    store, d, node_id = cluster
    agent = Agent(InProcessClient(d), HollowExecutor(hostname="hollow-1"), node_id, "10.0.0.8")
    run = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 3)
        node = store.get("node", node_id)
        assert node.Status.State is NodeState.READY and node.Description.Hostname == "hollow-1"
        assert agent.engine_health().up
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await agent.close()
