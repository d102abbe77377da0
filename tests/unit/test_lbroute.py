"""Aliyun load-balancer and routing labels: parsing, the API's checks, the plan, haproxy's config
(checked by the real ``haproxy -c``) and the keeper's reconcile loop (with a recording haproxy)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from shoal import controlapi
from shoal.api.testing import add_task
from shoal.compose import ComposeError, load, to_service_specs
from shoal.controlapi.networks import create_network, ingress_spec
from shoal.errors import InvalidArgument
from shoal.lbroute import keeper as keeper_module
from shoal.lbroute.haproxy import Haproxy, leftover_pid
from shoal.lbroute.keeper import LoadBalancerKeeper
from shoal.lbroute.labels import LabelError, LbBinding, Route, parse
from shoal.lbroute.plan import Listener, Plan, Server, build, render
from shoal.models import (
    ContainerSpec,
    EndpointSpec,
    NetworkAttachment,
    NetworkAttachmentConfig,
    NetworkSpec,
    NodeState,
    PortConfig,
    Service,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskState,
)
from shoal.orchestrator.testutils import make_node, update_node
from shoal.store import MemoryStore, NullBackend

# ------------------------------------------------------------------ labels


def test_lb_label_as_the_seed_and_aliyun_write_it() -> None:
    cfg = parse({"aliyun.lb.port_8080": "tcp://slbtest:8080", "aliyun.lb.port_80": "HTTP://lb-2ze1qu.x:81"})
    assert cfg.bindings == (LbBinding(80, "http", "lb-2ze1qu.x", 81), LbBinding(8080, "tcp", "slbtest", 8080))
    assert cfg.routes == () and not cfg.sticky


def test_routing_label_hosts_paths_and_sticky() -> None:
    cfg = parse({"aliyun.routing.port_80": "http://a.example.com; B.example.com/api/;wordpress",
                 "aliyun.routing.session_sticky": "true"})
    assert cfg.routes == (Route(80, "a.example.com"), Route(80, "b.example.com", "/api"), Route(80, "wordpress"))
    assert cfg.sticky


@pytest.mark.parametrize(("labels", "message"), [
    ({"aliyun.lb.port_8080": "slbtest:8080"}, "expected <scheme>://<load balancer>:<front port>"),
    ({"aliyun.lb.port_8080": "tcp://slbtest"}, "expected <scheme>://"),
    ({"aliyun.lb.port_8080": "udp://slbtest:53"}, "scheme 'udp' is not supported"),
    ({"aliyun.lb.port_8080": "https://slbtest:443"}, "https is not supported"),
    ({"aliyun.lb.port_8080": "tcp://slbtest:70000"}, "front port '70000' is not a port number"),
    ({"aliyun.lb.port_x": "tcp://slbtest:80"}, "port 'x' is not a port number"),
    ({"aliyun.lb.port_80": "tcp://slb test:80"}, "load balancer name 'slb test'"),
    ({"aliyun.lb.port_80": "tcp://s:81", "aliyun.lb.port_90": "tcp://s:81"}, "already given to aliyun.lb.port_80"),
    ({"aliyun.routing.port_80": "http://a.example.com:8080"}, "takes no port"),
    ({"aliyun.routing.port_80": "https://a.example.com"}, "https is not supported"),
    ({"aliyun.routing.port_80": "http://bad_host"}, "is not a hostname"),
    ({"aliyun.routing.port_80": " ; "}, "no hostname"),
    ({"aliyun.routing.port_80": "a.com", "aliyun.routing.port_81": "a.com"}, "a.com is routed twice"),
    ({"aliyun.routing.session_sticky": "yes"}, "'yes' is not true or false"),
])
def test_bad_labels_say_which_and_why(labels: dict[str, str], message: str) -> None:
    with pytest.raises(LabelError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        parse(labels)
    assert e.value.key in labels


# ------------------------------------------------------------------ the API's checks


def spec(name: str, labels: dict[str, str], *published: tuple[int, int], networks: list[str] | None = None,
         ) -> ServiceSpec:
    task = TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest"),
                    Networks=[NetworkAttachmentConfig(Target=n) for n in networks or ()] or None)
    ports = [PortConfig(TargetPort=t, PublishedPort=p) for p, t in published]
    return ServiceSpec(Name=name, Labels=labels, TaskTemplate=task, EndpointSpec=EndpointSpec(Ports=ports or None))


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore(NullBackend())
    create_network(store, ingress_spec())
    create_network(store, NetworkSpec(Name="lbr-net"))
    return store


def _refused(store: MemoryStore, s: ServiceSpec, message: str) -> None:
    before = store.revision, msgspec.json.encode(sorted(store.list("service"), key=lambda x: x.ID))
    with pytest.raises(InvalidArgument, match=message):
        controlapi.create_service(store, s)
    assert (store.revision, msgspec.json.encode(sorted(store.list("service"), key=lambda x: x.ID))) == before


def test_lb_port_must_be_published_by_published_or_container_port(store: MemoryStore) -> None:
    _refused(store, spec("lbr-a", {"aliyun.lb.port_8080": "tcp://slb:9000"}),
             "label aliyun.lb.port_8080: the service publishes no TCP port 8080")
    # the seed: published 8080 -> 80, label on the published port, front port = the published port
    assert controlapi.create_service(store, spec("lbr-a", {"aliyun.lb.port_8080": "tcp://slbtest:8080"},
                                                 (8080, 80)))
    # Aliyun's reading: the label names the container port, which is published
    assert controlapi.create_service(store, spec("lbr-b", {"aliyun.lb.port_80": "http://slb:9001"}, (8081, 80)))


def test_malformed_label_is_a_400_naming_it(store: MemoryStore) -> None:
    _refused(store, spec("lbr-a", {"aliyun.lb.port_8080": "tcp//slb:1"}, (8080, 80)),
             "^label aliyun.lb.port_8080: 'tcp//slb:1': expected")


def test_front_ports_and_hostnames_belong_to_one_service(store: MemoryStore) -> None:
    controlapi.create_service(store, spec("lbr-a", {"aliyun.lb.port_8080": "tcp://slb:9000",
                                                     "aliyun.routing.port_80": "a.example.com"},
                                          (8080, 80), networks=["lbr-net"]))
    _refused(store, spec("lbr-b", {"aliyun.lb.port_8081": "tcp://other:9000"}, (8081, 80)),
             "port 9000 is already load balancer slb's, for service lbr-a")
    _refused(store, spec("lbr-b", {"aliyun.routing.port_80": "http://A.example.com"}, networks=["lbr-net"]),
             "a.example.com is already routed to service lbr-a")
    _refused(store, spec("lbr-b", {"aliyun.lb.port_8081": "tcp://other:8080"}, (8081, 80)),
             "port 8080 is published by service lbr-a")
    _refused(store, spec("lbr-b", {"aliyun.lb.port_8081": "tcp://other:80"}, (8081, 80)),
             "port 80 is the HTTP router's")
    # another path on the same host, and the same service updated, are fine
    assert controlapi.create_service(store, spec("lbr-b", {"aliyun.routing.port_80": "a.example.com/api"},
                                                 networks=["lbr-net"]))
    svc = store.service_by_name("lbr-a")
    new = msgspec.structs.replace(svc.Spec, Labels={"aliyun.lb.port_8080": "tcp://slb:9002"})
    controlapi.update_service(store, svc.ID, svc.Version.Index, new)


def test_routing_needs_a_way_to_the_tasks(store: MemoryStore) -> None:
    _refused(store, spec("lbr-a", {"aliyun.routing.port_80": "a.example.com"}),
             "on no overlay network and does not publish port 80")
    assert controlapi.create_service(store, spec("lbr-a", {"aliyun.routing.port_80": "a.example.com"}, (8080, 80)))


# ------------------------------------------------------------------ the plan and haproxy's config


def _net_task(store: MemoryStore, svc: Service, node_id: str, addr: str,
              state: TaskState = TaskState.RUNNING) -> Task:
    task = add_task(store, svc, node_id=node_id, state=state)
    net = next(n for n in store.list("network") if n.Spec.Name == "lbr-net")
    task = msgspec.structs.replace(task, NetworksAttachments=[NetworkAttachment(Network=net, Addresses=[f"{addr}/24"])])
    with store.tx() as tx:
        tx.update("task", task)
    return task


def test_plan_follows_nodes_and_serving_tasks(store: MemoryStore) -> None:
    n1 = make_node(store, "h1", addr="192.0.2.1")
    n2 = make_node(store, "h2", addr="192.0.2.2")
    a = controlapi.create_service(store, spec("lbr-a", {"aliyun.lb.port_8080": "tcp://slb:9000"}, (8080, 80)))
    b = controlapi.create_service(store, spec("lbr-b", {"aliyun.routing.port_80": "b.example.com",
                                                         "aliyun.routing.session_sticky": "true"},
                                              networks=["lbr-net"]))
    c = controlapi.create_service(store, spec("lbr-c", {"aliyun.routing.port_80": "c.example.com"}, (8082, 80)))
    _net_task(store, b, n1.ID, "10.0.9.2")
    _net_task(store, b, n2.ID, "10.0.9.3")
    _net_task(store, b, n2.ID, "10.0.9.4", TaskState.STARTING)  # not taking traffic yet
    add_task(store, a, node_id=n1.ID)
    plan = build(store)
    (lb,) = plan.listeners
    assert (lb.lb, lb.front, lb.scheme, lb.service) == ("slb", 9000, "tcp", "lbr-a")
    assert sorted((s.addr, s.port) for s in lb.servers) == [("192.0.2.1", 8080), ("192.0.2.2", 8080)]
    rb = next(r for r in plan.routes if r.host == "b.example.com")
    assert rb.sticky and sorted((s.addr, s.port) for s in rb.servers) == [("10.0.9.2", 80), ("10.0.9.3", 80)]
    rc = next(r for r in plan.routes if r.host == "c.example.com")  # published: through the mesh
    assert sorted((s.addr, s.port) for s in rc.servers) == [("192.0.2.1", 8082), ("192.0.2.2", 8082)]
    update_node(store, n2.ID, state=NodeState.DOWN)
    plan = build(store)
    assert [s.addr for s in plan.listeners[0].servers] == ["192.0.2.1"]
    assert [s.addr for r in plan.routes if r.host == "b.example.com" for s in r.servers] == ["10.0.9.2"]
    assert c.ID


def haproxy_check(tmp_path: Path, text: str) -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.fail("haproxy is not installed: run scripts/install-deps.sh")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    out = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rendered_config_is_valid_haproxy(store: MemoryStore, tmp_path: Path) -> None:
    n1 = make_node(store, "h1", addr="192.0.2.1")
    controlapi.create_service(store, spec("lbr-a", {"aliyun.lb.port_8080": "http://slb:9000"}, (8080, 80)))
    b = controlapi.create_service(store, spec("lbr-b", {"aliyun.routing.port_80": "b.example.com;b.example.com/v2",
                                                         "aliyun.routing.session_sticky": "true"},
                                              networks=["lbr-net"]))
    controlapi.create_service(store, spec("lbr-c", {"aliyun.routing.port_81": "c.example.com"}, networks=["lbr-net"]))
    _net_task(store, b, n1.ID, "10.0.9.2")
    text = render(build(store), router_port=18080, bind="127.0.0.1", admin_socket=str(tmp_path / "admin.sock"))
    haproxy_check(tmp_path, text)
    assert "    bind 127.0.0.1:9000\n    mode http\n" in text
    assert "server node-" in text and "192.0.2.1:8080 check" in text
    assert "    bind 127.0.0.1:18080\n" in text
    assert "cookie SHOAL_ROUTE insert indirect nocache" in text and "10.0.9.2:80 cookie task-" in text
    # the longer path is tried first; the unknown host gets the 404 backend
    v2 = text.index("path -m beg /v2/")
    bare = text.index("use_backend lbr-b_", v2 + 1)
    assert v2 < bare and "default_backend no_route" in text
    assert "expose-fd listeners" in text
    assert not Plan()  # nothing to serve: the keeper runs no haproxy (which would refuse a config without listener)


# ------------------------------------------------------------------ the keeper


class RecordingHaproxy:
    """Stands in for the process: records each config applied."""

    def __init__(self, tmp_path: Path) -> None:
        self.admin_socket = tmp_path / "admin.sock"
        self.applied: list[str] = []
        self.running = False
        self.stops = 0
        self.error: str | None = None
        self.refused = False

    async def apply(self, text: str) -> bool:
        self.applied.append(text)
        self.running = True
        return True

    async def stop(self) -> None:
        self.stops += self.running
        self.running = False


@contextlib.contextmanager
def _held(port: int) -> Iterator[None]:
    """Another process's listener on ``port`` (no SO_REUSEPORT: haproxy cannot share it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past our own probes' TIME_WAIT
        s.bind(("127.0.0.1", port))
        s.listen()
        yield


