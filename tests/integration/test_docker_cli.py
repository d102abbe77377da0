"""The machine's real ``docker`` CLI drives a Shoal daemon through the issue's tour."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from shoal.agent.network.mesh import docker_user_rule
from tests.integration.conftest import MESH_NAME, shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = pytest.mark.integration

PORT = 18080


def nft_table() -> str:
    """The daemon's ``nft list table inet <its mesh name>`` here (it runs in this namespace), or ""."""
    res = subprocess.run(["nft", "list", "table", "inet", MESH_NAME], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else ""


def running(shoal: ShoalProcess, service: str) -> int:
    out = shoal.docker_cli("service", "ps", service, "--filter", "desired-state=running",
                           "--format", "{{.CurrentState}}").stdout
    return sum(1 for line in out.splitlines() if line.startswith("Running"))


def test_docker_cli_tour(shoal: ShoalProcess) -> None:
    # Not in a swarm yet: swarm calls fail the way Docker's do.
    res = shoal.docker_cli("service", "ls", check=False)
    assert res.returncode != 0 and "not a swarm manager" in res.stderr

    out = shoal.docker_cli("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", listen_addr()).stdout
    assert "Swarm initialized" in out and "docker swarm join --token SWMTKN-1-" in out
    try:
        version = shoal.docker_cli("version", "--format", "{{.Server.APIVersion}}").stdout.strip()
        assert version == "1.41"
        info = shoal.docker_cli("info", "--format", "{{json .Swarm}}").stdout
        swarm = json.loads(info)
        assert swarm["LocalNodeState"] == "active" and swarm["ControlAvailable"] is True
        assert swarm["Nodes"] == 1 and swarm["Managers"] == 1

        nodes = shoal.docker_cli("node", "ls", "--format", "{{.Self}} {{.Status}} {{.Availability}} {{.ManagerStatus}}")
        assert nodes.stdout.split() == ["true", "Ready", "Active", "Leader"]
        me = json.loads(shoal.docker_cli("node", "inspect", "self").stdout)[0]
        assert me["ID"] == swarm["NodeID"] and me["Spec"]["Role"] == "manager"

        shoal.docker_cli("service", "create", "--detach", "--name", "web", "--replicas", "5",
                         "-p", f"{PORT}:80", "busybox:latest", "httpd", "-f", "-v", "-p", "80", "-h", "/var/www")
        wait_for(lambda: running(shoal, "web") == 5, timeout=60)
        ls = shoal.docker_cli("service", "ls", "--format", "{{.Name}} {{.Replicas}} {{.Ports}}").stdout.split()
        assert ls[:2] == ["web", "5/5"] and f"{PORT}->80/tcp" in ls[2]
        ps = shoal.docker_cli("service", "ps", "web", "--format", "{{.Name}} {{.Node}} {{.DesiredState}}").stdout
        names = sorted(line.split()[0] for line in ps.splitlines())
        assert names == [f"web.{i}" for i in range(1, 6)]
        spec = json.loads(shoal.docker_cli("service", "inspect", "web").stdout)[0]
        assert spec["Spec"]["Mode"]["Replicated"]["Replicas"] == 5
        assert spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith("busybox:latest")

        # The published port answers, balanced over the tasks, through the kernel (table inet shoal).
        body = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/", timeout=10).read()
        assert b"shoal" in body
        assert f"ingress-tcp-{PORT}" in nft_table()

        # Without --detach the CLI follows progress until converged (it reads _up-to-date tasks).
        shoal.docker_cli("service", "scale", "web=8", timeout=120)
        assert running(shoal, "web") == 8
        shoal.docker_cli("service", "scale", "--detach", "web=2")
        wait_for(lambda: running(shoal, "web") == 2, timeout=60)

        shoal.docker_cli("service", "create", "--detach", "--name", "echoer", "busybox:latest",
                         "sh", "-c", "echo tick; sleep 600")
        logs = wait_for(lambda: "tick" in (out := shoal.docker_cli("service", "logs", "echoer").stdout) and out)
        # Each line is prefixed by the task and node, as Docker prints it: echoer.1.<task>@<host>    | tick
        line = str(logs).splitlines()[0]
        assert line.startswith("echoer.1.") and "@" in line and line.endswith("| tick")
        shoal.docker_cli("service", "rm", "echoer")

        shoal.docker_cli("service", "rm", "web")
        assert shoal.docker_cli("service", "ls", "-q").stdout.strip() == ""
        res = shoal.docker_cli("service", "inspect", "web", check=False)
        assert res.returncode != 0 and "no such service" in res.stderr.lower()
        wait_for(lambda: f"ingress-tcp-{PORT}" not in nft_table(), timeout=10)

        # Leaving the swarm takes away everything the mesh put in the kernel, and nothing else.
        shoal.docker_cli("swarm", "leave", "--force")
        assert nft_table() == ""
        rule = ["iptables", "-w", "-C", "DOCKER-USER", *docker_user_rule(MESH_NAME)]
        assert subprocess.run(rule, capture_output=True).returncode != 0
        assert subprocess.run(["iptables", "-w", "-n", "-L", "DOCKER-USER"], capture_output=True).returncode == 0
    finally:
        shoal.docker_cli("swarm", "leave", "--force", check=False)


def test_shoal_cli_tour(shoal: ShoalProcess) -> None:
    shoal_cli(shoal, "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", listen_addr())
    try:
        plan = shoal_cli(shoal, "service", "create", "--dry-run", "--replicas", "3", "busybox:latest", "true").stdout
        assert plan.count("placed") == 3
        nowhere = shoal_cli(shoal, "service", "create", "--dry-run", "--constraint", "node.labels.zone==x",
                            "busybox:latest", "true").stdout
        assert "no suitable node" in nowhere
        assert shoal.client().services.list() == []  # a dry run creates nothing
        out = shoal_cli(shoal, "service", "create", "--name", "greet", "--replicas", "2",
                        "busybox:latest", "sh", "-c", "echo hello from $HOSTNAME; sleep 600").stdout
        service_id = out.strip().splitlines()[-1]
        assert len(service_id) == 25
        ls = shoal_cli(shoal, "service", "ls").stdout
        assert "greet" in ls and "2/2" in ls
        ps = shoal_cli(shoal, "service", "ps", "greet").stdout
        assert "greet.1" in ps and "greet.2" in ps and "Running" in ps
        nodes = shoal_cli(shoal, "node", "ls").stdout
        assert "Ready" in nodes and "Active" in nodes and "Leader" in nodes
        logs = wait_for(lambda: shoal_cli(shoal, "service", "logs", "greet").stdout.count("hello from") == 2 and
                        shoal_cli(shoal, "service", "logs", "greet").stdout)
        assert "greet.1." in str(logs) and "@" in str(logs)
        shoal_cli(shoal, "service", "scale", "greet=3")
        assert "3/3" in shoal_cli(shoal, "service", "ls").stdout
        shoal_cli(shoal, "service", "rm", "greet")
        res = shoal_cli(shoal, "service", "ps", "greet", check=False)
        assert res.returncode == 1 and res.stderr.count("\n") == 1 and "not found" in res.stderr
    finally:
        shoal_cli(shoal, "swarm", "leave", "--force", check=False)
