"""The dispatcher: the manager's end of every agent session.

Modelled on swarmkit's ``manager/dispatcher``. A node registers and gets a session; it heartbeats to
keep it; it reads one stream of assignments (its whole task set, then deltas); it reports task status
in batches. The dispatcher turns missed heartbeats into ``node down``, and status reports into store
writes that never move a task backwards.

Scale shapes the code: one store watcher for all sessions, fanned out by node ID (never every event
to every session), and status reports from all nodes coalesced into few transactions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec

from shoal.dispatcher.merge import merge_streams
from shoal.dispatcher.netstate import Dirty, NetworkIndex
from shoal.dispatcher.protocol import (
    Assignments,
    EngineHealth,
    LogMessage,
    LogOptions,
    LogRecord,
    LogSource,
    NetworkState,
    SessionInfo,
    TaskStats,
    TaskStatusUpdate,
)
from shoal.dispatcher.sanity import MAX_REASON, check_description
from shoal.dispatcher.stats import StatsBook
from shoal.errors import Conflict, NotFound, Unavailable
from shoal.ids import new_id
from shoal.models import (
    ENGINE_UNAVAILABLE,
    SECOND,
    Config,
    Node,
    NodeDescription,
    NodeState,
    NodeStatus,
    Secret,
    Task,
    TaskState,
    TaskStatus,
    engine_unavailable,
    now_ts,
)
from shoal.store import Action, Event, MemoryStore, Tx, Watcher

log = logging.getLogger(__name__)

GRACE_MULTIPLIER = 3  # a node is down after this many missed heartbeat periods (swarmkit's default)
STALL_TOLERANCE_S = 0.5  # a later wake-up than this is the manager's stall, not the nodes'
MASS_EXPIRY_SHARE = 0.2  # this share of all sessions late at once reads as the manager falling behind
MAX_SLACK_GRACES = 3  # heartbeat slack (see heartbeat_slack) never delays a verdict more than this
MASS_EXPIRY_MIN = 10  # ... and at least this many (a small cluster losing two hosts is just that)
MAX_DEFERRALS = 3  # grace periods in a row that a mass expiry may be put off
MAX_STATUS_BATCH = 2_000  # status updates per transaction, with the loop served between two
# Task events route assignments; the others only change what nodes know of their networks.
_WATCHED = ("task", "network", "node", "service")
_ASSIGNED = TaskState.ASSIGNED.order


class SessionInvalid(Unavailable):
    """The session ended (heartbeat missed, node re-registered, dispatcher stopped): register again."""

    def __init__(self, message: str = "session invalid") -> None:
        super().__init__(message)


@dataclass(eq=False)
class _Session:
    id: str
    node_id: str
    deadline: float
    closed: bool = False
    streams: set[_Stream] = field(default_factory=set)
    last_seen: float = field(default_factory=time.monotonic)  # when its last heartbeat was handled


@dataclass(eq=False)
class _Stream:
    """One assignments stream: the events for its node, and a wake-up for its reader."""

    session: _Session
    since: int  # store revision of the full set; older events are already in it
    events: list[Event] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    nets: set[str] = field(default_factory=set)  # networks whose state this node must get again
    sent_nets: set[str] = field(default_factory=set)  # networks the agent holds (to tell it removals)


def _visible(task: Task | None, node_id: str) -> bool:
    """Whether the node's agent is told about this task (swarmkit: state >= assigned)."""
    return task is not None and task.NodeID == node_id and task.Status.State.order >= _ASSIGNED


def _engine_down_status(status: NodeStatus, engine: EngineHealth) -> NodeStatus:
    message = f"{ENGINE_UNAVAILABLE}: {engine.reason}" if engine.reason else ENGINE_UNAVAILABLE
    return msgspec.structs.replace(status, State=NodeState.DOWN, Message=message)


