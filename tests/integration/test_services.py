"""Services on a real engine, through the Docker SDK against a Shoal daemon."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import docker
import pytest
import requests

from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = pytest.mark.integration

IMAGE = "busybox:latest"


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    return docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")


def tasks(client: docker.DockerClient, service: str, **filters: str) -> list[dict]:
    return client.api.tasks(filters={"service": service, **filters})


def running(client: docker.DockerClient, service: str) -> list[dict]:
    return [t for t in tasks(client, service, **{"desired-state": "running"}) if t["Status"]["State"] == "running"]


def containers(engine: docker.DockerClient, service_name: str) -> list:
    # sparse: the SDK would otherwise inspect each listed container, racing with removals.
    return engine.containers.list(sparse=True, filters={"label": f"shoal.service.name={service_name}"})


def test_replicated_scale_up_and_down(swarm: docker.DockerClient, engine: docker.DockerClient) -> None:
    svc = swarm.services.create(IMAGE, command=["sleep", "600"], name="scale",
                                mode=docker.types.ServiceMode("replicated", replicas=3))
    wait_for(lambda: len(running(swarm, svc.id)) == 3)
    assert len(containers(engine, "scale")) == 3
    # Every container names its task, service and node.
    labels = containers(engine, "scale")[0].attrs["Labels"]
    assert labels["shoal.service.id"] == svc.id and labels["com.docker.swarm.service.id"] == svc.id
    assert labels["shoal.node.id"] == swarm.info()["Swarm"]["NodeID"]

    svc.scale(6)
    wait_for(lambda: len(running(swarm, svc.id)) == 6)
    assert sorted(t["Slot"] for t in running(swarm, svc.id)) == [1, 2, 3, 4, 5, 6]
    svc.reload()
    svc.scale(2)
    wait_for(lambda: len(running(swarm, svc.id)) == 2 and len(containers(engine, "scale")) == 2)
    svc.remove()
    wait_for(lambda: not engine.containers.list(all=True, sparse=True, filters={"label": "shoal.service.name=scale"}))
    with pytest.raises(docker.errors.NotFound):  # as Docker: filtering on a removed service is a 404
        swarm.api.tasks(filters={"service": "scale"})


def test_killed_container_is_replaced(swarm: docker.DockerClient, engine: docker.DockerClient) -> None:
    policy = docker.types.RestartPolicy(condition="any", delay=200_000_000)
    svc = swarm.services.create(IMAGE, command=["sleep", "600"], name="heal", restart_policy=policy,
                                mode=docker.types.ServiceMode("replicated", replicas=2))
    wait_for(lambda: len(running(swarm, svc.id)) == 2)
    victim = containers(engine, "heal")[0]
    victim.kill()

    def history() -> list[tuple[str, str]]:
        return sorted((t["DesiredState"], t["Status"]["State"]) for t in tasks(swarm, svc.id))

    # The killed task stays as history (desired shutdown, observed failed); its slot is refilled.
    wait_for(lambda: ("shutdown", "failed") in history() and len(running(swarm, svc.id)) == 2)
    assert victim.id not in [c.id for c in containers(engine, "heal")]
    slots = sorted(t["Slot"] for t in running(swarm, svc.id))
    assert slots == [1, 2]


def test_restart_policy_on_failure_with_max_attempts(swarm: docker.DockerClient) -> None:
    policy = docker.types.RestartPolicy(condition="on-failure", delay=100_000_000, max_attempts=2)
    svc = swarm.services.create(IMAGE, command=["sh", "-c", "exit 3"], name="flaky", restart_policy=policy)

    def settled() -> bool:
        ts = tasks(swarm, svc.id)
        return len(ts) == 3 and all(t["Status"]["State"] == "failed" for t in ts)

    wait_for(settled, timeout=40)
    time.sleep(1.0)  # no fourth attempt comes
    ts = tasks(swarm, svc.id)
    assert len(ts) == 3
    assert all(t["Status"]["ContainerStatus"]["ExitCode"] == 3 for t in ts)
    assert all("non-zero exit (3)" in t["Status"]["Err"] for t in ts)


def test_restart_condition_none_and_success(swarm: docker.DockerClient) -> None:
    none = docker.types.RestartPolicy(condition="none")
    svc = swarm.services.create(IMAGE, command=["true"], name="oneshot", restart_policy=none)
    wait_for(lambda: [t["Status"]["State"] for t in tasks(swarm, svc.id)] == ["complete"])
    time.sleep(1.0)
    assert len(tasks(swarm, svc.id)) == 1
    onfail = docker.types.RestartPolicy(condition="on-failure", delay=100_000_000)
    ok = swarm.services.create(IMAGE, command=["true"], name="okexit", restart_policy=onfail)
    wait_for(lambda: [t["Status"]["State"] for t in tasks(swarm, ok.id)] == ["complete"])
    time.sleep(1.0)
    assert len(tasks(swarm, ok.id)) == 1  # on-failure does not restart a clean exit


def test_global_service_runs_one_task_per_node(swarm: docker.DockerClient, engine: docker.DockerClient) -> None:
    svc = swarm.services.create(IMAGE, command=["sleep", "600"], name="everywhere",
                                mode=docker.types.ServiceMode("global"))
    node_id = swarm.info()["Swarm"]["NodeID"]
    wait_for(lambda: len(running(swarm, svc.id)) == 1)
    (task,) = running(swarm, svc.id)
    assert task["NodeID"] == node_id
    listed = swarm.api.services(filters={"mode": "global"}, status=True)
    assert [s["ServiceStatus"]["RunningTasks"] for s in listed] == [1]
    # Draining the only node takes the global task away.
    node = swarm.nodes.get(node_id)
    spec = node.attrs["Spec"]
    spec["Availability"] = "drain"
    node.update(spec)
    wait_for(lambda: not running(swarm, svc.id) and not containers(engine, "everywhere"))
    spec["Availability"] = "active"
    swarm.nodes.get(node_id).update(spec)
    wait_for(lambda: len(running(swarm, svc.id)) == 1)


def test_spec_applied_to_the_container(swarm: docker.DockerClient, engine: docker.DockerClient) -> None:
    resources = docker.types.Resources(mem_limit=64 * 1024 * 1024, cpu_limit=500_000_000,
                                       mem_reservation=16 * 1024 * 1024)
    svc = swarm.services.create(
        IMAGE, command=["sleep", "600"], name="shaped", env=["COLOR=blue"], workdir="/tmp",
        container_labels={"tier": "front"}, resources=resources, hostname="shaped-host",
        mounts=[docker.types.Mount(target="/scratch", source=None, type="tmpfs")],
    )
    wait_for(lambda: len(running(swarm, svc.id)) == 1)
    c = engine.containers.get(containers(engine, "shaped")[0].id)
    cfg, host = c.attrs["Config"], c.attrs["HostConfig"]
    assert "COLOR=blue" in cfg["Env"] and cfg["WorkingDir"] == "/tmp" and cfg["Hostname"] == "shaped-host"
    assert cfg["Labels"]["tier"] == "front"
    assert host["Memory"] == 64 * 1024 * 1024 and host["NanoCpus"] == 500_000_000
    assert host["MemoryReservation"] == 16 * 1024 * 1024
    assert any(m["Target"] == "/scratch" and m["Type"] == "tmpfs" for m in host["Mounts"])


def test_host_mode_port_is_published(swarm: docker.DockerClient) -> None:
    ports = docker.types.EndpointSpec(ports={18090: (80, "tcp", "host")})
    svc = swarm.services.create(IMAGE, command=["httpd", "-f", "-p", "80", "-h", "/var/www"], name="hostport",
                                endpoint_spec=ports)
    wait_for(lambda: len(running(swarm, svc.id)) == 1)
    (task,) = running(swarm, svc.id)
    assert task["Status"]["PortStatus"]["Ports"][0]["PublishedPort"] == 18090
    body = wait_for(lambda: _get("http://127.0.0.1:18090/"))
    assert "shoal" in str(body)


def _get(url: str) -> str | None:
    with contextlib.suppress(requests.RequestException):
        r = requests.get(url, timeout=2)
        if r.ok:
            return r.text
    return None


def test_missing_image_rejects_tasks(swarm: docker.DockerClient) -> None:
    svc = swarm.services.create("no-such-image:never", name="ghost",
                                restart_policy=docker.types.RestartPolicy(condition="none"))
    wait_for(lambda: [t["Status"]["State"] for t in tasks(swarm, svc.id)] == ["rejected"], timeout=30)
    (task,) = tasks(swarm, svc.id)
    assert "no-such-image" in task["Status"]["Err"].lower() or "no such image" in task["Status"]["Err"].lower()


def test_service_logs(swarm: docker.DockerClient) -> None:
    svc = swarm.services.create(IMAGE, command=["sh", "-c", "echo hello-$((1+1)); echo oops >&2; sleep 600"],
                                name="chatty")
    wait_for(lambda: len(running(swarm, svc.id)) == 1)

    def lines() -> list[bytes]:
        return [ln for ln in svc.logs(stdout=True, stderr=True) if ln.strip()]

    got = wait_for(lambda: len(lines()) >= 2 and lines())
    joined = b"".join(got)
    assert b"hello-2" in joined and b"oops" in joined
    # Follow mode: the stream stays open and yields lines as they come.
    stream = svc.logs(stdout=True, stderr=True, follow=True)
    first = next(iter(stream))
    assert b"hello-2" in first or b"oops" in first


def test_daemon_restart_adopts_running_containers(tmp_path: Path, engine: docker.DockerClient) -> None:
    proc = ShoalProcess(tmp_path)
    proc.start()
    client = proc.client()
    try:  # the daemon is stopped whatever fails, swarm init included
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
        svc = client.services.create(IMAGE, command=["sleep", "600"], name="adopt",
                                     mode=docker.types.ServiceMode("replicated", replicas=3))
        wait_for(lambda: len(running(client, svc.id)) == 3)
        before = {t["ID"]: t["Status"]["ContainerStatus"]["ContainerID"] for t in running(client, svc.id)}
        node_id = client.info()["Swarm"]["NodeID"]
        # A container of a task the store no longer knows, left behind by a crash.
        stray = engine.containers.run(IMAGE, ["sleep", "600"], detach=True,
                                      labels={"shoal.node.id": node_id, "shoal.task.id": "gone",
                                              "shoal.service.id": "gone", "shoal.service.name": "gone"})
        proc.stop()
        assert len(containers(engine, "adopt")) == 3  # stopping the daemon leaves tasks running
        proc.start()
        client = proc.client()
        wait_for(lambda: len(running(client, svc.id)) == 3)
        after = {t["ID"]: t["Status"]["ContainerStatus"]["ContainerID"] for t in running(client, svc.id)}
        assert after == before  # same tasks, same containers: adopted, not recreated
        assert sorted(c.id for c in containers(engine, "adopt")) == sorted(before.values())
        wait_for(lambda: not engine.containers.list(all=True, sparse=True, filters={"id": stray.id}))
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.swarm.leave(force=True)
        proc.stop()
