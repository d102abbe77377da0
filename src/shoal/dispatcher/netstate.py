"""What each node must know about the overlay networks its tasks are on, kept incrementally.

The dispatcher sends a node one :class:`NetworkState` per network its non-terminal tasks are on:
the network, the node's own address there, its VXLAN peers (other nodes with tasks on it) and the
DNS records (per service: name, aliases, running tasks' addresses, VIP). Recomputing that from all
tasks on every change would cost O(tasks) per status report; instead :class:`NetworkIndex` keeps
network → member tasks and network → node counts, updated from store events, and says which
(network, node) pairs a batch of events made stale. Tasks without attachments never enter it, so
nodes without networked tasks pay nothing. Records are computed once per network per change and
shared by every node on it.
"""

from __future__ import annotations

import msgspec

from shoal.dispatcher.protocol import NetworkState, ServiceRecord
from shoal.models import Network, Task, TaskState
from shoal.orchestrator.bluegreen import is_standby
from shoal.store import Action, Event, MemoryStore

_ASSIGNED = TaskState.ASSIGNED.order
_RUNNING = TaskState.RUNNING.order

Dirty = dict[str, set[str]]  # network ID -> nodes whose state of it is stale


def _member_nets(task: Task | None) -> dict[str, str]:
    """The networks a task keeps its node on (network ID → its address there), if it is placed and
    not finished."""
    if task is None or not task.NetworksAttachments or not task.NodeID:
        return {}
    if not _ASSIGNED <= task.Status.State.order <= _RUNNING:
        return {}
    # An attachment without addresses is the engine's own host/bridge network: nothing to plumb.
    return {a.Network.ID: a.Addresses[0] for a in task.NetworksAttachments if a.Addresses}


def task_name(task: Task, service_name: str) -> str:
    """The container name Swarm gives a task: ``<service>.<slot or node ID>.<task ID>``."""
    return f"{service_name}.{task.Slot or task.NodeID}.{task.ID}"


def _bare(cidr: str) -> str:
    return cidr.split("/", 1)[0]


