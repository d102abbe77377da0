"""The loop every reconciler shares: reconcile everything at start, then react to batches of events.

Events are coalesced: after the first batch arrives the watcher is drained, so a burst of commits
(an agent reporting 1,000 task states, a node going down with 500 tasks) costs one reconcile pass
and one transaction instead of one per event. Timers (restart delays, update delays) wake the loop
by queueing an empty batch on its own watcher, so the loop only ever waits on one queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from shoal.models import DEFAULT_RESTART_DELAY
from shoal.orchestrator.restart import RestartSupervisor
from shoal.orchestrator.task import ended_while_wanted, is_runnable, node_unusable, preempted
from shoal.orchestrator.update import Updater
from shoal.store import Action, Event, MemoryStore, Watcher

log = logging.getLogger(__name__)


class ReconcileLoop:
    """Base of the orchestrators and the reaper. Subclasses fill in the three hooks."""

    kinds: tuple[str, ...] = ()

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._watcher: Watcher | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    # ------------------------------------------------------------------ hooks

    def reconcile_all(self) -> None:
        """Bring everything in the store to the desired state (start, or after a lost watch)."""

    def handle(self, events: list[Event]) -> None:
        """React to one coalesced batch of events (may be empty: a timer woke the loop)."""

    def stopped(self) -> None:
        """Forget in-memory state when the loop ends (``swarm leave``, lost leadership)."""

    # ------------------------------------------------------------------ machinery

    def wake(self) -> None:
        """Make the loop run :meth:`handle` soon, with whatever events are queued by then."""
        if self._watcher is not None:
            self._watcher.queue.put_nowait([])

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        """A timer that is cancelled with the loop; ``callback`` runs on the event loop."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            callback()

        handle = loop.call_later(max(0.0, delay_s), fire)
        self._timers.add(handle)
        return handle

    async def run(self) -> None:
        watcher = self.store.watch(*self.kinds)
        self._watcher = watcher
        try:
            self._guard(self.reconcile_all)
            while True:
                first = await watcher.get()
                # Let producers that are ready run first, so their commits join this batch.
                await asyncio.sleep(0)
                self._guard(self.handle, [*first, *watcher.drain()])
        finally:
            watcher.close()
            self._watcher = None
            for t in self._timers:
                t.cancel()
            self._timers.clear()
            self.stopped()

    def _guard(self, fn: Callable[..., None], *args: object) -> None:
        # A bug in one pass must not stop orchestration for the whole cluster: log it and carry on;
        # the next event or a restarted manager reconciles again.
        try:
            fn(*args)
        except Exception:
            log.exception("%s: reconcile pass failed", type(self).__name__)


class RestartingLoop(ReconcileLoop):
    """A loop that keeps tasks of services running or retried: a restart supervisor, and a set of
    services poked by its timers, handled on the next pass (the service and job orchestrators)."""

    kinds = ("service", "task", "node")

    def __init__(
        self,
        store: MemoryStore,
        *,
        default_restart_delay_ns: int = DEFAULT_RESTART_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(store)
        self.restarts = RestartSupervisor(
            store,
            schedule=self.call_later,
            on_ready=self._poke,
            default_delay_ns=default_restart_delay_ns,
            clock=clock,
        )
        self._poked: set[str] = set()

    def _poke(self, service_id: str) -> None:
        self._poked.add(service_id)
        self.wake()

    def stopped(self) -> None:
        self.restarts.clear()
        self._poked.clear()


class ServiceOrchestrator(RestartingLoop):
    """What the replicated and global orchestrators share: the restart supervisor and poked set of
    :class:`RestartingLoop`, plus the rolling updater."""

    def __init__(
        self,
        store: MemoryStore,
        *,
        default_restart_delay_ns: int = DEFAULT_RESTART_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(store, default_restart_delay_ns=default_restart_delay_ns, clock=clock)
        self.updater = Updater(store, schedule=self.call_later, on_due=self._poke, clock=clock)

    def stopped(self) -> None:
        super().stopped()
        self.updater.clear()

    def _task_matters(self, e: Event) -> bool:
        """Whether a task event needs its service reconciled (both orchestrators ask the same;
        a global task never changes node, so the moved-node check only fires for replicas)."""
        action = e.action
        if action is Action.UPDATE:
            t, old = e.obj, e.old
            if ended_while_wanted(t, old):
                return True  # restart policy applies
            if preempted(t, old):
                return True  # refill the slot elsewhere (or leave it pending with a reason)
            if t.NodeID != old.NodeID and t.NodeID and is_runnable(t):
                if node_unusable(self.store.get("node", t.NodeID)):
                    return True  # assigned to a node that went away meanwhile
            return self.updater.tracks(t) and (
                t.Status.State is not old.Status.State or t.DesiredState is not old.DesiredState
            )
        if action is Action.DELETE:
            return is_runnable(e.old)
        return False
