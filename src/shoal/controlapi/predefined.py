"""Swarm's predefined networks, ``host`` and ``bridge``: what ``--network host`` names.

Swarmkit stores one network object per node-local network every engine has (``bridge`` and
``host`` on Linux), labelled ``com.docker.swarm.predefined=true``, when a manager takes the lead;
a service names them like any network and the Docker daemon resolves the name to that object's ID.
Tasks on them get an attachment without addresses (nothing to allocate: the engine's own network
is used on each node) and the executor runs the container with ``HostConfig.NetworkMode`` set to
the network's name. ``docker network ls`` does not list them (moby filters them out of the
cluster's list; the engine shows its local ones instead). Shoal does the same.

The rules Swarm leaves to the engine at task start (a host-network container cannot join another
network; ingress-mode ports need the ingress network) are checked here when the service is
created, so the user gets the engine's words at once instead of tasks rejected on every node.
"""

from __future__ import annotations

import logging

from shoal.errors import InvalidArgument, NotFound, ShoalError
from shoal.ids import new_id
from shoal.models import Driver, Network, NetworkSpec, ServiceSpec, Version
from shoal.netmode import PREDEFINED_LABEL, PREDEFINED_NETWORKS, is_predefined, predefined_mode
from shoal.store import MemoryStore

log = logging.getLogger(__name__)

__all__ = [
    "PREDEFINED_LABEL",
    "PREDEFINED_NETWORKS",
    "check_predefined_use",
    "ensure_predefined_networks",
    "is_predefined",
    "missing_predefined",
    "predefined_mode",
]
# The engine's words when a host-network container is connected to another network (moby 20.10,
# runconfig.ErrConflictHostNetwork), which is what a Swarm task on host + another network fails with.
HOST_CONFLICT = "container cannot be disconnected from host network or connected to host network"
ALIAS_CONFLICT = "network-scoped aliases are only supported for user-defined networks"


def new_predefined(name: str) -> Network:
    return Network(
        ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="",
        Spec=NetworkSpec(Name=name, Labels={PREDEFINED_LABEL: "true"},
                         DriverConfiguration=Driver(Name=PREDEFINED_NETWORKS[name]), Scope="swarm"),
    )


def ensure_predefined_networks(store: MemoryStore) -> list[Network]:
    """Create the predefined networks the store lacks (a new swarm, or one made before Shoal had
    them); called by the leader at start, as swarmkit's manager does. Returns those created."""
    have = {n.Spec.Name for n in store.list("network") if is_predefined(n)}
    missing = [new_predefined(name) for name in PREDEFINED_NETWORKS if name not in have]
    if missing:
        try:
            with store.tx() as tx:
                for net in missing:
                    tx.create("network", net)
        except ShoalError as e:
            # Not fatal: services naming them get a clear 404 until the next leader start.
            log.warning("could not create the predefined networks: %s", e)
            return []
    return missing


def missing_predefined(ref: str) -> ShoalError:
    """The error for a service naming ``none`` or a predefined network the store lacks."""
    if ref in PREDEFINED_NETWORKS:
        return NotFound(f"could not find the corresponding predefined swarm network: network {ref} not found")
    return NotFound(f"network {ref} not found: swarm services can use the predefined networks "
                    f"{' and '.join(sorted(PREDEFINED_NETWORKS))} or overlay networks, not {ref}")


def check_predefined_use(spec: ServiceSpec, nets: list[Network]) -> None:
    """A service on a predefined network is on it alone, without aliases, and publishes no port in
    ingress mode. ``nets``: the service's networks, resolved, in order."""
    pre = [n for n in nets if is_predefined(n)]
    if not pre:
        return
    net = pre[0]
    name = net.Spec.Name
    if len(nets) > 1:
        other = next(n for n in nets if n is not net).Spec.Name
        why = HOST_CONFLICT if name == "host" else "a task uses either its engine's bridge or swarm networks"
        raise InvalidArgument(f"invalid network attachment: a service on the {name} network cannot also be on "
                              f"network {other} ({why})")
    for att in spec.TaskTemplate.Networks or ():
        if att.Target == net.ID and att.Aliases:
            raise InvalidArgument(f"invalid network attachment: network {name}: {ALIAS_CONFLICT}")
    ports = spec.EndpointSpec.Ports if spec.EndpointSpec is not None else None
    ingress = [p for p in ports or () if (p.PublishMode or "ingress") == "ingress"]
    if ingress:
        p = ingress[0]
        shown = f"{p.PublishedPort or p.TargetPort}/{p.Protocol or 'tcp'}"
        raise InvalidArgument(
            f"port {shown} is published in ingress mode, which needs the ingress network, and a service on the "
            f"{name} network cannot join it ({HOST_CONFLICT if name == 'host' else 'one network per task'}): "
            f"publish it with mode=host (--publish published={p.PublishedPort or p.TargetPort},"
            f"target={p.TargetPort},mode=host)"
        )