async def test_a_config_haproxy_cannot_load_is_said_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    """`haproxy -c` passes a config whose port another process holds: the reload fails in the new
    worker, and the master keeps the old one, saying so only in its log. Shoal asks the worker
    which config it runs, and says haproxy's reason."""
    a, b = _free_port(), _free_port()
    hp = Haproxy(tmp_path / "lb")
    try:
        assert await hp.apply(_cfg(tmp_path / "lb", a)) and hp.error is None
        pid = hp.proc.pid if hp.proc else 0
        with _held(b):
            assert not await hp.apply(_cfg(tmp_path / "lb", b))
            assert not hp.refused and hp.error is not None
            assert f"cannot bind socket (Address already in use) for [127.0.0.1:{b}]" in hp.error, hp.error
            assert "the previous one keeps serving" in hp.error
            assert hp.running and hp.proc and hp.proc.pid == pid and _answers(a)
        assert await hp.apply(_cfg(tmp_path / "lb", b)) and hp.error is None  # the port is free now
        await _until(lambda: _answers(b) and not _answers(a))
    finally:
        await hp.stop()
    fresh = Haproxy(tmp_path / "lb2")  # one that cannot even start
    with _held(a):
        assert not await fresh.apply(_cfg(tmp_path / "lb2", a))
    assert not fresh.running and fresh.error and "none is served" in fresh.error and f"127.0.0.1:{a}" in fresh.error


