"""The manager: the store plus the reconcilers that run while this host is in a swarm.

It owns swarm membership (``init`` and ``leave``) and the lifetime of every leader component
(dispatcher, orchestrators, scheduler, reaper). Components do not know each other; the manager
only starts them, as asyncio tasks over one store, and cancels them on leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from shoal.agent.executor.docker import node_description
from shoal.agent.network.dns import system_upstreams
from shoal.allocator import NetworkAllocator
from shoal.allocator.ingress import choose_ingress_subnet, find_ingress, host_routes, service_ingress_ports
from shoal.api.forward import NO_LEADER, Forwarder, ReplaySite
from shoal.ca.authority import ClusterCA
from shoal.ca.certs import generate_key_and_csr, private_dir, write_private
from shoal.ca.rootca import check_supplied_root, create_root_ca
from shoal.ca.tokens import generate_join_token
from shoal.controlapi.cluster import autolock_of, check_swarm_spec
from shoal.controlapi.networks import create_network, ingress_spec
from shoal.controlapi.predefined import ensure_predefined_networks
from shoal.controlapi.services import update_service
from shoal.dispatcher.dispatcher import Dispatcher
from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.errors import Conflict, InvalidArgument, NotInSwarm, ShoalError, StoreUnavailable, Unavailable
from shoal.ha import ManagerReachability, ManagerTerms, StoreSettings, init_settings
from shoal.ids import new_id
from shoal.lbroute.keeper import LoadBalancerKeeper
from shoal.logstore.collector import LogCollector
from shoal.looplag import GcStats, LoopLagMonitor
from shoal.metrics import ManagerCollector, Metrics, observe_components
from shoal.models import (
    DEFAULT_HEARTBEAT,
    DEFAULT_TASK_HISTORY,
    SECOND,
    CAConfig,
    Cluster,
    DispatcherConfig,
    EncryptionConfig,
    InitRequest,
    JoinRequest,
    JoinTokens,
    ManagerStatus,
    Node,
    NodeAvailability,
    NodeDescription,
    NodeRole,
    NodeSpec,
    NodeState,
    NodeStatus,
    OrchestrationConfig,
    RaftConfig,
    SwarmSpec,
    Task,
    TaskState,
    TLSInfo,
    Version,
)
from shoal.orchestrator.autoscale import Autoscaler
from shoal.orchestrator.cron import CronScheduler, clock_from_env
from shoal.orchestrator.global_ import GlobalOrchestrator
from shoal.orchestrator.jobs import JobOrchestrator
from shoal.orchestrator.reaper import TaskReaper
from shoal.orchestrator.replicated import ReplicatedOrchestrator
from shoal.orchestrator.stacks import StackDeployer
from shoal.scheduler.scheduler import Scheduler
from shoal.store import Backend, MemoryStore, NullBackend, SqliteBackend, etcdtls
from shoal.store.autolock import (
    LOCKED_LEAVE,
    NOT_LOCKED,
    KeyVault,
    SwarmLocked,
    human_key,
    new_unlock_key,
    parse_human_key,
)
from shoal.store.dataroot import DataRootLock
from shoal.store.sealing import KEY_FILE, FileKeySource, Sealer
from shoal.transport.bootstrap import NodeCredentials, load_credentials, save_credentials
from shoal.transport.messages import ManagerJoin
from shoal.transport.server import ClusterServer
from shoal.transport.tunnel import EngineSource, LocalEngine, Pipe, open_relay

log = logging.getLogger(__name__)

ALREADY_IN_SWARM = (
    'This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and join another one.'
)
LAST_MANAGER = (
    "You are attempting to leave the swarm on a node that is participating as a manager. Removing the "
    "last manager erases all current state of the swarm. Use `--force` to ignore this message."
)
WORKER_NOT_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. "
    "Please run this command on a manager node or promote the current node to a manager."
)
SWARM_PORT = 2377
CERT_DIR = "certificates"  # <data-root>/certificates: this node's key, certificate and roots
DURABLE_INIT_S = 15.0
# A write arriving mid-election (or while this manager takes office) waits this long for a leader.
ELECTION_WAIT_S = 10.0
TUNNEL_WAIT_S = 5.0  # how long an engine call waits for a ready node's tunnel to open
ELECTION_POLL_S = 0.1

Hook = Callable[[str], Awaitable[None]]


@dataclass
class Membership:
    """This host's place in a swarm, kept in <data-root>/node.json across restarts."""

    node_id: str
    role: str  # "manager": holds the store and runs the leader's components; "worker": an agent only
    manager: str = ""  # "ip:port" of the manager a worker talks to
    listen: str = ""  # "host:port" a manager's cluster listener binds (2377; the bootstrap one is +1)
    store: dict[str, Any] | None = None  # a manager's StoreSettings (shoal.ha); None: embedded sqlite
    etcd_port: int = 0  # a worker: its etcd member's client port if it is promoted (0: 2379)


Joiner = Callable[["JoinRequest"], Awaitable[Membership]]


def default_addr() -> str:
    """This host's address as others would reach it; loopback when it has no other."""
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addr = str(info[4][0])
            if not addr.startswith("127."):
                return addr
    return "127.0.0.1"


async def _ingress_subnet() -> str:
    """The ingress network's subnet: none this host routes or resolves names through (a /16 over
    the host's name server would take the host's DNS onto the ingress bridge)."""
    routes = await asyncio.to_thread(host_routes)
    return choose_ingress_subnet([*routes, *(f"{ip}/32" for ip, _ in system_upstreams())])


