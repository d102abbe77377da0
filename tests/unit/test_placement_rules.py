"""Placement rules through the pure planner (same pipeline, strategy and preemption as the scheduler)."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from shoal.controlapi.validate import check_reservation_fits, check_swarm_labels, validate_service_spec
from shoal.errors import InvalidArgument
from shoal.ids import new_id
from shoal.models import (
    Cluster,
    ContainerSpec,
    EngineDescription,
    GenericResource,
    Placement,
    PlacementPreference,
    ReplicatedService,
    ResourceRequirements,
    ResourceReservations,
    Resources,
    ServiceMode,
    ServiceSpec,
    SwarmSpec,
    TaskSpec,
    TaskState,
    Version,
)
from shoal.orchestrator.task import new_task
from shoal.orchestrator.testutils import make_node, make_service, make_store
from shoal.scheduler import plan
from shoal.scheduler.expressions import parse_rules

GiB = 1 << 30
CPU = 1_000_000_000


def set_cluster_labels(store, labels):
    cl = store.cluster()
    with store.tx() as tx:
        if cl is None:
            tx.create(
                "cluster",
                Cluster(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=SwarmSpec(Labels=labels)),
            )
        else:
            tx.update("cluster", msgspec.structs.replace(cl, Spec=SwarmSpec(Labels=labels)))


def svc_spec(
    replicas=1,
    *,
    cpu=0,
    mem=0,
    gpus=0,
    constraints=None,
    prefs=None,
    env=None,
    clabels=None,
    labels=None,
    image="busybox:latest",
    name="web",
):
    gen = [GenericResource(DiscreteResourceSpec={"Kind": "gpu", "Value": gpus})] if gpus else None
    res = (
        ResourceRequirements(Reservations=ResourceReservations(NanoCPUs=cpu, MemoryBytes=mem, GenericResources=gen))
        if cpu or mem or gen
        else None
    )
    placement = None
    if constraints or prefs:
        placement = Placement(
            Constraints=constraints,
            Preferences=[PlacementPreference(Spread={"SpreadDescriptor": p}) for p in prefs] if prefs else None,
        )
    return ServiceSpec(
        Name=name,
        Labels=labels,
        TaskTemplate=TaskSpec(
            ContainerSpec=ContainerSpec(Image=image, Env=env, Labels=clabels), Resources=res, Placement=placement
        ),
        Mode=ServiceMode(Replicated=ReplicatedService(replicas)),
    )


def run_on(store, node, spec, n=1, *, name=None):
    """Existing RUNNING tasks of a service made from ``spec`` on ``node``."""
    svc = make_service(store, name or spec.Name, replicas=0, template=spec.TaskTemplate, Labels=spec.Labels)
    tasks = []
    with store.tx() as tx:
        for i in range(n):
            t = new_task(svc, i + 1)
            t = msgspec.structs.replace(
                t, NodeID=node.ID, Status=msgspec.structs.replace(t.Status, State=TaskState.RUNNING)
            )
            tx.create("task", t)
            tasks.append(t)
    return svc, tasks


def where(result):
    return Counter(p.node_id for p in result)


# --------------------------------------------------------------------------- strategies


def test_spread_is_the_default_and_binpack_fills_the_fullest_node_first():
    store = make_store()
    n1, n2, n3 = (make_node(store, f"n{i}") for i in range(1, 4))
    run_on(store, n2, svc_spec(cpu=CPU), 1, name="other")
    assert where(plan(store, svc_spec(3))) == {n1.ID: 1, n2.ID: 1, n3.ID: 1}
    set_cluster_labels(store, {"shoal.strategy": "binpack"})
    # n2 already has 1 of 4 CPUs reserved: binpack fills it (4 CPU) before touching another node.
    res = plan(store, svc_spec(5, cpu=CPU))
    assert [p.node_id for p in res[:3]] == [n2.ID] * 3
    assert where(res)[n2.ID] == 3 and len(where(res)) == 2
    # Per-service override back to spread.
    res = plan(store, svc_spec(3, cpu=CPU, labels={"shoal.strategy": "spread"}))
    assert where(res) == {n1.ID: 1, n2.ID: 1, n3.ID: 1}


def test_binpack_without_reservations_counts_tasks():
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    run_on(store, n1, svc_spec(), 2, name="other")
    res = plan(store, svc_spec(4, labels={"shoal.strategy": "binpack"}))
    assert where(res) == {n1.ID: 4}
    assert n2.ID not in where(res)


def test_random_strategy_places_everything_on_eligible_nodes():
    store = make_store()
    nodes = [make_node(store, f"n{i}", labels={"ok": "1" if i < 5 else "0"}) for i in range(10)]
    ok = {n.ID for n in nodes[:5]}
    res = plan(store, svc_spec(200, constraints=["node.labels.ok==1"], labels={"shoal.strategy": "random"}))
    counts = where(res)
    assert set(counts) == ok and sum(counts.values()) == 200
    assert all(p.reason == "" for p in res)


def test_random_strategy_is_uniform_over_eligible_nodes():
    """Every pick uniform over the nodes: 5,000 tasks on 5 nodes give each about 1,000 (sd ~28)."""
    store = make_store()
    nodes = [make_node(store, f"n{i}") for i in range(5)]
    counts = where(plan(store, svc_spec(5000, labels={"shoal.strategy": "random"})))
    assert set(counts) == {n.ID for n in nodes}
    assert all(850 <= c <= 1150 for c in counts.values()), counts


# --------------------------------------------------------------------------- resources


def test_overcommit_multiplies_capacity_and_explanations_name_the_resource():
    store = make_store()
    make_node(store, "n1", nano_cpus=2 * CPU, memory=4 * GiB)
    res = plan(store, svc_spec(3, cpu=CPU))
    assert [p.reason for p in res][-1] == "no suitable node (insufficient cpu on 1 node)"
    assert sum(p.node_id is not None for p in res) == 2
    set_cluster_labels(store, {"shoal.cpu-overcommit": "2"})
    assert all(p.node_id for p in plan(store, svc_spec(4, cpu=CPU)))
    res = plan(store, svc_spec(3, mem=2 * GiB))
    assert res[-1] == (3, None, "no suitable node (insufficient memory on 1 node)")
    set_cluster_labels(store, {"shoal.memory-overcommit": "1.5"})
    assert all(p.node_id for p in plan(store, svc_spec(3, mem=2 * GiB)))


def test_impossible_reservation_is_refused_against_the_biggest_node():
    store = make_store()
    check_reservation_fits(svc_spec(cpu=64 * CPU), [], None)  # no nodes yet: anything goes
    small, big = make_node(store, "s", nano_cpus=2 * CPU), make_node(store, "b", nano_cpus=4 * CPU, memory=8 * GiB)
    nodes = [small, big]
    check_reservation_fits(svc_spec(cpu=4 * CPU), nodes, None)
    with pytest.raises(InvalidArgument, match=r"^no node can satisfy the reservation: 5 CPUs requested"):
        check_reservation_fits(svc_spec(cpu=5 * CPU), nodes, None)
    with pytest.raises(InvalidArgument, match=r"no node can satisfy the reservation: .* memory"):
        check_reservation_fits(svc_spec(mem=9 * GiB), nodes, None)
    set_cluster_labels(store, {"shoal.cpu-overcommit": "2"})
    check_reservation_fits(svc_spec(cpu=8 * CPU), nodes, store.cluster())


def test_generic_resources_are_counted_per_kind():
    store = make_store()
    gpu = make_node(store, "gpu")
    with store.tx() as tx:
        node = store.get("node", gpu.ID)
        desc = msgspec.structs.replace(
            node.Description,
            Resources=Resources(
                NanoCPUs=4 * CPU,
                MemoryBytes=8 * GiB,
                GenericResources=[
                    GenericResource(DiscreteResourceSpec={"Kind": "gpu", "Value": 2}),
                    GenericResource(NamedResourceSpec={"Kind": "gpu", "Value": "GPU-uuid-3"}),
                ],
            ),
        )
        tx.update("node", msgspec.structs.replace(node, Description=desc))
    make_node(store, "plain")
    res = plan(store, svc_spec(4, gpus=1))
    assert [p.node_id for p in res[:3]] == [gpu.ID] * 3
    assert res[3].reason == "no suitable node (insufficient generic resources (gpu) on 2 nodes)"
    run_on(store, store.get("node", gpu.ID), svc_spec(gpus=2), 1, name="taken")
    assert plan(store, svc_spec(2, gpus=1))[1].reason.endswith("(gpu) on 2 nodes)")


# --------------------------------------------------------------------------- preferences


def test_preferences_spread_over_label_values_then_nodes_missing_label_form_a_group():
    store = make_store()
    a = make_node(store, "a1", labels={"zone": "a"})
    b1, b2 = make_node(store, "b1", labels={"zone": "b"}), make_node(store, "b2", labels={"zone": "b"})
    nolabel = make_node(store, "x")
    res = plan(store, svc_spec(9, prefs=["node.labels.zone"]))
    counts = where(res)
    assert counts[a.ID] == 3 and counts[nolabel.ID] == 3 and counts[b1.ID] + counts[b2.ID] == 3
    assert abs(counts[b1.ID] - counts[b2.ID]) == 1
    # Combined with binpack: zones stay even, but inside zone b one node is filled first.
    res = plan(store, svc_spec(6, cpu=CPU, prefs=["node.labels.zone"], labels={"shoal.strategy": "binpack"}))
    counts = where(res)
    assert counts[a.ID] == 2 and counts[nolabel.ID] == 2 and sorted([counts[b1.ID], counts[b2.ID]]) == [0, 2]


def test_nested_preferences_split_evenly_at_each_level():
    store = make_store()
    # Zone a has three racks, zone b one: zones get 6 each, then racks split their zone's share.
    nodes = {(z, r): make_node(store, f"{z}{r}", labels={"zone": z, "rack": r}) for z, r in ("a1", "a2", "a3", "b1")}
    res = plan(store, svc_spec(12, prefs=["node.labels.zone", "node.labels.rack"]))
    counts = where(res)
    assert counts[nodes["b", "1"].ID] == 6
    assert [counts[nodes["a", r].ID] for r in "123"] == [2, 2, 2]


# --------------------------------------------------------------------------- expressions


def test_classic_constraints_globs_regex_and_engine_labels():
    store = make_store()
    n1 = make_node(store, "node-1", labels={"region": "us-east"})
    n2 = make_node(store, "node-2", labels={"region": "eu-west"})
    with store.tx() as tx:
        node = store.get("node", n2.ID)
        desc = msgspec.structs.replace(node.Description, Engine=EngineDescription(Labels={"storage": "ssd"}))
        tx.update("node", msgspec.structs.replace(node, Description=desc))
    assert where(plan(store, svc_spec(2, env=["constraint:node==node-1"]))) == {n1.ID: 2}
    assert where(plan(store, svc_spec(2, env=["constraint:node!=node-1"]))) == {n2.ID: 2}
    assert where(plan(store, svc_spec(2, env=["constraint:region==us-*"]))) == {n1.ID: 2}
    assert where(plan(store, svc_spec(2, env=["constraint:region==/^eu/"]))) == {n2.ID: 2}
    assert where(plan(store, svc_spec(2, env=["constraint:storage==ssd"]))) == {n2.ID: 2}
    labels = {"com.docker.swarm.constraints": '["region==us-east"]'}
    assert where(plan(store, svc_spec(2, labels=labels))) == {n1.ID: 2}
    res = plan(store, svc_spec(1, env=["constraint:region==ap-*"]))
    assert res[0].reason == "no suitable node (constraint:region==ap-* not satisfied on 2 nodes)"


def test_soft_constraint_is_preferred_not_required():
    store = make_store()
    n1, n2 = make_node(store, "n1", labels={"disk": "ssd"}), make_node(store, "n2")
    assert where(plan(store, svc_spec(3, env=["constraint:disk==~ssd"]))) == {n1.ID: 3}
    assert where(plan(store, svc_spec(3, env=["constraint:disk!=~ssd"]))) == {n2.ID: 3}
    # Nobody satisfies it: placed anyway.
    assert sum(where(plan(store, svc_spec(2, env=["constraint:disk==~nvme"]))).values()) == 2


def test_classic_affinities_image_service_container():
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    run_on(store, n2, svc_spec(image="redis:7"), 1, name="cache")
    assert where(plan(store, svc_spec(2, env=["affinity:image==redis"]))) == {n2.ID: 2}
    assert where(plan(store, svc_spec(2, env=["affinity:image==redis:7"]))) == {n2.ID: 2}
    assert where(plan(store, svc_spec(2, env=["affinity:service==cache"]))) == {n2.ID: 2}
    assert where(plan(store, svc_spec(2, env=["affinity:service!=cache"]))) == {n1.ID: 2}
    assert where(plan(store, svc_spec(2, env=["affinity:container==cache.1"]))) == {n2.ID: 2}
    assert where(plan(store, svc_spec(2, env=["affinity:container==~cache.*"]))) == {n2.ID: 2}
    res = plan(store, svc_spec(1, env=["affinity:image==postgres"]))
    assert res[0] == (1, None, "no suitable node (affinity:image==postgres not satisfied on 2 nodes)")


def test_rancher_container_label_affinity_and_anti_affinity():
    store = make_store()
    n1, n2, n3 = (make_node(store, f"n{i}", labels={"tier": "web" if i < 3 else "db"}) for i in range(1, 4))
    run_on(store, n1, svc_spec(clabels={"app": "db"}), 1, name="db")
    ne = {"io.rancher.scheduler.affinity:container_label_ne": "app=db"}
    assert where(plan(store, svc_spec(2, labels=ne))) == {n2.ID: 1, n3.ID: 1}
    # Anti-affinity with itself: one per node at most, the rest explain why.
    self_ne = {"io.rancher.scheduler.affinity:container_label_ne": "app=web"}
    res = plan(store, svc_spec(4, clabels={"app": "web"}, labels=self_ne))
    assert sorted(where(res).values()) == [1, 1, 1, 1] and res[3].node_id is None
    assert res[3].reason == (
        "no suitable node (io.rancher.scheduler.affinity:container_label_ne: app=web not satisfied on 3 nodes)"
    )
    aff = {"io.rancher.scheduler.affinity:container_label": "app=db"}
    assert where(plan(store, svc_spec(2, labels=aff))) == {n1.ID: 2}
    soft = {"io.rancher.scheduler.affinity:container_label_ne_soft": "app=db"}
    assert n1.ID not in where(plan(store, svc_spec(2, labels=soft)))
    assert sum(where(plan(store, svc_spec(6, labels=soft))).values()) == 6
    host = {"io.rancher.scheduler.affinity:host_label": "tier=db"}
    assert where(plan(store, svc_spec(2, labels=host))) == {n3.ID: 2}
    host_soft = {"io.rancher.scheduler.affinity:host_label_soft": "tier=nowhere"}
    assert sum(where(plan(store, svc_spec(2, labels=host_soft))).values()) == 2


@pytest.mark.parametrize(
    ("env", "labels", "message"),
    [
        (["constraint:node"], None, "invalid constraint expression"),
        (["affinity:volume==x"], None, "key must be one of image, service, container"),
        (["constraint:zone==/([/"], None, "invalid regular expression"),
        (None, {"com.docker.swarm.constraints": "node==x"}, "expected a JSON list"),
        (None, {"io.rancher.scheduler.affinity:container_label": "novalue"}, "expected key=value"),
        (None, {"io.rancher.scheduler.affinity:foo": "a=b"}, "unsupported scheduling label"),
    ],
)
def test_malformed_expressions_are_refused(env, labels, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_rules(env, labels)
    spec = svc_spec(env=env, labels=labels)
    with pytest.raises(InvalidArgument, match=message):
        validate_service_spec(spec)


def test_service_and_swarm_label_validation():
    validate_service_spec(svc_spec(labels={"shoal.priority": "10", "shoal.strategy": "binpack"}))
    with pytest.raises(InvalidArgument, match="invalid priority '-1'"):
        validate_service_spec(svc_spec(labels={"shoal.priority": "-1"}))
    with pytest.raises(InvalidArgument, match="invalid priority"):
        validate_service_spec(svc_spec(labels={"shoal.priority": "high"}))
    with pytest.raises(InvalidArgument, match="invalid strategy 'fill'"):
        validate_service_spec(svc_spec(labels={"shoal.strategy": "fill"}))
    with pytest.raises(InvalidArgument, match="invalid placement preference"):
        validate_service_spec(svc_spec(prefs=["node.zone"]))
    with pytest.raises(InvalidArgument, match="invalid generic resource"):
        validate_service_spec(svc_spec(gpus=-1))
    check_swarm_labels({"shoal.strategy": "random", "shoal.cpu-overcommit": "4", "shoal.memory-overcommit": "1.5"})
    for bad in ({"shoal.cpu-overcommit": "0.5"}, {"shoal.memory-overcommit": "x"}, {"shoal.strategy": "x"}):
        with pytest.raises(InvalidArgument):
            check_swarm_labels(bad)


# --------------------------------------------------------------------------- explanations and plan


def test_explanation_counts_each_rule_most_frequent_first():
    store = make_store()
    for i in range(5):
        make_node(store, f"a{i}", labels={"zone": "a"}, memory=8 * GiB)
    for i in range(3):
        make_node(store, f"b{i}", labels={"zone": "b"}, memory=1 * GiB)
    res = plan(store, svc_spec(1, mem=2 * GiB, constraints=["node.labels.zone==b"]))
    assert res[0].reason == (
        "no suitable node (constraint node.labels.zone==b not satisfied on 5 nodes; insufficient memory on 3 nodes)"
    )


def test_plan_writes_nothing_and_covers_global_services():
    store = make_store()
    n1 = make_node(store, "n1", nano_cpus=CPU)
    n2 = make_node(store, "n2", nano_cpus=4 * CPU)
    rev = store.revision if hasattr(store, "revision") else None
    before = (store.count("task"), store.count("service"))
    res = plan(store, svc_spec(3, cpu=CPU))
    assert where(res) == {n1.ID: 1, n2.ID: 2}
    spec = msgspec.structs.replace(svc_spec(cpu=2 * CPU), Mode=ServiceMode(Global={}))
    spec = validate_service_spec(msgspec.convert(msgspec.to_builtins(spec), ServiceSpec))
    g = sorted(plan(store, spec), key=lambda p: p.reason)
    assert g[0] == (0, n2.ID, "")
    assert g[1] == (0, n1.ID, "no suitable node (insufficient cpu on 1 node)")
    assert (store.count("task"), store.count("service")) == before
    if rev is not None:
        assert store.revision == rev


def test_nodeinfo_affinity_counters_are_incremental_and_clones_independent():
    from shoal.scheduler.nodeinfo import NodeInfo

    store = make_store()
    node = make_node(store, "n1")
    _, tasks = run_on(store, node, svc_spec(clabels={"app": "db"}, image="redis:7", gpus=1), 2, name="db")
    info = NodeInfo(node)
    for t in tasks:
        info.add_task(t)
    assert info.label_pairs[("app", "db")] == 2 and info.images["redis:7"] == 2
    assert info.service_names["db"] == 2 and "db.1" in info.names and info.reserved_generic == {"gpu": 2}
    copy = info.clone()
    info.remove_task(tasks[0].ID)
    assert info.label_pairs[("app", "db")] == 1 and copy.label_pairs[("app", "db")] == 2
    stopping = msgspec.structs.replace(tasks[1], DesiredState=TaskState.SHUTDOWN)
    info.add_task(stopping)  # no longer active: affinity stops counting it, resources stay held
    assert not info.label_pairs and not info.names and info.reserved_generic == {"gpu": 1}


def test_engine_labels_declare_generic_resources() -> None:
    from shoal.agent.executor.docker import generic_resources

    got = generic_resources({"shoal.generic-resource.gpu": "2", "shoal.generic-resource.fpga": "0", "zone": "a"})
    assert got is not None and [(g.DiscreteResourceSpec["Kind"], g.DiscreteResourceSpec["Value"]) for g in got] == [
        ("gpu", 2)
    ]
    assert generic_resources({"zone": "a"}) is None
