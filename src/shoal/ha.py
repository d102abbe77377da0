"""Managers on etcd: this manager's etcd member (when Shoal runs it), its copy of the store, and the
leader loop that decides when the leader's components run here.

Every manager holds the whole store in memory and serves reads from it. Whichever manager holds the
election key (store/election.py, an etcd lease) is the leader: it alone commits, through a writer
that carries its fence, and runs the dispatcher, orchestrators, scheduler and allocator. The others
follow the leader's batches from an etcd watch (store/replica.py) and campaign. The loop here:

    follow + campaign ──elected──▶ lead: load, repair, accept commits, start components
          ▲                                          │
          └──── stop components, drop the writer ◀── term lost (lease gone, write fenced, etcd away)

A term ends as soon as the leader can tell it may be over (the election's ``lost``, or a write
refused by etcd); a deposed leader's writes never land, because etcd checks the fence itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from shoal.ca.certs import write_private
from shoal.errors import Conflict, InvalidArgument, StoreUnavailable, Unavailable
from shoal.models import NodeRole
from shoal.store import MemoryStore
from shoal.store.dataroot import DataRootLock
from shoal.store.election import LeaderElection, Leadership
from shoal.store.etcd import DEFAULT_PREFIX, etcd_client
from shoal.store.etcdproc import (
    EtcdStartError,
    ManagedEtcd,
    add_member,
    members,
    promote_learner,
    remove_member,
    tls_member,
)
from shoal.store.replica import EtcdReplica
from shoal.store.sealing import KEY_FILE, FileKeySource, KeySource, Sealer, StoreKeyError

log = logging.getLogger(__name__)

ETCD_CLIENT_PORT = 2379  # etcd's own defaults; a managed member's peer port is the client port + 1
# The leader's transactions on members Shoal runs (which accept 8,192 operations and 8 MiB): big
# enough to cut a deploy's batch into few round trips, small enough that one raft entry does not
# hold up the lease keepalives queued behind it.
MANAGED_TXN_OPS = 1024
MANAGED_TXN_BYTES = 2 * 1024 * 1024
ETCD_START_TIMEOUT_S = 30.0
MEMBER_CHECK_S = 2.0  # how often a manager looks whether its etcd member still runs
SYNC_TIMEOUT_S = 15.0  # how long start() waits for a first view (or leadership) before serving anyway

Hook = Callable[[], Awaitable[None]]


@dataclass
class StoreSettings:
    """Where this manager's store lives; kept in node.json (``Membership.store``)."""

    backend: str = "sqlite"  # "sqlite": the embedded single-manager store; "etcd": HA
    endpoints: list[str] = field(default_factory=list)  # etcd client URLs
    managed: bool = False  # Shoal runs this manager's etcd member (<data-root>/etcd)
    prefix: str = DEFAULT_PREFIX
    member: str = ""  # the managed member's name
    client_url: str = ""  # the managed member's URLs
    peer_url: str = ""
    # A member joining an existing etcd cluster (a manager that joined): its first start's
    # --initial-cluster, as add_member returned it; empty for the first member.
    initial_cluster: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> StoreSettings:
        if not data:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def on_etcd(self) -> bool:
        return self.backend == "etcd"

    @property
    def client_endpoints(self) -> list[str]:
        """The members this manager talks to. With a member of its own, that member only: it
        relays to the raft leader, and when it is cut off from the quorum, so is this manager (its
        lease must lapse). Spreading calls over every member instead sent half of them to a
        partitioned member, where they hung until their deadline and cost healthy managers their
        leases (seen in the lab with the leader's link cut)."""
        return [self.client_url] if self.managed and self.client_url else list(self.endpoints)

    @property
    def txn_limits(self) -> dict[str, int]:
        """The leader's etcd transactions: members Shoal runs accept far more than etcd's defaults
        (ManagedEtcd), so a 100,000-task batch takes ~100 transactions instead of ~800; an etcd the
        user runs keeps etcd's defaults (128 operations, 1.5 MiB)."""
        return {"max_ops": MANAGED_TXN_OPS, "max_bytes": MANAGED_TXN_BYTES} if self.managed else {}


