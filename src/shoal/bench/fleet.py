"""Many hollow nodes in one process, each a real agent with its own gRPC session to the manager.

They run on an asyncio loop in a thread of their own, so the benchmark's measuring code can use the
(blocking) Docker SDK in the main thread without stalling the agents' heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.process
import signal
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from shoal.agent.agent import Agent
from shoal.agent.executor.hollow import HollowExecutor
from shoal.errors import Unavailable
from shoal.models import SECOND
from shoal.transport.bootstrap import join_cluster
from shoal.transport.client import GrpcDispatcherClient

log = logging.getLogger(__name__)
T = TypeVar("T")
JOIN_ATTEMPTS = 5


@dataclass
class FleetConfig:
    manager: str  # "127.0.0.1:port" of the manager's cluster listener
    token: str  # worker join token
    cert_root: Path  # one certificate directory per node below it
    nodes: int
    join_batch: int = 50
    start_delay_s: float = 0.5
    node_cpus: int = 16
    node_memory_gib: int = 64
    join_timeout_s: float = 60.0
    log_dir: Path | None = None  # each fleet process's warnings go to fleet-<first node>.log here


@dataclass
class HollowNode:
    index: int
    node_id: str
    client: GrpcDispatcherClient
    executor: HollowExecutor
    agent: Agent
    runner: asyncio.Task[None] | None = None


@dataclass
class HollowFleet:
    """Join ``cfg.nodes`` hollow nodes and keep their agents running until :meth:`stop`."""

    cfg: FleetConfig
    first_index: int = 0  # node names start here (hollow-<i>): fleets in several processes
    nodes: list[HollowNode] = field(default_factory=list)
    join_s: float = 0.0
    connect_s: float = 0.0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None

    # ------------------------------------------------------------------ from the main thread

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the fleet's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop.run_forever, name="hollow-fleet", daemon=True)
        self._thread.start()
        self.call(self._join_all())

    def stop(self) -> None:
        if self._thread is None:
            return
        self.call(self._stop_all(), timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def alive_node_ids(self) -> set[str]:
        """Nodes whose agent has been running all along (none is ever stopped before :meth:`stop`)."""
        return {n.node_id for n in self.nodes if n.runner is not None and not n.runner.done()}

    def log_state(self) -> None:
        """SIGUSR1: each node's session as its agent sees it (a post-mortem of a stalled run)."""
        for n in self.nodes:
            a = n.agent
            log.warning("hollow-%d %s: connected=%s session=%s manager=%s controllers=%d running=%d reports=%d",
                        n.index, n.node_id, a.connected.is_set(), a.session.session_id if a.session else None,
                        n.client.creds.manager, len(a.worker.controllers) if a.worker else -1,
                        n.executor.running, a.reporter.pending)

    def running_containers(self) -> int:
        return sum(n.executor.running for n in self.nodes)

    # ------------------------------------------------------------------ on the fleet's loop

    async def _join_one(self, i: int) -> HollowNode:
        cfg = self.cfg
        cert_dir = cfg.cert_root / f"hollow-{i}"
        for attempt in range(JOIN_ATTEMPTS):
            try:
                creds = await join_cluster(cfg.manager, cfg.token, f"hollow-{i}", "127.0.0.1", "active", cert_dir,
                                           timeout_s=cfg.join_timeout_s)
                break
            except Unavailable as e:
                # Dozens of TLS handshakes at once sometimes time out on a busy 2-core host.
                if attempt == JOIN_ATTEMPTS - 1:
                    raise
                log.warning("hollow-%d: join failed (%s); retrying", i, e)
                await asyncio.sleep(0.5 * (attempt + 1))
        client = GrpcDispatcherClient(creds, cert_dir, rpc_timeout_s=60.0)
        executor = HollowExecutor(hostname=f"hollow-{i}", nano_cpus=cfg.node_cpus * SECOND,
                                  memory_bytes=cfg.node_memory_gib << 30, start_delay_s=cfg.start_delay_s)
        agent = Agent(client, executor, creds.node_id, "127.0.0.1", report_max_batch=500)
        node = HollowNode(i, creds.node_id, client, executor, agent)
        node.runner = asyncio.create_task(agent.run(), name=f"hollow-agent-{i}")
        return node

    async def _join_all(self) -> None:
        t0 = time.monotonic()
        first, last = self.first_index, self.first_index + self.cfg.nodes
        for start in range(first, last, self.cfg.join_batch):
            batch = range(start, min(start + self.cfg.join_batch, last))
            self.nodes.extend(await asyncio.gather(*(self._join_one(i) for i in batch)))
        self.join_s = time.monotonic() - t0
        await asyncio.wait_for(asyncio.gather(*(n.agent.connected.wait() for n in self.nodes)),
                               self.cfg.join_timeout_s)
        self.connect_s = time.monotonic() - t0

    async def _stop_all(self) -> None:
        runners = [n.runner for n in self.nodes if n.runner is not None]
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        for n in self.nodes:
            try:
                await n.client.close()
                await n.agent.close()
            except Exception as e:  # best effort: the manager may be gone already
                log.debug("closing hollow node %d: %s", n.index, e)


