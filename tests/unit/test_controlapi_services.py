"""Service rules of the control API, straight over a MemoryStore."""

from __future__ import annotations

import msgspec
import pytest

from shoal import controlapi
from shoal.api.testing import add_task
from shoal.controlapi.errors import NotImplementedYet
from shoal.controlapi.networks import create_network, ingress_spec
from shoal.errors import Conflict, InvalidArgument, NotFound
from shoal.models import (
    ContainerSpec,
    EndpointSpec,
    GlobalService,
    Placement,
    PortConfig,
    ReplicatedService,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
    TaskState,
    UpdateConfig,
)
from shoal.store import MemoryStore, NullBackend


def spec(name: str = "web", image: str = "busybox:latest", **kw) -> ServiceSpec:
    task = kw.pop("task", None) or TaskSpec(ContainerSpec=ContainerSpec(Image=image))
    return ServiceSpec(Name=name, TaskTemplate=task, **kw)


def ports(*pcs: PortConfig) -> EndpointSpec:
    return EndpointSpec(Ports=list(pcs))


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore(NullBackend())
    create_network(store, ingress_spec())  # what swarm init makes: ingress ports need it
    return store


def test_ingress_ports_need_the_ingress_network() -> None:
    bare = MemoryStore(NullBackend())  # an ingress network the user removed
    port = PortConfig(TargetPort=80, PublishedPort=8080, PublishMode="ingress")
    with pytest.raises(InvalidArgument, match="no ingress network is present"):
        controlapi.create_service(bare, spec(EndpointSpec=ports(port)))
    assert bare.list("service") == []
    host = PortConfig(TargetPort=80, PublishedPort=8080, PublishMode="host")
    assert controlapi.create_service(bare, spec(EndpointSpec=ports(host)))


def snapshot(store: MemoryStore) -> tuple[int, bytes]:
    return store.revision, msgspec.json.encode(sorted(store.list("service"), key=lambda s: s.ID))


def test_create_normalises_mode_and_endpoint(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec())
    assert svc.Spec.Mode == ServiceMode(Replicated=ReplicatedService(Replicas=1))
    assert svc.Version.Index == store.revision
    assert svc.Endpoint is not None and svc.Endpoint.VirtualIPs == [] and svc.Endpoint.Ports is None
    assert store.service_by_name("web").ID == svc.ID


