"""The in-memory, indexed view of the store, with transactions and watches.

Reads never touch the backend: they are dictionary look-ups on this view, which is what keeps API
reads fast at 100,000 tasks. Tasks are indexed by service and by node, so no component ever scans
every task to answer "what runs on node N" or "what belongs to service S".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from shoal.errors import Conflict, FencedOut, Unavailable
from shoal.models import Version, now_ts
from shoal.store.base import KINDS, Action, Backend, Event, Kind, Problem, Snapshot, gc_paused
from shoal.store.writer import WriteBehind

log = logging.getLogger(__name__)

_REPLAY = 50_000  # events kept for watchers that resume from a revision


def _share_task_specs(tasks: list[Any]) -> None:
    """Make tasks decoded from storage share equal Specs and Endpoints again, as the tasks the
    orchestrator makes do: one object per distinct spec instead of 100,000 copies, and the
    identity shortcut in the updater's comparisons works after a restart too."""
    seen: dict[bytes, Any] = {}
    enc = msgspec.msgpack.encode
    for t in tasks:
        for field in ("Spec", "Endpoint", "ServiceAnnotations"):
            value = getattr(t, field)
            if value is not None:
                setattr(t, field, seen.setdefault(enc(value), value))


class Watcher:
    """A subscription to committed batches of events. Iterate it; close it when done."""

    def __init__(self, store: MemoryStore, kinds: frozenset[Kind] | None) -> None:
        self._store = store
        self.kinds = kinds
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()

    def _offer(self, events: list[Event]) -> None:
        if self.kinds is not None:
            events = [e for e in events if e.kind in self.kinds]
        if events:
            self.queue.put_nowait(events)

    async def get(self) -> list[Event]:
        return await self.queue.get()

    def drain(self) -> list[Event]:
        """Everything queued so far, without waiting (to coalesce bursts)."""
        out: list[Event] = []
        while not self.queue.empty():
            out.extend(self.queue.get_nowait())
        return out

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> list[Event]:
        return await self.queue.get()

    def close(self) -> None:
        self._store._watchers.discard(self)