async def test_keeper_tries_a_config_that_could_not_load_again(store: MemoryStore, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keeper_module, "LOAD_RETRY_S", 0.3)
    monkeypatch.setattr(keeper_module, "WATCHDOG_S", 0.3)
    front = _free_port()
    make_node(store, "h1", addr="127.0.0.1")
    hp = Haproxy(tmp_path / "lb")
    keeper = LoadBalancerKeeper(store, tmp_path / "lb", haproxy=hp, port=_free_port(), bind="127.0.0.1")
    with _held(front):
        controlapi.create_service(store, spec("lbr-a", {"aliyun.lb.port_8080": f"tcp://slb:{front}"}, (8080, 80)))
        run = asyncio.create_task(keeper.run())
        try:
            await _until(lambda: hp.error is not None)
            assert f"127.0.0.1:{front}" in (hp.error or "") and not hp.refused
        except BaseException:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            raise
    try:
        await _until(lambda: _answers(front) and hp.error is None)  # freed: the next try loads it
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_keeper_applies_changes_only_and_stops_when_nothing_is_left(store: MemoryStore,
                                                                          tmp_path: Path) -> None:
    n1 = make_node(store, "h1", addr="192.0.2.1")
    plain = controlapi.create_service(store, spec("lbr-plain", {}))
    fake = RecordingHaproxy(tmp_path)
    keeper = LoadBalancerKeeper(store, tmp_path, haproxy=fake, port=18080, bind="")  # type: ignore[arg-type]
    run = asyncio.create_task(keeper.run())
    try:
        await _settle()
        assert fake.applied == [] and not fake.running  # no label anywhere: no haproxy
        add_task(store, plain, node_id=n1.ID)
        await _settle()
        assert fake.applied == []
        a = controlapi.create_service(store, spec("lbr-a", {"aliyun.lb.port_8080": "tcp://slb:9000"}, (8080, 80)))
        await _settle()
        assert len(fake.applied) == 1 and "192.0.2.1:8080" in fake.applied[0]
        add_task(store, a, node_id=n1.ID)  # the backends are the nodes: the config does not change
        await _settle()
        assert len(fake.applied) == 1
        make_node(store, "h2", addr="192.0.2.2")  # a node joins: it becomes a backend
        await _settle()
        assert len(fake.applied) == 2 and "192.0.2.2:8080" in fake.applied[1]
        controlapi.remove_service(store, a.ID)
        await _settle()
        assert fake.stops == 1 and not fake.running
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


