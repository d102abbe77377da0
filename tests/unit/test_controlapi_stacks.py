"""Stacks over a MemoryStore: validation before any write, diffs, prune, scale, remove, and the
deployer that creates services in depends_on order."""

from __future__ import annotations

import msgspec
import pytest

from shoal.controlapi import stacks
from shoal.errors import InvalidArgument, NotFound
from shoal.models import (
    ContainerSpec,
    GlobalService,
    ReplicatedService,
    ServiceMode,
    ServiceSpec,
    StackResources,
    StackSpec,
    TaskSpec,
    TaskState,
)
from shoal.orchestrator.replicated import ReplicatedOrchestrator
from shoal.orchestrator.stacks import StackDeployer
from shoal.orchestrator.testutils import FakeAgent, make_node, running, set_task_state, wait_for
from shoal.scheduler import Scheduler
from shoal.store import MemoryStore, NullBackend


def svc(image: str = "busybox:latest", replicas: int = 1, mode: ServiceMode | None = None) -> ServiceSpec:
    return ServiceSpec(
        TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image=image)),
        Mode=mode or ServiceMode(Replicated=ReplicatedService(Replicas=replicas)),
    )


def stack(name: str = "vote", order: list[list[str]] | None = None, wait_for_: dict | None = None,
          **services: ServiceSpec) -> StackSpec:
    return StackSpec(Name=name, Compose="services: {}\n",
                     Resources=StackResources(Services=services, Order=order, WaitFor=wait_for_))


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore(NullBackend())
    make_node(s, "host-1", node_id="n1")
    return s


def snapshot(store: MemoryStore) -> bytes:
    return msgspec.json.encode([sorted(store.list(k), key=lambda o: o.ID) for k in ("service", "stack")])


def test_deploy_creates_labelled_services_and_the_stack(store: MemoryStore) -> None:
    res = stacks.deploy_stack(store, stack(web=svc(), redis=svc("redis:7")))
    names = sorted(s.Spec.Name for s in store.list("service"))
    assert names == ["vote_redis", "vote_web"]
    for s in store.list("service"):
        assert s.Spec.Labels[stacks.NAMESPACE] == "vote"
    assert {(c.name, c.action) for c in res.changes} == {("vote_web", "create"), ("vote_redis", "create")}
    st = stacks.get_stack(store, "vote")
    assert st.Status is not None and st.Status.State == "deployed"
    assert stacks.list_stacks(store)[0]["Services"] == 2


def test_redeploy_changes_only_what_changed(store: MemoryStore) -> None:
    stacks.deploy_stack(store, stack(web=svc(), redis=svc("redis:7")))
    before = {s.Spec.Name: s.Version.Index for s in store.list("service")}
    res = stacks.deploy_stack(store, stack(web=svc("busybox:2"), redis=svc("redis:7")))
    actions = {c.name: (c.action, c.detail) for c in res.changes}
    assert actions["vote_redis"] == ("unchanged", "")
    assert actions["vote_web"][0] == "update" and "Image" in actions["vote_web"][1]
    after = {s.Spec.Name: s for s in store.list("service")}
    assert after["vote_redis"].Version.Index == before["vote_redis"]
    assert after["vote_web"].Spec.TaskTemplate.ContainerSpec.Image == "busybox:2"
    assert after["vote_web"].PreviousSpec is not None


def test_dropped_services_stay_unless_pruned(store: MemoryStore) -> None:
    stacks.deploy_stack(store, stack(web=svc(), redis=svc()))
    res = stacks.deploy_stack(store, stack(web=svc()))
    assert store.service_by_name("vote_redis") is not None
    assert any(c.name == "vote_redis" and "prune" in c.detail for c in res.changes)
    stacks.deploy_stack(store, stack(web=svc()), prune=True)
    assert store.service_by_name("vote_redis") is None
    assert store.service_by_name("vote_web") is not None


