"""The node's overlay networks kept as the manager wants them, and task containers put on them.

``apply`` takes what the dispatcher sends (``Assignments.networks``: each network's whole state
for this node; ``removed_networks``) and returns at once: it updates the DNS records in place and
wakes one reconcile loop that does the slow engine and netlink work, one network at a time, in the
background. A task's container create waits (:meth:`NetworkAgent.configure`) until each of its
networks is plumbed, so no container is ever created on a network that is not there yet.

After a restart the agent finds its engine networks by label: those the first full assignment set
still names are adopted as they are; the others are removed once no container uses them.

After each pass the node's kernel balancers (agent/network/mesh.py) are made to match the records of
the plumbed networks: the ingress network's published ports (the routing mesh) and each other
network's VIPs. The mesh diffs against what it applied, so a records-only change costs one small
nft batch; a VIP or port is only programmed once its network's bridge exists here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiodocker

from shoal.agent.network import mesh
from shoal.agent.network.dns import DnsResponder, ServiceDirectory
from shoal.agent.network.overlay import (
    EngineNetworks,
    OverlayError,
    bare_ip,
    bridge_name,
    delete_vxlan,
    engine_network_name,
    ensure_vxlan,
    is_ipv4,
    set_peers,
    vni_of,
)
from shoal.dispatcher.protocol import NetworkState
from shoal.models import Task

log = logging.getLogger(__name__)

RETRY_S = 2.0  # a failed step, or a network still in use, is tried again this much later
READY_TIMEOUT_S = 60.0  # a create waits this long for its network's state to arrive and be plumbed
LEAVE_GRACE_S = 3.0  # a network the node left stays this long: it may be back at once (see _plumb_all)
HELD_FAST_S = 60.0  # a removed network still held by containers is retried every RETRY_S this long, then per refresh
REFRESH_S = 30.0  # how often the mesh checks that what Docker may drop (its DOCKER-USER rule) is there


def _shape(st: NetworkState) -> tuple[Any, ...]:
    """What the plumbing depends on (records do not: they only feed the DNS directory)."""
    return (st.network.ID, st.network.DriverState, st.network.IPAMOptions, st.node_address, tuple(sorted(st.peers)))


class NetworkAgent:
    """One per node agent that runs real containers (never for the hollow executor)."""

    def __init__(
        self,
        engine: str,
        node_id: str,
        underlay_addr: str,
        *,
        dns_port: int = 53,
        upstreams: list[tuple[str, int]] | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        kernel: mesh.Mesh | None = None,
    ) -> None:
        self.engine_url = engine
        self.node_id = node_id
        # VXLAN source address: the node's advertised address when it is an IPv4 literal; otherwise
        # the kernel picks one by route.
        self.local = underlay_addr if is_ipv4(underlay_addr) else None
        self.dns_port = dns_port
        self.ready_timeout_s = ready_timeout_s
        self.directory = ServiceDirectory()
        self.responder = DnsResponder(self.directory, upstreams)
        self._docker: aiodocker.Docker | None = None
        self._desired: dict[str, NetworkState] = {}
        self._plumbed: dict[str, tuple[Any, ...]] = {}
        self._errors: dict[str, str] = {}
        self._removing: dict[str, float] = {}  # networks the node left -> when (time.monotonic())
        self._held_since: dict[str, float] = {}  # removed networks containers still hold: since when
        self._sweep = False  # after a full set: remove our engine networks it does not name
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._loop_task: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._refresh: asyncio.TimerHandle | None = None
        self._refresh_due = False
        self.mesh = kernel if kernel is not None else mesh.Mesh()
        self._mesh_error = ""  # why the kernel balancers could not be programmed last time
        self._mesh_unavailable = ""  # the kernel or nft cannot do it at all: tasks publishing fail

    @property
    def engine(self) -> EngineNetworks:
        if self._docker is None:  # made inside the running loop, on first use
            self._docker = aiodocker.Docker(url=self.engine_url)
        return EngineNetworks(self._docker)

    # ------------------------------------------------------------------ desired state

    def apply(self, networks: list[NetworkState], removed: list[str], *, full: bool = False) -> None:
        """Take one assignments message's network part. Synchronous; the work happens in the loop."""
        named = {st.network.ID for st in networks}
        for st in networks:
            self._desired[st.network.ID] = st
            self._removing.pop(st.network.ID, None)
            self.directory.set_records(st.network.ID, st.records)
        gone = set(removed)
        if full:
            gone |= set(self._desired) - named
            self._sweep = True
        for net_id in gone - named:
            self._desired.pop(net_id, None)
            self._errors.pop(net_id, None)
            self.directory.remove_network(net_id)
            self._removing.setdefault(net_id, time.monotonic())
        if networks or gone or full:
            self._kick()

    def _kick(self) -> None:
        self._wake.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._run(), name="network-agent")

    async def _run(self) -> None:
        # A timer, not asyncio.wait_for on the event: on Python 3.11 wait_for loses a cancellation
        # that arrives as the event is set, and close() then waits for this loop forever.
        self._arm_refresh()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._refresh_due:
                self._refresh_due = False
                self._arm_refresh()
                try:
                    await self.mesh.refresh()  # True: tables gone; the pass below rebuilds them
                except Exception as exc:
                    log.warning("routing mesh: %s", exc)
            try:
                retry = await self._pass()
            except Exception as exc:  # never fatal: the next pass tries again
                log.warning("network pass failed: %s", exc)
                retry = True
            async with self._changed:
                self._changed.notify_all()
            if retry and self._retry is None:
                self._retry = asyncio.get_running_loop().call_later(RETRY_S, self._retry_now)

    def _arm_refresh(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        self._refresh = asyncio.get_running_loop().call_later(REFRESH_S, self._refresh_now)

    def _refresh_now(self) -> None:
        self._refresh = None
        self._refresh_due = True
        self._wake.set()

    def _retry_now(self) -> None:
        self._retry = None
        self._wake.set()

    async def _pass(self) -> bool:
        retry = await self._plumb_all()
        return await self._program_mesh() or retry

    async def _program_mesh(self) -> bool:
        """The published ports and VIPs of the plumbed networks into the kernel; True: try again."""
        ports: list[mesh.PublishedPort] = []
        vips: list[mesh.VirtualService] = []
        ingress_bridge: str | None = None
        for net_id, st in self._desired.items():
            if self._plumbed.get(net_id) != _shape(st):
                continue  # its bridge is not there yet: the next pass programs it
            if st.network.Spec.Ingress:
                ingress_bridge = bridge_name(net_id)
                for rec in st.records:
                    backends = tuple(rec.addrs)
                    for p in rec.ports:
                        ports.append(mesh.PublishedPort(p.protocol, p.port, p.target_port, backends, rec.name))
            else:
                for rec in st.records:
                    if rec.vip:
                        vips.append(mesh.VirtualService(rec.vip, tuple(rec.addrs), rec.name))
        try:
            await self.mesh.apply(ports, vips, ingress_bridge)
        except Exception as exc:
            msg = str(exc) or type(exc).__name__
            if msg != self._mesh_error:
                log.error("routing mesh: %s", msg)
            self._mesh_error = msg
            if isinstance(exc, mesh.MeshUnavailable):
                self._mesh_unavailable = msg  # creates waiting on the ingress network fail after this pass
                return False  # a missing nft does not come back by itself
            return True
        if self._mesh_error:
            log.info("routing mesh programmed again")
        self._mesh_error = self._mesh_unavailable = ""
        return False

    async def _plumb_all(self) -> bool:
        retry = False
        if self._sweep:
            ours = await self.engine.list_ours(self.node_id)
            for net_id in set(ours) - set(self._desired) - set(self._removing):
                self._removing[net_id] = 0.0  # left before this agent started: no grace
            self._sweep = False
        for net_id, st in list(self._desired.items()):
            shape = _shape(st)
            if self._plumbed.get(net_id) == shape:
                continue
            # The kernel is about to change: what was recorded no longer holds. (Kept, a state that
            # arrives during this plumb with the recorded shape -- peers [a] -> [] -> [a] as a node
            # leaves and joins at once -- would be taken as done while the kernel has [].)
            self._plumbed.pop(net_id, None)
            try:
                await self._plumb(st)
            except Exception as exc:
                msg = str(exc) if isinstance(exc, OverlayError) else f"{type(exc).__name__}: {exc}"
                log.warning("network %s: %s", st.network.Spec.Name, msg)
                retry = True
                if "overlap" in msg and self._removing:
                    # A removed network with the same subnet still has containers stopping (they
                    # drain first): it goes in a moment, so the tasks wait rather than fail.
                    continue
                self._errors[net_id] = msg
                continue
            if self._desired.get(net_id) is st:
                self._plumbed[net_id] = shape
                self._errors.pop(net_id, None)
        now = time.monotonic()
        for net_id, left in sorted(self._removing.items()):
            if net_id in self._desired:
                del self._removing[net_id]
                self._held_since.pop(net_id, None)
                continue
            if now - left < LEAVE_GRACE_S:
                # docker-compose disconnects and reconnects each container just before starting it:
                # a node whose only container that is leaves the network and joins it again within
                # milliseconds. Tearing it down in between would race the reconnect (the manager
                # may find the old engine network, connect to it, and the container's start then
                # fails "network ... not found"), so a network the node left waits a moment.
                retry = True
                continue
            self._plumbed.pop(net_id, None)
            await self.responder.unlisten(net_id)
            try:
                if await self.engine.remove(net_id):
                    await delete_vxlan(net_id)
                    self._removing.pop(net_id, None)
                    self._held_since.pop(net_id, None)
                    log.info("network %s removed from this node", net_id)
                else:
                    # Containers still on it: being removed (soon gone), or created/stopped ones
                    # that may stay for long (a compose project stopped, not removed): after a
                    # while, the refresh tries again instead of a pass every RETRY_S.
                    since = self._held_since.setdefault(net_id, time.monotonic())
                    retry = retry or time.monotonic() - since < HELD_FAST_S
            except Exception as exc:
                log.warning("removing network %s: %s", net_id, exc)
                retry = True
        return retry

    async def _plumb(self, st: NetworkState) -> None:
        net = st.network
        if not st.node_address:
            raise OverlayError(f"network {net.Spec.Name}: this node has no address on it yet")
        await self.engine.ensure(st, self.node_id)
        await ensure_vxlan(net.ID, vni_of(net), self.local)
        await set_peers(net.ID, st.peers)
        if net.Spec.Ingress:
            return  # no names on the ingress network (as in Swarm): it only carries the mesh
        ip = bare_ip(st.node_address)
        at = self.responder.listening(net.ID)
        if at is None or at[0] != ip or (self.dns_port and at[1] != self.dns_port):
            try:
                await self.responder.listen(net.ID, ip, self.dns_port)
            except OSError as e:  # the network works without names; say so once per attempt
                log.warning("network %s: no DNS responder on %s:%d: %s", net.Spec.Name, ip, self.dns_port, e)

    # ------------------------------------------------------------------ containers

    async def _wait_ready(self, net_id: str, name: str) -> NetworkState:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout_s
        async with self._changed:
            while True:
                st = self._desired.get(net_id)
                if st is not None and st.network.Spec.Ingress and self._mesh_unavailable:
                    why = self._mesh_unavailable
                    raise OverlayError(f"ports cannot be published through the routing mesh here: {why}")
                if st is not None and self._plumbed.get(net_id) == _shape(st):
                    return st
                if st is not None and net_id in self._errors:
                    raise OverlayError(f"network {name}: {self._errors[net_id]}")
                left = deadline - loop.time()
                if left <= 0:
                    why = "not plumbed yet" if st is not None else "its state has not arrived from the manager"
                    raise OverlayError(f"network {name} is not ready on this node: {why}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)

    async def configure(self, task: Task, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Put the task's first network into the create ``body`` (mode, address, DNS server) once
        its networks are plumbed; returns the other networks' endpoints for :meth:`connect`.
        A task without network attachments is left on the engine's default network."""
        atts = [a for a in task.NetworksAttachments or [] if a.Network is not None and a.Addresses]
        if not atts:
            return []
        states = [await self._wait_ready(a.Network.ID, a.Network.Spec.Name) for a in atts]
        ids = [a.Network.ID for a in atts]
        endpoints: list[tuple[str, dict[str, Any]]] = []
        for a in atts:
            ip = bare_ip((a.Addresses or [""])[0])
            self.directory.set_endpoint(a.Network.ID, ip, ids)
            # No engine aliases: the engine would answer the service's name with local tasks only.
            endpoints.append((a.Network.ID, {"IPAMConfig": {"IPv4Address": ip}}))
        first_id, first_ep = endpoints[0]
        host = body.setdefault("HostConfig", {})
        host["NetworkMode"] = engine_network_name(first_id)
        if self.responder.listening(first_id) is not None:
            ours = [bare_ip(states[0].node_address)]
            host["Dns"] = ours + [d for d in host.get("Dns") or [] if d not in ours]
        body["NetworkingConfig"] = {"EndpointsConfig": {engine_network_name(first_id): first_ep}}
        return endpoints[1:]

    async def connect(self, container_id: str, extra: list[tuple[str, dict[str, Any]]]) -> None:
        """Attach a created container to the task's other networks (before it starts)."""
        for net_id, endpoint in extra:
            await self.engine.connect(net_id, container_id, endpoint)

    # ------------------------------------------------------------------ lifetime

    async def close(self) -> None:
        """Stop serving; networks, devices and the kernel balancers stay (containers on them keep
        running and published ports keep answering; a restarted agent rebuilds them)."""
        for timer in (self._retry, self._refresh):
            if timer is not None:
                timer.cancel()
        self._retry = self._refresh = None
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        await self.responder.close()
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