def init_settings(backend: str, endpoints: list[str], addr: str, member: str,
                  client_port: int = ETCD_CLIENT_PORT) -> StoreSettings:
    """The settings of a new swarm's first manager: an etcd the user runs (``endpoints``), a member
    Shoal runs for it (no endpoints), or the embedded sqlite store."""
    backend = backend or ("etcd" if endpoints else "sqlite")
    if backend not in ("sqlite", "etcd"):
        raise InvalidArgument(f"invalid store {backend!r}: must be sqlite or etcd")
    if backend == "sqlite":
        if endpoints:
            raise InvalidArgument("etcd endpoints given, but the store is sqlite")
        return StoreSettings()
    for ep in endpoints:
        try:
            etcd_client([ep])  # validates the URL's shape; connects lazily, so nothing is opened
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
    if endpoints:
        return StoreSettings(backend="etcd", endpoints=list(endpoints))
    # Mutual TLS on both of the member's ports (store/etcdtls.py): https.
    client_url = f"https://{addr}:{client_port}"
    return StoreSettings(backend="etcd", endpoints=[client_url], managed=True, member=member,
                         client_url=client_url, peer_url=f"https://{addr}:{client_port + 1}")


class ManagerTerms:
    """This manager's side of a replicated store: the managed member, the replica, the election,
    and the loop that runs ``on_elected``/``on_deposed`` around each term as leader."""

    def __init__(
        self,
        data_root: Path,
        settings: StoreSettings,
        store: MemoryStore,
        member_id: str,
        info: dict[str, Any],
        on_elected: Hook,
        on_deposed: Hook,
        *,
        ttl_s: float | None = None,
        keys: KeySource | None = None,
    ) -> None:
        self.data_root = data_root
        # The manager's data key source (wrapped under the unlock key with autolock).
        self.keys: KeySource = keys or FileKeySource(data_root / KEY_FILE)
        self.settings = settings
        self.store = store
        self.member_id = member_id
        self.info = info
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.ttl_s = ttl_s
        self.etcd: ManagedEtcd | None = None
        self.replica: EtcdReplica | None = None
        self.election: LeaderElection | None = None
        self._client: Any = None
        self.term: Leadership | None = None  # set while this manager is the leader
        self.leading = asyncio.Event()  # set while the leader's components run here
        self._loop_task: asyncio.Task[None] | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._member_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Start the managed member (if any) and connect; the view is empty until :meth:`run`."""
        s = self.settings
        if s.managed:
            try:
                self.etcd = tls_member(self.data_root, s.member or self.member_id, s.client_url, s.peer_url,
                                       s.initial_cluster, may_create=not s.initial_cluster)
            except ValueError as e:
                raise Unavailable(str(e)) from None
            try:
                await self.etcd.start(ETCD_START_TIMEOUT_S)
            except EtcdStartError as e:
                raise Unavailable(f"the manager's etcd member did not start: {e}") from None
            except FileNotFoundError:
                raise Unavailable("etcd is not installed (Debian: apt-get install etcd-server)") from None
            if s.initial_cluster:  # joined as a learner: a voter once caught up
                client = etcd_client(s.endpoints)  # a learner itself refuses the call: any member
                try:
                    await promote_learner(client, s.member or self.member_id)
                finally:
                    await client.close()
        # The data key every manager of the swarm holds (made at init, handed over at join): never
        # made here, or a manager would seal with a key the others do not have.
        self.replica = EtcdReplica(self.store, s.client_endpoints, s.prefix, txn_limits=s.txn_limits,
                                   sealer=Sealer(self.keys, plain_without_key=True))
        self._client = etcd_client(s.client_endpoints)
        kw: dict[str, Any] = {} if self.ttl_s is None else {"ttl_s": self.ttl_s}
        self.election = LeaderElection(self._client, s.prefix, member_id=self.member_id,
                                       keepalive_endpoints=s.client_endpoints,
                                       info=json.dumps(self.info).encode(), **kw)

    async def check_unused(self) -> None:
        """``swarm init`` on an etcd that already holds a swarm is refused (Conflict), not merged."""
        assert self.replica is not None
        snap = await self.replica.etcd.load()
        if snap.revision or any(snap.objects.values()):
            raise Conflict(f"etcd already holds a Shoal swarm under {self.settings.prefix}; "
                           "join it with a manager token, or remove it first")

    async def erase(self) -> None:
        """Delete the swarm from etcd without a fence (a failed ``swarm init``, the only writer)."""
        assert self.replica is not None
        await self.replica.etcd.wipe()

    async def lead_now(self, prepare: Hook | None = None) -> None:
        """Become the leader before returning (``swarm init``: nobody else campaigns yet);
        ``prepare`` runs once commits are accepted, before ``on_elected``."""
        assert self.election is not None
        try:
            term = await asyncio.wait_for(self.election.campaign(), SYNC_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable(f"no leadership in etcd within {SYNC_TIMEOUT_S:g}s") from None
        await self._begin(term, prepare)

    def run(self) -> None:
        """Start the follow/campaign/lead loop (after :meth:`open`, or :meth:`lead_now`)."""
        self._loop_task = asyncio.create_task(self._loop(), name="manager-terms")
        if self.etcd is not None:
            self._member_task = asyncio.create_task(self._keep_member(), name="etcd-member")

    async def _keep_member(self) -> None:
        """Start this manager's etcd member again if it dies (as a service manager would): until it
        answers, this manager follows nothing and cannot lead, and its lease lapses."""
        assert self.etcd is not None
        while True:
            await asyncio.sleep(MEMBER_CHECK_S)
            if self.etcd.running:
                continue
            log.warning("this manager's etcd member is not running; starting it again:\n%s", self.etcd.log_tail(5))
            try:
                self.etcd.spawn()
            except OSError as e:
                log.error("could not start the etcd member: %s", e)

    @property
    def ready(self) -> bool:
        """This manager leads, or its view has caught up with etcd at least once."""
        return self.leading.is_set() or (self.replica is not None and self.replica.synced.is_set())

    async def wait_ready(self, timeout_s: float | None = SYNC_TIMEOUT_S) -> None:
        """Until this manager leads or its view has caught up once (bounded: then serve anyway)."""
        assert self.replica is not None
        waits = [asyncio.create_task(self.leading.wait()), asyncio.create_task(self.replica.synced.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def close(self, stop_member: bool = True) -> None:
        """Stop leading and following (daemon shutdown, leave); the lease is revoked so another
        manager takes over at once."""
        if self._member_task is not None:
            self._member_task.cancel()
            await asyncio.gather(self._member_task, return_exceptions=True)
            self._member_task = None
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        await self._end_term()
        await self._stop_following()
        if self.election is not None:
            await self.election.close()
        if self.replica is not None:
            await self.replica.close()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        if stop_member and self.etcd is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.etcd.stop)

    # ------------------------------------------------------------------ membership

    async def admit(self, node_id: str, addr: str, etcd_port: int) -> StoreSettings:
        """The store settings of a manager joining at ``addr``: with managed etcd, a new member on
        that host is announced first (etcd then counts it in its quorum; it starts on the joiner)."""
        s = self.settings
        if not s.managed:
            return StoreSettings(backend="etcd", endpoints=list(s.endpoints), prefix=s.prefix)
        scheme = "https" if s.client_url.startswith("https://") else "http"  # as this swarm's members
        client_url = f"{scheme}://{addr}:{etcd_port or ETCD_CLIENT_PORT}"
        peer_url = f"{scheme}://{addr}:{(etcd_port or ETCD_CLIENT_PORT) + 1}"
        initial = await add_member(self._client, node_id, peer_url, learner=True)
        others = [ep for ep in s.endpoints if ep != client_url]
        return StoreSettings(backend="etcd", endpoints=[client_url, *others], managed=True, prefix=s.prefix,
                             member=node_id, client_url=client_url, peer_url=peer_url, initial_cluster=initial)

    async def remove_member(self, name: str) -> bool:
        """Take the etcd member ``name`` (a manager's node ID) out of the cluster; False if there is
        no such member (an etcd the user runs, or already gone)."""
        return await _remove_named(self._client, name)

    async def leave(self) -> None:
        """Close, as a manager that leaves while others stay, and take this manager's own etcd member
        out of the etcd cluster: a member left behind would count in etcd's quorum for good (of
        three, one more loss would stop every write). The removal goes through the other members
        while this one still runs, so a cluster of two keeps its quorum through the change; if it
        cannot be done now, the log says how to finish it."""
        name = self.settings.member or self.member_id
        others: list[str] = []
        if self.settings.managed and self._client is not None:
            try:
                others = [u for m in await members(self._client) if m.name != name and not m.is_learner
                          for u in m.client_urls]
            except (StoreUnavailable, Conflict) as e:
                log.warning("leaving: the etcd cluster's members are unknown (%s)", e)
        await self.close(stop_member=False)  # the lease is revoked first: another manager leads at once
        try:
            if others:
                client = etcd_client(others)
                try:
                    if await _remove_named(client, name):
                        log.info("this manager's etcd member %s left the etcd cluster", name)
                except (StoreUnavailable, Conflict) as e:
                    log.warning("this manager's etcd member %s is still in the etcd cluster (%s); on another "
                                "manager's host: etcdctl member remove <its ID>", name, e)
                finally:
                    await client.close()
        finally:
            if self.etcd is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.etcd.stop)

    async def step_down(self) -> None:
        """End this term now (a demoted leader): another manager leads within moments."""
        if self.term is not None:
            self.term.lost.set()

    # ------------------------------------------------------------------ status

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    @property
    def stale(self) -> str:
        """Why this manager's view may be behind (etcd unreachable), or ""."""
        return self.replica.error if self.replica is not None else ""

    async def reachable(self) -> set[str]:
        """The managers (node IDs) campaigning in etcd now: alive and connected to the store."""
        assert self.election is not None
        return await self.election.candidates()

    async def leader_info(self) -> dict[str, Any] | None:
        assert self.election is not None
        raw = await self.election.leader()
        return json.loads(raw) if raw else None

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        assert self.election is not None
        while True:
            try:
                if self.term is None:
                    self._start_following()
                    await self._wait_key_opens_store()
                    term = await self.election.campaign()
                    await self._begin(term)
                assert self.term is not None
                await self.term.lost.wait()
                log.warning("manager %s: leadership lost; following the next leader", self.member_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("manager %s: leader term failed; campaigning again", self.member_id)
                await asyncio.sleep(1)
            await self._end_term()

    async def _wait_key_opens_store(self) -> None:
        """Campaign only with a data key that opens the stored cluster: a manager without the
        swarm's store.key would win a term, fail to load, and cost the swarm its leader again
        and again (and must never write)."""
        assert self.replica is not None
        said = ""
        while True:
            try:
                await self.replica.etcd.check_key()
                return
            except StoreKeyError as e:
                if e.message != said:
                    log.error("manager %s does not campaign: %s", self.member_id, e.message)
                    said = e.message
            except StoreUnavailable:
                pass  # etcd away: the follower says so; look again
            await asyncio.sleep(1.0)

    async def _begin(self, term: Leadership, prepare: Hook | None = None) -> None:
        assert self.replica is not None
        await self._stop_following()
        self.term = term
        try:
            await self.replica.lead(term.fence, lambda _e: term.lost.set())
            if prepare is not None:
                await prepare()
            await self.on_elected()
        except BaseException:
            await self._end_term()
            raise
        self.leading.set()
        log.info("manager %s leads the swarm (store revision %d)", self.member_id, self.store.revision)

    async def _end_term(self) -> None:
        if self.term is None:
            return
        self.leading.clear()
        term, self.term = self.term, None
        term.lost.set()
        try:
            await self.on_deposed()
        finally:
            assert self.replica is not None
            await self.replica.step_down()
            if self.election is not None:
                with contextlib.suppress(StoreUnavailable):
                    await self.election.resign()

    def _start_following(self) -> None:
        assert self.replica is not None
        if self._follow_task is None or self._follow_task.done():
            self._follow_task = asyncio.create_task(self.replica.follow(), name="store-follow")

    async def _stop_following(self) -> None:
        if self._follow_task is not None:
            self._follow_task.cancel()
            await asyncio.gather(self._follow_task, return_exceptions=True)
            self._follow_task = None


class ManagerReachability:
    """A leader component: keeps every manager node's ``ManagerStatus`` true to etcd — Leader for
    this manager only, Reachable for managers holding an election key (alive, connected to the
    store), Unreachable otherwise — as `docker node ls` shows them.

    It also completes a demotion (`docker node demote`): the node's etcd member leaves the etcd
    cluster and its ``ManagerStatus`` goes; the demoted manager itself notices its role in its
    view and turns into a worker (Manager.watch_own_role). A leader demoted hands over first."""

    def __init__(self, store: MemoryStore, terms: ManagerTerms, node_id: str, interval_s: float = 2.0) -> None:
        self.store = store
        self.terms = terms
        self.node_id = node_id
        self.interval_s = interval_s

    async def run(self) -> None:
        while True:
            try:
                live = await self.terms.reachable()
            except StoreUnavailable as e:
                log.info("manager reachability: %s", e)
                live = None
            if live is not None:
                self.mark(live)
            await self.finish_demotions()
            await asyncio.sleep(self.interval_s)

    async def finish_demotions(self) -> None:
        for n in self.store.list("node"):
            if n.Spec.Role != NodeRole.WORKER or n.ManagerStatus is None:
                continue
            if n.ID == self.node_id:
                log.info("this manager was demoted: handing the leadership over")
                await self.terms.step_down()
                return
            try:
                if self.terms.settings.managed and await self.terms.remove_member(n.ID):
                    log.info("demoted manager %s: its etcd member left the etcd cluster", n.ID)
            except (StoreUnavailable, Conflict) as e:
                log.warning("demoted manager %s: its etcd member could not be removed yet: %s", n.ID, e)
                continue
            cur = self.store.get("node", n.ID)
            if cur is not None and cur.ManagerStatus is not None:
                with self.store.tx() as tx:
                    tx.update("node", msgspec.structs.replace(cur, ManagerStatus=None))

    def mark(self, live: set[str]) -> None:
        with self.store.tx() as tx:
            for n in self.store.list("node"):
                st = n.ManagerStatus
                if st is None:
                    continue
                leader = n.ID == self.node_id
                reach = "reachable" if leader or n.ID in live else "unreachable"
                if st.Leader != leader or st.Reachability != reach:
                    status = msgspec.structs.replace(st, Leader=leader, Reachability=reach)
                    tx.update("node", msgspec.structs.replace(n, ManagerStatus=status))


async def migrate_to_etcd(data_root: Path, endpoints: list[str], etcd_port: int = 0) -> tuple[StoreSettings, int]:
    """See :func:`_migrate_to_etcd`; refused while a daemon runs on ``data_root`` (it would go on
    writing the sqlite file that is being moved)."""
    lock = DataRootLock(data_root, who="its daemon")
    try:
        return await _migrate_to_etcd(data_root, endpoints, etcd_port)
    finally:
        lock.release()


async def _migrate_to_etcd(data_root: Path, endpoints: list[str], etcd_port: int = 0) -> tuple[StoreSettings, int]:
    """``shoal store migrate``: move a single manager's store (its sqlite file) to etcd, with its
    daemon stopped. Shoal runs the etcd member unless ``endpoints`` name one the user runs. The
    sqlite file is kept as ``state.db.migrated``. Returns the new settings and how many objects moved."""
    from shoal.store import SqliteBackend  # the embedded store, only to read it once
    from shoal.store.etcd import EtcdBackend

    state_file = data_root / "node.json"
    try:
        membership = json.loads(state_file.read_text())
    except (OSError, ValueError):
        raise InvalidArgument(f"{data_root} holds no swarm (no readable node.json)") from None
    if membership.get("role") != "manager":
        raise InvalidArgument("only a manager's store can be moved (this host is a worker)")
    if StoreSettings.from_dict(membership.get("store")).on_etcd:
        raise Conflict("this manager's store is on etcd already")
    db = data_root / "state.db"
    sealer = Sealer(FileKeySource(data_root / KEY_FILE), create=True)  # the same key seals it in etcd
    backend = SqliteBackend(db, sealer)
    try:
        snap = backend.load()
    finally:
        await backend.close()
    if snap.bad:
        raise InvalidArgument(f"{len(snap.bad)} stored objects cannot be read ({snap.bad[0]}); nothing moved")
    node_id = str(membership["node_id"])
    me = next((n for n in snap.objects.get("node", []) if n.ID == node_id), None)
    if me is None or not me.Status.Addr:
        raise InvalidArgument(f"node {node_id} is not in the store; nothing moved")
    settings = init_settings("etcd", endpoints, me.Status.Addr, member=node_id,
                             client_port=etcd_port or ETCD_CLIENT_PORT)
    member: ManagedEtcd | None = None
    if settings.managed:
        member = tls_member(data_root, node_id, settings.client_url, settings.peer_url, may_create=True)
        try:
            await member.start(ETCD_START_TIMEOUT_S)
        except EtcdStartError as e:
            raise Unavailable(f"the etcd member did not start: {e}") from None
    etcd = EtcdBackend.from_endpoints(settings.endpoints, settings.prefix, sealer=sealer)
    try:
        await etcd.import_snapshot(snap.revision, snap.objects)
    finally:
        await etcd.close()
        if member is not None:
            await asyncio.get_running_loop().run_in_executor(None, member.stop)
    membership["store"] = settings.to_dict()
    write_private(state_file, json.dumps(membership))
    for suffix in ("", "-wal", "-shm"):  # sqlite's write-ahead log goes with the file
        part = db.with_name(db.name + suffix)
        if part.exists():
            part.replace(db.with_name(f"state.db.migrated{suffix}"))
    return settings, sum(len(v) for v in snap.objects.values())


async def _remove_named(client: Any, name: str) -> bool:
    """Remove the etcd member called ``name`` (a manager's node ID); False if there is none."""
    for mem in await members(client):
        if mem.name == name or (not mem.name and any(name in u for u in mem.peer_urls)):
            await remove_member(client, mem.id)
            return True
    return False
