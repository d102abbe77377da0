"""``/networks`` routes, in the engine's shape.

``docker network ls/inspect/create/rm`` and ``docker stack deploy`` speak the engine's network API,
not swarm's: the request body is the engine's ``NetworkCreateRequest`` and networks are shown as
the engine shows a swarm-scoped network (``Scope: "swarm"``, ``Driver: "overlay"``, ``IPAM`` ...).
This module translates both ways; the checks and writes are the control API's.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shoal.api.common import decode_body, empty_response, json_response, swarm_manager
from shoal.controlapi.filters import parse_filters
from shoal.controlapi.networks import (
    NETWORK_FILTERS,
    PRUNE_FILTERS,
    create_network,
    get_network,
    list_networks,
    prune_networks,
    remove_network,
)
from shoal.errors import InvalidArgument, NotFound
from shoal.models import Driver, IPAMConfig, IPAMOptions, Network, NetworkSpec
from shoal.netmode import is_predefined


class EngineIPAMConfig(msgspec.Struct, forbid_unknown_fields=True):
    Subnet: str = ""
    IPRange: str = ""
    Gateway: str = ""
    AuxiliaryAddresses: dict[str, str] | None = None


class EngineIPAM(msgspec.Struct, forbid_unknown_fields=True):
    Driver: str = ""
    Config: list[EngineIPAMConfig] | None = None
    Options: dict[str, str] | None = None


class ConfigReference(msgspec.Struct, forbid_unknown_fields=True):
    Network: str = ""


class NetworkCreateRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The engine's ``POST /networks/create`` body (API 1.41)."""

    Name: str = ""
    CheckDuplicate: bool = False
    Driver: str = ""
    Scope: str = ""
    Internal: bool = False
    Attachable: bool = False
    Ingress: bool = False
    ConfigOnly: bool = False
    ConfigFrom: ConfigReference | None = None
    IPAM: EngineIPAM | None = None
    EnableIPv6: bool = False
    Options: dict[str, str] | None = None
    Labels: dict[str, str] | None = None


def to_spec(req: NetworkCreateRequest) -> NetworkSpec:
    """The engine's request as swarm's NetworkSpec; what swarm networks cannot be is a 400."""
    if req.ConfigOnly:
        raise InvalidArgument("config-only networks are not supported: swarm networks are overlay networks")
    if req.ConfigFrom is not None and req.ConfigFrom.Network:
        raise InvalidArgument("--config-from is not supported: swarm networks are overlay networks")
    ipam: IPAMOptions | None = None
    if req.IPAM is not None:
        for c in req.IPAM.Config or ():
            if c.AuxiliaryAddresses:
                raise InvalidArgument("auxiliary addresses are not supported on overlay networks")
        ipam = IPAMOptions(
            Driver=Driver(Name=req.IPAM.Driver or "default", Options=req.IPAM.Options or None),
            Configs=[IPAMConfig(Subnet=c.Subnet, Range=c.IPRange, Gateway=c.Gateway) for c in req.IPAM.Config or ()]
            or None,
        )
    return NetworkSpec(
        Name=req.Name,
        Labels=req.Labels or None,
        DriverConfiguration=Driver(Name=req.Driver or "overlay", Options=req.Options or None),
        Ipv6Enabled=req.EnableIPv6,
        Internal=req.Internal,
        Attachable=req.Attachable,
        Ingress=req.Ingress,
        IPAMOptions=ipam,
        Scope=req.Scope,
    )


def engine_view(net: Network) -> dict[str, Any]:
    """A network as ``GET /networks/{id}`` shows a swarm-scoped overlay network."""
    spec = net.Spec
    cfgs = net.IPAMOptions.Configs if net.IPAMOptions is not None else None
    ipam_driver = net.IPAMOptions.Driver if net.IPAMOptions is not None else None
    options = dict(net.DriverState.Options or {}) if net.DriverState is not None else {}
    for k, v in ((spec.DriverConfiguration.Options or {}) if spec.DriverConfiguration else {}).items():
        options.setdefault(k, v)
    config = []
    for c in cfgs or ():
        entry = {"Subnet": c.Subnet, "Gateway": c.Gateway}
        if c.Range:
            entry["IPRange"] = c.Range
        config.append(entry)
    return {
        "Name": spec.Name,
        "Id": net.ID,
        "Created": net.CreatedAt,
        "Scope": "swarm",
        # A predefined network shows its engine driver (host, bridge), as moby's cluster view does.
        "Driver": spec.DriverConfiguration.Name if is_predefined(net) and spec.DriverConfiguration else "overlay",
        "EnableIPv6": spec.Ipv6Enabled,
        "IPAM": {
            "Driver": "default",
            "Options": (ipam_driver.Options if ipam_driver is not None else None) or None,
            "Config": config,
        },
        "Internal": spec.Internal,
        "Attachable": spec.Attachable,
        "Ingress": spec.Ingress,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {},
        "Options": options,
        "Labels": spec.Labels or {},
    }


async def list_all(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    filters = parse_filters(request.query.get("filters"), NETWORK_FILTERS)
    return json_response([engine_view(n) for n in list_networks(manager.store, filters)])


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    scope = request.query.get("scope", "")
    net = get_network(manager.store, request.match_info["id"])
    if scope and scope != "swarm":
        # The engine answers 404 for a network outside the asked scope.
        raise NotFound(f"network {request.match_info['id']} not found")
    return json_response(engine_view(net))


async def create(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    req = await decode_body(request, NetworkCreateRequest)
    net = create_network(manager.store, to_spec(req))
    return json_response({"Id": net.ID, "Warning": ""}, status=201)


async def remove(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    remove_network(manager.store, request.match_info["id"])
    return empty_response(204)


async def prune(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    filters = parse_filters(request.query.get("filters"), PRUNE_FILTERS)
    return json_response({"NetworksDeleted": prune_networks(manager.store, filters)})


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/networks", list_all),
    ("POST", "/networks/create", create),
    ("POST", "/networks/prune", prune),
    ("GET", "/networks/{id}", inspect),
    ("DELETE", "/networks/{id}", remove),
]