class NetworkIndex:
    """Network membership and records from the store; see the module docstring."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.members: dict[str, dict[str, Task]] = {}  # network -> task ID -> task
        self.node_count: dict[str, dict[str, int]] = {}  # network -> node -> member tasks
        self.node_nets: dict[str, dict[str, int]] = {}  # node -> network -> member tasks
        self.networks: dict[str, Network] = {}  # last known (kept while tasks still use a deleted one)
        self._tasks: dict[str, Task] = {}  # the version of each member task counted
        self._records: dict[str, list[ServiceRecord]] = {}
        self.rebuild()

    def rebuild(self) -> None:
        self.members.clear()
        self.node_count.clear()
        self.node_nets.clear()
        self._tasks.clear()
        self._records.clear()
        self.networks = {n.ID: n for n in self.store.list("network")}
        for t in self.store.list("task"):
            if t.NetworksAttachments:
                self.task_changed(t.ID, t, {})

    # ------------------------------------------------------------------ events

    def apply(self, e: Event, dirty: Dirty) -> None:
        """Fold one store event in; add the (network, nodes) it made stale to ``dirty``."""
        kind = e.kind
        new = None if e.action is Action.DELETE else e.obj
        if kind == "task":
            obj = e.obj
            if obj.NetworksAttachments or (e.old is not None and e.old.NetworksAttachments) or obj.ID in self._tasks:
                self.task_changed(obj.ID, new, dirty)
        elif kind == "network":
            nid = e.obj.ID
            if new is not None:
                self.networks[nid] = new
            elif nid not in self.members:
                self.networks.pop(nid, None)
            self._touch(nid, dirty)
        elif kind == "node":
            old = e.old
            if new is None or old is None or new.Status.Addr != old.Status.Addr:
                for nid in self.node_nets.get(e.obj.ID, {}):
                    self._touch(nid, dirty)
        elif kind == "service":
            old, svc = e.old, new
            if svc is not None and old is not None and svc.Spec.Name == old.Spec.Name and svc.Endpoint == old.Endpoint:
                return
            for s in (old, svc):
                if s is None:
                    continue
                for att in s.Spec.TaskTemplate.Networks or ():
                    if att.Target in self.members:
                        self._touch(att.Target, dirty)

    def task_changed(self, task_id: str, new: Task | None, dirty: Dirty) -> None:
        prev = self._tasks.get(task_id)
        before, after = _member_nets(prev), _member_nets(new)
        if not before and not after:
            return
        # A blue-green release's standby task is not in the records until the switch.
        was_running = prev is not None and prev.Status.State is TaskState.RUNNING and not is_standby(prev)
        is_running = new is not None and new.Status.State is TaskState.RUNNING and not is_standby(new)
        moved = prev is not None and new is not None and prev.NodeID != new.NodeID
        for nid in before.keys() | after.keys():
            in_before, in_after = nid in before, nid in after
            if in_before and (not in_after or moved):
                self._count(nid, prev.NodeID, -1)  # type: ignore[union-attr]
                self.members[nid].pop(task_id, None)
                # The node it left may have left the network (removed_networks); the others may
                # have lost a peer or a record.
                dirty.setdefault(nid, set()).add(prev.NodeID)  # type: ignore[union-attr]
                self._touch(nid, dirty)
            if in_after:
                if not in_before or moved:
                    self._count(nid, new.NodeID, 1)  # type: ignore[union-attr]
                    self._touch(nid, dirty)
                elif was_running != is_running or before[nid] != after[nid]:
                    self._touch(nid, dirty)
                self.members.setdefault(nid, {})[task_id] = new  # type: ignore[assignment]
            if not self.members.get(nid):
                self.members.pop(nid, None)
                if self.store.get("network", nid) is None:
                    self.networks.pop(nid, None)
        if after:
            self._tasks[task_id] = new  # type: ignore[assignment]
        else:
            self._tasks.pop(task_id, None)

    def _count(self, nid: str, node: str, delta: int) -> None:
        per_net = self.node_count.setdefault(nid, {})
        per_node = self.node_nets.setdefault(node, {})
        n = per_net.get(node, 0) + delta
        if n > 0:
            per_net[node] = n
            per_node[nid] = n
        else:
            per_net.pop(node, None)
            per_node.pop(nid, None)
            if not per_net:
                del self.node_count[nid]
            if not per_node:
                del self.node_nets[node]

    def _touch(self, nid: str, dirty: Dirty) -> None:
        """Every node on ``nid`` must hear about it again; its records are recomputed."""
        self._records.pop(nid, None)
        nodes = self.node_count.get(nid)
        if nodes:
            dirty.setdefault(nid, set()).update(nodes)

    # ------------------------------------------------------------------ reads

    def nets_of(self, node_id: str) -> list[str]:
        return list(self.node_nets.get(node_id, {}))

    def on(self, nid: str, node_id: str) -> bool:
        return node_id in self.node_count.get(nid, {}) and nid in self.networks

    def state(self, nid: str, node_id: str) -> NetworkState | None:
        """The whole state of ``nid`` as ``node_id`` needs it, or None if the node is not on it."""
        if not self.on(nid, node_id):
            return None
        net = self.networks[nid]
        peers = []
        for other in self.node_count.get(nid, {}):
            if other == node_id:
                continue
            node = self.store.get("node", other)
            if node is not None and node.Status.Addr:
                peers.append(node.Status.Addr)
        return NetworkState(
            network=msgspec.structs.replace(net, NodeAddresses=None) if net.NodeAddresses else net,
            node_address=(net.NodeAddresses or {}).get(node_id, ""),
            peers=sorted(set(peers)),
            records=self.records(nid),
        )

    def records(self, nid: str) -> list[ServiceRecord]:
        cached = self._records.get(nid)
        if cached is not None:
            return cached
        by_service: dict[str, ServiceRecord] = {}
        for t in self.members.get(nid, {}).values():
            rec = by_service.get(t.ServiceID)
            if rec is None:
                svc = self.store.get("service", t.ServiceID)
                if svc is not None:
                    name = svc.Spec.Name
                    vips = (svc.Endpoint.VirtualIPs or []) if svc.Endpoint is not None else []
                    vip = next((_bare(v.Addr) for v in vips if v.NetworkID == nid and v.Addr), "")
                else:
                    name, vip = (t.ServiceAnnotations or {}).get("Name", t.ServiceID), ""
                rec = by_service[t.ServiceID] = ServiceRecord(service_id=t.ServiceID, name=name, vip=vip)
            att = next(a for a in t.NetworksAttachments or () if a.Network.ID == nid)
            for alias in att.Aliases or ():
                if alias not in rec.aliases:
                    rec.aliases.append(alias)
            if t.Status.State is TaskState.RUNNING and att.Addresses and not is_standby(t):
                ip = _bare(att.Addresses[0])
                rec.addrs.append(ip)
                rec.tasks[task_name(t, rec.name)] = ip
        out = sorted(by_service.values(), key=lambda r: r.name)
        for r in out:
            r.addrs.sort()
        self._records[nid] = out
        return out