class Tx:
    """A batch of writes; see :meth:`MemoryStore.tx`. Reads inside the batch see its own writes."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._writes: dict[tuple[Kind, str], tuple[Action, Any, Any]] = {}

    def get(self, kind: Kind, oid: str) -> Any | None:
        w = self._writes.get((kind, oid))
        if w is not None:
            return None if w[0] is Action.DELETE else w[1]
        return self._store.get(kind, oid)

    def create(self, kind: Kind, obj: Any) -> Any:
        if self.get(kind, obj.ID) is not None:
            raise Conflict(f"{kind} {obj.ID} already exists")
        self._writes[(kind, obj.ID)] = (Action.CREATE, obj, None)
        return obj

    def update(self, kind: Kind, obj: Any, expected_version: int | None = None) -> Any:
        """Replace an object. With ``expected_version``, a stale writer gets :class:`Conflict`."""
        key = (kind, obj.ID)
        prev = self._writes.get(key)
        cur = self._store.get(kind, obj.ID)
        if (prev is not None and prev[0] is Action.DELETE) or (prev is None and cur is None):
            raise Conflict(f"{kind} {obj.ID} does not exist")
        if expected_version is not None and cur is not None and cur.Version.Index != expected_version:
            raise Conflict("update out of sequence")
        action = prev[0] if prev is not None else Action.UPDATE
        self._writes[key] = (action, obj, cur)
        return obj

    def delete(self, kind: Kind, oid: str) -> None:
        key = (kind, oid)
        prev = self._writes.get(key)
        if prev is not None and prev[0] is Action.CREATE:
            del self._writes[key]
            return
        cur = self._store.get(kind, oid)
        if cur is not None:
            self._writes[key] = (Action.DELETE, None, cur)

    def __len__(self) -> int:
        return len(self._writes)


class MemoryStore:
    """Objects by kind and ID, secondary indexes for tasks, and the commit/watch machinery."""

    def __init__(self, backend: Backend, snapshot: Snapshot | None = None) -> None:
        self.backend = backend
        self._objects: dict[Kind, dict[str, Any]] = {k: {} for k in KINDS}
        self._tasks_by_service: dict[str, dict[str, Any]] = {}
        self._tasks_by_node: dict[str, dict[str, Any]] = {}
        self._service_by_name: dict[str, str] = {}
        # Per service: [running, completed, desired running] task counts, kept up to date on every
        # write so `service ls` (which asks for them on every call) never walks the tasks.
        self._task_counts: dict[str, list[int]] = {}
        # Per service: task count by current state, for /metrics (shoal/metrics.py) at the same cost.
        self._state_counts: dict[str, dict[str, int]] = {}
        # Told how long each durable batch took (backend name, seconds, objects): the daemon's
        # metrics; called on the writer's thread. Kept here because the writer is replaced on
        # every change of leadership.
        self.observe_persist: Callable[[str, float, int], None] | None = None
        self._watchers: set[Watcher] = set()
        self._history: deque[Event] = deque(maxlen=_REPLAY)
        snapshot = snapshot if snapshot is not None else backend.load()
        self.revision = snapshot.revision
        # What could not be read back or kept: shown in `docker info`, never a reason not to start.
        self.problems: list[Problem] = list(snapshot.bad)
        for p in snapshot.bad:
            log.error("store: %s; skipped (the row is left as it is)", p)
        self.writer = WriteBehind(backend, snapshot.revision, on_problem=self.problems.append,
                                  on_persisted=self._persisted)
        # Set on a manager that is not the leader of a replicated store (see store/replica.py): it
        # applies the leader's batches and refuses commits of its own, with this message.
        self.refuse_writes = ""
        _share_task_specs(snapshot.objects.get("task", []))
        for kind, objs in snapshot.objects.items():
            for obj in objs:
                self._index(kind, obj, None)

    # ------------------------------------------------------------------ reads

    def get(self, kind: Kind, oid: str) -> Any | None:
        return self._objects[kind].get(oid)

    def list(self, kind: Kind) -> list[Any]:
        return list(self._objects[kind].values())

    def count(self, kind: Kind) -> int:
        return len(self._objects[kind])

    def tasks_of_service(self, service_id: str) -> list[Any]:
        return list(self._tasks_by_service.get(service_id, {}).values())

    def tasks_on_node(self, node_id: str) -> list[Any]:
        return list(self._tasks_by_node.get(node_id, {}).values())

    def task_counts(self, service_id: str) -> tuple[int, int, int]:
        """(running, completed, desired running) tasks of a service, from counters."""
        c = self._task_counts.get(service_id)
        return (c[0], c[1], c[2]) if c else (0, 0, 0)

    def task_state_counts(self) -> dict[str, dict[str, int]]:
        """Service ID → current task state → how many tasks (never zero), from counters kept on
        every write; the caller must not change what it gets."""
        return self._state_counts

    def _persisted(self, backend: str, seconds: float, objects: int) -> None:
        observe = self.observe_persist
        if observe is not None:
            observe(backend, seconds, objects)

    def service_by_name(self, name: str) -> Any | None:
        sid = self._service_by_name.get(name)
        return self._objects["service"].get(sid) if sid else None

    def cluster(self) -> Any | None:
        """The one cluster object, or None when this daemon is not in a swarm."""
        objs = self._objects["cluster"]
        return next(iter(objs.values())) if objs else None

    # ------------------------------------------------------------------ writes

    @contextlib.contextmanager
    def tx(self) -> Iterator[Tx]:
        """Open a batch; it commits when the block ends, or is dropped whole if the block raises."""
        tx = Tx(self)
        yield tx
        self.commit(tx)

    def commit(self, tx: Tx) -> list[Event]:
        if not tx._writes:
            return []
        if self.refuse_writes:
            raise Unavailable(self.refuse_writes)
        if self.writer.fenced is not None:  # the term ended; the manager is stepping down
            raise self.writer.fenced
        rev = self.revision + 1
        ts = now_ts()
        puts: list[tuple[Kind, Any]] = []
        deletes: list[tuple[Kind, str]] = []
        events: list[Event] = []
        for (kind, oid), (action, obj, old) in tx._writes.items():
            if action is Action.DELETE:
                deletes.append((kind, oid))
                events.append(Event(kind, action, old, old, rev))
                continue
            obj.Version = Version(rev)
            if action is Action.CREATE and not obj.CreatedAt:
                obj.CreatedAt = ts
            obj.UpdatedAt = ts
            puts.append((kind, obj))
            events.append(Event(kind, action, obj, old, rev))
        self._publish(rev, events)
        # Then durable, in order, off the loop (see writer.py): what leaves the manager waits for it.
        self.writer.add(rev, puts, deletes)
        return events

    def _publish(self, rev: int, events: list[Event]) -> None:
        self.revision = rev
        for e in events:
            self._index(e.kind, None if e.action is Action.DELETE else e.obj, e.old)
        self._history.extend(events)
        for w in list(self._watchers):
            w._offer(events)

    # ------------------------------------------------------------------ replicated stores (HA)

    def apply_remote(self, revision: int, puts: list[tuple[Kind, Any]], deletes: list[tuple[Kind, str]]) -> list[Event]:
        """Apply a batch the leader made durable (a follower's watch) as one commit at ``revision``;
        the objects keep the leader's versions and timestamps."""
        _share_task_specs([obj for kind, obj in puts if kind == "task"])
        events: list[Event] = []
        for kind, obj in puts:
            old = self._objects[kind].get(obj.ID)
            events.append(Event(kind, Action.CREATE if old is None else Action.UPDATE, obj, old, revision))
        for kind, oid in deletes:
            old = self._objects[kind].get(oid)
            if old is not None:
                events.append(Event(kind, Action.DELETE, old, old, revision))
        if revision <= self.revision and events:
            # A wipe, or a deposed leader's undurable revisions replaced: these numbers now name
            # other batches, so a watcher cannot resume from them.
            self._history.clear()
        self._publish(revision, events)
        self.writer.mark_durable(revision)
        return events

    def reset(self, snapshot: Snapshot) -> list[Event]:
        """Make the view equal ``snapshot``, published as one batch of the differences: a follower
        (re)starting its watch, or a deposed leader dropping what it never made durable."""
        puts: list[tuple[Kind, Any]] = []
        deletes: list[tuple[Kind, str]] = []
        with gc_paused():
            for kind in KINDS:
                cur = self._objects[kind]
                nxt = {o.ID: o for o in snapshot.objects.get(kind, ())}
                deletes.extend((kind, oid) for oid in cur.keys() - nxt.keys())
                puts.extend((kind, o) for oid, o in nxt.items() if (old := cur.get(oid)) is None or old != o)
            self.problems[:] = snapshot.bad
            return self.apply_remote(snapshot.revision, puts, deletes)

    def lead(self, backend: Backend, on_fenced: Callable[[FencedOut], None]) -> None:
        """This manager became the leader: commits are accepted again and persist through
        ``backend`` (the leader's fenced writer), from the current revision on."""
        self.writer = WriteBehind(backend, self.revision, on_problem=self.problems.append, on_fenced=on_fenced,
                                  on_persisted=self._persisted)
        self.refuse_writes = ""

    async def follow(self, why: str, backend: Backend) -> None:
        """The leadership ended (or never was): refuse commits with ``why`` and drop the leader's
        writer without waiting for what it still holds; ``backend`` keeps nothing (NullBackend)."""
        self.refuse_writes = why
        old, self.writer = self.writer, WriteBehind(backend, self.revision)
        await old.abandon()

    async def wait_durable(
        self, revision: int | None = None, within: float | None = None, fail_fast: bool = False
    ) -> None:
        """Return once ``revision`` (default: every commit so far) is in the backend; see
        :meth:`WriteBehind.wait` for ``within`` and ``fail_fast``."""
        await self.writer.wait(revision, within, fail_fast)

    async def wipe(self) -> None:
        """Forget every object (``swarm leave``); watchers see deletes."""
        with self.tx() as tx:
            for kind in KINDS:
                for oid in list(self._objects[kind]):
                    tx.delete(kind, oid)
        await self.writer.wait(within=10)  # a failing backend: the leave fails with its 503
        await self.writer.call(self.backend.wipe)
        self.problems.clear()

    async def close(self) -> None:
        """Persist what is queued (bounded wait), then close the backend (daemon shutdown)."""
        await self.writer.close()

    # ------------------------------------------------------------------ watches

    def watch(self, *kinds: Kind, since: int | None = None) -> Watcher:
        """Subscribe to commits of the given kinds (all when none). ``since`` replays later events."""
        w = Watcher(self, frozenset(kinds) if kinds else None)
        if since is not None:
            backlog = [e for e in self._history if e.revision > since]
            if backlog:
                w._offer(backlog)
        self._watchers.add(w)
        return w

    # ------------------------------------------------------------------ indexes

    def _index(self, kind: Kind, new: Any | None, old: Any | None) -> None:
        table = self._objects[kind]
        if old is not None:
            table.pop(old.ID, None)
            if kind == "task":
                self._tasks_by_service.get(old.ServiceID, {}).pop(old.ID, None)
                if old.NodeID:
                    self._tasks_by_node.get(old.NodeID, {}).pop(old.ID, None)
                self._count(old, -1)
            elif kind == "service" and self._service_by_name.get(old.Spec.Name) == old.ID:
                del self._service_by_name[old.Spec.Name]
        if new is not None:
            table[new.ID] = new
            if kind == "task":
                self._tasks_by_service.setdefault(new.ServiceID, {})[new.ID] = new
                if new.NodeID:
                    self._tasks_by_node.setdefault(new.NodeID, {})[new.ID] = new
                self._count(new, 1)
            elif kind == "service":
                self._service_by_name[new.Spec.Name] = new.ID

    def _count(self, task: Any, sign: int) -> None:
        state, desired = task.Status.State, task.DesiredState
        by_state = self._state_counts.setdefault(task.ServiceID, {})
        n = by_state.get(state, 0) + sign
        if n:
            by_state[state] = n
        else:  # a removed service's tasks leave nothing behind
            by_state.pop(state, None)
            if not by_state:
                del self._state_counts[task.ServiceID]
        running = state == "running" and desired in ("running", "complete")
        completed = state == "complete"
        wanted = desired == "running"
        if running or completed or wanted:
            c = self._task_counts.setdefault(task.ServiceID, [0, 0, 0])
            c[0] += sign * running
            c[1] += sign * completed
            c[2] += sign * wanted
