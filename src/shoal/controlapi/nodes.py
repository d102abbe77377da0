"""Nodes: list with filters, update the spec (role, availability, labels), remove."""

from __future__ import annotations

import msgspec

from shoal.controlapi.errors import precondition
from shoal.controlapi.filters import Filters, match_labels, match_prefix
from shoal.controlapi.resolve import get_node
from shoal.errors import InvalidArgument
from shoal.models import Node, NodeRole, NodeSpec, NodeState
from shoal.store import MemoryStore

NODE_FILTERS = ("id", "label", "node.label", "membership", "name", "role")


def list_nodes(store: MemoryStore, filters: Filters | None = None) -> list[Node]:
    """Nodes matching Docker's filters: id/name prefixes, engine ``label``, ``node.label``, role."""
    filters = filters or {}
    ids, names = filters.get("id"), filters.get("name")
    labels, node_labels = filters.get("label"), filters.get("node.label")
    roles, membership = filters.get("role"), filters.get("membership")
    for r in roles or ():
        if r not in ("manager", "worker"):
            raise InvalidArgument(f"Invalid role filter: '{r}'")
    for m in membership or ():
        if m not in ("accepted", "pending"):
            raise InvalidArgument(f"Invalid membership filter: '{m}'")
    out: list[Node] = []
    for n in store.list("node"):
        if ids and not match_prefix(n.ID, ids):
            continue
        if names and not (match_prefix(n.Description.Hostname, names) or match_prefix(n.Spec.Name, names)):
            continue
        if labels and not match_labels(n.Description.Engine.Labels, labels):
            continue
        if node_labels and not match_labels(n.Spec.Labels, node_labels):
            continue
        if roles and n.Spec.Role.value not in roles:
            continue
        # Shoal admits nodes by token only, so every stored node is "accepted".
        if membership and "accepted" not in membership:
            continue
        out.append(n)
    return out


def _managers(store: MemoryStore) -> list[Node]:
    return [n for n in store.list("node") if n.Spec.Role is NodeRole.MANAGER]


def update_node(store: MemoryStore, ref: str, version: int, spec: NodeSpec) -> Node:
    """Replace a node's spec; a stale ``version`` is 409; the last manager cannot be demoted."""
    node = get_node(store, ref)
    if node.Spec.Role is NodeRole.MANAGER and spec.Role is NodeRole.WORKER:
        managers = _managers(store)
        if len(managers) == 1 and managers[0].ID == node.ID:
            raise precondition("attempting to demote the last manager of the swarm")
    new = msgspec.structs.replace(node, Spec=spec)
    with store.tx() as tx:
        tx.update("node", new, expected_version=version)
    return new


def remove_node(store: MemoryStore, ref: str, force: bool = False) -> None:
    """Remove a node from the cluster: managers must be demoted first, live nodes need ``force``."""
    node = get_node(store, ref)
    if node.Spec.Role is NodeRole.MANAGER or node.ManagerStatus is not None:
        raise precondition(
            f"node {node.ID} is a cluster manager and is a member of the raft cluster. "
            "It must be demoted to worker before removal"
        )
    if not force and node.Status.State is NodeState.READY:
        raise precondition(f"node {node.ID} is not down and can't be removed")
    with store.tx() as tx:
        tx.delete("node", node.ID)