class Manager:
    """Swarm membership, the store, and the leader's reconcilers for one host."""

    def __init__(
        self,
        data_root: str | Path,
        engine_info: dict[str, Any] | None = None,
        advertise_addr: str | None = None,
        backend: Backend | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT / SECOND,
        metrics: Metrics | None = None,
    ) -> None:
        # This daemon's Prometheus registry (shoal/metrics.py): set first, the store setter uses it.
        self.metrics = metrics or Metrics()
        self.data_root = Path(data_root)
        self.logstore_root = self.data_root / "logstore"  # the built-in file sink (logstore/files.py)
        self.log_collector: LogCollector | None = None  # while leading
        private_dir(self.data_root)  # the store, ca.key and store.key: nobody else's business
        # Only with a store of its own: ``shoal store rotate-key`` refuses while it runs.
        self._lock = DataRootLock(self.data_root) if backend is None else None
        self._state_file = self.data_root / "node.json"
        # ca.key and store.key, wrapped under the unlock key while autolock is on (store/autolock.py).
        self.vault = KeyVault(self.data_root)
        # The data key sealing secrets, configs and the cluster in the store (store/sealing.py).
        self.keys = FileKeySource(self.data_root / KEY_FILE, vault=self.vault)
        self.membership: Membership | None = self._load_membership()
        self.store_settings = StoreSettings.from_dict(self.membership.store if self.membership else None)
        # Autolock: a manager whose key files are wrapped opens nothing until POST /swarm/unlock.
        self.locked = self.is_manager and self.vault.locked
        self._unlocking = asyncio.Lock()
        self._autolock_task: asyncio.Task[None] | None = None
        # On etcd the view starts empty and is filled from etcd by start() (see shoal.ha).
        try:
            self.store = MemoryStore(NullBackend() if self.store_settings.on_etcd or self.locked
                                     else backend or self._sqlite())
        except BaseException:  # e.g. StoreKeyError: the daemon does not start, nor holds the root
            self._release_lock()
            raise
        self.terms: ManagerTerms | None = None  # managers on etcd: the leader loop
        self.local_agent: Any = None  # this host's agent: every new dispatcher asks it for logs
        self.api_runner: web.AppRunner | None = None  # the daemon's API: the leader serves it to managers too
        self.forwarder = Forwarder()  # a follower's way to the leader's API (writes)
        self._replay: ReplaySite | None = None
        self.engine_info: dict[str, Any] = engine_info or {}
        self.addr = advertise_addr or default_addr()
        self.heartbeat_s = heartbeat_s
        self.dispatcher: Dispatcher | None = None
        self.ca: ClusterCA | None = None
        self.scheduler: Scheduler | None = None  # the placement plan asks its live node state
        self.server: ClusterServer | None = None
        self.engine_url = ""  # this host's engine (the daemon sets it): the API proxies to it
        self.on_join: Hook | None = None  # the daemon starts its local agent here
        self.on_leave: Hook | None = None  # ... and stops it (removing its containers) here
        self.on_role_change: Hook | None = None  # ... and restarts it as a worker's here (demoted)
        self.joiner: Joiner | None = None  # the daemon joins another manager's swarm here
        self._tasks: list[asyncio.Task[None]] = []
        self.gc_stats = GcStats(freeze=True)
        self.loop_lag = LoopLagMonitor(gc_stats=self.gc_stats)
        self.loop_lag.on_sample = self.metrics.observe_loop_lag
        self.metrics.register(ManagerCollector(self))
        self._lag_task: asyncio.Task[None] | None = None
        self.broken = ""  # why this manager cannot serve its swarm (its state could not be read)
        self.loading = ""  # set while a manager on etcd loads its first view (the API says 503)
        self._loading_task: asyncio.Task[None] | None = None
        self._role_task: asyncio.Task[None] | None = None  # a manager on etcd: notices a demotion

    @property
    def store(self) -> MemoryStore:
        return self._store

    @store.setter
    def store(self, store: MemoryStore) -> None:
        """Every store this manager opens (they change with membership and role) reports its
        commit latency to the daemon's metrics."""
        self._store = store
        store.observe_persist = self.metrics.observe_store_commit

    # ------------------------------------------------------------------ membership

    @property
    def node_id(self) -> str | None:
        return self.membership.node_id if self.membership else None

    @property
    def in_swarm(self) -> bool:
        return self.membership is not None

    @property
    def manager_addr(self) -> str:
        """Where a worker's manager listens ("ip:port"); a manager's own cluster address otherwise."""
        if self.membership is not None and self.membership.manager:
            return self.membership.manager
        return f"{self.addr}:{SWARM_PORT}"

    @property
    def is_manager(self) -> bool:
        """Whether this host holds the cluster's state (a worker only runs an agent)."""
        return self.membership is not None and self.membership.role == "manager"

    def require_swarm(self) -> None:
        """Cluster state is read and written on the manager only, as in Swarm mode (503 elsewhere)."""
        if not self.in_swarm:
            raise NotInSwarm()
        if self.locked:
            raise SwarmLocked()
        if self.broken:
            raise Unavailable(self.broken)
        if self.loading:
            raise Unavailable(self.loading)
        if not self.is_manager:
            raise Unavailable(WORKER_NOT_MANAGER)

    async def start(self) -> None:
        """Resume after a restart: a daemon that was in a swarm comes back in it."""
        if self._lag_task is None:
            self._lag_task = asyncio.create_task(self.loop_lag.run(), name="loop-lag")
        if self.locked:
            # As a locked swarmkit node: no store, no components, no agent (its task containers
            # keep running, untouched) until `docker swarm unlock`.
            log.warning("this manager is locked (autolock): run `docker swarm unlock` to start it")
            return
        if self.is_manager and self.store_settings.on_etcd:
            await self._start_on_etcd()
            if self.on_join and self.membership is not None:
                await self.on_join(self.membership.node_id)
            return
        if self.is_manager and self.store.cluster() is None:
            if self.store.problems:
                # Never leave a swarm because its state could not be *read*: say so and serve what
                # can be served (info, ping); the rows stay on disk for a fixed Shoal or an operator.
                self.broken = ("the cluster state could not be read (" +
                               "; ".join(str(p) for p in self.store.problems[:3]) + "); this manager is not "
                               "serving the swarm until it can")
                log.error("%s", self.broken)
                return
            log.warning("node.json names this host a manager but the store is empty; leaving the swarm")
            self._save_membership(None)
        if self.membership is None:
            return
        if self.is_manager:
            await self._start_components()
        if self.on_join:
            await self.on_join(self.membership.node_id)

    async def join(self, req: JoinRequest) -> None:
        """``swarm join``: the daemon's joiner fetches credentials from the remote manager."""
        if self.in_swarm:
            raise Unavailable(ALREADY_IN_SWARM)
        if self.joiner is None:
            raise Unavailable("this daemon cannot join a swarm")
        if req.AdvertiseAddr:
            self.addr = _host_of(req.AdvertiseAddr)
        membership = await self.joiner(req)
        self._save_membership(membership)
        self.store_settings = StoreSettings.from_dict(membership.store)
        if self.is_manager and self.store_settings.on_etcd:
            # A manager of a swarm on etcd: its member joins the etcd cluster, it follows the
            # leader's store and campaigns (the daemon's joiner saved the CA key beside node.json).
            old, self.store = self.store, MemoryStore(NullBackend())
            await old.close()
            await self._start_on_etcd()
            if self.broken:
                raise Unavailable(f"joined as node {membership.node_id}, but {self.broken}")
        if self.on_join:
            await self.on_join(membership.node_id)

    async def _ensure_ingress(self) -> None:
        """A swarm made before Shoal had an ingress network has services publishing ingress ports,
        no network to publish them on, and tasks placed without an address there: make the network
        (a user who removed it cannot have publishing services: removal is refused while one
        publishes, and so is publishing without one), then roll those services' tasks (a forced
        update, with each service's own update policy) so that their ports reach them."""
        publishers = [s for s in self.store.list("service") if service_ingress_ports(s)]
        if not publishers:
            return
        if find_ingress(self.store.list("network")) is None:
            subnet = await _ingress_subnet()
            try:
                net = create_network(self.store, ingress_spec(subnet))
            except ShoalError as e:
                log.error("services publish ports but there is no ingress network, and making one failed: %s", e)
                return
            log.info("made the ingress network %s for the services that publish ports", net.ID)
        for svc in publishers:
            placed = [t for t in self.store.tasks_of_service(svc.ID)
                      if t.NodeID and t.DesiredState.order <= TaskState.RUNNING.order]
            if not any(not any(a.Network.Spec.Ingress for a in t.NetworksAttachments or ()) for t in placed):
                continue
            tmpl = svc.Spec.TaskTemplate
            spec = msgspec.structs.replace(svc.Spec, TaskTemplate=msgspec.structs.replace(
                tmpl, ForceUpdate=(tmpl.ForceUpdate or 0) + 1))
            try:
                update_service(self.store, svc.ID, svc.Version.Index, spec)
                log.info("service %s: rolling its tasks onto the ingress network", svc.Spec.Name)
            except ShoalError as e:
                log.error("service %s: could not roll its tasks onto the ingress network: %s", svc.Spec.Name, e)

    async def init_swarm(self, req: InitRequest) -> str:
        if self.in_swarm:
            raise Unavailable(ALREADY_IN_SWARM)
        settings = init_settings(req.Store, req.EtcdEndpoints or [], _host_of(req.AdvertiseAddr) if
                                 req.AdvertiseAddr else self.addr, member="", client_port=req.EtcdPort or 2379)
        # Every check before the first side effect: a bad request changes nothing.
        if req.Availability and req.Availability not in set(NodeAvailability):
            raise InvalidArgument(f"invalid availability {req.Availability!r}: must be active, pause or drain")
        if req.Spec is not None:
            check_swarm_spec(req.Spec)
        supplied = req.Spec.CAConfig if req.Spec is not None and req.Spec.CAConfig is not None else None
        if supplied is not None and (supplied.SigningCACert or supplied.SigningCAKey):
            check_supplied_root(supplied.SigningCACert, supplied.SigningCAKey)
        if req.AdvertiseAddr:
            self.addr = _host_of(req.AdvertiseAddr)
        # `swarm init --autolock`: the CLI sets the request's flag; the API also takes the spec's.
        autolock = req.AutoLockManagers or autolock_of(req.Spec)
        unlock_key = new_unlock_key() if autolock else None
        self.vault.kek = unlock_key  # the keys below are written wrapped from the first byte
        cluster_id, node_id = new_id(), new_id()
        if supplied is not None and supplied.SigningCACert:
            ca_cert, ca_key = supplied.SigningCACert, supplied.SigningCAKey
        else:
            ca_cert, ca_key = create_root_ca(cluster_id)
        self.vault.write(self.data_root / "ca.key", ca_key)
        self.keys.create()
        self._reload_key()
        spec = req.Spec or SwarmSpec()
        spec.Name = "default"
        spec.Orchestration = spec.Orchestration or OrchestrationConfig()
        if spec.Orchestration.TaskHistoryRetentionLimit is None:
            spec.Orchestration.TaskHistoryRetentionLimit = DEFAULT_TASK_HISTORY
        spec.Raft = spec.Raft or RaftConfig(SnapshotInterval=10000, KeepOldSnapshots=0,
                                            LogEntriesForSlowFollowers=500, ElectionTick=10, HeartbeatTick=1)
        spec.Dispatcher = spec.Dispatcher or DispatcherConfig(HeartbeatPeriod=int(self.heartbeat_s * SECOND))
        spec.CAConfig = spec.CAConfig or CAConfig(NodeCertExpiry=90 * 24 * 3600 * SECOND)
        # The key lives in <data-root>/ca.key (0600), never in the store that every API call reads.
        spec.CAConfig = msgspec.structs.replace(spec.CAConfig, SigningCACert="", SigningCAKey="")
        if autolock:
            spec.EncryptionConfig = EncryptionConfig(AutoLockManagers=True)
        cluster = Cluster(
            ID=cluster_id, Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec,
            TLSInfo=TLSInfo(TrustRoot=ca_cert),
            DefaultAddrPool=req.DefaultAddrPool or ["10.0.0.0/8"],
            SubnetSize=req.SubnetSize or 24, DataPathPort=req.DataPathPort or 4789,
            JoinTokens=JoinTokens(Worker=generate_join_token(ca_cert), Manager=generate_join_token(ca_cert)),
            UnlockKey=human_key(unlock_key) if unlock_key is not None else "",
        )
        availability = NodeAvailability(req.Availability) if req.Availability else NodeAvailability.ACTIVE
        if settings.on_etcd:
            settings.member = node_id
        node = Node(
            ID=node_id, Version=Version(), CreatedAt="", UpdatedAt="",
            Spec=NodeSpec(Role=NodeRole.MANAGER, Availability=availability),
            Description=self._describe(),
            Status=NodeStatus(State=NodeState.READY, Addr=self.addr),
            ManagerStatus=ManagerStatus(Leader=True, Reachability="reachable",
                                        Addr=f"{self.addr}:{split_listen(listen_of(req.ListenAddr))[1]}"),
        )
        membership = Membership(node_id=node_id, role="manager", listen=listen_of(req.ListenAddr),
                                store=settings.to_dict() if settings.on_etcd else None)

        ingress_subnet = await _ingress_subnet()

        async def create() -> None:
            with self.store.tx() as tx:
                tx.create("cluster", cluster)
                tx.create("node", node)
            create_network(self.store, ingress_spec(ingress_subnet))  # as Swarm's init: the routing mesh's
            self._save_membership(membership)

        try:
            if settings.on_etcd:
                await self._init_on_etcd(settings, node_id, membership.listen, create)
            else:
                await create()
                await self._start_components()
        except BaseException:
            # e.g. the cluster port is taken: leave no half-made swarm behind.
            await self.stop_components()
            if self.terms is not None:
                with contextlib.suppress(Exception):
                    await self.terms.erase()  # nobody else writes yet: no fence needed
                await self._drop_etcd()
            elif self.store.cluster() is not None:
                await self.store.wipe()
            self._save_membership(None)
            self.vault.forget()
            raise
        if self.on_join:
            await self.on_join(node_id)
        log.info("swarm initialised: cluster %s, node %s", cluster_id, node_id)
        return node_id

    async def leave(self, force: bool) -> None:
        if not self.in_swarm:
            raise Unavailable("This node is not part of a swarm")
        if self.locked:
            if not force:
                raise Unavailable(LOCKED_LEAVE)
            await self._leave_locked()
            return
        if self.is_manager and not force:
            # With the embedded store this manager holds the only copy of the cluster state: other
            # nodes promoted to manager are managers in name only, so leaving would erase it.
            raise Unavailable(LAST_MANAGER)
        node_id = self.node_id
        await self._stop_autolock_keeper()
        if self.terms is not None:
            await self._leave_etcd()
        else:
            await self.stop()
        if self.on_leave and node_id:
            await self.on_leave(node_id)
        if self.store.cluster() is not None and not self.store.refuse_writes:
            await self.store.wipe()
        self._save_membership(None)
        # Nothing here is sealed with it any more; a copy of the old store (an etcd backup) is
        # not to be opened from this host. The next init makes a new one.
        self.keys.remove()
        self.vault.forget()
        etcdtls.remove(self.data_root)
        self._reload_key()
        log.info("left the swarm")

    async def _leave_locked(self) -> None:
        """``swarm leave --force`` on a locked manager (Docker allows it): its state cannot be
        read, so it goes unread — the store, the key files, the managed etcd member's data. On etcd
        the member stays in the other managers' etcd cluster until they remove the node."""
        assert self.membership is not None
        node_id = self.membership.node_id
        if self.store_settings.managed:
            shutil.rmtree(self.data_root / "etcd", ignore_errors=True)
        for name in ("state.db", "state.db-wal", "state.db-shm", "ca.key", "ca.key.next", "ca-rotation.json"):
            (self.data_root / name).unlink(missing_ok=True)
        self.keys.remove()
        etcdtls.remove(self.data_root)
        self._save_membership(None)
        self.locked = False
        self.store_settings = StoreSettings()
        old, self.store = self.store, MemoryStore(self._sqlite())
        await old.close()
        if self.on_leave is not None:
            await self.on_leave(node_id)
        log.info("left the swarm (it was locked: its state was removed unread)")

    # ------------------------------------------------------------------ autolock

    def check_unlockable(self) -> None:
        """What moby's UnlockSwarm refuses before it looks at the key."""
        if not self.in_swarm:
            raise Unavailable("This node is not part of a swarm")
        if not self.locked:
            raise Conflict(NOT_LOCKED)

    async def unlock(self, key: bytes) -> None:
        """``docker swarm unlock``: open the key files with ``key`` (a wrong one: 401, nothing
        written), then start as after any restart; the files follow the cluster's current key."""
        async with self._unlocking:
            self.check_unlockable()
            self.vault.unlock(key)
            if not self.store_settings.on_etcd:
                try:
                    store = MemoryStore(self._sqlite())
                except BaseException:
                    self.vault.forget()
                    raise
                old, self.store = self.store, store
                await old.close()
            self.locked = False
            log.info("this manager is unlocked")
            await self.start()
            await self.apply_autolock()

    async def apply_autolock(self) -> None:
        """Wrap this manager's key files under the cluster's unlock key, or unwrap them when
        autolock is off. Only once the key is durable in the store: a crash then leaves the files
        under the old key (still the one the user holds) or the new one the store has."""
        cluster = self.store.cluster()
        if cluster is None or not self.is_manager or self.locked:
            return
        if self.terms is None or self.terms.is_leader:  # a follower's view comes from etcd: durable
            await self.store.wait_durable(within=DURABLE_INIT_S)
        cluster = self.store.cluster()
        if cluster is None:
            return
        want = parse_human_key(cluster.UnlockKey) if cluster.UnlockKey else None
        if self.vault.rekey(want):
            log.info("autolock %s: this manager's keys are %s", "on" if want else "off",
                     "wrapped under the unlock key" if want else "stored plain")

    def _start_autolock_keeper(self) -> None:
        if self._autolock_task is None or self._autolock_task.done():
            self._autolock_task = asyncio.create_task(self._keep_autolock(), name="autolock")

    async def _stop_autolock_keeper(self) -> None:
        t, self._autolock_task = self._autolock_task, None
        if t is not None and t is not asyncio.current_task():
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    async def _keep_autolock(self) -> None:
        """Every manager (leader or follower) re-wraps its own keys when the cluster's unlock key
        changes: swarmkit's managers do the same on the raft event."""
        watcher = self.store.watch("cluster")
        me = asyncio.current_task()
        try:
            while True:
                try:
                    await self.apply_autolock()
                except ShoalError as e:
                    log.warning("autolock: could not re-wrap this manager's keys yet: %s", e.message)
                if me is not None and me.cancelling():
                    # Python 3.11's wait_for (inside wait_durable) can swallow a cancel that lands
                    # as its future completes: honour it here, or stop() would wait for ever.
                    raise asyncio.CancelledError
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.get(), 5.0)
                watcher.drain()
        finally:
            watcher.close()

    async def _leave_etcd(self) -> None:
        """The last manager erases the swarm from etcd (with --force, like the sqlite store); any
        other manager only stops its part: the cluster state stays with the managers that hold it."""
        assert self.terms is not None
        others = [n for n in self.store.list("node") if n.Spec.Role == NodeRole.MANAGER and n.ID != self.node_id]
        if not others and self.terms.is_leader:
            await self.stop_components()
            await self.store.wipe()  # through the leader's fenced writer, then etcd's range delete
        await self._drop_etcd(leave_cluster=bool(others))

    async def _drop_etcd(self, leave_cluster: bool = False) -> None:
        """Stop following etcd (and this manager's member, whose data goes): back to sqlite. With
        ``leave_cluster`` (other managers stay) the member also leaves the etcd cluster."""
        assert self.terms is not None
        await (self.terms.leave() if leave_cluster else self.terms.close())
        self.terms = None
        if self.store_settings.managed:
            shutil.rmtree(self.data_root / "etcd", ignore_errors=True)
        await self.store.close()
        self.store = MemoryStore(self._sqlite())
        self.store_settings = StoreSettings()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _sqlite(self) -> SqliteBackend:
        return SqliteBackend(self.data_root / "state.db", Sealer(self.keys, create=True))

    def _reload_key(self) -> None:
        """The key file changed (init, leave): the store's backend reads it again."""
        sealer = getattr(self.store.backend, "sealer", None)
        if isinstance(sealer, Sealer):
            sealer.reload()

    async def stop(self) -> None:
        """Stop leading (daemon shutdown or leave); running containers are left alone."""
        for t in (self._loading_task, self._role_task):
            if t is not None and t is not asyncio.current_task():
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
        self._loading_task = self._role_task = None
        await self._stop_autolock_keeper()
        if self.terms is not None:
            await self.terms.close()
            self.terms = None
        await self.stop_components()

    async def stop_components(self) -> None:
        """Cancel every leader component; running containers are left alone."""
        if self._replay is not None:
            await self._replay.stop()
            self._replay = None
        if self.server is not None:
            await self.server.stop()
            self.server = None
        for t in self._tasks:
            t.cancel()
        # gather, not `suppress(CancelledError)`: a cancel aimed at the caller must still reach it.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.dispatcher = None
        self.log_collector = None
        self.ca = None
        self.scheduler = None

    async def close(self) -> None:
        """Daemon shutdown: stop the components, then make what is queued durable and close."""
        if self.terms is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.store.wait_durable(within=10)
        await self.stop()
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.gather(self._lag_task, return_exceptions=True)
            self._lag_task = None
        self.gc_stats.close()
        await self.forwarder.close()
        await self.store.close()
        self._release_lock()

    # ------------------------------------------------------------------ used by the API

    def rotate_root_ca(self) -> None:
        """``swarm ca --rotate``: a new root; nodes move to it as they renew (see ClusterCA)."""
        self.require_swarm()
        assert self.ca is not None
        self.ca.rotate_root()

    def leader_addr(self) -> str | None:
        """The leader's cluster address as this manager's view has it (None: not known)."""
        for n in self.store.list("node"):
            if n.ManagerStatus is not None and n.ManagerStatus.Leader and n.ManagerStatus.Addr:
                return str(n.ManagerStatus.Addr)
        return None

    def node_credentials(self) -> NodeCredentials | None:
        """This manager's own node certificate, for its agent to reach another leader: the one it
        joined with, or one it signs itself with the CA key every manager on etcd holds."""
        cert_dir = self.data_root / CERT_DIR
        creds = load_credentials(cert_dir)
        if creds is not None:
            return creds
        node_id, cluster = self.node_id, self.store.cluster()
        if node_id is None or cluster is None:
            return None
        try:
            ca = ClusterCA(self.store, self.data_root, local_node_id=node_id, vault=self.vault)
            key_pem, csr_pem = generate_key_and_csr()
            cert_pem = ca.sign_node_csr(csr_pem, node_id, NodeRole.MANAGER, cluster.ID, self.addr)
        except ShoalError as e:
            log.warning("cannot issue this manager's node certificate: %s", e)
            return None
        creds = NodeCredentials(node_id, NodeRole.MANAGER, cert_pem, key_pem, ca.trust_bundle_pem(),
                                manager=self.leader_addr() or "")
        save_credentials(cert_dir, creds)
        return creds

    def logs(self, tasks: list[Task], options: LogOptions) -> AsyncIterator[LogMessage]:
        if self.dispatcher is None:
            raise NotInSwarm()
        return self.dispatcher.logs(tasks, options)

    # ------------------------------------------------------------------ managers on etcd

    def _terms(self, settings: StoreSettings, node_id: str, listen: str) -> ManagerTerms:
        info = {"node": node_id, "addr": f"{self.addr}:{split_listen(listen)[1]}"}  # where followers forward
        return ManagerTerms(self.data_root, settings, self.store, node_id, info,
                            on_elected=self._elected, on_deposed=self.stop_components, keys=self.keys)

    async def _init_on_etcd(self, settings: StoreSettings, node_id: str, listen: str,
                            create: Callable[[], Awaitable[None]]) -> None:
        """``swarm init --store etcd``: this manager's etcd member (or the user's etcd), then the
        first term: the cluster and node objects are its first batch."""
        old, self.store = self.store, MemoryStore(NullBackend())
        await old.close()
        self.store_settings = settings
        self.terms = self._terms(settings, node_id, listen)
        await self.terms.open()
        await self.terms.check_unused()
        await self.terms.lead_now(prepare=create)
        await self.store.wait_durable(within=DURABLE_INIT_S)
        self.terms.run()
        self._role_task = asyncio.create_task(self._watch_own_role(), name="own-role")
        self._start_autolock_keeper()

    async def _start_on_etcd(self) -> None:
        assert self.membership is not None
        self.terms = self._terms(self.store_settings, self.membership.node_id, self.membership.listen)
        self.loading = "this manager is loading the swarm's state from etcd; try again in a moment"
        try:
            await self.terms.open()
        except (Unavailable, StoreUnavailable) as e:
            self.loading = ""
            self.broken = f"this manager cannot reach its store: {e}"
            log.error("%s", self.broken)
            return
        self.terms.run()
        self._role_task = asyncio.create_task(self._watch_own_role(), name="own-role")
        self._start_autolock_keeper()
        await self.terms.wait_ready()
        if self.terms.ready:
            self.loading = ""
        else:  # etcd does not answer yet: keep saying so until the first view arrives
            self.loading = f"this manager cannot reach etcd yet ({self.terms.stale or 'no answer'})"
            self._loading_task = asyncio.create_task(self._loaded(self.terms), name="etcd-first-view")

    async def _loaded(self, terms: ManagerTerms) -> None:
        await terms.wait_ready(timeout_s=None)
        self.loading = ""

    async def _start_replay_site(self) -> None:
        """Where the other managers' forwarded writes are replayed (api/forward.py)."""
        if self.api_runner is None or self.server is None:
            return
        self._replay = ReplaySite(self.api_runner, self.data_root / "forward.sock")
        await self._replay.start()
        self.server.forward = self._replay.replay

    async def leader_api(self) -> tuple[str, NodeCredentials] | None:
        """Where to send a write — the leader's cluster address and this manager's credentials — or
        None when this manager handles it itself (it leads, or holds the only copy of the store);
        Unavailable (Docker's wording) when there is no leader."""
        if self.terms is None or self.terms.is_leader:
            return None
        info = await self._settled_leader(self.terms)
        if info is None:  # this manager took office meanwhile
            return None
        creds = self.node_credentials()
        if creds is None:
            raise Unavailable("this manager has no node certificate to reach the leader with")
        return str(info["addr"]), creds

    async def _settled_leader(self, terms: ManagerTerms) -> dict[str, Any] | None:
        """The leader's election record once an election has an outcome: while no manager holds
        the key, or this one holds it but is still loading and starting its components, a write
        waits (up to ``ELECTION_WAIT_S``) rather than being refused — a lone manager restarting
        must not answer its first write with "no leader". None: this manager now leads."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ELECTION_WAIT_S
        while True:
            if terms.is_leader:
                return None
            try:
                info = await terms.leader_info()
            except StoreUnavailable as e:  # no etcd quorum (or no member answers): no leader either
                raise Unavailable(f"{NO_LEADER} ({e.message})") from None
            if info and info.get("node") != self.node_id:
                return info
            if loop.time() >= deadline:
                raise Unavailable(NO_LEADER)
            await asyncio.sleep(ELECTION_POLL_S)

    # ------------------------------------------------------------------ node engines

    def engine_source(self, node_id: str) -> EngineSource | None:
        """A node's engine as this manager reaches it directly: its own, or, while it leads, any
        node whose agent keeps its engine tunnels open here."""
        if node_id == self.node_id and self.engine_url:
            return LocalEngine(self.engine_url)
        return self.server.engine(node_id) if self.server is not None and self.leads else None

    @property
    def leads(self) -> bool:
        return self.terms is None or self.terms.is_leader

    async def open_engine(self, node_id: str) -> Pipe:
        """A byte pipe to the engine of ``node_id`` (transport/tunnel.py): direct, through this
        manager's tunnels while it leads, or relayed by the leader. Unavailable when it cannot be
        reached (node down, agent not connected, no leader)."""
        source = self.engine_source(node_id)
        if source is not None:
            return await source.open()
        node = self.store.get("node", node_id)
        name = node.Description.Hostname if node is not None and node.Description is not None else node_id
        if self.leads and node is not None and node.Status.State == NodeState.READY:
            # Ready, but its agent's tunnel stream is not open yet (it opens just after the agent
            # registers, e.g. right after its daemon restarted): a moment's wait, not a refusal.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TUNNEL_WAIT_S
            while source is None and loop.time() < deadline:
                await asyncio.sleep(0.1)
                source = self.engine_source(node_id)
            if source is not None:
                return await source.open()
        if self.leads:
            raise Unavailable(f"node {name} is not connected to the manager: its engine cannot be reached")
        leader = await self.leader_api()
        if leader is None:  # took office meanwhile
            source = self.engine_source(node_id)
            if source is None:
                raise Unavailable(f"node {name} is not connected to the manager: its engine cannot be reached")
            return await source.open()
        return await open_relay(await self.forwarder.channel(*leader), node_id)

    def keep_keys(self, joined: ManagerJoin) -> None:
        """A manager's keys, as the leader handed them over (a join or a promotion): the CA's, the
        store's data key, and the managed etcd members' CA. Wrapped at once under the swarm's unlock
        key when autolock is on."""
        self.vault.kek = parse_human_key(joined.unlock_key) if joined.unlock_key else None
        self.vault.write(self.data_root / "ca.key", joined.ca_key_pem)
        if joined.store_key:  # the swarm's data key (store/sealing.py)
            self.vault.write(self.data_root / KEY_FILE, joined.store_key)
        if joined.etcd_ca_pem:
            etcdtls.install_ca(self.data_root, joined.etcd_ca_pem, joined.etcd_ca_key_pem)

    async def become_manager(self, joined: ManagerJoin) -> None:
        """Promoted (`docker node promote`) in a swarm on etcd: hold the CA key and the store, and
        follow the leader like a manager that joined with the manager token."""
        assert self.membership is not None and not self.is_manager
        self.keep_keys(joined)
        node_id = self.membership.node_id
        listen = self.membership.listen or listen_of("")
        self._save_membership(Membership(node_id=node_id, role="manager", manager=self.membership.manager,
                                         listen=listen, store=joined.store))
        self.store_settings = StoreSettings.from_dict(joined.store)
        old, self.store = self.store, MemoryStore(NullBackend())
        await old.close()
        log.info("this node was promoted: it holds the swarm's store and can lead")
        await self._start_on_etcd()
        if self.on_role_change is not None:
            await self.on_role_change(node_id)

    async def _watch_own_role(self) -> None:
        """Demoted (`docker node demote`): stop being a manager (the member stops; the leader takes
        it out of the etcd cluster) and run on as a worker. A demoted leader first hands over (its
        ManagerReachability does that), then goes the same way as a follower."""
        watcher = self.store.watch("node")
        try:
            while True:
                me = self.store.get("node", self.node_id or "")
                leading = self.terms is not None and self.terms.is_leader
                if me is not None and me.Spec.Role == NodeRole.WORKER and not leading:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.get(), 1.0)
        finally:
            watcher.close()
        await self._become_worker()

    async def _become_worker(self) -> None:
        assert self.membership is not None and self.terms is not None
        node_id = self.membership.node_id
        creds = self.node_credentials()  # this node's certificate: the dispatcher asks it to renew
        managers = [n.ManagerStatus.Addr for n in self.store.list("node")
                    if n.ManagerStatus is not None and n.ManagerStatus.Addr and n.ID != node_id]
        leader = self.leader_addr() or (managers[0] if managers else "")
        log.info("this manager was demoted: it runs on as a worker (manager %s)", leader or "unknown")
        self._role_task = None  # this very task: stop() must not wait for it
        listen = self.membership.listen
        etcd_port = int(self.store_settings.client_url.rsplit(":", 1)[1]) if self.store_settings.client_url else 0
        await self.stop()
        if self.store_settings.managed:
            shutil.rmtree(self.data_root / "etcd", ignore_errors=True)
        (self.data_root / "ca.key").unlink(missing_ok=True)  # a worker holds no CA key
        self.keys.remove()  # ... and no data key
        self.vault.forget()  # ... and no unlock key
        etcdtls.remove(self.data_root)  # ... and no way into etcd
        await self.store.close()
        self.store = MemoryStore(self._sqlite())
        self.store_settings = StoreSettings()
        if creds is not None:
            save_credentials(self.data_root / CERT_DIR, dataclasses.replace(
                creds, manager=leader or creds.manager, managers=tuple(managers)))
        # Where it listened and ran its member: used again if it is promoted back.
        self._save_membership(Membership(node_id=node_id, role="worker", manager=leader, listen=listen,
                                         etcd_port=etcd_port))
        if self.on_role_change is not None:
            await self.on_role_change(node_id)

    async def _admit_manager(self, node_id: str, addr: str, etcd_port: int) -> ManagerJoin | None:
        """A manager joins (manager token): its store settings (a new etcd member when Shoal runs
        them) and the CA key, sent back over the join's bootstrap channel."""
        if self.terms is None:
            return None
        settings = await self.terms.admit(node_id, addr, etcd_port)
        etcd_ca, etcd_ca_key = etcdtls.ca_pems(self.data_root) if etcdtls.has_ca(self.data_root) else ("", "")
        cluster = self.store.cluster()
        return ManagerJoin(store=settings.to_dict(), ca_key_pem=self.vault.read(self.data_root / "ca.key"),
                           store_key=self.vault.read(self.keys.path), etcd_ca_pem=etcd_ca, etcd_ca_key_pem=etcd_ca_key,
                           unlock_key=cluster.UnlockKey if cluster is not None else "")

    async def _elected(self) -> None:
        """A new term: mark this manager the leader in the node list, then start the components."""
        assert self.terms is not None and self.node_id is not None
        try:
            live = await self.terms.reachable()
        except StoreUnavailable:
            live = set()
        ManagerReachability(self.store, self.terms, self.node_id).mark(live)
        await self._start_components()

    # ------------------------------------------------------------------ internals

    async def _start_components(self) -> None:
        assert self.membership is not None
        node_id = self.membership.node_id
        self.dispatcher = Dispatcher(self.store, heartbeat_period_s=self.heartbeat_s)
        self.log_collector = LogCollector(self.store, self.logstore_root)
        self.dispatcher.log_sink = self.log_collector.add
        if self.local_agent is not None:
            self.dispatcher.register_log_source(node_id, self.local_agent)
        self.ca = ClusterCA(self.store, self.data_root, local_node_id=node_id, vault=self.vault)
        host, port = split_listen(self.membership.listen or f"0.0.0.0:{SWARM_PORT}")
        self.server = ClusterServer(self.dispatcher, self.ca, host, port, node_id_of_manager=node_id,
                                    advertise_addr=self.addr)
        self.server.engine_source = self.engine_source
        if self.terms is not None:
            self.server.admit_manager = self._admit_manager
            await self._start_replay_site()
        await self.server.start()
        ensure_predefined_networks(self.store)  # `--network host`/`bridge`, as swarmkit's leader does
        await self._ensure_ingress()
        self.scheduler = Scheduler(self.store)
        allocator = NetworkAllocator(self.store)
        self.scheduler.allocator = allocator  # addresses are chosen in the scheduler's commit
        components: list[Any] = [
            self.ca,
            self.dispatcher,
            ReplicatedOrchestrator(self.store),
            GlobalOrchestrator(self.store),
            JobOrchestrator(self.store),
            allocator,
            self.scheduler,
            TaskReaper(self.store),
            StackDeployer(self.store),
            CronScheduler(self.store, clock=clock_from_env()),  # scheduled jobs (shoal.schedule)
            Autoscaler(self.store, self.dispatcher.stats.usage),  # shoal.autoscale.*, aliyun.auto_scaling.*
            self.log_collector,  # aliyun.log_store_*: lines agents ship, to the files and the user's sinks
            # haproxy for aliyun.lb.port_* / aliyun.routing.* labels; nothing runs without them
            LoadBalancerKeeper(self.store, self.data_root / "lb"),
        ]
        if self.terms is not None:  # `node ls`: Leader / Reachable / Unreachable, from etcd
            components.append(ManagerReachability(self.store, self.terms, node_id))
        observe_components(self.metrics, components)
        self.scheduler.observe_placement = self.metrics.observe_placement
        for c in components:
            self._tasks.append(asyncio.create_task(self._supervise(c), name=type(c).__name__))
        self._start_autolock_keeper()

    @staticmethod
    async def _supervise(component: Any) -> None:
        """Run a component; if it crashes, log it and start it again rather than lose the loop."""
        while True:
            try:
                await component.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s crashed; restarting it in 1 s", type(component).__name__)
                await asyncio.sleep(1)

    def _describe(self) -> NodeDescription:
        """A first description from the engine's info; the agent's registration refreshes it."""
        desc = node_description(self.engine_info)
        return desc if desc.Hostname else msgspec.structs.replace(desc, Hostname=socket.gethostname())

    def _load_membership(self) -> Membership | None:
        try:
            data = json.loads(self._state_file.read_text())
            return Membership(node_id=data["node_id"], role=data.get("role", "manager"),
                              manager=data.get("manager", ""), listen=data.get("listen", ""),
                              store=data.get("store"), etcd_port=int(data.get("etcd_port", 0)))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_membership(self, membership: Membership | None) -> None:
        if membership is None:
            self._state_file.unlink(missing_ok=True)
        else:
            write_private(self._state_file, json.dumps(asdict(membership)))
        self.membership = membership


def listen_of(listen_addr: str) -> str:
    """InitRequest.ListenAddr ("0.0.0.0:2377", "10.0.0.1", ":2377", "") as "host:port"."""
    if not listen_addr:
        return f"0.0.0.0:{SWARM_PORT}"
    host, port = split_listen(listen_addr)
    return f"{host}:{port}"


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        return listen or "0.0.0.0", SWARM_PORT
    return host or "0.0.0.0", int(port)


def _host_of(addr: str) -> str:
    """The host part of "ip", "ip:port" or "[v6]:port"."""
    if addr.startswith("["):
        return addr[1:].split("]", 1)[0]
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr
