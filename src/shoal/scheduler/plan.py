"""Dry-run placement: where would the tasks of a service spec go, without writing anything.

:func:`plan` builds the scheduler's node state from the store (or clones a running scheduler's),
makes the tasks the orchestrator would make, and runs the same filters, strategy, preferences
and preemption on that private copy. Nothing in the store or the live scheduler changes.
"""

from __future__ import annotations

from typing import NamedTuple

from shoal.models import Endpoint, Service, ServiceSpec, Version, now_ts
from shoal.orchestrator.task import new_task
from shoal.scheduler.nodeinfo import NodeInfo, occupies
from shoal.scheduler.scheduler import Scheduler
from shoal.store import MemoryStore

PLAN_SERVICE_ID = "dry-run"


class Placement(NamedTuple):
    slot: int  # 0 for global services
    node_id: str | None  # None: no node (replicated); for global, the node the task is for
    reason: str  # "" when placed as is; why not, or "preempts N task(s): ..." otherwise


def _state(store: MemoryStore, live: Scheduler | None) -> Scheduler:
    s = Scheduler(store)
    s._load_settings()
    if live is not None and live.nodes:
        s.nodes = {nid: info.clone() for nid, info in live.nodes.items()}
        s._where = dict(live._where)
        return s
    s.nodes = {n.ID: NodeInfo(n) for n in store.list("node")}
    for t in store.list("task"):
        info = s.nodes.get(t.NodeID) if occupies(t) else None
        if info is not None:
            info.add_task(t)
            s._where[t.ID] = info.id
    return s


def plan(store: MemoryStore, spec: ServiceSpec, *, live: Scheduler | None = None) -> list[Placement]:
    """Placement of every task of ``spec`` (replicated: one per slot; global: one per node).

    ``spec`` should be validated first (the control API's ``validate_service_spec``). ``live``:
    plan against a running scheduler's state (cloned) instead of rebuilding it from the store.
    """
    s = _state(store, live)
    ep = spec.EndpointSpec
    svc = Service(
        ID=PLAN_SERVICE_ID,
        Version=Version(),
        CreatedAt="",
        UpdatedAt="",
        Spec=spec,
        Endpoint=Endpoint(Spec=ep, Ports=ep.Ports) if ep is not None else None,
    )
    ts = now_ts()
    mode = spec.Mode
    glob = mode is not None and mode.Global is not None
    if glob:
        tasks = [new_task(svc, 0, nid, ts=ts) for nid in sorted(s.nodes)]
    else:
        replicas = mode.Replicated.Replicas if mode is not None and mode.Replicated is not None else 1
        tasks = [new_task(svc, slot, ts=ts) for slot in range(1, (replicas or 0) + 1)]
    assigned: list = []
    failed: list = []
    s._victims = []
    s.preempted_by = {}
    if glob:
        for t in tasks:
            s._place_preassigned(t, ts, assigned, failed)
    elif tasks:
        s._place_group(tasks, ts, assigned, failed)
    where = {t.ID: t.NodeID for t in assigned}
    why = {t.ID: err for t, err in failed}
    out = []
    for t in tasks:
        if t.ID in where:
            victims = s.preempted_by.get(t.ID)
            reason = f"preempts {len(victims)} task(s): {', '.join(victims)}" if victims else ""
            out.append(Placement(t.Slot, where[t.ID], reason))
        else:
            out.append(Placement(t.Slot, t.NodeID or None, why.get(t.ID, "no suitable node")))
    return out


def candidates(store: MemoryStore, spec: ServiceSpec) -> tuple[set[str], str]:
    """The nodes one task of ``spec`` may run on (every filter passes), and, when there is none, why
    (the scheduler's explanation). For what the Engine API places itself (a standalone container, a
    volume with constraints): the caller picks among them."""
    s = _state(store, None)
    svc = Service(ID=PLAN_SERVICE_ID, Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec)
    task = new_task(svc, 1, ts=now_ts())
    s.pipeline.set_task(task)
    fits = {nid for nid, info in s.nodes.items() if s.pipeline.process(info)}
    return fits, ("" if fits else s._explain(s.pipeline))