def test_dry_run_writes_nothing_and_plans_placement(store: MemoryStore) -> None:
    before = snapshot(store)
    res = stacks.deploy_stack(store, stack(web=svc(replicas=2)), dry_run=True)
    assert snapshot(store) == before
    assert [c.action for c in res.changes] == ["create"]
    plan = res.plans["vote_web"]
    assert [(p["NodeID"], p["Node"]) for p in plan] == [("n1", "host-1")] * 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (stack(name="-x", web=svc()), "invalid stack name"),
        (stack(name=""), "stack name is required"),
        (stack(), "defines no service"),
        (stack(web=svc(image="")), "service web: "),
        (stack(web=svc(), db=svc(), order=[["web"]]), "Order must list every service"),
        (stack(web=svc(), order=[["web"]], wait_for_={"web": {"db": "service_started"}}), "undefined service db"),
        (stack(web=svc(), db=svc(), order=[["web"], ["db"]], wait_for_={"web": {"db": "service_started"}}),
         "which Order places after it"),
        (stack(web=svc(), db=svc(), order=[["db"], ["web"]], wait_for_={"web": {"db": "soon"}}),
         "unknown depends_on condition"),
    ],
)
def test_bad_stacks_are_rejected_whole(store: MemoryStore, bad: StackSpec, message: str) -> None:
    stacks.deploy_stack(store, stack(web=svc()))
    before = snapshot(store)
    with pytest.raises(InvalidArgument, match=message):
        stacks.deploy_stack(store, bad)
    assert snapshot(store) == before


def test_a_bad_service_anywhere_writes_nothing(store: MemoryStore) -> None:
    before = snapshot(store)
    with pytest.raises(InvalidArgument):
        stacks.deploy_stack(store, stack(a=svc(), b=svc(), c=svc(image="Bad Image")))
    assert snapshot(store) == before


def test_unknown_external_network_is_404(store: MemoryStore) -> None:
    spec = stack(web=svc())
    assert spec.Resources is not None
    spec = msgspec.structs.replace(spec, Resources=msgspec.structs.replace(spec.Resources, ExternalNetworks=["proxy"]))
    with pytest.raises(NotFound, match="external"):
        stacks.deploy_stack(store, spec)
    assert store.list("stack") == []


def test_scale_checks_every_name_first(store: MemoryStore) -> None:
    stacks.deploy_stack(store, stack(web=svc(), worker=svc(), agent=svc(mode=ServiceMode(Global=GlobalService()))))
    with pytest.raises(NotFound):
        stacks.scale_stack(store, "vote", {"web": 3, "nope": 2})
    with pytest.raises(InvalidArgument, match="not a replicated service"):
        stacks.scale_stack(store, "vote", {"web": 3, "agent": 2})
    with pytest.raises(InvalidArgument, match="invalid replicas"):
        stacks.scale_stack(store, "vote", {"web": -1})
    assert store.service_by_name("vote_web").Spec.Mode.Replicated.Replicas == 1
    stacks.scale_stack(store, "vote", {"web": 3, "worker": 2})
    assert store.service_by_name("vote_web").Spec.Mode.Replicated.Replicas == 3
    assert store.service_by_name("vote_worker").Spec.Mode.Replicated.Replicas == 2
    kept = stacks.get_stack(store, "vote").Spec.Resources
    assert kept is not None and kept.Services is not None
    assert kept.Services["web"].Mode.Replicated.Replicas == 3
    # A re-deploy of the stored stack now changes nothing.
    res = stacks.deploy_stack(store, stacks.get_stack(store, "vote").Spec)
    assert {c.action for c in res.changes} == {"unchanged"}


def test_remove_takes_everything_and_404_after(store: MemoryStore) -> None:
    stacks.deploy_stack(store, stack(web=svc(), redis=svc()))
    stacks.remove_stack(store, "vote")
    assert store.list("service") == [] and store.list("stack") == []
    with pytest.raises(NotFound):
        stacks.remove_stack(store, "vote")


