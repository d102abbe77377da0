"""Aliyun load-balancer and routing labels on the real engine, served by the real haproxy.

One daemon for the module (its own data root, mesh table ``shoal-lbr``, router on a free loopback
port: ``SHOAL_ROUTER_PORT``, ``SHOAL_LB_BIND=127.0.0.1``). Services are busybox httpd saying who they
are; requests go over loopback with curl and a Host header. The haproxy is the daemon's child: it
stops with the daemon, and nothing else is stopped here.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

IMAGE = "busybox:latest"
NET = "lbr-net"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(word: str) -> list[str]:
    return ["sh", "-c", f"mkdir -p /www && echo {word} > /www/index.html && exec httpd -f -p 80 -h /www"]


def curl(port: int, host: str | None = None, path: str = "/") -> tuple[int, str]:
    """(HTTP status, body) from curl over loopback; (0, error) when nothing answered."""
    args = ["curl", "-s", "-m", "3", "-o", "-", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"]
    if host:
        args += ["-H", f"Host: {host}"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    body, _, code = res.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body.strip()


class Cluster:
    def __init__(self, proc: ShoalProcess, client: docker.DockerClient, router: int) -> None:
        self.proc = proc
        self.client = client
        self.router = router


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    router = _free_port()
    proc = ShoalProcess(tmp_path_factory.mktemp("lbr"), env={
        "SHOAL_ROUTER_PORT": str(router), "SHOAL_LB_BIND": "127.0.0.1", "SHOAL_MESH_NAME": "shoal-lbr"})
    proc.start()
    client = proc.client()
    try:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
        client.networks.create(NET, driver="overlay")
        yield Cluster(proc, client, router)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.swarm.leave(force=True)
        proc.stop()


def _remove(c: Cluster, *names: str) -> None:
    for name in names:
        with contextlib.suppress(docker.errors.NotFound):
            c.client.services.get(name).remove()


def test_lbr_routes_two_hostnames_to_two_services(cluster: Cluster) -> None:
    c = cluster
    try:
        c.client.services.create(IMAGE, _serve("one"), name="lbr-one", networks=[NET],
                                 labels={"aliyun.routing.port_80": "http://one.lbr.test",
                                         "aliyun.routing.session_sticky": "true"})
        c.client.services.create(IMAGE, _serve("two"), name="lbr-two", networks=[NET],
                                 labels={"aliyun.routing.port_80": "http://two.lbr.test;deux.lbr.test"})
        seen: dict[str, tuple[int, str]] = {}

        def answers(host: str, body: str) -> bool:
            seen[host] = curl(c.router, host)
            return seen[host] == (200, body)

        for host, body in (("one.lbr.test", "one"), ("two.lbr.test", "two")):
            try:
                wait_for(lambda h=host, b=body: answers(h, b), timeout=60)  # bounds for a loaded CI run
            except AssertionError as e:
                raise AssertionError(f"{e}; the router last answered {host}: {seen.get(host)}") from None
        assert curl(c.router, "deux.lbr.test:8080") == (200, "two")  # the Host's port is not part of the name
        assert curl(c.router, "ONE.lbr.test") == (200, "one")  # nor its case
        assert curl(c.router, "three.lbr.test")[0] == 404  # an unknown host: the router's 404
        sticky = subprocess.run(["curl", "-s", "-m", "3", "-D", "-", "-o", "/dev/null", "-H", "Host: one.lbr.test",
                                 f"http://127.0.0.1:{c.router}/"], capture_output=True, text=True, check=False)
        assert "set-cookie: shoal_route=task-" in sticky.stdout.lower()  # session_sticky: a cookie per task
        # removing the service removes its route; the other keeps its own
        c.client.services.get("lbr-two").remove()
        wait_for(lambda: curl(c.router, "two.lbr.test")[0] == 404, timeout=15)
        assert curl(c.router, "one.lbr.test") == (200, "one")
        c.client.services.get("lbr-one").scale(0)  # a known host without a task: 503
        wait_for(lambda: curl(c.router, "one.lbr.test")[0] == 503, timeout=15)
    finally:
        _remove(c, "lbr-one", "lbr-two")


class Poller:
    """GETs the load balancer's port in a thread; counts what failed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
                conn.request("GET", "/")
                body = conn.getresponse().read().decode().strip()
                conn.close()
                if body == "lb":
                    self.ok += 1
                else:
                    self.failed.append(body)
            except OSError as e:
                self.failed.append(repr(e))
            time.sleep(0.01)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _reloads(proc: ShoalProcess) -> int:
    return proc.log.read_text().count("haproxy reloaded")


