"""Constraint parsing/matching, the filters and the pipeline's explanations."""

from __future__ import annotations

import msgspec
import pytest

from shoal.errors import InvalidArgument
from shoal.models import (
    ContainerSpec,
    Endpoint,
    EndpointSpec,
    EngineDescription,
    NodeAvailability,
    NodeRole,
    NodeState,
    Placement,
    Platform,
    PortConfig,
    ResourceRequirements,
    ResourceReservations,
    TaskSpec,
    TaskState,
)
from shoal.orchestrator.task import new_task
from shoal.orchestrator.testutils import make_node, make_service, make_store
from shoal.scheduler.constraints import node_matches, parse_constraints
from shoal.scheduler.filters import (
    ConstraintFilter,
    HostPortFilter,
    MaxReplicasFilter,
    Pipeline,
    PlatformFilter,
    ReadyNodeFilter,
    ResourceFilter,
    default_filters,
    register_filter,
    unregister_filter,
)
from shoal.scheduler.nodeinfo import NodeInfo


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("node.role", "constraint expected one operator from ==, !="),
        ("node.role=manager", "constraint expected one operator from ==, !="),
        ("==manager", "key '' is invalid"),
        ("1node==x", "key '1node' is invalid"),
        ("node.labels.a==b<c", "value 'b<c' is invalid"),
        ("node.labels.a==", "value '' is invalid"),
    ],
)
def test_parse_errors_are_invalid_argument(expr, message):
    with pytest.raises(InvalidArgument) as exc:
        parse_constraints([expr])
    assert exc.value.message == message
    assert exc.value.status == 400


def test_parse_ok():
    cs = parse_constraints(["node.role == manager", "node.labels.zone!=a b", "engine.labels.os==ubuntu 22.04"])
    assert [(c.key, c.equal, c.value) for c in cs] == [
        ("node.role", True, "manager"),
        ("node.labels.zone", False, "a b"),
        ("engine.labels.os", True, "ubuntu 22.04"),
    ]
    assert parse_constraints(None) == []


def node_obj(**kw):
    store = make_store()
    n = make_node(store, kw.pop("hostname", "Host-1"), **kw)
    return n


def test_node_matching_rules():
    n = node_obj(labels={"Zone": "EU-1"}, role=NodeRole.MANAGER, addr="192.168.1.7")
    n = msgspec.structs.replace(
        n,
        Description=msgspec.structs.replace(
            n.Description,
            Platform=Platform(Architecture="x86_64", OS="linux"),
            Engine=EngineDescription(Labels={"disk": "ssd"}),
        ),
    )

    def m(*exprs):
        return node_matches(parse_constraints(list(exprs)), n)

    assert m(f"node.id=={n.ID}")
    assert m("node.hostname==host-1")  # values are case-insensitive
    assert m("node.role==manager") and not m("node.role==worker") and m("node.role!=worker")
    assert m("node.platform.os==linux") and m("node.platform.arch==x86_64")
    assert m("node.labels.Zone==eu-1")
    assert not m("node.labels.zone==eu-1"), "label names are case-sensitive"
    assert m("node.labels.missing!=x") and not m("node.labels.missing==x")
    assert m("engine.labels.disk==ssd")
    assert m("node.ip==192.168.1.7") and m("node.ip==192.168.1.0/24") and m("node.ip!=10.0.0.0/8")
    assert not m("node.ip==not-an-ip")
    assert not m("foo.bar==x"), "unknown keys never match"
    assert m("node.role==manager", "node.labels.Zone==eu-1") and not m("node.role==manager", "node.labels.Zone==x")


def info_for(**kw) -> NodeInfo:
    return NodeInfo(node_obj(**kw))


def task_with(store=None, *, template=None, endpoint=None, **svc_kw):
    store = store or make_store()
    svc = make_service(store, "s", template=template or TaskSpec(ContainerSpec=ContainerSpec(Image="x")), **svc_kw)
    if endpoint is not None:
        svc = msgspec.structs.replace(svc, Endpoint=endpoint)
    return new_task(svc, 1)


def assigned(t, node_id):
    status = msgspec.structs.replace(t.Status, State=TaskState.ASSIGNED)
    return msgspec.structs.replace(t, NodeID=node_id, Status=status)


def test_ready_filter():
    f = ReadyNodeFilter()
    assert f.set_task(task_with())
    assert f.check(info_for())
    assert not f.check(info_for(state=NodeState.DOWN))
    assert not f.check(info_for(availability=NodeAvailability.PAUSE))
    assert not f.check(info_for(availability=NodeAvailability.DRAIN))
    assert f.explain(1) == "1 node not available for new tasks"
    assert f.explain(3) == "3 nodes not available for new tasks"


