"""Which engine network a task's network stands for: swarm's predefined networks are the engines'
own, an overlay is the node's ``shl-<id>``; and the engine labels in which a node says whether it
can encrypt overlay traffic.

Shared by the manager (control API, allocator, dispatcher) and the agent (executor), so it depends on
the models only. See :mod:`shoal.controlapi.predefined` for how the objects are made and used, and
:mod:`shoal.agent.encryption` / :mod:`shoal.controlapi.encryption` for the labels.
"""

from __future__ import annotations

from shoal.models import Network, Task

# The engine network (and Linux bridge) a node makes for a swarm overlay network: named after it, so
# the manager can name it too (a standalone container joining the network, api/attach.py).
BRIDGE_PREFIX = "shl-"
PREDEFINED_LABEL = "com.docker.swarm.predefined"
ENCRYPTION_LABEL = "shoal.encryption"  # ipsec | wireguard | none
ENCRYPTION_REASON_LABEL = "shoal.encryption.reason"  # why none
# name -> driver, as moby's cnmallocator ``PredefinedNetworks()`` on Linux.
PREDEFINED_NETWORKS = {"bridge": "bridge", "host": "host"}


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + network_id[:10]  # 14 characters: within the kernel's 15


def engine_network_name(network_id: str) -> str:
    """The engine network's name: the bridge's (short, unique per swarm network, and greppable)."""
    return bridge_name(network_id)


def is_predefined(net: Network | None) -> bool:
    """A swarm object standing for the engines' own ``host`` or ``bridge`` network."""
    return net is not None and (net.Spec.Labels or {}).get(PREDEFINED_LABEL) == "true"


def predefined_mode(net: Network | None) -> str:
    """The engine NetworkMode a predefined network stands for ("host", "bridge"), else ""."""
    return net.Spec.Name if net is not None and is_predefined(net) else ""


def task_network_mode(task: Task) -> str:
    """The engine network a task runs on when it is on a predefined network ("host", "bridge"), else ""."""
    for att in task.NetworksAttachments or ():
        mode = predefined_mode(att.Network)
        if mode:
            return mode
    return ""