def test_label_only_stacks_are_listed_and_removable(store: MemoryStore) -> None:
    from shoal.controlapi.services import create_service

    create_service(store, msgspec.structs.replace(svc(), Name="cli_web", Labels={stacks.NAMESPACE: "cli"}))
    assert [s["Name"] for s in stacks.list_stacks(store)] == ["cli"]
    stacks.remove_stack(store, "cli")
    assert store.list("service") == []


async def test_dependents_wait_for_their_dependencies(store: MemoryStore) -> None:
    spec = stack(
        db=svc(), worker=svc(), web=svc(),
        order=[["db"], ["worker"], ["web"]],
        wait_for_={"worker": {"db": "service_healthy"}, "web": {"worker": "service_started"}},
    )
    agent = FakeAgent(store)
    agent.paused = True
    async with running(ReplicatedOrchestrator(store), Scheduler(store), StackDeployer(store), agent):
        res = stacks.deploy_stack(store, spec)
        assert [(c.name, c.action) for c in res.changes] == [
            ("vote_db", "create"), ("vote_worker", "wait"), ("vote_web", "wait")]
        st = stacks.get_stack(store, "vote")
        assert st.Status is not None and st.Status.Pending == ["worker", "web"]
        await wait_for(lambda: bool(store.tasks_of_service(store.service_by_name("vote_db").ID)), what="db task")
        assert store.service_by_name("vote_worker") is None
        agent.paused = False
        agent.step()
        await wait_for(lambda: store.service_by_name("vote_web") is not None, what="web created")
        st = stacks.get_stack(store, "vote")
        assert st.Status is not None and st.Status.State == "deployed" and not st.Status.Pending


async def test_a_dependency_that_never_comes_up_stops_blocking_after_the_timeout(store: MemoryStore) -> None:
    spec = stack(db=svc(), web=svc(), order=[["db"], ["web"]], wait_for_={"web": {"db": "service_healthy"}})
    async with running(ReplicatedOrchestrator(store), Scheduler(store), StackDeployer(store, timeout_s=0.3)):
        stacks.deploy_stack(store, spec)
        db = store.service_by_name("vote_db")
        await wait_for(lambda: bool(store.tasks_of_service(db.ID)), what="db task")
        set_task_state(store, [t.ID for t in store.tasks_of_service(db.ID)], TaskState.FAILED, exit_code=1)
        await wait_for(lambda: store.service_by_name("vote_web") is not None, within=5, what="web after timeout")
        st = stacks.get_stack(store, "vote")
        assert st.Status is not None and "without db" in st.Status.Message


async def test_stack_object_goes_when_docker_stack_rm_removes_its_services(store: MemoryStore) -> None:
    async with running(StackDeployer(store)):
        stacks.deploy_stack(store, stack(web=svc()))
        with store.tx() as tx:
            tx.delete("service", store.service_by_name("vote_web").ID)
        await wait_for(lambda: store.list("stack") == [], what="stack forgotten")


def test_redeploy_keeps_a_forced_update(store: MemoryStore) -> None:
    from shoal.controlapi.services import update_service

    stacks.deploy_stack(store, stack(web=svc()))
    cur = store.service_by_name("vote_web")
    task = msgspec.structs.replace(cur.Spec.TaskTemplate, ForceUpdate=3)
    forced = msgspec.structs.replace(cur.Spec, TaskTemplate=task)
    update_service(store, cur.ID, cur.Version.Index, forced)
    res = stacks.deploy_stack(store, stack(web=svc()))
    assert [c.action for c in res.changes] == ["unchanged"]
    res = stacks.deploy_stack(store, stack(web=svc("busybox:2")))
    assert [c.action for c in res.changes] == ["update"]
    assert store.service_by_name("vote_web").Spec.TaskTemplate.ForceUpdate == 3