def test_resource_filter_counts_reservations_of_tasks_on_node():
    res = ResourceRequirements(Reservations=ResourceReservations(NanoCPUs=1_500_000_000, MemoryBytes=1 << 30))
    t = task_with(template=TaskSpec(ContainerSpec=ContainerSpec(Image="x"), Resources=res))
    f = ResourceFilter()
    assert not f.set_task(task_with()), "no reservations: filter off"
    assert f.set_task(t)
    info = info_for(nano_cpus=2_000_000_000, memory=4 << 30)
    assert f.check(info)
    other = msgspec.structs.replace(t, ID="other")
    info.add_task(assigned(other, info.id))
    assert info.available_cpu == 500_000_000
    assert not f.check(info)
    info.remove_task("other")
    assert f.check(info)
    assert f.explain(2) == "insufficient cpu on 2 nodes"


def test_constraint_platform_hostport_maxreplicas_filters():
    tmpl = TaskSpec(
        ContainerSpec=ContainerSpec(Image="x"),
        Placement=Placement(Constraints=["node.labels.a==1"], MaxReplicas=1, Platforms=[Platform("amd64", "linux")]),
    )
    ports = [PortConfig(Protocol="tcp", TargetPort=80, PublishedPort=8080, PublishMode="host")]
    ep = Endpoint(Spec=EndpointSpec(Ports=ports), Ports=ports)
    t = task_with(template=tmpl, endpoint=ep)
    good = info_for(labels={"a": "1"})
    good.node = msgspec.structs.replace(
        good.node,
        Description=msgspec.structs.replace(good.node.Description, Platform=Platform("x86_64", "linux")),
    )
    cf, pf, hf, mf = ConstraintFilter(), PlatformFilter(), HostPortFilter(), MaxReplicasFilter()
    for f in (cf, pf, hf, mf):
        assert f.set_task(t), f.name
        assert f.check(good), f.name
    assert not cf.check(info_for(labels={"a": "2"}))
    assert not pf.check(info_for()), "node reports no platform"
    other = msgspec.structs.replace(t, ID="other")
    good.add_task(assigned(other, good.id))
    assert not hf.check(good) and not mf.check(good)
    assert hf.explain(1) == "host-mode port 8080/tcp already in use on 1 node"
    assert mf.explain(5) == "max replicas per node limit exceed"
    assert [r.explain(2) for r in cf.expand(t)] == ["constraint node.labels.a==1 not satisfied on 2 nodes"]
    # Ingress ports and unpublished host ports do not reserve anything.
    ingress = [PortConfig(TargetPort=80, PublishedPort=8080), PortConfig(TargetPort=81, PublishMode="host")]
    assert not hf.set_task(task_with(endpoint=Endpoint(Spec=EndpointSpec(Ports=ingress), Ports=ingress)))


def test_pipeline_explains_most_frequent_failure_first():
    p = Pipeline()
    tmpl = TaskSpec(ContainerSpec=ContainerSpec(Image="x"), Placement=Placement(Constraints=["node.labels.a==1"]))
    p.set_task(task_with(template=tmpl))
    infos = [info_for(state=NodeState.DOWN), info_for(), info_for(), info_for(labels={"a": "1"})]
    assert [p.process(i) for i in infos] == [False, False, False, True]
    assert p.explain() == "constraint node.labels.a==1 not satisfied on 2 nodes; 1 node not available for new tasks"


def test_registry_plugs_in_new_filters():
    class NoOdd:
        name = "no-odd"

        def set_task(self, task):
            return True

        def check(self, info):
            return not info.node.Description.Hostname.endswith("1")

        def explain(self, nodes):
            return f"odd on {nodes}"

    register_filter("no-odd", NoOdd, before="resources")
    try:
        names = [f.name for f in default_filters()]
        assert names.index("no-odd") == names.index("cpu") - 1
        p = Pipeline()
        p.set_task(task_with())
        assert not p.process(info_for(hostname="h1")) and p.process(info_for(hostname="h2"))
        assert p.explain() == "odd on 1"
    finally:
        unregister_filter("no-odd")
    assert "no-odd" not in [f.name for f in default_filters()]


def test_hostport_filter_names_the_ports_taken():
    ports = [PortConfig(Protocol="tcp", TargetPort=80, PublishedPort=8080, PublishMode="host"),
             PortConfig(Protocol="udp", TargetPort=53, PublishedPort=5353, PublishMode="host")]
    t = task_with(endpoint=Endpoint(Spec=EndpointSpec(Ports=ports), Ports=ports))
    one = [PortConfig(Protocol="udp", TargetPort=53, PublishedPort=5353, PublishMode="host")]
    holder = task_with(endpoint=Endpoint(Spec=EndpointSpec(Ports=one), Ports=one))
    node = info_for()
    node.add_task(assigned(msgspec.structs.replace(holder, ID="holder"), node.id))
    hf = HostPortFilter()
    assert hf.set_task(t) and not hf.check(node)
    assert hf.explain(1) == "host-mode port 5353/udp already in use on 1 node"  # only the one held
    both = info_for()
    both.add_task(assigned(msgspec.structs.replace(t, ID="twin"), both.id))
    assert not hf.check(both)
    assert hf.explain(2) == "host-mode ports 5353/udp, 8080/tcp already in use on 2 nodes"
    assert hf.set_task(t) and hf.check(info_for())  # a new task starts with a clean record
