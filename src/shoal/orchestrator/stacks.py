"""The stack deployer: creates a stack's services that wait for their ``depends_on`` dependencies.

Swarm ignores ``depends_on``; Compose users rely on it for start order (a worker that crashes until
its database answers). A deploy creates at once every service whose dependencies are met and lists
the others in the stack's ``Status.Pending``; this loop creates each of those as soon as its
dependencies meet their condition (started, healthy, completed successfully), or after
:data:`DEPENDENCY_TIMEOUT_S` regardless — it orders starts, it does not hold an application
hostage to one broken service (the restart policy takes it from there), and the stack's status says
so. It also forgets a stack object whose services were all removed behind its back
(``docker stack rm`` knows only labels).
"""

from __future__ import annotations

import logging
import time

import msgspec

from shoal.controlapi.services import create_service
from shoal.controlapi.stacks import NAMESPACE, dependency_met, owned
from shoal.errors import ShoalError
from shoal.models import Stack, StackStatus, now_ts, parse_ts
from shoal.orchestrator.base import ReconcileLoop
from shoal.store import Action, Event, MemoryStore

log = logging.getLogger(__name__)

DEPENDENCY_TIMEOUT_S = 120.0


class StackDeployer(ReconcileLoop):
    kinds = ("stack", "service", "task")

    def __init__(self, store: MemoryStore, timeout_s: float = DEPENDENCY_TIMEOUT_S) -> None:
        super().__init__(store)
        self.timeout_s = timeout_s

    def reconcile_all(self) -> None:
        for st in self.store.list("stack"):
            if st.Status is not None and st.Status.Pending:
                self._advance(st)

    def handle(self, events: list[Event]) -> None:
        stacks = [s for s in self.store.list("stack") if s.Status is not None and s.Status.Pending]
        for st in stacks:
            self._advance(st)
        for e in events:
            if e.kind == "service" and e.action is Action.DELETE:
                ns = (e.obj.Spec.Labels or {}).get(NAMESPACE) if e.obj is not None else None
                if ns:
                    self._forget_if_empty(ns)

    def _advance(self, st: Stack) -> None:
        assert st.Status is not None and st.Status.Pending
        res = st.Spec.Resources
        services = (res.Services if res else None) or {}
        wait_for = (res.WaitFor if res else None) or {}
        stack = st.Spec.Name
        pending = list(st.Status.Pending)
        waited = self._now() - parse_ts(st.Status.WaitingSince) if st.Status.WaitingSince else 0.0
        timed_out = waited >= self.timeout_s
        created: list[str] = []
        notes: list[str] = []
        for key in pending:
            blocking = []
            for dep, cond in (wait_for.get(key) or {}).items():
                if dep in pending and dep not in created:
                    blocking.append(dep)
                    continue
                svc = self.store.service_by_name(f"{stack}_{dep}")
                if svc is None or not dependency_met(self.store, svc, cond):
                    blocking.append(dep)
            if blocking and not timed_out:
                notes.append(f"{key} waits for {', '.join(blocking)}")
                continue
            if blocking:
                notes.append(f"{key} created after {self.timeout_s:.0f} s without {', '.join(blocking)}")
            spec = services.get(key)
            if spec is not None and self.store.service_by_name(spec.Name) is None:
                try:
                    create_service(self.store, spec)
                except ShoalError as e:
                    notes.append(f"{key} could not be created: {e}")
                    log.warning("stack %s: service %s: %s", stack, key, e)
            created.append(key)
        if not created:
            if not timed_out:
                self.call_later(self.timeout_s - waited + 0.1, self.wake)
            return
        left = [k for k in pending if k not in created]
        status = StackStatus(
            State="deploying" if left else "deployed",
            Message="; ".join(notes),
            Pending=left or None,
            WaitingSince=now_ts() if left else "",
        )
        cur = self.store.get("stack", st.ID)
        if cur is None:
            return
        with self.store.tx() as tx:
            tx.update("stack", msgspec.structs.replace(cur, Status=status))

    def _forget_if_empty(self, stack: str) -> None:
        for st in self.store.list("stack"):
            if st.Spec.Name != stack or (st.Status is not None and st.Status.Pending):
                continue
            if not owned(self.store, "service", stack):
                with self.store.tx() as tx:
                    tx.delete("stack", st.ID)

    @staticmethod
    def _now() -> float:
        return time.time()
