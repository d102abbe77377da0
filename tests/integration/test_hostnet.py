"""Host networking and host-mode ports through the machine's real ``docker`` CLI and dockerd:
a ``--network host`` task runs in the host's network namespace and serves on 127.0.0.1; Swarm's
refusals leave nothing stored; a host-mode port held outside Shoal, or by another service, is
explained in ``docker service ps --no-trunc``."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    """The machine's dockerd itself, to look at the containers Shoal made."""
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")
    yield client
    client.close()


def task_errors(shoal: ShoalProcess, service: str) -> str:
    return shoal.docker_cli("service", "ps", "--no-trunc", "--format", "{{.CurrentState}}|{{.Error}}", service).stdout


def test_service_on_host_network(shoal: ShoalProcess, swarm: docker.DockerClient,
                                 engine: docker.DockerClient) -> None:
    port = free_port()
    shoal.docker_cli("network", "create", "-d", "overlay", "front")
    shoal.docker_cli("service", "create", "--detach", "--name", "onhost", "--network", "host",
                     "--publish", f"published={port},target={port},mode=host", "busybox:latest",
                     "sh", "-c", f"echo hostnet-ok > /tmp/index.html; exec httpd -f -p {port} -h /tmp")
    # It serves on the host's loopback: only a process in the host's namespace can bind there.
    body = wait_for(lambda: _get(f"http://127.0.0.1:{port}/index.html"), timeout=60)
    assert body == b"hostnet-ok\n"

    (task,) = swarm.api.tasks(filters={"service": "onhost", "desired-state": "running"})
    (att,) = task["NetworksAttachments"]
    assert att["Network"]["Spec"]["Name"] == "host" and not att.get("Addresses")
    container = engine.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    pid = container.attrs["State"]["Pid"]
    assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    # The ports come with the agent's report of the started task, which may land after it serves.
    task = wait_for(lambda: next((t for t in swarm.api.tasks(filters={"service": "onhost", "desired-state": "running"})
                                  if (t["Status"].get("PortStatus") or {}).get("Ports")), None), timeout=30)
    assert task["Status"]["PortStatus"]["Ports"][0]["PublishedPort"] == port

    # `service inspect` as Swarm shows it: the predefined network's ID, which resolves to "host".
    svc = json.loads(shoal.docker_cli("service", "inspect", "onhost").stdout)[0]
    (target,) = svc["Spec"]["TaskTemplate"]["Networks"]
    assert json.loads(shoal.docker_cli("network", "inspect", target["Target"]).stdout)[0]["Name"] == "host"
    assert "Networks:\thost" in shoal.docker_cli("service", "inspect", "--pretty", "onhost").stdout.replace(" ", "\t")
    # Not among the swarm's networks; not removable.
    # host and bridge are the engine's to list; ingress is swarm init's.
    assert shoal.docker_cli("network", "ls", "--format", "{{.Name}}").stdout.split() == ["front", "ingress"]
    res = shoal.docker_cli("network", "rm", "host", check=False)
    assert res.returncode != 0 and "host is a pre-defined network and cannot be removed" in res.stderr

    # Swarm's rules, refused at create with nothing stored.
    res = shoal.docker_cli("service", "create", "--detach", "--name", "both", "--network", "host",
                           "--network", "front", "busybox:latest", "sleep", "60", check=False)
    assert res.returncode != 0
    assert "container cannot be disconnected from host network or connected to host network" in res.stderr
    res = shoal.docker_cli("service", "create", "--detach", "--name", "mesh", "--network", "host",
                           "-p", "18099:80", "busybox:latest", "sleep", "60", check=False)
    assert res.returncode != 0 and "published in ingress mode" in res.stderr and "mode=host" in res.stderr
    assert shoal.docker_cli("service", "ls", "--format", "{{.Name}}").stdout.split() == ["onhost"]
    # Shoal's own CLI names it the same way.
    shoal_cli(shoal, "service", "create", "--name", "viashoal", "--network", "host", "busybox:latest", "sleep", "600")
    via = json.loads(shoal.docker_cli("service", "inspect", "viashoal").stdout)[0]
    assert via["Spec"]["TaskTemplate"]["Networks"] == [{"Target": target["Target"]}]
    res = shoal_cli(shoal, "service", "create", "--network", "none", "busybox:latest", "true", check=False)
    assert res.returncode != 0 and res.stderr.count("\n") == 1 and "none" in res.stderr
    shoal.docker_cli("service", "rm", "onhost", "viashoal")
    shoal.docker_cli("network", "rm", "front")


def _get(url: str) -> bytes | None:
    try:
        return urllib.request.urlopen(url, timeout=2).read()  # type: ignore[no-any-return]
    except OSError:
        return None


