"""Networks: create, inspect, list, remove, prune; and a service's network references resolved to IDs.

A network is allocated when it is created (its subnet, gateway and VXLAN id are in the object the
create call returns), not later as in swarmkit: ``docker network inspect`` right after ``create``
then shows the subnet, and a bad or overlapping subnet is a 400 before anything is written.
Addresses within the network are the allocator's (:mod:`shoal.allocator`), at scheduling time.
"""

from __future__ import annotations

import ipaddress
import re

import msgspec

from shoal.allocator.ingress import INGRESS_NAME, INGRESS_SUBNET, service_ingress_ports
from shoal.allocator.ipam import (
    VXLAN_ID_KEY,
    PoolExhausted,
    check_no_overlap,
    choose_subnet,
    next_vxlan_id,
    parse_subnet,
    vxlan_ids,
)
from shoal.controlapi.encryption import check_encryption
from shoal.controlapi.filters import Filters, match_labels
from shoal.controlapi.predefined import check_predefined_use, is_predefined, missing_predefined
from shoal.controlapi.resolve import _by_prefix, _unique
from shoal.errors import Conflict, InvalidArgument, NotFound, ShoalError
from shoal.ids import new_id
from shoal.models import (
    Driver,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachmentConfig,
    NetworkSpec,
    Service,
    ServiceSpec,
    Version,
)
from shoal.store import MemoryStore

NETWORK_FILTERS = ("dangling", "driver", "id", "label", "name", "scope", "type")
PRUNE_FILTERS = ("label", "label!", "until")
DRIVER = "overlay"
PREDEFINED = ("bridge", "host", "none", "default")


class Forbidden(ShoalError):
    """HTTP 403, Docker's answer for operations on pre-defined networks."""

    status = 403


# --------------------------------------------------------------------------- look-ups


def get_network(store: MemoryStore, ref: str) -> Network:
    """A network by full ID, then name, then unique ID prefix; 404 ``network X not found``.
    Docker allows two networks one name, so a name can be ambiguous too (400)."""
    if ref:
        net = store.get("network", ref)
        if net is not None:
            return net
        nets = store.list("network")
        named = [n for n in nets if n.Spec.Name == ref]
        return _unique("network", ref, named or _by_prefix(nets, ref))  # type: ignore[no-any-return]
    return _unique("network", ref, [])  # type: ignore[no-any-return]


def services_using(store: MemoryStore, net_id: str) -> list[Service]:
    """Services attached to the network; for the ingress network, those publishing through it."""
    net = store.get("network", net_id)
    if net is not None and net.Spec.Ingress:
        return [s for s in store.list("service") if service_ingress_ports(s)]
    return [s for s in store.list("service") if net_id in _targets(s.Spec)]


def _targets(spec: ServiceSpec) -> list[str]:
    nets = [*(spec.TaskTemplate.Networks or ()), *(spec.Networks or ())]
    return [n.Target for n in nets]


# --------------------------------------------------------------------------- create


def _check_ipam(store: MemoryStore, ipam: IPAMOptions | None) -> IPAMConfig | None:
    """The user's IPAM settings checked (driver, one IPv4 config, gateway and range inside the
    subnet, no overlap with another network); the user's config or None (choose one)."""
    if ipam is None:
        return None
    if ipam.Driver is not None and ipam.Driver.Name not in ("", "default"):
        raise InvalidArgument(f"invalid IPAM driver {ipam.Driver.Name!r}: only the default IPAM driver is supported")
    cfgs = [c for c in ipam.Configs or () if c.Subnet or c.Gateway or c.Range]
    if not cfgs:
        return None
    if len(cfgs) > 1:
        raise InvalidArgument("only one IPAM config (one IPv4 subnet) per overlay network is supported")
    cfg = cfgs[0]
    if not cfg.Subnet:
        raise InvalidArgument("ipam configuration: a gateway or an IP range needs a subnet")
    subnet = parse_subnet(cfg.Subnet)
    if cfg.Range:
        try:
            rng = ipaddress.ip_network(cfg.Range, strict=True)
        except ValueError:
            raise InvalidArgument(f"ipam configuration: invalid range {cfg.Range}") from None
        if not isinstance(rng, ipaddress.IPv4Network) or not rng.subnet_of(subnet):
            raise InvalidArgument(f"ipam configuration: subnet {cfg.Subnet} does not contain range {cfg.Range}")
    if cfg.Gateway:
        try:
            gw = ipaddress.ip_address(cfg.Gateway)
        except ValueError:
            raise InvalidArgument(f"ipam configuration: invalid gateway {cfg.Gateway}") from None
        if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
            raise InvalidArgument(f"ipam configuration: subnet {cfg.Subnet} does not contain gateway {cfg.Gateway}")
    check_no_overlap(subnet, _subnets(store))
    return cfg