def test_create_without_name_gets_a_docker_style_name(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec(name=""))
    left, _, right = svc.Spec.Name.partition("_")
    assert left and right


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (spec(name="-web"), "name must be valid as a DNS name component"),
        (spec(name="web!"), "name must be valid as a DNS name component"),
        (spec(name="a" * 64), "name must be 63 characters or fewer"),
        (spec(image=""), "ContainerSpec: image reference must be provided"),
        (spec(image="Not An Image"), "is not a valid repository/tag"),
        (spec(task=TaskSpec()), "TaskSpec: missing runtime"),
        (
            spec(Mode=ServiceMode(Replicated=ReplicatedService(Replicas=2), Global=GlobalService())),
            "must specify only one service mode",
        ),
        (spec(UpdateConfig=UpdateConfig(FailureAction="explode")), "unrecognized update failure action explode"),
        (spec(UpdateConfig=UpdateConfig(Order="random")), "unrecognized update order random"),
        (spec(EndpointSpec=ports(PortConfig(TargetPort=80, Protocol="icmp"))), "invalid protocol"),
        (spec(EndpointSpec=ports(PortConfig(TargetPort=80, PublishMode="mesh"))), "invalid publish mode"),
        (spec(EndpointSpec=ports(PortConfig(PublishedPort=80))), "TargetPort must be provided"),
        (
            spec(EndpointSpec=ports(PortConfig(TargetPort=80, PublishedPort=8080),
                                    PortConfig(TargetPort=81, PublishedPort=8080))),
            "EndpointSpec: duplicate published ports provided",
        ),
        (
            spec(EndpointSpec=EndpointSpec(Mode="dnsrr", Ports=[PortConfig(TargetPort=80)])),
            "can't be used with dnsrr mode",
        ),
    ],
)
def test_invalid_specs_are_rejected_and_nothing_is_written(store: MemoryStore, bad: ServiceSpec, message: str) -> None:
    before = snapshot(store)
    with pytest.raises(InvalidArgument) as exc:
        controlapi.create_service(store, bad)
    assert message in exc.value.message
    assert exc.value.status == 400
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("constraint", "ok"),
    [
        ("node.role==manager", True),
        ("node.role == worker", True),
        ("node.hostname!=a", True),
        ("node.id==abc", True),
        ("node.ip==10.0.0.0/24", True),
        ("node.platform.os==linux", True),
        ("node.platform.arch==x86_64", True),
        ("node.labels.zone==eu-1", True),
        ("engine.labels.disk==ssd", True),
        ("Node.Role==manager", True),
        ("node.role", False),
        ("node.role>manager", False),
        ("foo==bar", False),
        ("node.labels.==x", False),
        ("node.role==man<ager", False),
    ],
)
def test_constraints(store: MemoryStore, constraint: str, ok: bool) -> None:
    task = TaskSpec(ContainerSpec=ContainerSpec(Image="busybox"), Placement=Placement(Constraints=[constraint]))
    if ok:
        controlapi.create_service(store, spec(task=task))
    else:
        with pytest.raises(InvalidArgument, match="rpc error: code = InvalidArgument"):
            controlapi.create_service(store, spec(task=task))
        assert store.count("service") == 0


def test_name_clash_is_409(store: MemoryStore) -> None:
    controlapi.create_service(store, spec())
    rev = store.revision
    with pytest.raises(Conflict) as exc:
        controlapi.create_service(store, spec())
    assert exc.value.message == (
        "rpc error: code = AlreadyExists desc = name conflicts with an existing object: service web already exists"
    )
    assert store.revision == rev


def test_ingress_ports_dynamic_allocation_and_clash(store: MemoryStore) -> None:
    a = controlapi.create_service(store, spec("a", EndpointSpec=ports(PortConfig(TargetPort=80, PublishedPort=8080))))
    b = controlapi.create_service(store, spec("b", EndpointSpec=ports(PortConfig(TargetPort=80))))
    c = controlapi.create_service(store, spec("c", EndpointSpec=ports(PortConfig(TargetPort=80),
                                                                       PortConfig(TargetPort=53, Protocol="udp"))))
    assert a.Endpoint.Ports[0].PublishedPort == 8080
    assert b.Endpoint.Ports[0].PublishedPort == 30000
    assert [p.PublishedPort for p in c.Endpoint.Ports] == [30001, 30000]  # udp has its own space
    assert b.Spec.EndpointSpec.Ports[0].PublishedPort == 0  # the spec keeps what the user asked
    rev = store.revision
    with pytest.raises(InvalidArgument) as exc:
        controlapi.create_service(store, spec("d", EndpointSpec=ports(PortConfig(TargetPort=81, PublishedPort=8080))))
    assert exc.value.message == (
        f"rpc error: code = InvalidArgument desc = port '8080' is already in use by service 'a' ({a.ID}) "
        "as an ingress port"
    )
    # A dynamically assigned port is taken too.
    with pytest.raises(InvalidArgument, match="30000"):
        controlapi.create_service(store, spec("d", EndpointSpec=ports(PortConfig(TargetPort=81, PublishedPort=30000))))
    # Same number, other protocol: no clash.
    controlapi.create_service(
        store, spec("e", EndpointSpec=ports(PortConfig(TargetPort=81, PublishedPort=8080, Protocol="udp")))
    )
    assert store.revision == rev + 1


