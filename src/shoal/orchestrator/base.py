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

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0


class ReconcileLoop:
    """Base of the orchestrators and the reaper. Subclasses fill in the three hooks."""

    kinds: tuple[str, ...] = ()

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._watcher: Watcher | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._failed_passes = 0  # consecutive failed passes: the retry backs off
        self._retry: asyncio.TimerHandle | None = None
        # Told each pass's duration (seconds): the daemon's metrics set it (shoal/metrics.py).
        self.observe_pass: Callable[[float], None] | None = None

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
                events = [*first, *watcher.drain()]
                if not self._failed_passes:
                    self._guard(self.handle, events)
                elif self._retry is None:
                    # A pass failed: its events are lost to it, so the retry reconciles everything
                    # (events until then are covered by it too).
                    self._guard(self.reconcile_all)
        finally:
            watcher.close()
            self._watcher = None
            for t in self._timers:
                t.cancel()
            self._timers.clear()
            self._retry = None
            self._failed_passes = 0
            self.stopped()

    def _guard(self, fn: Callable[..., None], *args: object) -> None:
        """Run one pass. A failing pass (a bug, a write the store refused) must neither stop
        orchestration for the whole cluster nor be forgotten: it is logged, and a full reconcile is
        retried with back-off (0.1 s doubling to 5 s) until one succeeds."""
        t0 = time.perf_counter()
        try:
            fn(*args)
        except Exception:
            self._failed_passes += 1
            delay = min(RETRY_FIRST_S * 2 ** (self._failed_passes - 1), RETRY_MAX_S)
            if self._failed_passes <= 3 or self._failed_passes % 20 == 0:
                log.exception("%s: reconcile pass failed (%d in a row); retrying in %.1fs",
                              type(self).__name__, self._failed_passes, delay)

            def retry() -> None:
                self._retry = None
                self.wake()

            if self._retry is None:
                self._retry = self.call_later(delay, retry)
        else:
            if fn == self.reconcile_all:
                self._failed_passes = 0
        finally:
            if self.observe_pass is not None:
                self.observe_pass(time.perf_counter() - t0)


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