def test_host_mode_port_conflicts_explained(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    port = free_port()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("0.0.0.0", port))
    squatter.listen()
    try:
        shoal.docker_cli("service", "create", "--detach", "--name", "first", "--publish",
                         f"published={port},target=80,mode=host", "busybox:latest", "sleep", "600")
        want = f"host-mode port {port}/tcp is already in use on this node (by a process outside Shoal): "
        errors = wait_for(lambda: want in (out := task_errors(shoal, "first")) and out, timeout=60)
        assert "address already in use" in str(errors)  # the engine's own words follow
    finally:
        squatter.close()
    # Once the port is free the service runs; a second service wanting it is kept pending, and says why.
    wait_for(lambda: "Running" in task_errors(shoal, "first"), timeout=60)
    shoal.docker_cli("service", "create", "--detach", "--name", "second", "--publish",
                     f"published={port},target=80,mode=host", "busybox:latest", "sleep", "600")
    want = f"no suitable node (host-mode port {port}/tcp already in use on 1 node)"
    wait_for(lambda: want in task_errors(shoal, "second"), timeout=30)
    shoal.docker_cli("service", "rm", "first", "second")


def test_stacks_on_the_host_network(shoal: ShoalProcess, swarm: docker.DockerClient, tmp_path: Path) -> None:
    host_id = json.loads(shoal.docker_cli("network", "inspect", "host").stdout)[0]["Id"]
    # docker stack deploy: Swarm's idiom is an external network named host (the CLI drops network_mode itself).
    f = tmp_path / "docker.yml"
    f.write_text("version: '3.8'\nservices:\n  web:\n    image: busybox:latest\n    command: sleep 600\n"
                 "    networks: [hostnet]\nnetworks:\n  hostnet:\n    external: true\n    name: host\n")
    shoal.docker_cli("stack", "deploy", "-c", str(f), "dk")
    svc = json.loads(shoal.docker_cli("service", "inspect", "dk_web").stdout)[0]
    assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": host_id}]
    # shoal stack deploy reads network_mode: host as that network; none is refused with file and line.
    g = tmp_path / "shoal.yml"
    g.write_text("services:\n  web:\n    image: busybox:latest\n    command: sleep 600\n    network_mode: host\n")
    shoal_cli(shoal, "stack", "deploy", "-c", str(g), "sh")
    svc = json.loads(shoal.docker_cli("service", "inspect", "sh_web").stdout)[0]
    assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": host_id}]
    assert shoal.docker_cli("network", "ls", "--format", "{{.Name}}").stdout.split() == ["ingress"]  # no sh_default
    g.write_text("services:\n  web:\n    image: busybox:latest\n    network_mode: none\n")
    res = shoal_cli(shoal, "stack", "deploy", "-c", str(g), "bad", check=False)
    assert res.returncode != 0 and ":4" in res.stderr and "network_mode 'none'" in res.stderr
    assert "bad" not in shoal_cli(shoal, "stack", "ls").stdout
    shoal.docker_cli("stack", "rm", "dk", "sh")


def test_encrypted_overlay_refused_with_the_kernels_reason(shoal: ShoalProcess, swarm: docker.DockerClient,
                                                           tmp_path: Path) -> None:
    # The agent probed this kernel at start (no ESP, GCM or WireGuard here) and says so in its description.
    def labels() -> dict[str, str]:
        node = json.loads(shoal.docker_cli("node", "inspect", "self").stdout)[0]
        return node["Description"]["Engine"].get("Labels") or {}

    wait_for(lambda: labels().get("shoal.encryption"), timeout=30)
    assert labels()["shoal.encryption"] == "none"
    assert labels()["shoal.encryption.reason"] == "kernel lacks ESP, GCM and WireGuard"
    hostname = json.loads(shoal.docker_cli("node", "inspect", "self").stdout)[0]["Description"]["Hostname"]

    res = shoal.docker_cli("network", "create", "-d", "overlay", "--opt", "encrypted", "secure", check=False)
    assert res.returncode != 0
    assert (f"cannot create encrypted network secure: 1 node of 1 cannot encrypt VXLAN traffic: {hostname} "
            "(kernel lacks ESP, GCM and WireGuard)") in res.stderr
    assert shoal.docker_cli("network", "ls", "--format", "{{.Name}}").stdout.split() == ["ingress"]  # nothing stored
    # A Compose file's driver_opts the same way, through docker stack deploy: no network, no service.
    f = tmp_path / "enc.yml"
    f.write_text("version: '3.8'\nservices:\n  web:\n    image: busybox:latest\n    command: sleep 600\n"
                 "    networks: [sec]\nnetworks:\n  sec:\n    driver_opts: {encrypted: ''}\n")
    res = shoal.docker_cli("stack", "deploy", "-c", str(f), "enc", check=False)
    assert res.returncode != 0 and "cannot create encrypted network enc_sec" in res.stderr
    assert shoal.docker_cli("network", "ls", "--format", "{{.Name}}").stdout.split() == ["ingress"]
    assert shoal.docker_cli("service", "ls", "-q").stdout.strip() == ""