def test_host_mode_ports_may_repeat_but_not_clash_with_ingress(store: MemoryStore) -> None:
    host = PortConfig(TargetPort=80, PublishedPort=9000, PublishMode="host")
    controlapi.create_service(store, spec("h1", EndpointSpec=ports(host)))
    controlapi.create_service(store, spec("h2", EndpointSpec=ports(host)))
    with pytest.raises(InvalidArgument, match="as a host-published port"):
        controlapi.create_service(store, spec("i", EndpointSpec=ports(PortConfig(TargetPort=80, PublishedPort=9000))))


def test_update_keeps_previous_spec_and_dynamic_port(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec(EndpointSpec=ports(PortConfig(TargetPort=80))))
    port = svc.Endpoint.Ports[0].PublishedPort
    new = msgspec.structs.replace(svc.Spec, Labels={"v": "2"})
    updated = controlapi.update_service(store, "web", svc.Version.Index, new)
    assert updated.PreviousSpec == svc.Spec
    assert updated.Spec.Labels == {"v": "2"}
    assert updated.Endpoint.Ports[0].PublishedPort == port
    assert updated.Version.Index > svc.Version.Index


def test_update_errors_leave_store_unchanged(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec())
    before = snapshot(store)
    with pytest.raises(Conflict, match="update out of sequence"):
        controlapi.update_service(store, svc.ID, svc.Version.Index - 1, svc.Spec)
    with pytest.raises(NotImplementedYet) as exc:
        controlapi.update_service(store, svc.ID, svc.Version.Index, spec(name="other"))
    assert exc.value.status == 501
    assert exc.value.message == "rpc error: code = Unimplemented desc = renaming services is not supported"
    with pytest.raises(InvalidArgument, match="service mode change is not allowed"):
        controlapi.update_service(store, svc.ID, svc.Version.Index, spec(Mode=ServiceMode(Global=GlobalService())))
    with pytest.raises(InvalidArgument, match="does not have a previous spec"):
        controlapi.update_service(store, svc.ID, svc.Version.Index, svc.Spec, rollback="previous")
    with pytest.raises(NotFound, match="service nope not found"):
        controlapi.update_service(store, "nope", 1, svc.Spec)
    assert snapshot(store) == before


def test_rollback_swaps_specs(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec())
    v2 = controlapi.update_service(store, svc.ID, svc.Version.Index, spec(image="busybox:1"))
    rolled = controlapi.update_service(store, svc.ID, v2.Version.Index, v2.Spec, rollback="previous")
    assert rolled.Spec.TaskTemplate.ContainerSpec.Image == "busybox:latest"
    assert rolled.PreviousSpec.TaskTemplate.ContainerSpec.Image == "busybox:1"
    assert rolled.UpdateStatus.State == "rollback_started"


def test_force_update_changes_spec(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec())
    task = add_task(store, svc)
    forced = msgspec.structs.replace(
        svc.Spec, TaskTemplate=msgspec.structs.replace(svc.Spec.TaskTemplate, ForceUpdate=1)
    )
    new = controlapi.update_service(store, svc.ID, svc.Version.Index, forced)
    assert not controlapi.task_up_to_date(task, new)


def test_get_by_id_name_prefix_and_ambiguity(store: MemoryStore) -> None:
    # Names no ID prefix can equal (a one-letter name would match an ID starting with that letter).
    a = controlapi.create_service(store, spec("svc-a"))
    b = controlapi.create_service(store, spec("svc-b"))
    assert controlapi.get_service(store, a.ID) is store.get("service", a.ID)
    assert controlapi.get_service(store, "svc-b").ID == b.ID
    common = 0
    while a.ID[common] == b.ID[common]:
        common += 1
    assert controlapi.get_service(store, a.ID[: common + 1]).ID == a.ID
    if common:
        with pytest.raises(InvalidArgument, match="is ambiguous \\(2 matches found\\)"):
            controlapi.get_service(store, a.ID[:common])
    with pytest.raises(NotFound, match="service zzz-none not found"):
        controlapi.get_service(store, "zzz-none")