def test_lbr_load_balancer_reloads_without_dropping_and_goes_with_its_label(cluster: Cluster) -> None:
    c = cluster
    published, front = _free_port(), _free_port()
    try:
        svc = c.client.services.create(
            IMAGE, _serve("lb"), name="lbr-lb", mode=docker.types.ServiceMode("replicated", replicas=2),
            endpoint_spec=docker.types.EndpointSpec(ports={published: 80}),
            labels={f"aliyun.lb.port_{published}": f"tcp://lbrslb:{front}"})
        wait_for(lambda: curl(front) == (200, "lb"), timeout=30)
        cfg = (c.proc.data / "lb" / "haproxy.cfg").read_text()
        assert f"bind 127.0.0.1:{front}" in cfg and f"127.0.0.1:{published} check" in cfg

        # A connection opened before the reload, used after it; and new ones all along.
        held = socket.create_connection(("127.0.0.1", front), timeout=5)
        reloads = _reloads(c.proc)
        with Poller(front) as poll:
            time.sleep(0.2)
            c.client.services.create(IMAGE, _serve("other"), name="lbr-other", networks=[NET],
                                     labels={"aliyun.routing.port_80": "other.lbr.test"})
            wait_for(lambda: curl(c.router, "other.lbr.test") == (200, "other"), timeout=30)
            time.sleep(0.3)
        assert _reloads(c.proc) > reloads
        assert poll.failed == [] and poll.ok > 10, (poll.ok, poll.failed[:5])
        held.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := held.recv(4096):
            reply += chunk
        held.close()
        assert reply.startswith(b"HTTP/1.") and reply.rstrip().endswith(b"lb")

        # A bad label is a 400 naming it, and changes nothing.
        spec = svc.attrs["Spec"]
        with pytest.raises(docker.errors.APIError) as e:
            c.client.services.create(IMAGE, _serve("x"), name="lbr-bad",
                                     labels={"aliyun.lb.port_80": "tcp://lbrslb"})
        assert e.value.status_code == 400 and "aliyun.lb.port_80" in e.value.explanation
        with pytest.raises(docker.errors.APIError) as e:
            c.client.services.create(IMAGE, _serve("x"), name="lbr-bad",
                                     endpoint_spec=docker.types.EndpointSpec(ports={_free_port(): 80}),
                                     labels={"aliyun.lb.port_80": f"tcp://elsewhere:{front}"})
        assert e.value.status_code == 400 and f"port {front} is already load balancer lbrslb's" in e.value.explanation

        # Removing the label removes the listener.
        svc.reload()
        svc.update(labels={k: v for k, v in (spec.get("Labels") or {}).items() if not k.startswith("aliyun.")})
        wait_for(lambda: curl(front)[0] == 0, timeout=15)
    finally:
        _remove(c, "lbr-lb", "lbr-other", "lbr-bad")
    wait_for(lambda: not _haproxy_running(c.proc), timeout=15)  # no label left: no haproxy


def _haproxy_running(proc: ShoalProcess) -> bool:
    """Whether the daemon's haproxy still runs (its child: found by parent PID, not by name)."""
    assert proc.proc is not None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == proc.proc.pid and "haproxy" in stat:
                return True
    return False
