"""The network allocator: task, node and VIP addresses on overlay networks, kept from the store.

Swarmkit allocates a task's addresses in a separate pass before the scheduler sees it (NEW →
PENDING). Shoal allocates them when the scheduler assigns the task (:meth:`attach_tasks`, called
from the scheduler's commit, in the same transaction): the node is known then, so the node's own
address on the network is allocated in the same step, and a task that never gets placed never
holds an address. Tasks whose spec has no networks are passed over without a look-up, so the
100,000-task path pays nothing.

Releases are driven by the store: this component watches tasks, services, networks and nodes, and
for every task event compares what the task holds *now* in the store with what it recorded, so
processing an old event after a newer write can neither leak nor double-free. Addresses of deleted
and terminal tasks go back to the pool; ORPHANED tasks keep theirs until deleted (their container
may still run on a node that is only unreachable). VIPs follow the services: one per network for
endpoint mode ``vip``, kept across updates, written into ``Service.Endpoint.VirtualIPs``.

All state is rebuilt from the store on start (:meth:`rebuild`), so a restarted manager resumes.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from shoal.allocator.ingress import find_ingress, service_ingress_ports, task_on_ingress
from shoal.allocator.ipam import AddressPool, PoolExhausted, ip_of
from shoal.models import (
    Endpoint,
    EndpointVirtualIP,
    Network,
    NetworkAttachment,
    NetworkAttachmentConfig,
    Service,
    Task,
    TaskState,
)
from shoal.netmode import is_predefined
from shoal.orchestrator.base import ReconcileLoop
from shoal.store import Action, Event, MemoryStore

log = logging.getLogger(__name__)

_RUNNING = TaskState.RUNNING.order


def holds_addresses(task: Task | None) -> bool:
    """Whether a stored task keeps its network addresses: it has some and is not finished
    (ORPHANED counts as not finished: nobody knows whether its container still runs)."""
    if task is None or not task.NetworksAttachments:
        return False
    state = task.Status.State
    return state.order <= _RUNNING or state is TaskState.ORPHANED


def _task_ips(task: Task) -> dict[str, int]:
    out: dict[str, int] = {}
    for att in task.NetworksAttachments or ():
        if att.Addresses:
            out[att.Network.ID] = ip_of(att.Addresses[0])
    return out


def wants_vips(service: Service) -> list[str]:
    """The network IDs a service gets a VIP on (endpoint mode vip, the default)."""
    spec = service.Spec
    ep = spec.EndpointSpec
    if ep is not None and ep.Mode == "dnsrr":
        return []
    nets = spec.TaskTemplate.Networks or spec.Networks or ()
    return list(dict.fromkeys(n.Target for n in nets if n.Target))  # predefined ones have no pool: skipped


class NetworkAllocator(ReconcileLoop):
    """IPAM state for every overlay network; see the module docstring."""

    kinds = ("task", "service", "network", "node")

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.pools: dict[str, AddressPool] = {}
        self.task_ips: dict[str, dict[str, int]] = {}  # task ID -> network ID -> address
        self.vips: dict[str, dict[str, int]] = {}  # service ID -> network ID -> address
        # Networks whose NodeAddresses changed in the batch being attached (written by the caller).
        self._net_updates: dict[str, Network] = {}
        self._attachment_net: dict[str, Network] = {}  # network ID -> its copy for attachments
        # Services publishing a port in ingress mode: while there is one, every node gets an
        # address on the ingress network (module docstring of allocator/ingress.py).
        self.publishers: set[str] = set()
        self.rebuild()

    # ------------------------------------------------------------------ state from the store

    def rebuild(self) -> None:
        """Forget everything and read it back from the store (start, or after a failed commit)."""
        self.pools.clear()
        self.task_ips.clear()
        self.vips.clear()
        self._net_updates.clear()
        self._attachment_net.clear()
        self.publishers.clear()
        for net in self.store.list("network"):
            self._load(net)
        for t in self.store.list("task"):
            if holds_addresses(t):
                self._record_task(t.ID, _task_ips(t))
        for svc in self.store.list("service"):
            if service_ingress_ports(svc):
                self.publishers.add(svc.ID)
            ep = svc.Endpoint
            if ep is not None and ep.VirtualIPs:
                mine = self.vips.setdefault(svc.ID, {})
                for vip in ep.VirtualIPs:
                    pool = self.pools.get(vip.NetworkID)
                    if pool is not None and vip.Addr:
                        ip = ip_of(vip.Addr)
                        pool.reserve(ip)
                        mine[vip.NetworkID] = ip

    def _load(self, net: Network) -> AddressPool | None:
        """The pool of a stored network, with its node addresses reserved."""
        cfgs = net.IPAMOptions.Configs if net.IPAMOptions is not None else None
        if not cfgs or not cfgs[0].Subnet:
            return None  # not allocated (should not happen: the control API allocates at create)
        cfg = cfgs[0]
        pool = AddressPool(cfg.Subnet, cfg.Gateway, cfg.Range)
        for addr in (net.NodeAddresses or {}).values():
            pool.reserve(ip_of(addr))
        self.pools[net.ID] = pool
        return pool

    def _pool(self, net_id: str) -> AddressPool | None:
        pool = self.pools.get(net_id)
        if pool is None:
            # Created after our last event batch: read it now rather than fail the assignment.
            net = self.store.get("network", net_id)
            if net is not None:
                pool = self._load(net)
        return pool

    def _record_task(self, task_id: str, ips: dict[str, int]) -> None:
        for nid, ip in ips.items():
            pool = self._pool(nid)
            if pool is not None:
                pool.reserve(ip)
        if ips:
            self.task_ips[task_id] = ips

    def _release_task(self, task_id: str) -> None:
        for nid, ip in self.task_ips.pop(task_id, {}).items():
            pool = self.pools.get(nid)
            if pool is not None:
                pool.release(ip)

    # ------------------------------------------------------------------ the scheduler's call

    def attach_tasks(self, tasks: list[Task]) -> tuple[list[Task], list[tuple[str, str]], list[Network]]:
        """Give each newly assigned task (``NodeID`` set) its addresses on its networks.

        Returns the tasks (with ``NetworksAttachments``; those without networks unchanged), the
        tasks that could not be given an address as (task ID, reason), and the networks whose
        ``NodeAddresses`` changed; the caller writes both in its transaction. If that transaction
        fails, call :meth:`rebuild`.
        """
        out: list[Task] = []
        failed: list[tuple[str, str]] = []
        for t in tasks:
            if t.NetworksAttachments or not (t.Spec.Networks or task_on_ingress(t)):
                out.append(t)
                continue
            try:
                out.append(self._attach(t))
            except PoolExhausted as e:
                failed.append((t.ID, f"could not allocate a network address: {e}"))
        updates = list(self._net_updates.values())
        self._net_updates.clear()
        return out, failed, updates

    def _attach(self, t: Task) -> Task:
        atts: list[NetworkAttachment] = []
        ips: dict[str, int] = {}
        wanted = list(t.Spec.Networks or ())
        if task_on_ingress(t):
            ingress = find_ingress(self.store.list("network"))
            if ingress is not None:  # removed by the user: the port is then not published
                wanted.append(NetworkAttachmentConfig(Target=ingress.ID))
        try:
            for cfg in wanted:
                net = self._current_network(cfg.Target)
                if is_predefined(net) and net is not None:
                    # The engine's own host/bridge network: nothing to allocate; the attachment
                    # (no addresses, as swarmkit's for node-local networks) tells the executor.
                    atts.append(NetworkAttachment(Network=self._attachment_network(net)))
                    continue
                pool = self._pool(cfg.Target)
                if pool is None or net is None or cfg.Target in ips:
                    continue  # removed meanwhile (its services are gone too), or listed twice
                self._ensure_node_address(net, pool, t.NodeID)
                ip = pool.allocate()
                ips[cfg.Target] = ip
                atts.append(
                    NetworkAttachment(
                        Network=self._attachment_network(net),
                        Addresses=[pool.cidr(ip)],
                        Aliases=list(cfg.Aliases) if cfg.Aliases else None,
                    )
                )
        except PoolExhausted:
            for nid, ip in ips.items():
                self.pools[nid].release(ip)
            raise
        if ips:
            self.task_ips[t.ID] = ips
        return msgspec.structs.replace(t, NetworksAttachments=atts or None)

    def _current_network(self, net_id: str) -> Network | None:
        return self._net_updates.get(net_id) or self.store.get("network", net_id)

    def _ensure_node_address(self, net: Network, pool: AddressPool, node_id: str) -> None:
        if not node_id or (net.NodeAddresses and node_id in net.NodeAddresses):
            return
        addrs = dict(net.NodeAddresses or {})
        addrs[node_id] = pool.cidr(pool.allocate_high())
        self._net_updates[net.ID] = msgspec.structs.replace(net, NodeAddresses=addrs)

    def _attachment_network(self, net: Network) -> Network:
        """The network as a task's attachment shows it: without NodeAddresses (every node's
        address in every task would cost O(nodes) per task), one shared object per version."""
        cached = self._attachment_net.get(net.ID)
        if cached is None or cached.Version.Index != net.Version.Index:
            cached = msgspec.structs.replace(net, NodeAddresses=None)
            self._attachment_net[net.ID] = cached
        return cached

    # ------------------------------------------------------------------ the loop

    def reconcile_all(self) -> None:
        self.rebuild()
        self._sync_vips(self.store.list("service"), deleted=())
        if self.publishers:
            self._ingress_node_addresses()

    def stopped(self) -> None:
        self._net_updates.clear()

    def handle(self, events: list[Event]) -> None:
        services: dict[str, Service] = {}
        deleted_services: list[str] = []
        gone_nodes: list[str] = []
        ingress_touched = False  # a node or the ingress network appeared, or a first publisher
        for e in events:
            kind = e.kind
            if kind == "task":
                obj, old = e.obj, e.old
                # The fast path: tasks without networks are not looked at twice.
                if (obj is None or not obj.NetworksAttachments) and (old is None or not old.NetworksAttachments):
                    continue
                self._sync_task(e.obj.ID if e.obj is not None else e.old.ID)
            elif kind == "service":
                if e.action is Action.DELETE:
                    deleted_services.append(e.old.ID)
                    services.pop(e.old.ID, None)
                    self.publishers.discard(e.old.ID)
                else:
                    services[e.obj.ID] = e.obj
                    if service_ingress_ports(e.obj):
                        ingress_touched |= e.obj.ID not in self.publishers
                        self.publishers.add(e.obj.ID)
                    else:
                        self.publishers.discard(e.obj.ID)
            elif kind == "network":
                if e.action is Action.DELETE:
                    self.pools.pop(e.old.ID, None)
                    self._attachment_net.pop(e.old.ID, None)
                elif e.obj.ID not in self.pools:
                    self._load(e.obj)
                    ingress_touched |= e.obj.Spec.Ingress
            elif kind == "node":
                if e.action is Action.DELETE:
                    gone_nodes.append(e.old.ID)
                elif e.action is Action.CREATE:
                    ingress_touched = True
        self._sync_vips(list(services.values()), deleted_services)
        if gone_nodes:
            self._forget_nodes(gone_nodes)
        if ingress_touched and self.publishers:
            self._ingress_node_addresses()

    def _sync_task(self, task_id: str) -> None:
        """Make our record of ``task_id`` match what the store holds now."""
        cur = self.store.get("task", task_id)
        want = _task_ips(cur) if holds_addresses(cur) else {}
        have = self.task_ips.get(task_id, {})
        if want == have:
            return
        self._release_task(task_id)
        self._record_task(task_id, want)

    def _sync_vips(self, services: list[Service], deleted: Any) -> None:
        for sid in deleted:
            for nid, ip in self.vips.pop(sid, {}).items():
                pool = self.pools.get(nid)
                if pool is not None:
                    pool.release(ip)
        writes: list[Service] = []
        for svc in services:
            cur = self.store.get("service", svc.ID)
            if cur is None:
                continue
            new = self._service_vips(cur)
            if new is not None:
                writes.append(new)
        if writes:
            with self.store.tx() as tx:
                for svc in writes:
                    tx.update("service", svc)

    def _service_vips(self, svc: Service) -> Service | None:
        """The service with its VirtualIPs as they should be, or None if they already are."""
        wanted = wants_vips(svc)
        mine = self.vips.setdefault(svc.ID, {})
        for nid in list(mine):
            if nid not in wanted:
                pool = self.pools.get(nid)
                if pool is not None:
                    pool.release(mine[nid])
                del mine[nid]
        for nid in wanted:
            if nid in mine:
                continue
            pool = self._pool(nid)
            if pool is None:
                continue
            try:
                mine[nid] = pool.allocate()
            except PoolExhausted:
                log.warning("no address left on network %s for the VIP of service %s", nid, svc.ID)
        if not mine:
            del self.vips[svc.ID]
        vips = [EndpointVirtualIP(NetworkID=nid, Addr=self.pools[nid].cidr(ip)) for nid, ip in mine.items()]
        ep = svc.Endpoint
        have = list(ep.VirtualIPs or ()) if ep is not None else []
        if have == vips:
            return None
        if ep is None:
            ep = Endpoint(Spec=svc.Spec.EndpointSpec)
        return msgspec.structs.replace(svc, Endpoint=msgspec.structs.replace(ep, VirtualIPs=vips))

    def _ingress_node_addresses(self) -> None:
        """Every node gets its own address on the ingress network (its bridge end there): each
        node forwards published ports, whether or not it runs a task of the service."""
        ingress = find_ingress(self.store.list("network"))
        pool = self._pool(ingress.ID) if ingress is not None else None
        if ingress is None or pool is None:
            return
        have = ingress.NodeAddresses or {}
        missing = [n.ID for n in self.store.list("node") if n.ID not in have]
        if not missing:
            return
        addrs = dict(have)
        for node_id in missing:
            try:
                addrs[node_id] = pool.cidr(pool.allocate_high())
            except PoolExhausted:
                log.warning("ingress network %s is full: node %s gets no address on it", ingress.Spec.Name, node_id)
                break
        with self.store.tx() as tx:  # synchronous since the read above: nothing wrote in between
            tx.update("network", msgspec.structs.replace(ingress, NodeAddresses=addrs))

    def _forget_nodes(self, node_ids: list[str]) -> None:
        """A removed node's addresses go back to the pools and leave the network objects."""
        gone = set(node_ids)
        writes: list[Network] = []
        for net in self.store.list("network"):
            addrs = net.NodeAddresses or {}
            if not gone.intersection(addrs):
                continue
            pool = self.pools.get(net.ID)
            keep = {}
            for nid, addr in addrs.items():
                if nid in gone:
                    if pool is not None:
                        pool.release(ip_of(addr))
                else:
                    keep[nid] = addr
            writes.append(msgspec.structs.replace(net, NodeAddresses=keep or None))
        if writes:
            with self.store.tx() as tx:
                for net in writes:
                    tx.update("network", net)