def _subnets(store: MemoryStore) -> list[tuple[str, str]]:
    out = []
    for n in store.list("network"):
        for c in (n.IPAMOptions.Configs or ()) if n.IPAMOptions is not None else ():
            if c.Subnet:
                out.append((n.Spec.Name, c.Subnet))
    return out


def validate_network_spec(store: MemoryStore, spec: NetworkSpec) -> IPAMConfig | None:
    """Every check of a new network; returns the user's IPAM config, if any."""
    if not spec.Name:
        raise InvalidArgument("network name is required")
    if spec.Name in PREDEFINED:
        raise Forbidden(f"{spec.Name} is a pre-defined network and cannot be created")
    driver = spec.DriverConfiguration.Name if spec.DriverConfiguration is not None else ""
    if driver not in ("", DRIVER):
        raise InvalidArgument(
            f"invalid network driver {driver!r}: swarm networks in Shoal are overlay networks (use -d overlay)"
        )
    if spec.Scope not in ("", "swarm"):
        raise InvalidArgument(f"invalid scope {spec.Scope!r}: swarm networks have scope \"swarm\"")
    check_encryption(spec, store.list("node"))  # `--opt encrypted` is refused with its reason, never ignored
    if any(n.Spec.Name == spec.Name for n in store.list("network")):
        raise Conflict(f"network with name {spec.Name} already exists")
    if spec.Ingress:
        ingress = next((n for n in store.list("network") if n.Spec.Ingress), None)
        if ingress is not None:
            raise Forbidden(f"ingress network ({ingress.ID}) is already present")
    return _check_ipam(store, spec.IPAMOptions)


def ingress_spec(subnet: str = INGRESS_SUBNET) -> NetworkSpec:
    """The ingress network ``swarm init`` makes (see allocator/ingress.py for the subnet)."""
    return NetworkSpec(
        Name=INGRESS_NAME,
        Ingress=True,
        DriverConfiguration=Driver(Name=DRIVER),
        IPAMOptions=IPAMOptions(Driver=Driver(Name="default"), Configs=[IPAMConfig(Subnet=subnet)]),
    )


def create_network(store: MemoryStore, spec: NetworkSpec) -> Network:
    """Validate, allocate (subnet, gateway, VXLAN id) and store a network; nothing is written on error."""
    cfg = validate_network_spec(store, spec)
    nets = store.list("network")
    if cfg is None:
        cluster = store.cluster()
        try:
            subnet = choose_subnet(
                [s for _, s in _subnets(store)],
                cluster.DefaultAddrPool if cluster is not None else None,
                cluster.SubnetSize if cluster is not None else None,
            )
        except PoolExhausted as e:
            raise InvalidArgument(str(e)) from None
        cfg = IPAMConfig(Subnet=subnet)
    if not cfg.Gateway:
        first = ipaddress.IPv4Network(cfg.Subnet).network_address + 1
        cfg = msgspec.structs.replace(cfg, Gateway=str(first))
    vid = next_vxlan_id(v for n in nets for v in vxlan_ids(n.DriverState.Options if n.DriverState else None))
    driver = spec.DriverConfiguration or Driver()
    spec = msgspec.structs.replace(
        spec, Scope="swarm", DriverConfiguration=msgspec.structs.replace(driver, Name=DRIVER)
    )
    ipam_driver = spec.IPAMOptions.Driver if spec.IPAMOptions is not None and spec.IPAMOptions.Driver else None
    net = Network(
        ID=new_id(),
        Version=Version(),
        CreatedAt="",
        UpdatedAt="",
        Spec=spec,
        DriverState=Driver(Name=DRIVER, Options={**(driver.Options or {}), VXLAN_ID_KEY: str(vid)}),
        IPAMOptions=IPAMOptions(
            Driver=Driver(Name="default", Options=ipam_driver.Options if ipam_driver else None), Configs=[cfg]
        ),
    )
    with store.tx() as tx:
        tx.create("network", net)
    return net


# --------------------------------------------------------------------------- list, remove, prune


def _match(value: str, patterns: list[str]) -> bool:
    """Docker's ``Args.Match``: each filter value is a regular expression searched in the field."""
    for p in patterns:
        try:
            if re.search(p, value):
                return True
        except re.error:
            if p in value:
                return True
    return False


