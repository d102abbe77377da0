"""Task listing: filters, `_up-to-date`, and use of the store's indexes."""

from __future__ import annotations

import msgspec
import pytest

from shoal import controlapi
from shoal.api.testing import add_node, add_task
from shoal.errors import InvalidArgument, NotFound
from shoal.models import ContainerSpec, ServiceSpec, TaskSpec, TaskState
from shoal.store import MemoryStore, NullBackend


def spec(name: str, image: str = "busybox") -> ServiceSpec:
    return ServiceSpec(Name=name, TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image=image)))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(NullBackend())


def ids(tasks) -> set[str]:
    return {t.ID for t in tasks}


def test_filters(store: MemoryStore) -> None:
    n1, n2 = add_node(store, "alpha"), add_node(store, "beta")
    web = controlapi.create_service(store, spec("web"))
    db = controlapi.create_service(store, spec("db"))
    w1 = add_task(store, web, slot=1, node_id=n1.ID)
    w2 = add_task(store, web, slot=2, node_id=n2.ID)
    w1_old = add_task(store, web, slot=1, node_id=n1.ID, state=TaskState.SHUTDOWN, desired=TaskState.SHUTDOWN)
    d1 = add_task(store, db, slot=1, node_id=n2.ID)

    def q(**f: list[str]) -> set[str]:
        return ids(controlapi.list_tasks(store, f))

    assert q() == {w1.ID, w2.ID, w1_old.ID, d1.ID}
    assert q(service=["web"]) == {w1.ID, w2.ID, w1_old.ID}
    assert q(service=[web.ID[:5]]) == {w1.ID, w2.ID, w1_old.ID}
    assert q(node=["beta"]) == {w2.ID, d1.ID}
    assert q(node=[n2.ID]) == {w2.ID, d1.ID}
    assert q(service=["web"], node=["beta"]) == {w2.ID}
    assert q(**{"desired-state": ["running"]}) == {w1.ID, w2.ID, d1.ID}
    assert q(**{"desired-state": ["shutdown"]}) == {w1_old.ID}
    assert q(name=["web.1"]) == {w1.ID, w1_old.ID}
    assert q(name=["web"]) == {w1.ID, w2.ID, w1_old.ID}
    assert q(name=[f"db.1.{d1.ID}"]) == {d1.ID}
    assert q(id=[d1.ID[:8]]) == {d1.ID}
    with pytest.raises(NotFound, match="service nope not found"):
        q(service=["nope"])
    with pytest.raises(NotFound, match="node nope not found"):
        q(node=["nope"])
    with pytest.raises(InvalidArgument, match="Invalid desired-state filter: 'sleeping'"):
        q(**{"desired-state": ["sleeping"]})


def test_up_to_date_compares_specs_not_versions(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec("web"))
    current = add_task(store, svc, slot=1)
    # A later write that does not touch the spec (as the orchestrator's status updates do) bumps
    # the service's Version: the task must still count as up to date.
    with store.tx() as tx:
        tx.update("service", msgspec.structs.replace(store.get("service", svc.ID), UpdateStatus=None))
    svc = store.get("service", svc.ID)
    assert current.SpecVersion.Index != svc.Version.Index
    assert ids(controlapi.list_tasks(store, {"service": ["web"], "_up-to-date": ["true"]})) == {current.ID}

    svc = controlapi.update_service(store, svc.ID, svc.Version.Index, spec("web", image="busybox:2"))
    fresh = add_task(store, svc, slot=1)
    got = ids(controlapi.list_tasks(store, {"service": ["web"], "_up-to-date": ["true"]}))
    assert got == {fresh.ID}
    assert ids(controlapi.list_tasks(store, {"service": ["web"]})) == {current.ID, fresh.ID}


def test_filtered_queries_use_indexes(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    node = add_node(store, "alpha")
    web = controlapi.create_service(store, spec("web"))
    t = add_task(store, web, node_id=node.ID)
    real_list = store.list

    def guarded(kind: str):
        assert kind != "task", "a filtered task query must not scan every task"
        return real_list(kind)

    monkeypatch.setattr(store, "list", guarded)
    assert ids(controlapi.list_tasks(store, {"service": ["web"]})) == {t.ID}
    assert ids(controlapi.list_tasks(store, {"node": ["alpha"]})) == {t.ID}
    assert ids(controlapi.list_tasks(store, {"name": ["web.1"]})) == {t.ID}
    assert ids(controlapi.list_tasks(store, {"service": ["web"], "_up-to-date": ["1"]})) == {t.ID}
    assert controlapi.get_task(store, t.ID).ID == t.ID


def test_get_task(store: MemoryStore) -> None:
    web = controlapi.create_service(store, spec("web"))
    t = add_task(store, web)
    assert controlapi.get_task(store, t.ID[:10]).ID == t.ID
    with pytest.raises(NotFound, match="task nope not found"):
        controlapi.get_task(store, "nope")
