"""Node and cluster rules of the control API."""

from __future__ import annotations

import msgspec
import pytest

from shoal import controlapi
from shoal.api.testing import FakeManager, add_node
from shoal.errors import Conflict, InvalidArgument, NotFound, NotInSwarm
from shoal.models import (
    CAConfig,
    InitRequest,
    NodeAvailability,
    NodeRole,
    NodeState,
    OrchestrationConfig,
    SwarmSpec,
)
from shoal.store import MemoryStore, NullBackend


@pytest.fixture
async def manager() -> FakeManager:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    return m


def test_list_filters() -> None:
    store = MemoryStore(NullBackend())
    a = add_node(store, "alpha", role=NodeRole.MANAGER, labels={"zone": "eu"})
    b = add_node(store, "beta", engine_labels=None, labels={"zone": "us"})

    def q(**f: list[str]) -> set[str]:
        return {n.Description.Hostname for n in controlapi.list_nodes(store, f)}

    assert q() == {"alpha", "beta"}
    assert q(role=["manager"]) == {"alpha"}
    assert q(role=["worker"]) == {"beta"}
    assert q(name=["al"]) == {"alpha"}
    assert q(id=[b.ID[:7]]) == {"beta"}
    assert q(**{"node.label": ["zone=us"]}) == {"beta"}
    assert q(**{"node.label": ["zone"]}) == {"alpha", "beta"}
    assert q(membership=["accepted"]) == {"alpha", "beta"}
    assert q(membership=["pending"]) == set()
    with pytest.raises(InvalidArgument):
        q(role=["boss"])
    assert controlapi.get_node(store, "alpha").ID == a.ID


async def test_update_node(manager: FakeManager) -> None:
    store = manager.store
    node = store.get("node", manager.node_id)
    spec = msgspec.structs.replace(node.Spec, Availability=NodeAvailability.DRAIN, Labels={"a": "b"})
    new = controlapi.update_node(store, node.ID, node.Version.Index, spec)
    assert store.get("node", node.ID).Spec.Availability is NodeAvailability.DRAIN
    rev = store.revision
    with pytest.raises(Conflict, match="update out of sequence"):
        controlapi.update_node(store, node.ID, node.Version.Index, spec)
    demote = msgspec.structs.replace(spec, Role=NodeRole.WORKER)
    with pytest.raises(InvalidArgument) as exc:
        controlapi.update_node(store, node.ID, new.Version.Index, demote)
    assert exc.value.message == (
        "rpc error: code = FailedPrecondition desc = attempting to demote the last manager of the swarm"
    )
    with pytest.raises(NotFound, match="node ghost not found"):
        controlapi.update_node(store, "ghost", 1, spec)
    assert store.revision == rev


async def test_remove_node(manager: FakeManager) -> None:
    store = manager.store
    me = store.get("node", manager.node_id)
    up = add_node(store, "worker-up")
    down = add_node(store, "worker-down", state=NodeState.DOWN)
    rev = store.revision
    with pytest.raises(InvalidArgument) as exc:
        controlapi.remove_node(store, me.ID, force=True)
    assert exc.value.message == (
        f"rpc error: code = FailedPrecondition desc = node {me.ID} is a cluster manager and is a member of the "
        "raft cluster. It must be demoted to worker before removal"
    )
    with pytest.raises(InvalidArgument, match=f"node {up.ID} is not down and can't be removed"):
        controlapi.remove_node(store, "worker-up")
    assert store.revision == rev
    controlapi.remove_node(store, "worker-down")
    controlapi.remove_node(store, up.ID, force=True)
    assert store.get("node", down.ID) is None and store.get("node", up.ID) is None


async def test_cluster_update_and_token_rotation(manager: FakeManager) -> None:
    store = manager.store
    cur = controlapi.inspect_cluster(store)
    tokens = cur.JoinTokens
    spec = msgspec.structs.replace(cur.Spec, Orchestration=OrchestrationConfig(TaskHistoryRetentionLimit=2))
    new = controlapi.update_cluster(store, cur.Version.Index, spec, rotate_worker_token=True)
    assert new.Spec.Orchestration.TaskHistoryRetentionLimit == 2
    assert new.JoinTokens.Worker != tokens.Worker and new.JoinTokens.Worker.startswith("SWMTKN-1-")
    assert new.JoinTokens.Manager == tokens.Manager
    # The CA digest part stays the same: only the secret changes.
    assert new.JoinTokens.Worker.split("-")[2] == tokens.Worker.split("-")[2]
    rev = store.revision
    with pytest.raises(Conflict):
        controlapi.update_cluster(store, cur.Version.Index, spec, rotate_manager_token=True)
    with pytest.raises(InvalidArgument, match="minimum certificate expiry"):
        controlapi.update_cluster(store, new.Version.Index, SwarmSpec(CAConfig=CAConfig(NodeCertExpiry=1)))
    assert store.revision == rev and store.cluster().JoinTokens.Manager == tokens.Manager


def test_inspect_cluster_outside_swarm() -> None:
    with pytest.raises(NotInSwarm):
        controlapi.inspect_cluster(MemoryStore(NullBackend()))