def test_remove(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec())
    controlapi.remove_service(store, "web")
    assert store.get("service", svc.ID) is None
    with pytest.raises(NotFound):
        controlapi.remove_service(store, "web")


def test_list_filters(store: MemoryStore) -> None:
    web = controlapi.create_service(store, spec("web", Labels={"tier": "front"}))
    controlapi.create_service(store, spec("webapp"))
    glob = controlapi.create_service(store, spec("agent", Mode=ServiceMode(Global=GlobalService())))

    def names(**filters: list[str]) -> list[str]:
        return sorted(s.Spec.Name for s in controlapi.list_services(store, filters))

    assert names() == ["agent", "web", "webapp"]
    assert names(name=["web"]) == ["web", "webapp"]  # Docker's name filter is a prefix
    assert names(id=[web.ID[:6]]) == ["web"]
    assert names(label=["tier"]) == ["web"]
    assert names(label=["tier=back"]) == []
    assert names(mode=["global"]) == ["agent"]
    assert names(mode=["replicated"]) == ["web", "webapp"]
    assert glob.Spec.Mode.Global is not None


def test_service_status(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec(Mode=ServiceMode(Replicated=ReplicatedService(Replicas=3))))
    add_task(store, svc, slot=1, state=TaskState.RUNNING)
    add_task(store, svc, slot=2, state=TaskState.PREPARING)
    add_task(store, svc, slot=3, state=TaskState.RUNNING, desired=TaskState.SHUTDOWN)
    (listed,) = controlapi.list_services(store, status=True)
    assert (listed.ServiceStatus.RunningTasks, listed.ServiceStatus.DesiredTasks) == (1, 3)
    assert store.get("service", svc.ID).ServiceStatus is None  # never stored

    glob = controlapi.create_service(store, spec("g", Mode=ServiceMode(Global=GlobalService())))
    add_task(store, glob, slot=0, node_id="n1")
    add_task(store, glob, slot=0, node_id="n2", state=TaskState.PENDING)
    add_task(store, glob, slot=0, node_id="n3", state=TaskState.SHUTDOWN, desired=TaskState.SHUTDOWN)
    status = controlapi.service_status(store, store.get("service", glob.ID))
    assert (status.RunningTasks, status.DesiredTasks) == (1, 2)


def test_dynamic_ingress_port_skips_other_services_host_ports(store: MemoryStore) -> None:
    host = PortConfig(TargetPort=80, PublishedPort=30000, PublishMode="host")
    spec = ServiceSpec(Name="a", TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox")),
                       EndpointSpec=EndpointSpec(Ports=[host]))
    controlapi.create_service(store, spec)
    dyn = PortConfig(TargetPort=80, PublishedPort=0, PublishMode="ingress")
    other = msgspec.structs.replace(spec, Name="b", EndpointSpec=EndpointSpec(Ports=[dyn]))
    b = controlapi.create_service(store, other)
    assert b.Endpoint.Ports[0].PublishedPort == 30001


@pytest.mark.parametrize(
    ("labels", "ok"),
    [
        ({"shoal.strategy": "binpack", "shoal.cpu-overcommit": "4", "shoal.memory-overcommit": "1.5"}, True),
        ({"shoal.strategy": "tightest"}, False),
        ({"shoal.cpu-overcommit": "0.5"}, False),
        ({"shoal.memory-overcommit": "lots"}, False),
        ({"shoal.cpu-overcommit": "nan"}, False),
    ],
)
def test_cluster_scheduling_labels_are_checked(labels: dict[str, str], ok: bool) -> None:
    from shoal.controlapi.validate import check_swarm_labels

    if ok:
        check_swarm_labels(labels)
    else:
        with pytest.raises(InvalidArgument):
            check_swarm_labels(labels)
