"""``shoal daemon``: the API server, the manager and this host's agent in one process.

The agent talks to the manager through the in-process transport of the agent protocol, so the
same agent code later runs on other hosts over gRPC. Stopping the daemon leaves containers
running: a restarted daemon adopts them instead of starting them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiodocker
from aiohttp import web

from shoal.agent.agent import Agent
from shoal.agent.executor.docker import DockerExecutor
from shoal.agent.stats import INTERVAL_S as STATS_INTERVAL_S
from shoal.agent.volumes import SharedVolumes
from shoal.api.auth import ANONYMOUS_ADMIN, AuditLog, Security
from shoal.api.server import create_app, serve
from shoal.api.tls import ServerTLS, TLSOptions, tcp_hosts_need_tls
from shoal.console import api as console
from shoal.dispatcher.inprocess import InProcessClient
from shoal.dispatcher.protocol import DispatcherClient, TaskStats
from shoal.errors import ShoalError
from shoal.looplag import trace_slow_callbacks
from shoal.manager import SWARM_PORT, Manager, Membership, listen_of, split_listen
from shoal.metrics import Metrics, TaskStatsCollector, parse_metrics_addr, start_metrics_server
from shoal.models import JoinRequest, NodeRole
from shoal.transport.bootstrap import NodeCredentials, join_cluster, load_credentials
from shoal.transport.client import GrpcDispatcherClient
from shoal.transport.leader import LeaderClient
from shoal.transport.messages import ManagerJoin

log = logging.getLogger("shoal.daemon")


ENGINE_INFO_TIMEOUT_S = 5.0
ENGINE_RETRY_S = 2.0
MANAGER_JOIN_TIMEOUT_S = 30.0  # a manager's join waits for etcd to take its new member


async def engine_info(url: str, timeout_s: float = ENGINE_INFO_TIMEOUT_S) -> dict[str, Any]:
    """The engine's ``/info``; raises ``ConnectionError`` (one clear line) when it does not answer."""
    docker = aiodocker.Docker(url=url)
    try:
        return dict(await asyncio.wait_for(docker.system.info(), timeout_s))
    except TimeoutError:
        raise ConnectionError(f"cannot reach the Docker engine at {url}: no answer within {timeout_s:g} s") from None
    except Exception as e:  # aiodocker raises several connection error types
        raise ConnectionError(f"cannot reach the Docker engine at {url}: {e}") from None
    finally:
        await docker.close()