def _fleet_process(cfg: FleetConfig, first: int, conn: Connection) -> None:
    """A child process's part of a :class:`ProcessFleet`: its own fleet, driven over ``conn``."""
    if cfg.log_dir is not None:  # what the agents saw (sessions ended, reports failed) for a post-mortem
        logging.basicConfig(level=logging.INFO, filename=cfg.log_dir / f"fleet-{first}.log",
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.ERROR)
    fleet = HollowFleet(cfg, first_index=first)
    signal.signal(signal.SIGUSR1, lambda *_: fleet._loop.call_soon_threadsafe(fleet.log_state))
    try:
        fleet.start()
        conn.send(("started", fleet.join_s, fleet.connect_s))
        while True:
            cmd = conn.recv()
            if cmd == "alive":
                conn.send(fleet.alive_node_ids())
            elif cmd == "stop":
                break
    except EOFError:
        pass  # the benchmark went away: stop too
    except Exception as e:
        conn.send(("failed", f"{type(e).__name__}: {e}", 0.0))
    finally:
        fleet.stop()
        conn.close()


class ProcessFleet:
    """The hollow nodes split over ``processes`` child processes, each a :class:`HollowFleet`.

    One Python process simulating 1,000 agents is one core at most: in the scale benchmark it became
    the bottleneck once the manager kept up (98,000 tasks waiting in ``assigned`` while the manager's
    loop idled). Agents on separate machines would not share a core either."""

    def __init__(self, cfg: FleetConfig, processes: int = 2) -> None:
        self.cfg = cfg
        self.processes = max(1, min(processes, cfg.nodes))
        self.join_s = 0.0
        self.connect_s = 0.0
        self._children: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no copy of the parent's threads or loops
        base, extra = divmod(self.cfg.nodes, self.processes)
        first = 0
        for i in range(self.processes):
            n = base + (1 if i < extra else 0)
            parent, child = ctx.Pipe()
            part = dataclasses.replace(self.cfg, nodes=n)
            proc = ctx.Process(target=_fleet_process, args=(part, first, child), name=f"hollow-fleet-{i}", daemon=True)
            proc.start()
            child.close()
            self._children.append((proc, parent))
            first += n
        for _proc, conn in self._children:
            what, join_s, connect_s = conn.recv()
            if what != "started":
                raise RuntimeError(f"a hollow fleet process failed to start: {join_s}")
            self.join_s = max(self.join_s, join_s)
            self.connect_s = max(self.connect_s, connect_s)

    def alive_node_ids(self) -> set[str]:
        alive: set[str] = set()
        for proc, conn in self._children:
            if proc.is_alive():
                conn.send("alive")
                alive |= conn.recv()
        return alive

    def stop(self) -> None:
        for _proc, conn in self._children:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send("stop")
        for proc, conn in self._children:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self._children.clear()