def _same_status(a: TaskStatus, b: TaskStatus) -> bool:
    return (
        a.State == b.State
        and a.Message == b.Message
        and a.Err == b.Err
        and a.ContainerStatus == b.ContainerStatus
        and a.PortStatus == b.PortStatus
        and a.Health == b.Health
    )


class Dispatcher:
    """Agent sessions on the manager; the server side of :class:`DispatcherClient`."""

    def __init__(
        self,
        store: MemoryStore,
        heartbeat_period_s: float = 5.0,
        status_batch_interval_s: float = 0.005,
    ) -> None:
        self.store = store
        self._default_period = heartbeat_period_s
        # Long enough to gather reports that arrive together from many nodes, short enough not to show.
        self._batch_interval = status_batch_interval_s
        self._sessions: dict[str, _Session] = {}
        self._node_sessions: dict[str, _Session] = {}
        # Nodes the store says are up but that have not registered with this dispatcher (a manager
        # restart): they get one grace period to come back before they are marked down.
        self._unknown: dict[str, float] = {}
        self._log_sources: dict[str, LogSource] = {}
        # Where collected log lines go (the manager sets it: logstore/collector.py); None drops them.
        self.log_sink: Callable[[list[LogRecord]], None] | None = None
        # Reports waiting for the next batch, by (reporting node, task): one node's report never
        # replaces another's (a worker could otherwise cancel the real owner's report).
        self._pending: dict[tuple[str, str], TaskStatus] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._flushed: asyncio.Future[None] | None = None
        # Created here, not in run(), so a session opened before run() starts misses nothing.
        self._watcher: Watcher | None = store.watch(*_WATCHED)
        self.networks = NetworkIndex(store)
        self.stats = StatsBook()  # the latest usage sample of every running task, as agents send them
        self._stopped = False  # run() ended: no new sessions (nothing would feed their streams)
        # How often each node was marked down for missed heartbeats (the scale benchmark checks it
        # against the agents it knows were alive: a manager must never mistake its stall for theirs).
        self.marked_down: dict[str, int] = {}
        self._deferrals = 0  # mass expiries put off in a row (see _manager_behind)
        self._late_by: deque[float] = deque(maxlen=500)  # how late recent heartbeats were handled (s)
        self.heartbeats_received = 0  # /metrics (shoal/metrics.py)

    # ------------------------------------------------------------------ lifecycle

    @property
    def session_count(self) -> int:
        """Live agent sessions (/metrics)."""
        return len(self._sessions)

    def heartbeat_period(self) -> float:
        """The cluster's configured period (``docker swarm update --dispatcher-heartbeat``) or ours."""
        cluster = self.store.cluster()
        if cluster is not None and cluster.Spec.Dispatcher is not None and cluster.Spec.Dispatcher.HeartbeatPeriod:
            return cluster.Spec.Dispatcher.HeartbeatPeriod / SECOND
        return self._default_period

    async def run(self) -> None:
        """Fan task events out to sessions and expire sessions whose heartbeats stopped."""
        if self._watcher is None:
            # A second run() (the manager restarted the component): events in between were lost,
            # so every agent starts over with a full set.
            self._watcher = self.store.watch(*_WATCHED)
            self.networks.rebuild()
            self._close_all_sessions()
        self._stopped = False
        grace = self.heartbeat_period() * GRACE_MULTIPLIER
        now = time.monotonic()
        for node in self.store.list("node"):
            if node.Status.State == NodeState.READY and node.ID not in self._node_sessions:
                self._unknown[node.ID] = now + grace
        fanout = asyncio.create_task(self._fanout(self._watcher))
        try:
            while True:
                interval = min(self.heartbeat_period() / 2, 1.0)
                before = time.monotonic()
                await asyncio.sleep(interval)
                if fanout.done():
                    fanout.result()  # it died: crash, so the manager restarts us
                now = time.monotonic()
                self._forgive_stall(now - before - interval)
                self._expire(now)
        finally:
            fanout.cancel()
            self._watcher.close()
            self._watcher = None
            self._stopped = True
            self._close_all_sessions()

    def _close_all_sessions(self) -> None:
        for sess in list(self._sessions.values()):
            self._close(sess)

    def _forgive_stall(self, lag: float) -> None:
        """If this loop itself woke up late, the manager was busy (a huge batch, a slow disk), and
        heartbeats waited in its sockets meanwhile: that is no node's fault. Push every deadline
        back by the lag, so a manager stall never turns into "every node down" and a mass
        evacuation (which would cause the next stall)."""
        if lag < STALL_TOLERANCE_S:
            return
        log.warning("dispatcher woke %.1fs late (manager busy); extending heartbeat deadlines", lag)
        for sess in self._sessions.values():
            sess.deadline += lag
        for node_id in self._unknown:
            self._unknown[node_id] += lag

    def heartbeat_slack(self) -> float:
        """Extra grace: how late live nodes' heartbeats are being handled now (the 90th percentile
        of the last ones), at most MAX_SLACK_GRACES grace periods. A node that really went silent
        is late by far more than its peers, whose heartbeats keep being handled."""
        if len(self._late_by) < 10:
            return 0.0
        ordered = sorted(self._late_by)
        cap = MAX_SLACK_GRACES * self.heartbeat_period() * GRACE_MULTIPLIER
        return min(ordered[int(len(ordered) * 0.9)], cap)

    def _expire(self, now: float) -> None:
        slack = self.heartbeat_slack()
        late = [sess for sess in self._sessions.values() if sess.deadline + slack < now]
        if self._manager_behind(late, now):
            return
        down: list[tuple[str, str]] = []
        for sess in late:
            self._close(sess)
            down.append((sess.node_id, "heartbeat failure"))
        for node_id, deadline in list(self._unknown.items()):
            if deadline < now:
                del self._unknown[node_id]
                down.append((node_id, 'heartbeat failure for node in "unknown" state'))
        if not down:
            return
        with self.store.tx() as tx:
            for node_id, message in down:
                node: Node | None = tx.get("node", node_id)
                if node is None or node.Status.State == NodeState.DOWN:
                    continue
                log.info("node %s is down: %s", node_id, message)
                self.marked_down[node_id] = self.marked_down.get(node_id, 0) + 1
                status = msgspec.structs.replace(node.Status, State=NodeState.DOWN, Message=message)
                tx.update("node", msgspec.structs.replace(node, Status=status))

    def _manager_behind(self, late: list[_Session], now: float) -> bool:
        """Whether the missed heartbeats say more about this manager than about the nodes.

        The stall check above only sees this loop's own timer; heartbeats can also queue in the
        transport while the loop is busy but its timer still fires on time. Nodes fail alone or a
        rack at a time; a large share of every session missing its deadline at once is what a
        starved manager looks like. Then every deadline moves back one grace period instead — at
        most MAX_DEFERRALS times in a row, so a real mass failure is still declared, late."""
        many = len(late) >= max(MASS_EXPIRY_MIN, MASS_EXPIRY_SHARE * len(self._sessions))
        if not many or self._deferrals >= MAX_DEFERRALS:
            self._deferrals = 0
            return False
        self._deferrals += 1
        grace = self.heartbeat_period() * GRACE_MULTIPLIER
        log.warning("%d of %d nodes missed their heartbeats at once: taking it for this manager falling "
                    "behind, not the nodes; deadlines extended by %.0fs (%d/%d)",
                    len(late), len(self._sessions), grace, self._deferrals, MAX_DEFERRALS)
        for sess in self._sessions.values():
            sess.deadline = max(sess.deadline, now + grace)
        return True

    def _close(self, sess: _Session) -> None:
        sess.closed = True
        self._sessions.pop(sess.id, None)
        if self._node_sessions.get(sess.node_id) is sess:
            del self._node_sessions[sess.node_id]
        for stream in sess.streams:
            stream.wake.set()

    def _session(self, session_id: str) -> _Session:
        sess = self._sessions.get(session_id)
        if sess is None:
            raise SessionInvalid()
        return sess

    # ------------------------------------------------------------------ register / heartbeat

    async def register(
        self, node_id: str | None, description: NodeDescription, addr: str, engine: EngineHealth | None = None
    ) -> SessionInfo:
        """Open a session for a known node; its previous session (if any) ends. A node whose engine
        is down registers too (its agent is there), but stays ``down`` and keeps its description."""
        if self._stopped:
            raise Unavailable("dispatcher is stopped")
        period = self.heartbeat_period()
        if engine is not None and len(engine.reason) > MAX_REASON:
            engine = msgspec.structs.replace(engine, reason=engine.reason[:MAX_REASON])
        with self.store.tx() as tx:
            node = self._node_for_register(tx, node_id)
            status = NodeStatus(State=NodeState.READY, Message="", Addr=addr or node.Status.Addr)
            if engine is not None and not engine.up:
                status = _engine_down_status(status, engine)
                description = node.Description  # a down engine described nothing: keep what we know
            else:
                if not description.Hostname:  # nothing said: the name it joined with stays
                    description = msgspec.structs.replace(description, Hostname=node.Description.Hostname)
                if description.Hostname:
                    check_description(description)
                self._check_name_free(node, description.Hostname)
                # The CA wrote TLSInfo; what the node says of it is not evidence of anything.
                description = msgspec.structs.replace(description, TLSInfo=node.Description.TLSInfo)
            tx.update("node", msgspec.structs.replace(node, Description=description, Status=status))
        old = self._node_sessions.get(node.ID)
        if old is not None:
            self._close(old)
        self._unknown.pop(node.ID, None)
        sess = _Session(new_id(), node.ID, time.monotonic() + period * GRACE_MULTIPLIER)
        self._sessions[sess.id] = sess
        self._node_sessions[node.ID] = sess
        log.debug("node %s registered (session %s)", node.ID, sess.id)
        return SessionInfo(node_id=node.ID, session_id=sess.id, heartbeat_period_s=period,
                           managers=self.manager_addrs())

    def manager_addrs(self) -> list[str]:
        """Every manager's cluster address, the leader's first."""
        ms = [n.ManagerStatus for n in self.store.list("node") if n.ManagerStatus is not None and n.ManagerStatus.Addr]
        return [st.Addr for st in sorted(ms, key=lambda st: not st.Leader)]

    def _check_name_free(self, node: Node, hostname: str) -> None:
        """A node may not take the name of another live node (`node ls`, constraints and logs go
        by hostname), as joining with a taken name is refused."""
        if hostname == node.Description.Hostname:
            return
        for other in self.store.list("node"):
            if other.ID != node.ID and other.Description.Hostname == hostname and other.Status.State != NodeState.DOWN:
                raise Conflict(f"node {node.ID} cannot take the name {hostname!r}: node {other.ID} has it")

    def _node_for_register(self, tx: Tx, node_id: str | None) -> Node:
        """The node a registering agent is. Joining a new host (``create_node`` with a join token
        and a certificate) plugs in here; for now only nodes already in the store may register."""
        node = tx.get("node", node_id) if node_id else None
        if node is None:
            raise NotFound(f"node {node_id or '(none)'} not found")
        return node

    async def heartbeat(self, session_id: str, engine: EngineHealth | None = None) -> float:
        self.heartbeats_received += 1
        sess = self._session(session_id)
        node: Node | None = self.store.get("node", sess.node_id)
        if node is None:  # removed with `docker node rm --force`
            self._close(sess)
            raise SessionInvalid("node removed")
        period = self.heartbeat_period()
        now = time.monotonic()
        # How much later than its period this heartbeat was handled: when the manager falls behind,
        # every node's heartbeats are handled late, and _expire grants that much more grace.
        self._late_by.append(max(0.0, now - sess.last_seen - period))
        sess.last_seen = now
        sess.deadline = now + period * GRACE_MULTIPLIER
        if engine is not None:
            if len(engine.reason) > MAX_REASON:
                engine = msgspec.structs.replace(engine, reason=engine.reason[:MAX_REASON])
            self._record_engine(node, engine)
        return period

    def _record_engine(self, node: Node, engine: EngineHealth) -> None:
        """Turn a change of the node's engine health into its state: ``down`` ("engine
        unavailable: ...") while the engine is down, ``ready`` again once it is back. Writes only on
        a change, so steady heartbeats cost no transaction."""
        status = node.Status
        if engine.up:
            if not engine_unavailable(node):
                return  # ready already, or down for another reason that only a new session clears
            log.info("node %s: engine is back", node.ID)
            new = msgspec.structs.replace(status, State=NodeState.READY, Message="")
        else:
            new = _engine_down_status(status, engine)
            if new == status:
                return
            if status.State is not NodeState.DOWN:
                log.warning("node %s: %s", node.ID, new.Message)
        with self.store.tx() as tx:
            cur: Node | None = tx.get("node", node.ID)
            if cur is not None and cur.Status == status:  # unchanged since we looked
                tx.update("node", msgspec.structs.replace(cur, Status=new))

    # ------------------------------------------------------------------ assignments

    async def _fanout(self, watcher: Watcher) -> None:
        """Route each task event to the streams of the node(s) it concerns: O(events), not O(nodes).
        Network state goes to the nodes on a network that changed, whatever changed it."""
        async for batch in watcher:
            events = batch + watcher.drain()
            touched: set[_Stream] = set()
            dirty: Dirty = {}
            for e in events:
                self.networks.apply(e, dirty)
                if e.kind != "task":
                    continue
                nodes = {e.obj.NodeID if e.obj is not None else "", e.old.NodeID if e.old is not None else ""}
                for node_id in nodes:
                    sess = self._node_sessions.get(node_id) if node_id else None
                    if sess is None:
                        continue
                    for stream in sess.streams:
                        if e.revision > stream.since:
                            stream.events.append(e)
                            touched.add(stream)
            for net_id, node_ids in dirty.items():
                for node_id in node_ids:
                    sess = self._node_sessions.get(node_id)
                    if sess is None:
                        continue
                    for stream in sess.streams:
                        stream.nets.add(net_id)
                        touched.add(stream)
            for stream in touched:
                stream.wake.set()

    async def assignments(self, session_id: str) -> AsyncIterator[Assignments]:
        """The node's tasks: the full set first, then only what changed (coalesced), each message
        with the state of the node's networks that changed and the secrets and configs its tasks use."""
        sess = self._session(session_id)
        node_id = sess.node_id
        stream = _Stream(sess, since=self.store.revision)
        tasks = [t for t in self.store.tasks_on_node(node_id) if t.Status.State.order >= _ASSIGNED]
        sess.streams.add(stream)
        try:
            full = Assignments(full=True, tasks=tasks)
            self._add_networks(full, stream, set(self.networks.nets_of(node_id)))
            self._add_references(full)
            # Nothing reaches an agent before it is durable: a manager that crashes must not have
            # started containers for tasks its successor never hears of.
            await self.store.wait_durable(stream.since)
            yield full
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if sess.closed:
                    raise SessionInvalid()
                events, stream.events = stream.events, []
                nets, stream.nets = stream.nets, set()
                delta = self._delta(node_id, events)
                if nets:
                    delta = delta or Assignments(full=False, tasks=[])
                    self._add_networks(delta, stream, nets)
                if delta is not None and (delta.tasks or delta.removed or delta.networks or delta.removed_networks):
                    self._add_references(delta)
                    await self.store.wait_durable(max((e.revision for e in events), default=None))
                    yield delta
        finally:
            sess.streams.discard(stream)

    def _add_networks(self, msg: Assignments, stream: _Stream, net_ids: set[str]) -> None:
        """Whole states of ``net_ids`` the node is on; removals of those it held and left."""
        node_id = stream.session.node_id
        states: list[NetworkState] = []
        for nid in sorted(net_ids):
            st = self.networks.state(nid, node_id)
            if st is not None:
                states.append(st)
                stream.sent_nets.add(nid)
            elif nid in stream.sent_nets:
                stream.sent_nets.discard(nid)
                msg.removed_networks.append(nid)
        msg.networks.extend(states)

    def _add_references(self, msg: Assignments) -> None:
        """The secrets and configs (with their data) the message's tasks mount, so the agent has
        them before it starts a task."""
        secrets: dict[str, Secret] = {}
        configs: dict[str, Config] = {}
        for t in msg.tasks:
            cs = t.Spec.ContainerSpec
            if cs is None or not (cs.Secrets or cs.Configs):
                continue
            for ref in cs.Secrets or ():
                if ref.SecretID and ref.SecretID not in secrets:
                    obj = self.store.get("secret", ref.SecretID)
                    if obj is not None:
                        secrets[ref.SecretID] = obj
            for cref in cs.Configs or ():
                if cref.ConfigID and cref.ConfigID not in configs:
                    obj = self.store.get("config", cref.ConfigID)
                    if obj is not None:
                        configs[cref.ConfigID] = obj
        msg.secrets = list(secrets.values())
        msg.configs = list(configs.values())

    @staticmethod
    def _delta(node_id: str, events: list[Event]) -> Assignments | None:
        """What the agent must hear about: new assignments, DesiredState or Spec changes, deletions.
        Status writes (mostly the agent's own reports) are not echoed back."""
        changed: dict[str, Task] = {}
        removed: dict[str, None] = {}
        for e in events:
            old: Task | None = e.old
            new: Task | None = None if e.action is Action.DELETE else e.obj
            was, now = _visible(old, node_id), _visible(new, node_id)
            if now:
                assert new is not None
                relevant = (
                    not was
                    or old is None
                    or old.DesiredState != new.DesiredState
                    or (old.Spec is not new.Spec and old.Spec != new.Spec)
                    or (old.Labels is not new.Labels and old.Labels != new.Labels)  # blue-green switch
                )
                if relevant or new.ID in changed:
                    changed[new.ID] = new  # a later version of a task already going out replaces it
                    removed.pop(new.ID, None)
            elif was:
                assert old is not None
                changed.pop(old.ID, None)
                removed[old.ID] = None
        if not changed and not removed:
            return None
        return Assignments(full=False, tasks=list(changed.values()), removed=list(removed))

    # ------------------------------------------------------------------ task stats

    def report_stats(self, session_id: str, stats: list[TaskStats]) -> None:
        """Keep a node's latest usage samples (dispatcher/stats.py); only of its own running tasks:
        a node must not make another's service look busy or idle to the autoscaler."""
        sess = self._session(session_id)
        own = []
        for s in stats:
            task: Task | None = self.store.get("task", s.task_id)
            if task is None or task.NodeID != sess.node_id or task.ServiceID != s.service_id:
                continue
            own.append(msgspec.structs.replace(s, node_id=sess.node_id, slot=task.Slot))
        self.stats.record(own)

    # ------------------------------------------------------------------ collected logs

    async def ship_logs(self, session_id: str, records: list[LogRecord]) -> None:
        """Lines a node's agent collected (``aliyun.log_store_*``), handed to the log sink. Only of
        the node's own tasks, with the node and service as the store knows them: a node must not
        write into another's service's logs."""
        sess = self._session(session_id)
        sink = self.log_sink
        if sink is None or not records:
            return
        own: list[LogRecord] = []
        tasks: dict[str, Task | None] = {}
        for r in records:
            if r.task_id not in tasks:
                tasks[r.task_id] = self.store.get("task", r.task_id)
            task = tasks[r.task_id]
            if task is None or task.NodeID != sess.node_id:
                continue
            if r.node_id != sess.node_id or r.service_id != task.ServiceID:
                r = msgspec.structs.replace(r, node_id=sess.node_id, service_id=task.ServiceID)
            own.append(r)
        if len(own) < len(records):
            log.warning("node %s shipped %d log line(s) of tasks not its own; dropped", sess.node_id,
                        len(records) - len(own))
        if own:
            sink(own)

    # ------------------------------------------------------------------ task status

    async def update_task_status(self, session_id: str, updates: list[TaskStatusUpdate]) -> None:
        """Queue the updates and return once the transaction holding them committed. Calls that
        arrive within one short interval share that transaction."""
        sess = self._session(session_id)
        foreign = 0
        for u in updates:
            task: Task | None = self.store.get("task", u.task_id)
            if task is not None and task.NodeID != sess.node_id:
                foreign += 1  # not this node's task: its report must not touch (or displace) the owner's
                continue
            key = (sess.node_id, u.task_id)
            prev = self._pending.get(key)
            if prev is not None and prev.State.order > u.status.State.order:
                continue
            self._pending[key] = u.status
        if foreign:
            log.warning("node %s reported on %d task(s) assigned to other nodes; ignored", sess.node_id, foreign)
        if self._flushed is None:
            self._flushed = asyncio.get_running_loop().create_future()
            self._flush_task = asyncio.create_task(self._flush_soon(), name="status-flush")
        await asyncio.shield(self._flushed)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self._batch_interval)
        pending, self._pending = self._pending, {}
        done, self._flushed = self._flushed, None
        self._flush_task = None
        assert done is not None
        try:
            items = list(pending.items())
            for i in range(0, len(items), MAX_STATUS_BATCH):
                self._apply_statuses(items[i : i + MAX_STATUS_BATCH])
                await asyncio.sleep(0)  # heartbeats and other sessions between chunks
            # Acknowledged once applied, not once durable: waiting for durability would queue every
            # report behind the whole write backlog (a 100,000-task deploy: seconds). A report lost
            # with a crashed manager is not lost for good: agents report every task's current
            # status again at each new session (Worker.report_current), as swarmkit's do.
        except Exception as exc:  # the callers get the error
            done.set_exception(exc)
        else:
            done.set_result(None)

    def _apply_statuses(self, items: list[tuple[tuple[str, str], TaskStatus]]) -> None:
        with self.store.tx() as tx:
            for (node_id, task_id), status in items:
                task: Task | None = tx.get("task", task_id)
                if task is None or task.NodeID != node_id:
                    continue  # deleted, or not this node's to report on
                cur = task.Status
                if status.State.order < cur.State.order or _same_status(cur, status):
                    continue  # never backwards; nothing new
                if not status.Timestamp:
                    status = msgspec.structs.replace(status, Timestamp=now_ts())
                tx.update("task", msgspec.structs.replace(task, Status=status))

    # ------------------------------------------------------------------ logs

    def register_log_source(self, node_id: str, source: LogSource) -> None:
        """Where to ask for the logs of tasks on ``node_id`` (an agent, in-process or remote)."""
        self._log_sources[node_id] = source

    def unregister_log_source(self, node_id: str) -> None:
        self._log_sources.pop(node_id, None)

    async def logs(self, tasks: list[Task], options: LogOptions) -> AsyncIterator[LogMessage]:
        """The log lines of ``tasks``, merged from the nodes they run on. Tasks on nodes without a
        log source are skipped (their node is gone)."""
        by_node: dict[str, list[Task]] = {}
        for t in tasks:
            if t.NodeID:
                by_node.setdefault(t.NodeID, []).append(t)
        streams = [
            self._log_sources[nid].task_logs(ts, options) for nid, ts in by_node.items() if nid in self._log_sources
        ]
        async for msg in merge_streams(streams):
            yield msg
