"""Classic Swarm's container API: each container is a one-replica service labelled shoal.container."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal.api import create_app
from shoal.api.testing import FakeManager, add_node, add_task
from shoal.dispatcher.protocol import LogMessage
from shoal.models import ContainerStatus, InitRequest, RestartCondition, Service, TaskState

TS = "2026-01-01T00:00:00.000000000Z"


@pytest.fixture
async def manager() -> FakeManager:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    return m


@pytest.fixture
async def client(manager: FakeManager) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(manager))) as c:
        yield c


def cli_config(**extra: Any) -> dict[str, Any]:
    """A body shaped like the one `docker run -d -e constraint:node==host-2 busybox sleep 600` sends."""
    cfg: dict[str, Any] = {
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
        "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False,
        "Env": ["constraint:node==host-2", "FOO=bar"], "Cmd": ["sleep", "600"], "Image": "busybox:latest",
        "Volumes": {}, "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": {"team": "a"},
        "HostConfig": {"Binds": None, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}},
                       "NetworkMode": "default", "PortBindings": {}, "RestartPolicy": {"Name": "no",
                       "MaximumRetryCount": 0}, "AutoRemove": False, "CapAdd": None, "CapDrop": None,
                       "Memory": 0, "NanoCpus": 0, "PidsLimit": None, "Init": None},
        "NetworkingConfig": {"EndpointsConfig": {}},
    }
    cfg.update(extra)
    return cfg


async def create(client: TestClient, name: str = "box", **extra: Any) -> str:
    resp = await client.post("/v1.41/containers/create", params={"name": name} if name else {},
                             json=cli_config(**extra))
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["Warnings"] == []
    return body["Id"]


def svc(manager: FakeManager, cid: str) -> Service:
    s = manager.store.get("service", cid)
    assert s is not None
    return s


def replicas(manager: FakeManager, cid: str) -> int:
    mode = svc(manager, cid).Spec.Mode
    assert mode is not None and mode.Replicated is not None
    return mode.Replicated.Replicas or 0


async def test_create_stores_a_zero_replica_service_with_env_unchanged(client: TestClient,
                                                                       manager: FakeManager) -> None:
    cid = await create(client)
    s = svc(manager, cid)
    assert s.Spec.Name == "box" and s.Spec.Labels == {"shoal.container": "true"}
    assert replicas(manager, cid) == 0
    cs = s.Spec.TaskTemplate.ContainerSpec
    assert cs is not None
    assert cs.Env == ["constraint:node==host-2", "FOO=bar"]  # the scheduler reads it from here
    assert cs.Image == "busybox:latest" and cs.Args == ["sleep", "600"] and cs.Command is None
    assert cs.Labels == {"team": "a"}
    assert s.Spec.TaskTemplate.RestartPolicy is not None
    assert s.Spec.TaskTemplate.RestartPolicy.Condition is RestartCondition.NONE
    assert manager.store.list("task") == []


async def test_create_maps_host_config(client: TestClient, manager: FakeManager) -> None:
    host = {"Memory": 64 * 2**20, "NanoCpus": 500_000_000, "PidsLimit": 50,
            "Binds": ["/tmp:/data:ro", "vol:/v"], "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}, "CapAdd": ["NET_ADMIN"],
            "Init": True, "ExtraHosts": ["db:10.0.0.5"],
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}}}
    cid = await create(client, Entrypoint=["/bin/sh", "-c"], Cmd="echo hi", WorkingDir="/w", User="nobody",
                       Tty=True, StopSignal="SIGINT", HostConfig=host,
                       Healthcheck={"Test": ["CMD", "true"], "Interval": 1_000_000_000})
    t = svc(manager, cid).Spec.TaskTemplate
    cs = t.ContainerSpec
    assert cs is not None
    assert cs.Command == ["/bin/sh", "-c"] and cs.Args == ["echo hi"]
    assert (cs.Dir, cs.User, cs.TTY, cs.StopSignal, cs.Init) == ("/w", "nobody", True, "SIGINT", True)
    assert cs.Mounts is not None and [(m.Type, m.Source, m.Target, m.ReadOnly) for m in cs.Mounts] == [
        ("bind", "/tmp", "/data", True), ("volume", "vol", "/v", False)]
    assert cs.Hosts == ["10.0.0.5 db"] and cs.CapabilityAdd == ["NET_ADMIN"]
    assert cs.Healthcheck is not None and cs.Healthcheck.Test == ["CMD", "true"]
    assert t.Resources is not None and t.Resources.Limits is not None
    assert (t.Resources.Limits.MemoryBytes, t.Resources.Limits.NanoCPUs, t.Resources.Limits.Pids) == (
        64 * 2**20, 500_000_000, 50)
    assert t.RestartPolicy is not None
    assert (t.RestartPolicy.Condition, t.RestartPolicy.MaxAttempts) == (RestartCondition.ON_FAILURE, 3)
    assert t.LogDriver is not None and t.LogDriver.Name == "json-file"
    ports = svc(manager, cid).Spec.EndpointSpec.Ports  # type: ignore[union-attr]
    assert ports is not None and [(p.TargetPort, p.PublishedPort, p.PublishMode) for p in ports] == [
        (80, 8080, "host")]


@pytest.mark.parametrize("policy", ["always", "unless-stopped"])
async def test_restart_always_is_any(client: TestClient, manager: FakeManager, policy: str) -> None:
    cid = await create(client, HostConfig={"RestartPolicy": {"Name": policy}})
    rp = svc(manager, cid).Spec.TaskTemplate.RestartPolicy
    assert rp is not None and rp.Condition is RestartCondition.ANY


async def test_create_errors(client: TestClient, manager: FakeManager) -> None:
    before = manager.store.revision
    resp = await client.post("/containers/create", json={"Cmd": ["true"]})
    assert resp.status == 400 and "image reference must be provided" in (await resp.json())["message"]
    resp = await client.post("/containers/create", params={"name": "bad name!"}, json=cli_config())
    assert resp.status == 400 and "Invalid container name" in (await resp.json())["message"]
    resp = await client.post("/containers/create", data=b"[1]")
    assert resp.status == 400
    resp = await client.post("/containers/create", json=cli_config(HostConfig={"RestartPolicy": {"Name": "x"}}))
    assert resp.status == 400
    assert manager.store.revision == before
    cid = await create(client, "dup")
    resp = await client.post("/containers/create", params={"name": "/dup"}, json=cli_config())
    assert resp.status == 409
    assert (await resp.json())["message"].startswith(
        f'Conflict. The container name "/dup" is already in use by container "{cid}"')


async def test_create_without_name_gets_a_random_one(client: TestClient, manager: FakeManager) -> None:
    cid = await create(client, name="")
    assert "_" in svc(manager, cid).Spec.Name


async def test_requires_a_swarm(manager: FakeManager) -> None:
    async with TestClient(TestServer(create_app(FakeManager()))) as c:
        for method, path in (("POST", "/containers/create"), ("GET", "/containers/json"),
                             ("GET", "/containers/x/json"), ("POST", "/containers/x/start"),
                             ("DELETE", "/containers/x")):
            resp = await c.request(method, path, json=cli_config())
            assert resp.status == 503, path


async def test_start_stop_kill(client: TestClient, manager: FakeManager) -> None:
    cid = await create(client)
    assert (await client.post("/v1.41/containers/box/start")).status == 204
    assert replicas(manager, cid) == 1
    # The env survives the update: the scheduler still sees the constraint.
    assert svc(manager, cid).Spec.TaskTemplate.ContainerSpec.Env[0] == "constraint:node==host-2"  # type: ignore[union-attr,index]
    add_task(manager.store, svc(manager, cid))
    assert (await client.post(f"/containers/{cid}/start")).status == 304
    assert (await client.post(f"/containers/{cid[:5]}/stop")).status == 204
    assert replicas(manager, cid) == 0
    assert (await client.post(f"/containers/{cid}/stop")).status == 304
    resp = await client.post(f"/containers/{cid}/kill")
    assert resp.status == 409 and "is not running" in (await resp.json())["message"]
    assert (await client.post(f"/containers/{cid}/start")).status == 204
    assert (await client.post(f"/containers/{cid}/kill")).status == 204
    assert replicas(manager, cid) == 0


async def test_start_of_an_exited_container_forces_a_new_task(client: TestClient, manager: FakeManager) -> None:
    cid = await create(client)
    assert (await client.post(f"/containers/{cid}/start")).status == 204
    add_task(manager.store, svc(manager, cid), state=TaskState.COMPLETE)
    before = svc(manager, cid).Spec.TaskTemplate.ForceUpdate
    assert (await client.post(f"/containers/{cid}/start")).status == 204
    assert svc(manager, cid).Spec.TaskTemplate.ForceUpdate == before + 1


async def test_unknown_or_non_container_is_404(client: TestClient, manager: FakeManager) -> None:
    resp = await client.post("/services/create", json={
        "Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest"}},
        "Mode": {"Replicated": {"Replicas": 0}}})
    assert resp.status == 201
    sid = (await resp.json())["ID"]
    for ref in ("web", sid, "nope"):
        for method, path in (("GET", f"/containers/{ref}/json"), ("POST", f"/containers/{ref}/start"),
                             ("POST", f"/containers/{ref}/stop"), ("POST", f"/containers/{ref}/kill"),
                             ("DELETE", f"/containers/{ref}"), ("GET", f"/containers/{ref}/logs?stdout=1")):
            resp = await client.request(method, path)
            assert resp.status == 404, (method, path)
            assert (await resp.json())["message"] == f"No such container: {ref}"
    assert manager.store.get("service", sid) is not None


async def test_list_and_inspect(client: TestClient, manager: FakeManager) -> None:
    node = add_node(manager.store, "host-2", addr="10.0.0.2")
    created = await create(client, "idle")
    cid = await create(client, "box", Labels={"team": "b"})
    await client.post(f"/containers/{cid}/start")
    add_task(manager.store, svc(manager, cid), node_id=node.ID, container_id="c0ffee")

    running = await (await client.get("/v1.41/containers/json")).json()
    assert [c["Id"] for c in running] == [cid]
    c = running[0]
    assert c["Names"] == ["/host-2/box"] and c["Image"] == "busybox:latest" and c["Command"] == "sleep 600"
    assert c["State"] == "running" and c["Status"].startswith("Up ") and c["Labels"] == {"team": "b"}
    assert isinstance(c["Created"], int) and c["Created"] > 0 and c["Ports"] == []

    everything = await (await client.get("/containers/json", params={"all": "1"})).json()
    assert {c["Id"]: (c["State"], c["Status"], c["Names"]) for c in everything} == {
        cid: ("running", c["Status"], ["/host-2/box"]), created: ("created", "Created", ["/idle"])}
    filtered = await (await client.get("/containers/json", params={
        "all": "1", "filters": msgspec.json.encode({"label": ["team=b"]}).decode()})).json()
    assert [c["Id"] for c in filtered] == [cid]
    filtered = await (await client.get("/containers/json", params={
        "filters": msgspec.json.encode({"status": ["created"]}).decode()})).json()
    assert [c["Id"] for c in filtered] == [created]
    filtered = await (await client.get("/containers/json", params={
        "all": "1", "filters": msgspec.json.encode({"name": ["idl"]}).decode()})).json()
    assert [c["Id"] for c in filtered] == [created]
    resp = await client.get("/containers/json", params={"filters": '{"bogus": ["x"]}'})
    assert resp.status == 400

    info = await (await client.get("/v1.41/containers/box/json")).json()
    assert info["Id"] == cid and info["Name"] == "/box"
    assert info["State"]["Status"] == "running" and info["State"]["Running"] is True
    assert info["State"]["StartedAt"]
    assert info["Config"]["Image"] == "busybox:latest" and info["Config"]["Cmd"] == ["sleep", "600"]
    assert info["Config"]["Env"] == ["constraint:node==host-2", "FOO=bar"]
    assert info["Config"]["Tty"] is False and info["HostConfig"] == {}
    assert info["Node"] == {"ID": node.ID, "Name": "host-2", "Addr": "10.0.0.2"}
    idle = await (await client.get(f"/containers/{created}/json")).json()
    assert idle["State"]["Status"] == "created" and idle["State"]["Running"] is False and idle["Node"] is None


async def test_exited_state_carries_the_exit_code(client: TestClient, manager: FakeManager) -> None:
    cid = await create(client)
    await client.post(f"/containers/{cid}/start")
    task = add_task(manager.store, svc(manager, cid), state=TaskState.FAILED, container_id="abc")
    with manager.store.tx() as tx:
        status = msgspec.structs.replace(task.Status, ContainerStatus=ContainerStatus(ContainerID="abc", ExitCode=3))
        tx.update("task", msgspec.structs.replace(task, Status=status))
    listed = await (await client.get("/containers/json?all=1")).json()
    assert listed[0]["State"] == "exited" and listed[0]["Status"].startswith("Exited (3)")
    assert await (await client.get("/containers/json")).json() == []
    info = await (await client.get(f"/containers/{cid}/json")).json()
    assert info["State"]["ExitCode"] == 3 and info["State"]["Running"] is False


async def test_remove(client: TestClient, manager: FakeManager) -> None:
    cid = await create(client)
    await client.post(f"/containers/{cid}/start")
    add_task(manager.store, svc(manager, cid))
    resp = await client.delete(f"/containers/{cid}")
    assert resp.status == 409
    assert (await resp.json())["message"] == (
        f"You cannot remove a running container {cid}. "
        "Stop the container before attempting removal or force remove")
    assert manager.store.get("service", cid) is not None
    assert (await client.delete("/v1.41/containers/box", params={"force": "1"})).status == 204
    assert manager.store.get("service", cid) is None
    other = await create(client, "other")
    assert (await client.delete(f"/containers/{other}")).status == 204  # never started: no force needed
    assert manager.store.get("service", other) is None


async def test_logs_are_plain_frames(client: TestClient, manager: FakeManager) -> None:
    cid = await create(client)
    await client.post(f"/containers/{cid}/start")
    task = add_task(manager.store, svc(manager, cid), node_id=manager.node_id or "", container_id="abc")
    manager.log_messages = [LogMessage(task_id=task.ID, service_id=cid, node_id=task.NodeID, stream=1,
                                       timestamp=TS, data=b"hello\n")]
    resp = await client.get("/v1.41/containers/box/logs", params={"stdout": "1", "stderr": "1"})
    assert resp.status == 200
    body = await resp.read()
    assert body == b"\x01\x00\x00\x00\x00\x00\x00\x06hello\n"
    resp = await client.get(f"/containers/{cid}/logs")
    assert resp.status == 400
