"""The HA pieces that need no etcd: a follower's view (apply_remote, reset, refused commits), the
store settings of `swarm init`, which calls a follower keeps local, and `node ls` reachability."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from shoal.api.forward import is_local
from shoal.errors import InvalidArgument, Unavailable
from shoal.ha import ManagerReachability, StoreSettings, init_settings
from shoal.models import ManagerStatus, NodeRole, NodeSpec
from shoal.orchestrator.testutils import make_node, make_service, make_store
from shoal.store import Snapshot
from shoal.store.base import KINDS
from shoal.store.etcd import ETCD_MAX_TXN_OPS
from shoal.store.etcdproc import ManagedEtcd


def test_a_follower_applies_the_leaders_batches_and_refuses_its_own() -> None:
    leader, follower = make_store(), make_store()
    follower.refuse_writes = "not the leader"
    events = []
    w = follower.watch("service")
    svc = make_service(leader, "web")
    follower.apply_remote(leader.revision, [("service", leader.get("service", svc.ID))], [])
    events += w.drain()
    assert follower.get("service", svc.ID) == leader.get("service", svc.ID)
    assert follower.revision == leader.revision and follower.writer.durable == leader.revision
    assert [e.action.value for e in events] == ["create"]
    with pytest.raises(Unavailable, match="not the leader"), follower.tx() as tx:
        tx.delete("service", svc.ID)
    assert follower.get("service", svc.ID) is not None

    follower.apply_remote(leader.revision + 1, [], [("service", svc.ID)])
    assert follower.get("service", svc.ID) is None
    assert [e.action.value for e in w.drain()] == ["delete"]


def test_reset_publishes_only_the_differences() -> None:
    store = make_store()
    a, b = make_service(store, "a"), make_service(store, "b")
    w = store.watch("service")
    renamed = msgspec.structs.replace(store.get("service", b.ID),
                                      Spec=msgspec.structs.replace(b.Spec, Name="b2"))
    c = msgspec.structs.replace(store.get("service", a.ID), ID="c" * 25)
    snap = Snapshot(store.revision - 1, {k: [] for k in KINDS} | {"service": [store.get("service", a.ID), renamed, c]})
    store.reset(snap)
    got = {(e.action.value, e.obj.ID) for e in w.drain()}
    assert got == {("update", b.ID), ("create", c.ID)}  # a unchanged: no event
    assert store.service_by_name("b2") is not None and store.service_by_name("b") is None
    assert store.revision == snap.revision  # a deposed leader's undurable revisions are gone


def test_init_settings() -> None:
    assert init_settings("", [], "10.0.0.1", "n1") == StoreSettings()
    managed = init_settings("etcd", [], "10.0.0.1", "n1", client_port=3379)
    assert managed.managed and managed.endpoints == ["https://10.0.0.1:3379"] and managed.peer_url == "https://10.0.0.1:3380"
    external = init_settings("", ["http://e1:2379", "http://e2:2379"], "10.0.0.1", "n1")
    assert external.on_etcd and not external.managed and external.endpoints == ["http://e1:2379", "http://e2:2379"]
    with pytest.raises(InvalidArgument, match="sqlite or etcd"):
        init_settings("zk", [], "10.0.0.1", "n1")
    with pytest.raises(InvalidArgument, match="only for the etcd members it runs itself"):
        init_settings("etcd", ["https://e1:2379"], "10.0.0.1", "n1")
    with pytest.raises(InvalidArgument, match="store is sqlite"):
        init_settings("sqlite", ["http://e1:2379"], "10.0.0.1", "n1")
    assert StoreSettings.from_dict(managed.to_dict() | {"from_a_newer_shoal": 1}) == managed
    # The leader's transactions: bigger on members Shoal runs (and starts with higher limits) than
    # on an etcd the user runs, whose limits are etcd's defaults.
    member = ManagedEtcd(name="n1", data_dir=Path("/nonexistent"), client_url="", peer_url="")
    assert managed.txn_limits["max_ops"] <= member.max_txn_ops
    assert managed.txn_limits["max_bytes"] <= member.max_request_bytes
    assert managed.txn_limits["max_ops"] > ETCD_MAX_TXN_OPS and external.txn_limits == {}


@pytest.mark.parametrize(("path", "local"), [
    ("/swarm/leave", True), ("/v1.41/swarm/join", True), ("/containers/abc/start", True),
    ("/v1.41/containers/create", True), ("/services/create", False), ("/v1.41/swarm/update", False),
    ("/v1.41/nodes/x/update", False), ("/networks/create", False),
])
def test_what_a_follower_keeps_local(path: str, local: bool) -> None:
    assert is_local(path) is local


class _Terms:
    def __init__(self, live: set[str]) -> None:
        self.live = live

    async def reachable(self) -> set[str]:
        return self.live


def test_node_ls_shows_leader_reachable_and_unreachable() -> None:
    store = make_store()
    ids = []
    for i in range(3):
        n = make_node(store, f"m{i}")
        with store.tx() as tx:
            tx.update("node", msgspec.structs.replace(
                n, Spec=NodeSpec(Role=NodeRole.MANAGER), ManagerStatus=ManagerStatus(Leader=i == 0, Addr=f"m{i}:2377")))
        ids.append(n.ID)
    worker = make_node(store, "w")
    ManagerReachability(store, _Terms(set()), ids[1]).mark({ids[1], ids[2]})  # ids[1] is the new leader
    status = {i: store.get("node", i).ManagerStatus for i in ids}
    assert [(s.Leader, s.Reachability) for s in status.values()] == [
        (False, "unreachable"), (True, "reachable"), (False, "reachable")]
    assert store.get("node", worker.ID).ManagerStatus is None
    rev = store.revision
    ManagerReachability(store, _Terms(set()), ids[1]).mark({ids[1], ids[2]})
    assert store.revision == rev  # nothing changed: no write