# ------------------------------------------------------------------ Compose


SEED = """\
version: "3.0"
services:
  nginx:
    image: nginx:latest
    deploy:
      mode: replicated
      replicas: 3
    ports:
      - 8080:80
    labels:
      aliyun.lb.port_8080: tcp://slbtest:8080
      aliyun.routing.port_80: http://www.lbr.test;http://lbr.test/shop
      aliyun.routing.session_sticky: "true"
      aliyun.log_store_dbstdout: stdout
"""


def test_compose_seed_labels_become_service_labels(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(SEED)
    spec = to_service_specs(load([tmp_path / "docker-compose.yml"], env={}), "lbr")["nginx"]
    assert {k: v for k, v in (spec.Labels or {}).items() if k.startswith("aliyun.")} == {
        "aliyun.lb.port_8080": "tcp://slbtest:8080",
        "aliyun.routing.port_80": "http://www.lbr.test;http://lbr.test/shop",
        "aliyun.routing.session_sticky": "true",
    }
    cfg = parse(spec.Labels)
    assert cfg.bindings == (LbBinding(8080, "tcp", "slbtest", 8080),) and cfg.sticky


@pytest.mark.parametrize(("old", "new", "line", "message"), [
    ("tcp://slbtest:8080", "tcp://slbtest", 11, "expected <scheme>://"),
    ("aliyun.lb.port_8080: tcp", "aliyun.lb.port_9999: tcp", 11, "the service publishes no TCP port 9999"),
    ("http://www.lbr.test;", "http://www.lbr.test:81;", 12, "takes no port"),
    ('"true"', "maybe", 13, "'maybe' is not true or false"),
])
def test_compose_bad_label_names_file_line_and_key(tmp_path: Path, old: str, new: str, line: int,
                                                   message: str) -> None:
    path = tmp_path / "docker-compose.yml"
    path.write_text(SEED.replace(old, new))
    with pytest.raises(ComposeError) as e:
        to_service_specs(load([path], env={}), "lbr")
    assert e.value.file == path and e.value.line == line, str(e.value)
    assert e.value.key.startswith("services.nginx.labels.aliyun.") and message in e.value.message


# ------------------------------------------------------------------ the real haproxy process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


async def _until(pred: Callable[[], bool]) -> None:
    """Poll a condition about another process (no event to wait on): 5 s at most."""
    for _ in range(100):
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met within 5 s")


def _cfg(tmp_path: Path, front: int) -> str:
    plan = Plan(listeners=(Listener("lbr", front, "tcp", "lbr-svc", (Server("node-a", "127.0.0.1", 9),)),))
    return render(plan, router_port=80, bind="127.0.0.1", admin_socket=str(tmp_path / "admin.sock"))


async def test_haproxy_starts_reloads_refuses_bad_configs_and_replaces_a_leftover(tmp_path: Path) -> None:
    a, b = _free_port(), _free_port()
    first = Haproxy(tmp_path)
    second = Haproxy(tmp_path)  # the same daemon, started again after being killed
    try:
        assert await first.apply(_cfg(tmp_path, a))
        await _until(lambda: _answers(a))
        pid = first.proc.pid if first.proc else 0
        assert await first.apply(_cfg(tmp_path, b)) and first.reloads == 1 and first.running
        await _until(lambda: _answers(b) and not _answers(a))
        assert not await first.apply("global\n    nonsense-keyword 1\n")  # refused: the old config keeps serving
        assert _answers(b) and first.proc and first.proc.pid == pid
        assert leftover_pid(second.pidfile, second.cfg) == pid
        assert await second.apply(_cfg(tmp_path, a))  # stops the leftover first: never two on one port
        await _until(lambda: first.proc is not None and first.proc.returncode is not None)
        await _until(lambda: _answers(a) and not _answers(b))
    finally:
        await first.stop()
        await second.stop()
    assert not _answers(a)
