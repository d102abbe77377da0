"""``lab up`` with joining (the default): every host is a node of host-1's swarm."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from shoal.lab import Lab

pytestmark = pytest.mark.lab(hosts=2, join=True)


def nodes_by_host(lab: Lab) -> dict[str, dict[str, Any]]:
    client = docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)
    return {n.attrs["Description"]["Hostname"]: n.attrs for n in client.nodes.list()}


def wait_ready(lab: Lab, hosts: list[str], within_s: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + within_s
    while True:
        nodes = nodes_by_host(lab)
        ready = sorted(name for name, n in nodes.items() if n["Status"]["State"] == "ready")
        if ready == hosts or time.monotonic() > deadline:
            assert ready == hosts, nodes
            return nodes
        time.sleep(0.2)


def test_up_joins_every_host_into_one_swarm(lab: Lab) -> None:
    nodes = wait_ready(lab, ["host-1", "host-2"])
    assert {n["ID"] for n in nodes.values()} == {h.node_id for h in lab.hosts}
    assert nodes["host-1"]["Spec"]["Role"] == "manager"
    assert nodes["host-2"]["Spec"]["Role"] == "worker"
    assert nodes["host-2"]["Status"]["Addr"] == lab.hosts[1].addr


def test_a_killed_worker_comes_back_as_the_same_node(lab: Lab) -> None:
    before = wait_ready(lab, ["host-1", "host-2"])["host-2"]["ID"]
    lab.kill("host-2")
    lab.restore("host-2")  # the daemon rejoins from its data root: no new join
    nodes = wait_ready(lab, ["host-1", "host-2"])
    assert nodes["host-2"]["ID"] == before
    assert len(nodes) == 2


def _docker(lab: Lab, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["docker", "-H", lab.docker_host, *args], input=stdin, capture_output=True, text=True,
                         timeout=60)
    if check:
        assert res.returncode == 0, f"docker {' '.join(args)}: {res.stderr}"
    return res


def test_the_docker_cli_reaches_a_container_on_another_host(lab: Lab, tmp_path: Path) -> None:
    """Issue 13: every container call goes to the engine holding it, across hosts (through the
    worker's tunnel): run attached, ps, exec with stdin, logs, cp both ways, kill, rm."""
    wait_ready(lab, ["host-1", "host-2"])
    run = _docker(lab, "run", "--rm", "-e", "constraint:node==host-2", "busybox:latest", "sh", "-c",
                  "echo on $(hostname -f 2>/dev/null || hostname); exit 4", check=False)
    assert run.returncode == 4 and run.stdout.startswith("on "), run

    cid = _docker(lab, "run", "-d", "--name", "far", "-e", "constraint:node==host-2", "busybox:latest",
                  "sh", "-c", "echo far-away; sleep 600").stdout.strip()
    try:
        host2 = docker.DockerClient(base_url=lab.hosts[1].engine, version="1.41", timeout=30)
        assert host2.containers.get(cid).name == "far"  # made on host-2's own engine
        names = _docker(lab, "ps", "--format", "{{.Names}}").stdout.split()
        assert "host-2/far" in names
        assert _docker(lab, "logs", "far").stdout == "far-away\n"
        assert _docker(lab, "exec", "-i", "far", "tr", "a-z", "A-Z", stdin="piped\n").stdout == "PIPED\n"
        src = tmp_path / "in.txt"
        src.write_text("to host-2\n")
        _docker(lab, "cp", str(src), "host-2/far:/tmp/in.txt")
        _docker(lab, "cp", "far:/tmp/in.txt", str(tmp_path / "out.txt"))
        assert (tmp_path / "out.txt").read_text() == "to host-2\n"
        _docker(lab, "kill", "far")
        assert host2.containers.get(cid).attrs["State"]["ExitCode"] == 137
        # host-2's engine stops: the container cannot be found, and the error says where not looked.
        lab.stop_engine("host-2", grace_s=5)
        res = _docker(lab, "start", "far", check=False)
        assert res.returncode != 0 and "No such container" in res.stderr and "host-2" in res.stderr, res.stderr
        lab.restore("host-2")
        wait_ready(lab, ["host-1", "host-2"])
    finally:
        _docker(lab, "rm", "-f", "far", check=False)
    assert _docker(lab, "ps", "-a", "-q", "--filter", "name=far").stdout.strip() == ""


COMPOSE = """\
version: "2.4"
services:
  web:
    image: busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]
    networks: [back]
    scale: 4
networks:
  back: {}
"""


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose 1.29 is not installed")
def test_docker_compose_spreads_a_project_over_the_hosts(lab: Lab, tmp_path: Path) -> None:
    """Issue 13: docker-compose 1.29 against the manager, as against classic Swarm: the containers
    spread over both hosts and reach each other by name across them (the overlay)."""
    wait_ready(lab, ["host-1", "host-2"])
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)

    def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["docker-compose", "-H", lab.docker_host, "-p", "labc", "--no-ansi", *args],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 or not check, res.stderr
        return res

    try:
        compose("up", "-d")
        client = docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)
        web = client.containers.list(filters={"label": "com.docker.compose.project=labc"})
        assert len(web) == 4
        where = {c.id: c.attrs["Node"]["Name"] for c in web}
        assert set(where.values()) == {"host-1", "host-2"}, where  # spread (by running containers)
        one = next(c for c in web if where[c.id] == "host-1")
        far = next(c for c in web if where[c.id] == "host-2")
        far_ip = next(iter(far.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        ping = one.exec_run(["ping", "-c", "1", "-W", "3", far_ip])
        assert ping.exit_code == 0, overlay_state(lab, web)  # across the VXLAN
        assert far_ip in one.exec_run(["nslookup", far.name.split("/")[-1]]).output.decode()
    finally:  # also after a failed `up`: what it made must not stay on the lab for the next tests
        compose("down", "-t", "1", check=False)


def overlay_state(lab: Lab, containers: list[Any]) -> str:
    """What a failed ping across the overlay needs to be understood: each host's VXLAN devices
    and their peers, and each container's addresses and neighbours."""
    out = []
    for h in ("host-1", "host-2"):
        for cmd in (["ip", "-d", "-br", "link"], ["ip", "-br", "addr"], ["bridge", "fdb", "show"]):
            res = subprocess.run(lab.nsenter(h, *cmd), capture_output=True, text=True, timeout=10)
            lines = [ln for ln in res.stdout.splitlines() if "shl-" in ln or "shv-" in ln]
            out.append(f"{h} $ {' '.join(cmd)}\n" + "\n".join(lines))
    for c in containers:
        c.reload()
        nets = {k: (v.get("IPAddress"), v.get("MacAddress")) for k, v in c.attrs["NetworkSettings"]["Networks"].items()}
        out.append(f"{c.name} on {c.attrs['Node']['Name']}: {c.status} {nets}")
        for cmd in (["ip", "addr", "show", "eth0"], ["ip", "neigh"]):
            res = c.exec_run(cmd)
            out.append(f"{c.name} $ {' '.join(cmd)}\n{res.output.decode(errors='replace')}")
    return "\n".join(out)


def test_a_pull_reaches_every_host_and_their_events_come_back_merged(lab: Lab) -> None:
    """Issue 13: `docker pull` through the manager pulls on every host (progress per host), and
    `docker events` merges every host's engine events, each marked with its node."""
    wait_ready(lab, ["host-1", "host-2"])
    ref = f"{lab.registry}/labpull:1"
    host1 = docker.DockerClient(base_url=lab.hosts[0].engine, version="1.41", timeout=60)
    host1.images.get("busybox:latest").tag(ref)
    host1.images.push(ref)
    engines = [docker.DockerClient(base_url=h.engine, version="1.41", timeout=60) for h in lab.hosts]
    for e in engines:
        with contextlib.suppress(docker.errors.ImageNotFound):
            e.images.remove(ref)
    since = str(int(time.time()) - 1)
    pulled = _docker(lab, "pull", ref).stdout
    assert "host-1" in pulled and "host-2" in pulled, pulled
    for e in engines:
        assert ref in e.images.get(ref).tags
    events = _docker(lab, "events", "--since", since, "--until", str(int(time.time()) + 1),
                     "--filter", "type=image", "--format", "{{json .}}").stdout.splitlines()
    nodes = {json.loads(line)["Actor"]["Attributes"].get("node.name") for line in events}
    assert {"host-1", "host-2"} <= nodes, events
    for e in engines:
        with contextlib.suppress(docker.errors.ImageNotFound):
            e.images.remove(ref)