def list_networks(store: MemoryStore, filters: Filters | None = None) -> list[Network]:
    """Every network matching Docker's network filters (all of them: Swarm has no builtin ones)."""
    nets = sorted(store.list("network"), key=lambda n: n.CreatedAt)
    f = filters or {}
    for typ in f.get("type", ()):
        if typ not in ("custom", "builtin"):
            raise InvalidArgument(f"invalid filter: 'type'='{typ}'")
    if "dangling" in f:
        for v in f["dangling"]:
            if v.lower() not in ("true", "false", "1", "0"):
                raise InvalidArgument(f"invalid filter 'dangling={v}'")
    out = []
    used: set[str] | None = None
    for n in nets:
        if is_predefined(n):
            continue  # moby leaves them out of the cluster's list (the engine lists its own)
        if "id" in f and not _match(n.ID, f["id"]):
            continue
        if "name" in f and not _match(n.Spec.Name, f["name"]):
            continue
        if "label" in f and not match_labels(n.Spec.Labels, f["label"]):
            continue
        if "driver" in f and DRIVER not in f["driver"]:
            continue
        if "scope" in f and "swarm" not in f["scope"]:
            continue
        if "type" in f and "custom" not in f["type"]:
            continue  # every swarm network is user-made
        if "dangling" in f:
            if used is None:
                used = {t for s in store.list("service") for t in _targets(s.Spec)}
            dangling = f["dangling"][0].lower() in ("true", "1")
            if (n.ID not in used) != dangling:
                continue
        out.append(n)
    return out


def remove_network(store: MemoryStore, ref: str) -> None:
    """Remove a network no service uses (409 ``network X is in use by service Y`` otherwise)."""
    net = get_network(store, ref)
    if is_predefined(net):
        raise Forbidden(f"{net.Spec.Name} is a pre-defined network and cannot be removed")
    users = services_using(store, net.ID)
    if users:
        raise Conflict(f"network {net.Spec.Name} is in use by service {users[0].Spec.Name}")
    # A standalone container on it (api/attach.py) holds it too, as swarmkit's attachment tasks do.
    attached = _attached_containers(store, net.ID)
    if attached:
        raise Conflict(f"network {net.Spec.Name} is in use by container {attached[0][:12] or '(being created)'}")
    with store.tx() as tx:
        tx.delete("network", net.ID)


def _attached_containers(store: MemoryStore, net_id: str) -> list[str]:
    return [str((t.Spec.NetworkAttachmentSpec or {}).get("ContainerID", "")) for t in store.list("task")
            if t.Spec.NetworkAttachmentSpec is not None
            and any(a.Network.ID == net_id for a in t.NetworksAttachments or ())]


def prune_networks(store: MemoryStore, filters: Filters | None = None) -> list[str]:
    """Remove every network no service uses (``label``/``label!`` filters); their names."""
    f = filters or {}
    used = {t for s in store.list("service") for t in _targets(s.Spec)}
    used |= {a.Network.ID for t in store.list("task") if t.Spec.NetworkAttachmentSpec is not None
             for a in t.NetworksAttachments or ()}
    gone = []
    for n in store.list("network"):
        if n.ID in used or n.Spec.Ingress or is_predefined(n):  # as Docker: never the ingress network
            continue
        if "label" in f and not match_labels(n.Spec.Labels, f["label"]):
            continue
        if "label!" in f and any(match_labels(n.Spec.Labels, [lbl]) for lbl in f["label!"]):
            continue
        gone.append(n)
    if gone:
        with store.tx() as tx:
            for n in gone:
                tx.delete("network", n.ID)
    return [n.Spec.Name for n in gone]


# --------------------------------------------------------------------------- services


def resolve_service_networks(store: MemoryStore, spec: ServiceSpec) -> ServiceSpec:
    """Network names (or ID prefixes) in ``TaskTemplate.Networks`` and the deprecated
    ``ServiceSpec.Networks`` → full IDs, all moved into ``TaskTemplate.Networks``, as the Docker
    daemon does before it hands a spec to swarmkit. 404 ``network X not found`` for an unknown one."""
    refs = [*(spec.TaskTemplate.Networks or ()), *(spec.Networks or ())]
    if not refs:
        return spec
    out: list[NetworkAttachmentConfig] = []
    nets: list[Network] = []
    seen: set[str] = set()
    for att in refs:
        if not att.Target:
            raise InvalidArgument("network attachment: a network name or ID (Target) is required")
        try:
            net = get_network(store, att.Target)
        except NotFound:
            if att.Target in PREDEFINED:
                raise missing_predefined(att.Target) from None
            raise
        if net.Spec.Ingress:
            raise InvalidArgument(
                "rpc error: code = InvalidArgument desc = Service cannot be explicitly attached to the ingress network"
            )
        if net.ID in seen:
            raise InvalidArgument(
                f"rpc error: code = InvalidArgument desc = duplicate network attachment: {net.Spec.Name}"
            )
        seen.add(net.ID)
        nets.append(net)
        out.append(att if att.Target == net.ID else msgspec.structs.replace(att, Target=net.ID))
    tmpl = msgspec.structs.replace(spec.TaskTemplate, Networks=out)
    resolved = msgspec.structs.replace(spec, TaskTemplate=tmpl, Networks=None)
    check_predefined_use(resolved, nets)
    return resolved
