"""One overlay network on one node: an engine bridge network plus a VXLAN device on its bridge.

The engine does what it is good at — veths, container addresses, masquerading, isolation rules —
on a plain bridge network whose bridge has a fixed name (``shl-<network id[:10]>``), the overlay's
subnet, an MTU that leaves room for the VXLAN header (1450 on a 1500 underlay), and as gateway this
node's own address on the network. That address is unique per node (the manager allocates it), so
the bridges of different hosts, joined into one L2 segment by VXLAN, never answer for the same IP.

The VXLAN device (``shv-<network id[:10]>``, VNI from the network's driver state, UDP 4789, source
= this node's underlay address, MAC learning on) is enslaved to that bridge. Broadcast and unknown
traffic (ARP) goes to every peer by head-end replication: one all-zeros FDB entry per peer node;
replies teach the bridge and the VXLAN device where each MAC lives.

Netlink calls are synchronous (pyroute2's IPRoute) and short: they run on a worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.dispatcher.protocol import NetworkState
from shoal.models import Network
from shoal.netmode import BRIDGE_PREFIX, bridge_name, engine_network_name  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

VXLAN_PORT = 4789
MTU = 1450
VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
VXLAN_PREFIX = "shv-"
ZERO_MAC = "00:00:00:00:00:00"
# Labels on the engine networks we make, so a restarted agent finds (and adopts or removes) them.
LABEL_NETWORK_ID = "shoal.network.id"
LABEL_NETWORK_NAME = "shoal.network.name"
LABEL_NODE_ID = "shoal.network.node"


class OverlayError(Exception):
    """Plumbing a network failed; the message says why (it becomes the task's error)."""


def vxlan_name(network_id: str) -> str:
    return VXLAN_PREFIX + network_id[:10]


def vni_of(network: Network) -> int:
    opts = network.DriverState.Options if network.DriverState is not None else None
    raw = (opts or {}).get(VNI_OPTION, "")
    try:
        return int(raw.split(",")[0])
    except ValueError:
        raise OverlayError(f"network {network.Spec.Name}: no VXLAN id allocated") from None


def subnet_of(network: Network) -> str:
    for ipam in (network.IPAMOptions, network.Spec.IPAMOptions):
        if ipam is not None:
            for cfg in ipam.Configs or []:
                if cfg.Subnet:
                    return cfg.Subnet
    raise OverlayError(f"network {network.Spec.Name}: no subnet allocated")


def bare_ip(cidr: str) -> str:
    return cidr.split("/", 1)[0]


def is_ipv4(addr: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(addr), ipaddress.IPv4Address)
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------- netlink


def _vxlan_sync(name: str, vni: int, local: str | None, bridge: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            raise OverlayError(f"bridge {bridge} does not exist")
        bridge_index = found[0]
        idx = ipr.link_lookup(ifname=name)
        if idx:
            link = ipr.link("get", index=idx[0])[0]
            info = link.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
            same = (
                info is not None
                and info.get_attr("IFLA_INFO_KIND") == "vxlan"
                and data is not None
                and data.get_attr("IFLA_VXLAN_ID") == vni
                and (local is None or data.get_attr("IFLA_VXLAN_LOCAL") == local)
            )
            if not same:  # left over from another allocation of the same ID prefix: make it anew
                ipr.link("del", index=idx[0])
                idx = []
        if not idx:
            kw: dict[str, Any] = {}
            if local is not None:
                kw["vxlan_local"] = local
            args = {"ifname": name, "kind": "vxlan", "vxlan_id": vni, "vxlan_port": VXLAN_PORT, "vxlan_learning": 1}
            try:
                ipr.link("add", mtu=MTU, **args, **kw)
            except NetlinkError as e:
                # EEXIST: a device of ours with the same VNI is left from a network that is gone (VNIs
                # are unique in the cluster, so it is stale): the kernel allows one per VNI and port.
                if e.code != 17 or not _drop_same_vni(ipr, vni, name):
                    raise
                ipr.link("add", mtu=MTU, **args, **kw)
            idx = ipr.link_lookup(ifname=name)
        ipr.link("set", index=idx[0], master=bridge_index, mtu=MTU, state="up")


def _drop_same_vni(ipr: IPRoute, vni: int, keep: str) -> bool:
    dropped = False
    for link in ipr.get_links():
        ifname = link.get_attr("IFLA_IFNAME") or ""
        info = link.get_attr("IFLA_LINKINFO")
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        if (
            ifname.startswith(VXLAN_PREFIX)
            and ifname != keep
            and info.get_attr("IFLA_INFO_KIND") == "vxlan"
            and data is not None
            and data.get_attr("IFLA_VXLAN_ID") == vni
        ):
            log.info("removing stale VXLAN device %s (VNI %d)", ifname, vni)
            ipr.link("del", index=link["index"])
            dropped = True
    return dropped


def _peers_sync(name: str, peers: set[str]) -> set[str]:
    """Make the all-zeros FDB entries of ``name`` exactly ``peers``; returns what was there."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            raise OverlayError(f"VXLAN device {name} does not exist")
        have = {
            str(e.get_attr("NDA_DST"))
            for e in ipr.fdb("dump", ifindex=idx[0])
            if e["ifindex"] == idx[0] and e.get_attr("NDA_LLADDR") == ZERO_MAC and e.get_attr("NDA_DST")
        }
        for peer in sorted(peers - have):
            ipr.fdb("append", ifindex=idx[0], lladdr=ZERO_MAC, dst=peer)
        for peer in sorted(have - peers):
            try:
                ipr.fdb("del", ifindex=idx[0], lladdr=ZERO_MAC, dst=peer)
            except NetlinkError as e:
                if e.code != 2:  # ENOENT: gone already
                    raise
        return have


def _delete_sync(name: str) -> None:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            ipr.link("del", index=idx[0])


async def ensure_vxlan(network_id: str, vni: int, local: str | None) -> None:
    try:
        await asyncio.to_thread(_vxlan_sync, vxlan_name(network_id), vni, local, bridge_name(network_id))
    except NetlinkError as e:
        raise OverlayError(f"VXLAN device {vxlan_name(network_id)}: {e}") from None


async def set_peers(network_id: str, peers: list[str]) -> None:
    want = {p for p in peers if is_ipv4(p)}
    try:
        await asyncio.to_thread(_peers_sync, vxlan_name(network_id), want)
    except NetlinkError as e:
        raise OverlayError(f"VXLAN peers of {vxlan_name(network_id)}: {e}") from None


async def delete_vxlan(network_id: str) -> None:
    await asyncio.to_thread(_delete_sync, vxlan_name(network_id))


# ---------------------------------------------------------------------------------------- engine


def engine_network_body(state: NetworkState, node_id: str) -> dict[str, Any]:
    net = state.network
    return {
        "Name": engine_network_name(net.ID),
        "Driver": "bridge",
        "CheckDuplicate": True,
        "Internal": net.Spec.Internal,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": subnet_of(net), "Gateway": bare_ip(state.node_address)}]},
        "Options": {
            "com.docker.network.bridge.name": bridge_name(net.ID),
            "com.docker.network.driver.mtu": str(MTU),
        },
        "Labels": {LABEL_NETWORK_ID: net.ID, LABEL_NETWORK_NAME: net.Spec.Name, LABEL_NODE_ID: node_id},
    }


def _overlaps(cfg: dict[str, Any], want: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_network(cfg.get("Subnet", ""), strict=False).overlaps(want)
    except (ValueError, TypeError):
        return False


def _matches(existing: dict[str, Any], body: dict[str, Any]) -> bool:
    want = body["IPAM"]["Config"][0]
    have = ((existing.get("IPAM") or {}).get("Config") or [{}])[0]
    opts = existing.get("Options") or {}
    return (
        have.get("Subnet") == want["Subnet"]
        and have.get("Gateway") == want["Gateway"]
        and opts.get("com.docker.network.bridge.name") == body["Options"]["com.docker.network.bridge.name"]
    )


class EngineNetworks:
    """The engine side: bridge networks made for overlays, found again by their labels."""

    def __init__(self, docker: aiodocker.Docker) -> None:
        self.docker = docker

    async def _call(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        data = json.dumps(body) if body is not None else None
        return await self.docker._query_json(path, method, params=params, data=data)

    async def list_ours(self, node_id: str) -> dict[str, dict[str, Any]]:
        """Engine networks made for ``node_id``, by swarm network ID."""
        filters = json.dumps({"label": [f"{LABEL_NODE_ID}={node_id}"]})
        nets = await self._call("GET", "networks", params={"filters": filters})
        return {n["Labels"][LABEL_NETWORK_ID]: n for n in nets if (n.get("Labels") or {}).get(LABEL_NETWORK_ID)}

    async def ensure(self, state: NetworkState, node_id: str) -> None:
        """Create the network, or keep the one there if it matches; one that does not match (the
        node's address moved) is made anew when no container uses it."""
        body = engine_network_body(state, node_id)
        name = body["Name"]
        try:
            existing = await self._call("GET", f"networks/{name}")
        except DockerError as e:
            if e.status != 404:
                raise OverlayError(f"engine network {name}: {e.message}") from None
            existing = None
        if existing is not None:
            if _matches(existing, body):
                return
            if existing.get("Containers") or await self.containers_on(state.network.ID):
                log.warning("engine network %s differs from %s but is in use; kept", name, state.network.Spec.Name)
                return
            log.info("engine network %s differs from %s (node address moved); made anew", name, state.network.Spec.Name)
            await self.remove(state.network.ID)
        try:
            await self._call("POST", "networks/create", body)
            log.info("engine network %s made for %s", name, state.network.Spec.Name)
        except DockerError as e:
            if "overlap" not in e.message:
                raise OverlayError(f"engine network {name}: {e.message}") from None
            held = await self._clear_overlapping(body)
            if held:
                raise OverlayError(f"engine network {name} for {state.network.Spec.Name}: its subnet "
                                   f"{subnet_of(state.network)} overlaps {'; '.join(held)}") from None
            try:
                await self._call("POST", "networks/create", body)
            except DockerError as e2:
                raise OverlayError(f"engine network {name}: {e2.message}") from None

    async def _clear_overlapping(self, body: dict[str, Any]) -> list[str]:
        """The engine refuses a subnet that overlaps one of its networks. One of ours that no
        container uses is left from a network that is gone (a node that left the swarm, a crash),
        and the manager may give its subnet out again: it goes. Returns what still holds the
        subnet, each said so that the user knows what to remove (an empty list: try again)."""
        want = ipaddress.ip_network(body["IPAM"]["Config"][0]["Subnet"], strict=False)
        held: list[str] = []
        for n in await self._call("GET", "networks"):
            subnets = (n.get("IPAM") or {}).get("Config") or []
            if n.get("Name") == body["Name"] or not any(_overlaps(cfg, want) for cfg in subnets):
                continue
            name, labels = str(n.get("Name", "")), n.get("Labels") or {}
            net_id = labels.get(LABEL_NETWORK_ID, "")
            if not net_id:
                held.append(f"engine network {name}, not made by Shoal (remove it, or give this one another subnet)")
                continue
            made_for = f"network {labels.get(LABEL_NETWORK_NAME, '?')} of node {labels.get(LABEL_NODE_ID, '?')}"
            name = f"{name} (made for {made_for})"
            on = await self.containers_on(net_id)  # (our networks are named engine_network_name(net_id))
            if on:
                held.append(f"engine network {name}, still used by container {', '.join(on[:3])}")
                continue
            log.info("removing stale engine network %s (subnet overlaps %s)", name, want)
            try:
                await self._call("DELETE", f"networks/{n['Id']}")
            except DockerError as e:
                # dockerd can count an endpoint that no container holds (its log says "Fixing
                # inconsistent endpoint_cnt" at the next start): only its restart clears that.
                held.append(f"engine network {name}, which the engine will not remove although no container "
                            f"is on it ({e.message}): restarting dockerd clears it")
                continue
            await delete_vxlan(net_id)
        return held

    async def remove_node(self, node_id: str) -> int:
        """Remove every network made for ``node_id`` and its VXLAN device (``swarm leave``, after
        the containers went); returns how many went. One still in use is left."""
        removed = 0
        for net_id in await self.list_ours(node_id):
            if await self.remove(net_id):
                await delete_vxlan(net_id)
                removed += 1
        return removed

    async def containers_on(self, network_id: str) -> list[str]:
        """Names of the containers on the network in any state. The network's ``Containers`` lists
        only running ones: a created or stopped container naming it is not there."""
        filters = json.dumps({"network": [engine_network_name(network_id)]})
        found = await self._call("GET", "containers/json", params={"all": "1", "filters": filters})
        return [str((c.get("Names") or ["?"])[0]).lstrip("/") for c in found or ()]

    async def remove(self, network_id: str) -> bool:
        """False while a container, in any state, is on it (try again later). The engine would
        remove a network that a created or stopped container names, and that container's start
        then fails "network ... not found": docker-compose disconnects and reconnects each container
        just before starting it, so a node whose only container that is leaves the network for a
        moment and the removal must not win that race."""
        name = engine_network_name(network_id)
        try:
            if await self.containers_on(network_id):
                return False
            await self._call("DELETE", f"networks/{name}")
        except DockerError as e:
            if e.status == 404:
                return True
            if e.status in (403, 409) or "active endpoints" in e.message:
                return False
            raise OverlayError(f"engine network {name}: {e.message}") from None
        return True

    async def connect(self, network_id: str, container_id: str, endpoint: dict[str, Any]) -> None:
        name = engine_network_name(network_id)
        try:
            body = {"Container": container_id, "EndpointConfig": endpoint}
            await self._call("POST", f"networks/{name}/connect", body)
        except DockerError as e:
            if "already exists" in e.message or "already attached" in e.message:
                return  # a container reused after an interrupted create
            raise OverlayError(f"connecting to {name}: {e.message}") from None