class Daemon:
    """Wires the pieces together and owns their lifetimes."""

    def __init__(self, hosts: list[str], data_root: str, engine: str, advertise_addr: str | None,
                 hostname: str | None = None, tls: TLSOptions | None = None, insecure_tcp: bool = False,
                 metrics_addr: str | None = None) -> None:
        self.hosts = hosts
        self.metrics = Metrics()  # this daemon's registry: the API's /metrics and --metrics-addr serve it
        self.metrics_addr = metrics_addr
        self._metrics_runner: web.AppRunner | None = None
        self.metrics.register(TaskStatsCollector(self._task_stats))
        self.tls_options = tls or TLSOptions()
        self.insecure_tcp = insecure_tcp
        self.tls: ServerTLS | None = None
        self._trust_task: asyncio.Task[None] | None = None
        self.data_root = Path(data_root)
        self.engine = engine
        self.advertise_addr = advertise_addr
        self.manager: Manager | None = None
        self.agent: Agent | None = None
        self._agent_task: asyncio.Task[None] | None = None
        self._logs_task: asyncio.Task[None] | None = None
        self._tunnels_task: asyncio.Task[None] | None = None  # pipes to this host's engine (transport/tunnel.py)
        self._executor: DockerExecutor | None = None
        # The node's nas/ossfs mounts (agent/volumes.py): one record for every executor this daemon makes,
        # so a restarted agent, and `swarm leave`'s clean-up, know what is mounted and for whom.
        self.volumes = SharedVolumes(self.data_root / "volumes")
        self._grpc: GrpcDispatcherClient | None = None
        self._leader_client: LeaderClient | None = None
        self._promoting: asyncio.Task[None] | None = None
        self._engine_task: asyncio.Task[None] | None = None
        self.hostname = hostname or socket.gethostname()
        self._fixed_hostname = bool(hostname)
        self.stats_interval_s = STATS_INTERVAL_S  # how often the agent samples its tasks' usage (0: never)

    def _task_stats(self) -> Iterable[TaskStats]:
        """The latest stats sample of each task this host's agent runs (agent/stats.py), for /metrics
        (read at each scrape): each host exports its own tasks, so no manager has to hold them all."""
        stats = self.agent.stats if self.agent is not None else None
        return list(stats.latest.values()) if stats is not None else ()

    @property
    def cert_dir(self) -> Path:
        return self.data_root / "certificates"

    def _security(self) -> Security:
        """Checked before anything starts: TCP without TLS is refused unless --insecure-tcp."""
        tcp_hosts_need_tls(self.hosts, self.tls_options, self.insecure_tcp)
        if self.tls_options.enabled:
            self.tls = ServerTLS(self.tls_options, self.data_root, self.hosts, self.advertise_addr)
        return Security(tls=self.tls, anonymous=ANONYMOUS_ADMIN if self.insecure_tcp else None,
                        audit=AuditLog(self.data_root / "audit.log"), forward_sock=self.data_root / "forward.sock")

    async def _trust_cluster_root(self) -> None:
        """Let the API's TLS accept user certificates of the cluster's root (made at swarm init, and
        anew at each rotation). Polled: it changes a few times in a swarm's life, and a watch would
        have to follow the manager across joins and leaves."""
        while True:
            cluster = self.manager.store.cluster() if self.manager is not None else None
            if cluster is not None and cluster.TLSInfo is not None and self.tls is not None:
                self.tls.trust(cluster.TLSInfo.TrustRoot)
            await asyncio.sleep(0.5)

    async def start(self) -> None:
        security = self._security()
        if self.metrics_addr:  # first: a bad address stops the daemon before anything else started
            self._metrics_runner = await start_metrics_server(self.metrics, self.metrics_addr)
        # A host whose engine is down still serves the API and, on a manager, the cluster: only
        # this node runs nothing (its agent reports the engine down) until the engine answers.
        try:
            info: dict[str, Any] | None = await engine_info(self.engine)
        except ConnectionError as e:
            log.warning("%s; serving anyway, this node runs no tasks until it answers", e)
            info = None
        if self._fixed_hostname and info is not None:
            info["Name"] = self.hostname  # the node's name in the swarm, as --hostname says
        else:
            self.hostname = str((info or {}).get("Name") or socket.gethostname())
        self.manager = Manager(self.data_root, engine_info=info or {}, advertise_addr=self.advertise_addr,
                               metrics=self.metrics)
        self.manager.engine_url = self.engine
        if info is None:
            self._engine_task = asyncio.create_task(self._await_engine(), name="engine-info")
        self.manager.on_join = self._start_agent
        self.manager.on_leave = self._stop_agent_and_clean
        self.manager.on_role_change = self._restart_agent
        self.manager.joiner = self._join
        tcp_ssl = self.tls.context if self.tls is not None else None
        app = console.install(create_app(self.manager, security))  # the web console's routes and sessions
        self._runner = await serve(app, self.hosts, ssl_context=tcp_ssl)
        if self.tls is not None:
            self._trust_task = asyncio.create_task(self._trust_cluster_root(), name="api-tls-trust")
        self.manager.api_runner = self._runner
        await self.manager.start()
        log.info("shoal daemon listening on %s", ", ".join(self.hosts))

    async def _await_engine(self) -> None:
        """Fill in what ``/info`` and ``/version`` say of the engine once it first answers (the
        agent watches the engine on its own, for the node's state)."""
        while True:
            await asyncio.sleep(ENGINE_RETRY_S)
            try:
                info = await engine_info(self.engine)
            except ConnectionError:
                continue
            assert self.manager is not None
            self.manager.engine_info = info
            if self._fixed_hostname:
                info["Name"] = self.hostname
            else:
                self.hostname = str(info.get("Name") or self.hostname)
            log.info("the Docker engine at %s answers", self.engine)
            return

    async def _join(self, req: JoinRequest) -> Membership:
        """``swarm join`` on this host: credentials from the remote manager, pinned by the token."""
        assert self.manager is not None
        assert req.RemoteAddrs  # the API checked
        remote = req.RemoteAddrs[0] if ":" in req.RemoteAddrs[0] else f"{req.RemoteAddrs[0]}:{SWARM_PORT}"
        listen = listen_of(req.ListenAddr)
        joined: list[ManagerJoin] = []
        creds = await join_cluster(remote, req.JoinToken, self.hostname, self.manager.addr,
                                   req.Availability or "active", self.cert_dir, timeout_s=MANAGER_JOIN_TIMEOUT_S,
                                   listen_port=split_listen(listen)[1], etcd_port=req.EtcdPort,
                                   on_manager=joined.append)
        if joined:  # a manager of a swarm on etcd: it holds the store and can lead
            self.manager.keep_keys(joined[0])
            log.info("joined the swarm of %s as node %s (manager)", remote, creds.node_id)
            return Membership(node_id=creds.node_id, role="manager", manager=remote, listen=listen,
                              store=joined[0].store)
        log.info("joined the swarm of %s as node %s", remote, creds.node_id)
        return Membership(node_id=creds.node_id, role="worker", manager=remote, listen=listen,
                          etcd_port=req.EtcdPort)

    async def _start_agent(self, node_id: str) -> None:
        assert self.manager is not None
        self._executor = DockerExecutor(self.engine, volumes=self.volumes)
        manager = self.manager
        if manager.is_manager and manager.terms is not None:
            # On etcd a manager runs the dispatcher only while it leads; otherwise its agent goes to
            # the leader over gRPC, like any other node.
            self._leader_client = LeaderClient(lambda: manager.dispatcher, manager.leader_addr,
                                               manager.node_credentials, self.cert_dir)
            client: DispatcherClient = self._leader_client
            self._tunnels_task = asyncio.create_task(self._leader_client.serve_tunnels(self.engine),
                                                     name="engine-tunnels")
        elif manager.is_manager:
            client = InProcessClient(lambda: manager.dispatcher)
        else:
            creds = load_credentials(self.cert_dir)
            if creds is None:
                log.error("this host is in a swarm but its certificates are gone; leave and join again")
                return
            self._grpc = GrpcDispatcherClient(creds, self.cert_dir)
            self._grpc.on_renewed = self._on_renewed
            client = self._grpc
        self.agent = Agent(client, self._executor, node_id, self.manager.addr,
                           hostname=self.hostname if self._fixed_hostname else None,
                           stats_interval_s=self.stats_interval_s)
        if self.manager.is_manager:
            self.manager.local_agent = self.agent
            if self.manager.dispatcher is not None:
                self.manager.dispatcher.register_log_source(node_id, self.agent)
        else:
            assert self._grpc is not None
            self._logs_task = asyncio.create_task(self._grpc.serve_logs(self.agent), name="agent-logs")
            self._tunnels_task = asyncio.create_task(self._grpc.serve_tunnels(self.engine), name="engine-tunnels")
        self._agent_task = asyncio.create_task(self.agent.run(), name="agent")
        # `swarm init` returns once this host is registered, so the first `node ls` already shows
        # its full description and nothing about the node changes under the user's feet after.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.agent.connected.wait(), timeout=10)

    async def _stop_agent(self) -> None:
        tasks = [t for t in (self._agent_task, self._logs_task, self._tunnels_task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._agent_task = self._logs_task = self._tunnels_task = None
        if self._grpc is not None:
            await self._grpc.close()
            self._grpc = None
        if self._leader_client is not None:
            await self._leader_client.close()
            self._leader_client = None
        if self.agent is not None:
            with contextlib.suppress(Exception):
                await self.agent.close()
            self.agent = None
            if self.manager is not None:
                self.manager.local_agent = None

    def _on_renewed(self, creds: NodeCredentials) -> None:
        """A worker's certificate now says manager (`node promote`): take up the manager's part."""
        assert self.manager is not None
        if creds.role == NodeRole.MANAGER and not self.manager.is_manager and self._promoting is None:
            self._promoting = asyncio.create_task(self._promote(), name="promote")

    async def _promote(self) -> None:
        assert self.manager is not None and self.manager.membership is not None
        m = self.manager.membership
        try:
            while self._grpc is not None:
                try:
                    joined = await self._grpc.promote(split_listen(m.listen or listen_of(""))[1], m.etcd_port)
                    break
                except ShoalError as e:
                    log.warning("promoted to manager, but cannot take up the role yet: %s", e.message)
                    await asyncio.sleep(5)
            else:
                return
            await self.manager.become_manager(joined)
        finally:
            self._promoting = None

    async def _restart_agent(self, node_id: str) -> None:
        """The node's role changed (a manager demoted): the same tasks go on, through a new client."""
        await self._stop_agent()
        await self._start_agent(node_id)

    async def _stop_agent_and_clean(self, node_id: str) -> None:
        """``swarm leave``: the node's tasks stop and their containers go, as in Swarm mode."""
        await self._stop_agent()
        cut_off = self._executor.cut_off if self._executor is not None else set()
        executor = DockerExecutor(self.engine, volumes=self.volumes)
        try:
            await executor.remove_all(node_id, cut_off)
        except Exception as e:  # the engine is down: leaving must still work (Swarm's --force)
            log.warning("could not remove the containers of node %s (engine %s): %s", node_id, self.engine, e)
        finally:
            await executor.close()
        shutil.rmtree(self.cert_dir, ignore_errors=True)

    async def stop(self) -> None:
        if self._trust_task is not None:
            self._trust_task.cancel()
            await asyncio.gather(self._trust_task, return_exceptions=True)
        if self._engine_task is not None:
            self._engine_task.cancel()
            await asyncio.gather(self._engine_task, return_exceptions=True)
        await self._stop_agent()
        if self.manager is not None:
            await self.manager.stop()
        with contextlib.suppress(Exception):
            await self._runner.cleanup()
        if self._metrics_runner is not None:
            with contextlib.suppress(Exception):
                await self._metrics_runner.cleanup()
        if self.manager is not None:
            await self.manager.close()


async def _amain(hosts: list[str], data_root: str, engine: str, advertise_addr: str | None,
                 hostname: str | None = None, tls: TLSOptions | None = None, insecure_tcp: bool = False,
                 metrics_addr: str | None = None, stats_interval_s: float = STATS_INTERVAL_S) -> None:
    daemon = Daemon(hosts, data_root, engine, advertise_addr, hostname, tls, insecure_tcp, metrics_addr)
    daemon.stats_interval_s = stats_interval_s
    await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down; containers keep running")
    await daemon.stop()


def _raise_open_files_limit() -> None:
    """Up to the hard limit: the API's connection caps (api/conn.py: 1,024 per listener) and a
    thousand agents' gRPC streams need more descriptors than a shell's usual soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


def run_daemon(hosts: list[str], data_root: str, engine: str, advertise_addr: str | None = None,
               hostname: str | None = None, log_level: str = "info", tls: TLSOptions | None = None,
               insecure_tcp: bool = False, metrics_addr: str | None = None,
               stats_interval_s: float = STATS_INTERVAL_S) -> None:
    if metrics_addr:
        parse_metrics_addr(metrics_addr)  # MetricsAddrError: the CLI says it in one line
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _raise_open_files_limit()
    if os.environ.get("SHOAL_TRACE_SLOW_MS"):
        trace_slow_callbacks(float(os.environ["SHOAL_TRACE_SLOW_MS"]) / 1000, log)
    asyncio.run(_amain(hosts, data_root, engine, advertise_addr, hostname, tls, insecure_tcp, metrics_addr,
                       stats_interval_s))
