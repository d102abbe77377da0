"""What each node must know about the overlay networks its tasks are on, kept incrementally.

The dispatcher sends a node one :class:`NetworkState` per network its non-terminal tasks are on
(and the ingress network to every node while a service publishes through it: the routing mesh):
the network, the node's own address there, its VXLAN peers (other nodes on it) and the records
(per service: name, aliases, VIP, published ports on ingress, and the addresses of the tasks that
take traffic — running, healthy, not being stopped, not a standby, on a node that is up).
Recomputing that from all tasks on every change would cost O(tasks) per status report; instead
:class:`NetworkIndex` keeps network → member tasks and network → node counts, updated from store
events, and says which (network, node) pairs a batch of events made stale. Tasks without attachments never enter it, so
nodes without networked tasks pay nothing. Records are computed once per network per change and
shared by every node on it.
"""

from __future__ import annotations

import msgspec

from shoal.allocator.ingress import service_ingress_ports
from shoal.dispatcher.protocol import NetworkState, PublishedPort, ServiceRecord
from shoal.extensions import is_standby
from shoal.models import Network, NodeState, Task, TaskState
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


def _serving(task: Task | None) -> bool:
    """Whether a task takes traffic: running (healthy, if it has a check: it stays STARTING until
    then), not being stopped (it leaves the balancers before its container stops), and not a
    blue-green standby (it joins them at the switch). Its node being up is checked in ``records``."""
    return (
        task is not None
        and task.Status.State is TaskState.RUNNING
        and task.DesiredState.order <= _RUNNING
        and not is_standby(task)
    )


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
        # The routing mesh: the ingress network, and the services publishing ingress ports. While
        # there is one, every node with an address on ingress is on it, tasks there or not.
        self.ingress: str = ""
        self.publishers: dict[str, tuple[PublishedPort, ...]] = {}
        self._peers: dict[str, list[tuple[str, str]]] = {}  # network -> (node, underlay address)
        self.rebuild()

    def rebuild(self) -> None:
        self.members.clear()
        self.node_count.clear()
        self.node_nets.clear()
        self._tasks.clear()
        self._records.clear()
        self._peers.clear()
        self.networks = {n.ID: n for n in self.store.list("network")}
        self.ingress = next((n.ID for n in self.networks.values() if n.Spec.Ingress), "")
        self.publishers = {s.ID: p for s in self.store.list("service") if (p := service_ingress_ports(s))}
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
                if new.Spec.Ingress:
                    self.ingress = nid
            elif nid not in self.members:
                self.networks.pop(nid, None)
            if new is None and nid == self.ingress:
                self._touch(nid, dirty)
                self.ingress = ""
            self._touch(nid, dirty)
        elif kind == "node":
            old = e.old
            addr_changed = new is None or old is None or new.Status.Addr != old.Status.Addr
            if addr_changed or new.Status.State != old.Status.State:  # peers, or whose tasks serve
                for nid in self.node_nets.get(e.obj.ID, {}):
                    self._touch(nid, dirty)
            if addr_changed and self.ingress and e.obj.ID in self._ingress_nodes():
                self._touch(self.ingress, dirty)
        elif kind == "service":
            old, svc = e.old, new
            ports = service_ingress_ports(svc)
            if ports != self.publishers.get(e.obj.ID, ()):
                was_active = self.active
                if ports:
                    self.publishers[e.obj.ID] = ports
                else:
                    self.publishers.pop(e.obj.ID, None)
                if self.ingress and (was_active or self.active):  # its ports are in the records
                    self._touch(self.ingress, dirty)
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
        was_running, is_running = _serving(prev), _serving(new)
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
        self._peers.pop(nid, None)
        nodes = self.node_count.get(nid)
        if nodes:
            dirty.setdefault(nid, set()).update(nodes)
        if nid == self.ingress:
            # Every node with an address there, on it or (no publisher left) leaving it.
            dirty.setdefault(nid, set()).update(self._ingress_nodes())

    # ------------------------------------------------------------------ reads

    @property
    def active(self) -> bool:
        """Whether the routing mesh runs: some service publishes a port in ingress mode."""
        return bool(self.publishers) and bool(self.ingress)

    def _ingress_nodes(self) -> dict[str, str]:
        net = self.networks.get(self.ingress) if self.ingress else None
        return (net.NodeAddresses or {}) if net is not None else {}

    def nets_of(self, node_id: str) -> list[str]:
        nets = list(self.node_nets.get(node_id, {}))
        if self.active and self.ingress not in nets and node_id in self._ingress_nodes():
            nets.append(self.ingress)
        return nets

    def on(self, nid: str, node_id: str) -> bool:
        if nid == self.ingress and self.active and node_id in self._ingress_nodes():
            return True
        return node_id in self.node_count.get(nid, {}) and nid in self.networks

    def _peer_list(self, nid: str) -> list[tuple[str, str]]:
        """(node, underlay address) of every node on ``nid``, computed once per change: the
        ingress network has every node on it, and each of them asks."""
        cached = self._peers.get(nid)
        if cached is not None:
            return cached
        nodes = set(self.node_count.get(nid, {}))
        if nid == self.ingress and self.active:
            nodes |= set(self._ingress_nodes())
        out = []
        for other in sorted(nodes):
            node = self.store.get("node", other)
            if node is not None and node.Status.Addr:
                out.append((other, node.Status.Addr))
        self._peers[nid] = out
        return out

    def state(self, nid: str, node_id: str) -> NetworkState | None:
        """The whole state of ``nid`` as ``node_id`` needs it, or None if the node is not on it."""
        if not self.on(nid, node_id):
            return None
        net = self.networks[nid]
        peers = [addr for other, addr in self._peer_list(nid) if other != node_id]
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
        node_up: dict[str, bool] = {}
        for t in self.members.get(nid, {}).values():
            rec = by_service.get(t.ServiceID)
            if rec is None:
                rec = by_service[t.ServiceID] = self._record(nid, t.ServiceID, t)
            att = next(a for a in t.NetworksAttachments or () if a.Network.ID == nid)
            for alias in att.Aliases or ():
                if alias not in rec.aliases:
                    rec.aliases.append(alias)
            if _serving(t) and att.Addresses:
                up = node_up.get(t.NodeID)
                if up is None:
                    node = self.store.get("node", t.NodeID)
                    up = node_up[t.NodeID] = node is not None and node.Status.State is NodeState.READY
                if up:  # a Down node's tasks leave the balancers at once, before they are replaced
                    ip = _bare(att.Addresses[0])
                    rec.addrs.append(ip)
                    rec.tasks[task_name(t, rec.name)] = ip
        if nid == self.ingress:
            # A published port with no task running anywhere still belongs to its service: the
            # mesh refuses it rather than letting it reach whatever listens on the node.
            for sid in self.publishers:
                if sid not in by_service:
                    by_service[sid] = self._record(nid, sid, None)
        out = sorted(by_service.values(), key=lambda r: r.name)
        for r in out:
            r.addrs.sort()
        self._records[nid] = out
        return out

    def _record(self, nid: str, service_id: str, task: Task | None) -> ServiceRecord:
        svc = self.store.get("service", service_id)
        if svc is None:
            name = (task.ServiceAnnotations or {}).get("Name", service_id) if task is not None else service_id
            return ServiceRecord(service_id=service_id, name=name)
        vips = (svc.Endpoint.VirtualIPs or []) if svc.Endpoint is not None else []
        vip = next((_bare(v.Addr) for v in vips if v.NetworkID == nid and v.Addr), "")
        ports = list(self.publishers.get(service_id, ())) if nid == self.ingress else []
        return ServiceRecord(service_id=service_id, name=svc.Spec.Name, vip=vip, ports=ports)
