"""Services, nodes and tasks over HTTP: happy paths and every bad input leaving the store untouched."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal.api import create_app
from shoal.api.testing import FakeManager, add_node, add_task
from shoal.models import InitRequest, TaskState


@pytest.fixture
async def manager() -> FakeManager:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    return m


@pytest.fixture
async def client(manager: FakeManager) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(manager))) as c:
        yield c


def cli_spec(name: str = "web", replicas: int = 1, **extra: Any) -> dict[str, Any]:
    """A spec shaped like the one `docker service create` sends."""
    spec = {
        "Name": name,
        "Labels": {},
        "TaskTemplate": {
            "ContainerSpec": {"Image": "busybox:latest", "Args": ["top"], "Init": False,
                              "StopGracePeriod": 10_000_000_000, "DNSConfig": {}, "Isolation": "default"},
            "Resources": {"Limits": {}, "Reservations": {}},
            "RestartPolicy": {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0},
            "Placement": {},
            "ForceUpdate": 0,
            "Runtime": "container",
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
        "UpdateConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000,
                         "MaxFailureRatio": 0, "Order": "stop-first"},
        "RollbackConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000,
                           "MaxFailureRatio": 0, "Order": "stop-first"},
        "EndpointSpec": {"Mode": "vip"},
    }
    spec.update(extra)
    return spec


def state(manager: FakeManager) -> tuple[int, bytes]:
    s = manager.store
    objs = {k: sorted(s.list(k), key=lambda o: o.ID) for k in ("cluster", "node", "service", "task")}
    return s.revision, msgspec.json.encode(objs)


async def create(client: TestClient, spec: dict[str, Any]) -> str:
    resp = await client.post("/v1.41/services/create", json=spec)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["Warnings"] == []
    return body["ID"]


async def test_create_inspect_list_update_delete(client: TestClient, manager: FakeManager) -> None:
    sid = await create(client, cli_spec(replicas=3))
    svc = await (await client.get(f"/v1.41/services/{sid}")).json()
    assert svc["ID"] == sid and svc["Spec"]["Name"] == "web"
    assert svc["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}
    assert svc["Endpoint"]["VirtualIPs"] == []
    assert (await (await client.get("/services/web?insertDefaults=true")).json())["ID"] == sid
    assert (await (await client.get(f"/services/{sid[:6]}")).json())["ID"] == sid

    add_task(manager.store, manager.store.get("service", sid), slot=1)
    listed = await (await client.get("/services", params={"status": "true"})).json()
    assert [s["ID"] for s in listed] == [sid]
    assert listed[0]["ServiceStatus"] == {"RunningTasks": 1, "DesiredTasks": 3, "CompletedTasks": 0}
    plain = await (await client.get("/services")).json()
    assert "ServiceStatus" not in plain[0]  # moby: omitempty, only with ?status=true

    # Round trip: what GET returns is what `docker service update` sends back.
    spec = svc["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = 5
    resp = await client.post(f"/v1.41/services/{sid}/update?version={svc['Version']['Index']}", json=spec)
    assert resp.status == 200 and await resp.json() == {"Warnings": []}
    updated = await (await client.get(f"/services/{sid}")).json()
    assert updated["Spec"]["Mode"]["Replicated"]["Replicas"] == 5
    assert updated["PreviousSpec"]["Mode"]["Replicated"]["Replicas"] == 3

    resp = await client.post(
        f"/services/{sid}/update?version={updated['Version']['Index']}&rollback=previous", json=updated["Spec"]
    )
    assert resp.status == 200
    rolled = await (await client.get(f"/services/{sid}")).json()
    assert rolled["Spec"]["Mode"]["Replicated"]["Replicas"] == 3
    assert rolled["UpdateStatus"]["State"] == "rollback_started"

    assert (await client.delete(f"/v1.41/services/{sid}")).status == 200
    assert manager.store.get("service", sid) is None
    assert (await client.get(f"/services/{sid}")).status == 404


async def test_list_filters_over_http(client: TestClient) -> None:
    await create(client, cli_spec("web", Labels={"tier": "front"}))
    await create(client, cli_spec("webapp"))
    await create(client, cli_spec("agent", Mode={"Global": {}}))

    async def names(filters: dict[str, Any]) -> list[str]:
        resp = await client.get("/services", params={"filters": json.dumps(filters)})
        assert resp.status == 200, await resp.text()
        return sorted(s["Spec"]["Name"] for s in await resp.json())

    assert await names({"name": {"web": True}}) == ["web", "webapp"]
    assert await names({"name": ["agent"]}) == ["agent"]  # legacy list form
    assert await names({"mode": {"global": True}}) == ["agent"]
    assert await names({"label": {"tier=front": True}}) == ["web"]
    resp = await client.get("/services", params={"filters": json.dumps({"foo": {"x": True}})})
    assert resp.status == 400 and await resp.json() == {"message": "invalid filter 'foo'"}


BAD_CREATES: list[tuple[Any, int, str]] = [
    (cli_spec(Bogus=1), 400, "unknown field `Bogus`"),
    ({**cli_spec(), "TaskTemplate": {**cli_spec()["TaskTemplate"], "Bogus": 1}}, 400, "at `$.TaskTemplate`"),
    (cli_spec(Mode={"Replicated": {"Replicas": -1}}), 400, "Expected `int` >= 0"),
    (cli_spec(Mode={"Replicated": {"Replicas": "3"}}), 400, "Expected `int | null`, got `str`"),
    (cli_spec(name="bad name"), 400, "name must be valid as a DNS name component"),
    ({**cli_spec(), "TaskTemplate": {"ContainerSpec": {"Image": ""}}}, 400, "image reference must be provided"),
    ({**cli_spec(), "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}, "RestartPolicy": {"Condition": "x"}}},
     400, "Invalid enum value 'x'"),
    ({**cli_spec(), "TaskTemplate": {"ContainerSpec": {"Image": "busybox"},
                                     "Placement": {"Constraints": ["nodes.role==manager"]}}},
     400, "constraint key 'nodes.role' is not supported"),
    (cli_spec(name="taken"), 409, "service taken already exists"),
    (cli_spec("p2", EndpointSpec={"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]}), 400,
     "port '8080' is already in use by service 'taken'"),
    (cli_spec(UpdateConfig={"FailureAction": "panic"}), 400, "unrecognized update failure action panic"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_CREATES)
async def test_bad_creates_change_nothing(client: TestClient, manager: FakeManager, body: Any, status: int,
                                          message: str) -> None:
    await create(client, cli_spec("taken", EndpointSpec={"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]}))
    before = state(manager)
    resp = await client.post("/v1.41/services/create", json=body)
    assert resp.status == status
    got = await resp.json()
    assert set(got) == {"message"} and message in got["message"], got
    assert "\n" not in got["message"]
    assert state(manager) == before


async def test_malformed_and_empty_bodies(client: TestClient, manager: FakeManager) -> None:
    before = state(manager)
    for data in (b"", b"{", b"[]", b'"x"'):
        resp = await client.post("/services/create", data=data, headers={"Content-Type": "application/json"})
        assert resp.status == 400, data
        assert "message" in await resp.json()
    assert state(manager) == before


async def test_bad_updates_change_nothing(client: TestClient, manager: FakeManager) -> None:
    sid = await create(client, cli_spec())
    svc = await (await client.get(f"/services/{sid}")).json()
    version = svc["Version"]["Index"]
    before = state(manager)
    cases = [
        (f"/services/{sid}/update?version={version - 1}", svc["Spec"], 409, "update out of sequence"),
        (f"/services/{sid}/update", svc["Spec"], 400, "invalid service version ''"),
        (f"/services/{sid}/update?version={version}", {**svc["Spec"], "Name": "other"}, 501,
         "renaming services is not supported"),
        (f"/services/{sid}/update?version={version}", {**svc["Spec"], "Mode": {"Global": {}}}, 400,
         "service mode change is not allowed"),
        (f"/services/{sid}/update?version={version}&rollback=previous", svc["Spec"], 400,
         "does not have a previous spec"),
        (f"/services/{sid}/update?version={version}", {**svc["Spec"], "Labels": "x"}, 400, "Expected `object"),
        (f"/services/nope/update?version={version}", svc["Spec"], 404, "service nope not found"),
    ]
    for url, body, status, message in cases:
        resp = await client.post(url, json=body)
        got = await resp.json()
        assert resp.status == status, (url, got)
        assert message in got["message"], got
    assert (await client.delete("/services/nope")).status == 404
    assert state(manager) == before


async def test_nodes_over_http(client: TestClient, manager: FakeManager) -> None:
    store = manager.store
    worker = add_node(store, "worker1", labels={"zone": "eu"})
    nodes = await (await client.get("/nodes")).json()
    assert {n["Description"]["Hostname"] for n in nodes} == {"manager-host", "worker1"}
    got = await (await client.get("/nodes", params={"filters": json.dumps({"role": {"worker": True}})})).json()
    assert [n["ID"] for n in got] == [worker.ID]
    assert (await (await client.get("/nodes/worker1")).json())["ID"] == worker.ID
    assert (await client.get("/nodes/ghost")).status == 404

    node = await (await client.get(f"/nodes/{worker.ID}")).json()
    spec = {**node["Spec"], "Availability": "drain"}
    resp = await client.post(f"/nodes/{worker.ID}/update?version={node['Version']['Index']}", json=spec)
    assert resp.status == 200
    assert store.get("node", worker.ID).Spec.Availability == "drain"

    before = state(manager)
    me = await (await client.get(f"/nodes/{manager.node_id}")).json()
    for url, body, status in [
        (f"/nodes/{worker.ID}/update?version={node['Version']['Index']}", spec, 409),
        (f"/nodes/{worker.ID}/update?version={node['Version']['Index'] + 100}", {**spec, "Role": "boss"}, 400),
        (f"/nodes/{me['ID']}/update?version={me['Version']['Index']}", {**me["Spec"], "Role": "worker"}, 400),
        (f"/nodes/{worker.ID}/update?version={node['Version']['Index'] + 1}", {"Availability": "pause"}, 400),
    ]:
        resp = await client.post(url, json=body)
        assert resp.status == status, await resp.text()
    resp = await client.delete(f"/nodes/{worker.ID}")
    assert resp.status == 400 and "is not down and can't be removed" in (await resp.json())["message"]
    resp = await client.delete(f"/nodes/{manager.node_id}?force=true")
    assert resp.status == 400 and "must be demoted to worker" in (await resp.json())["message"]
    assert state(manager) == before
    assert (await client.delete(f"/nodes/{worker.ID}?force=true")).status == 200
    assert store.get("node", worker.ID) is None


async def test_tasks_over_http(client: TestClient, manager: FakeManager) -> None:
    sid = await create(client, cli_spec())
    svc = manager.store.get("service", sid)
    t1 = add_task(manager.store, svc, slot=1, node_id=manager.node_id)
    t0 = add_task(manager.store, svc, slot=1, node_id=manager.node_id, state=TaskState.SHUTDOWN,
                  desired=TaskState.SHUTDOWN)

    async def q(filters: dict[str, Any]) -> set[str]:
        resp = await client.get("/v1.41/tasks", params={"filters": json.dumps(filters)})
        assert resp.status == 200, await resp.text()
        return {t["ID"] for t in await resp.json()}

    assert await q({}) == {t0.ID, t1.ID}
    assert await q({"service": {"web": True}}) == {t0.ID, t1.ID}
    assert await q({"service": {"web": True}, "desired-state": {"running": True}}) == {t1.ID}
    assert await q({"node": {"manager-host": True}, "_up-to-date": {"true": True}}) == {t0.ID, t1.ID}
    assert await q({"name": {"web.1": True}}) == {t0.ID, t1.ID}
    task = await (await client.get(f"/tasks/{t1.ID[:8]}")).json()
    assert task["ID"] == t1.ID and task["Status"]["State"] == "running" and task["DesiredState"] == "running"
    resp = await client.get("/tasks/nope")
    assert resp.status == 404 and await resp.json() == {"message": "task nope not found"}
    resp = await client.get("/tasks", params={"filters": json.dumps({"service": {"nope": True}})})
    assert resp.status == 404
    resp = await client.get("/tasks", params={"filters": json.dumps({"color": {"red": True}})})
    assert resp.status == 400 and await resp.json() == {"message": "invalid filter 'color'"}


async def test_registry_auth_is_kept_for_the_agents_and_never_shown(client: TestClient, manager: FakeManager) -> None:
    auth = "eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InMzY3JldCJ9"  # {"username":"u","password":"s3cret"}
    resp = await client.post("/services/create", json=cli_spec(), headers={"X-Registry-Auth": auth})
    assert resp.status == 201, await resp.text()
    (svc,) = manager.store.list("service")
    assert svc.Spec.TaskTemplate.ContainerSpec.PullOptions.RegistryAuth == auth  # the tasks carry it to their nodes
    add_task(manager.store, svc)
    for path in ("/services", f"/services/{svc.ID}", "/tasks", f"/tasks/{manager.store.list('task')[0].ID}"):
        text = await (await client.get(path)).text()
        assert auth not in text and "PullOptions" not in text, path  # as Docker: its API types lack the field

    async def update(headers: dict[str, str], query: str = "") -> int:
        version = manager.store.get("service", svc.ID).Version.Index
        resp = await client.post(f"/services/{svc.ID}/update?version={version}{query}", json=cli_spec(),
                                 headers=headers)
        return resp.status

    def kept() -> str:
        cs = manager.store.get("service", svc.ID).Spec.TaskTemplate.ContainerSpec
        return cs.PullOptions.RegistryAuth if cs.PullOptions else ""

    assert await update({}) == 200 and kept() == auth  # no new credentials: the spec's stay
    assert await update({"X-Registry-Auth": "bmV3"}) == 200 and kept() == "bmV3"
    assert await update({}, "&registryAuthFrom=previous-spec") == 200 and kept() == auth
    before = state(manager)
    assert await update({}, "&registryAuthFrom=elsewhere") == 400
    assert state(manager) == before
    # a client's own PullOptions in the body is not Docker's API: dropped
    body = cli_spec("other")
    body["TaskTemplate"]["ContainerSpec"]["PullOptions"] = {"RegistryAuth": "forged"}
    assert (await client.post("/services/create", json=body)).status == 201
    assert manager.store.service_by_name("other").Spec.TaskTemplate.ContainerSpec.PullOptions is None


async def test_swarm_mode_shape_details(client: TestClient) -> None:
    """ForceUpdate is in every TaskTemplate (0 included), ServiceStatus only with ?status=true, and
    ?insertDefaults=true fills in swarmkit's defaults (defaults.InterpolateService)."""
    bare = {"Name": "bare", "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest"}}}
    sid = await create(client, bare)
    svc = await (await client.get(f"/v1.41/services/{sid}")).json()
    assert svc["Spec"]["TaskTemplate"]["ForceUpdate"] == 0
    for key in ("ServiceStatus", "UpdateStatus", "PreviousSpec", "JobStatus"):
        assert key not in svc
    assert "RestartPolicy" not in svc["Spec"]["TaskTemplate"]  # as stored: nothing invented
    (listed,) = await (await client.get("/v1.41/services")).json()
    assert listed["Spec"]["TaskTemplate"]["ForceUpdate"] == 0 and "ServiceStatus" not in listed
    (with_status,) = await (await client.get("/v1.41/services?status=true")).json()
    assert with_status["ServiceStatus"]["DesiredTasks"] == 1

    full = await (await client.get(f"/v1.41/services/{sid}?insertDefaults=true")).json()
    tt = full["Spec"]["TaskTemplate"]
    assert tt["RestartPolicy"] == {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0}
    assert tt["ContainerSpec"]["StopGracePeriod"] == 10_000_000_000 and tt["ContainerSpec"]["DNSConfig"] == {}
    assert tt["Resources"] == {} and tt["Placement"] == {} and tt["ForceUpdate"] == 0
    want = {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000, "Order": "stop-first"}
    assert full["Spec"]["UpdateConfig"] == want and full["Spec"]["RollbackConfig"] == want
    # What the CLI sends is kept as sent (a Monitor it gave is not overwritten).
    sid2 = await create(client, cli_spec(name="cli", UpdateConfig={"Parallelism": 2, "Monitor": 1_000_000_000}))
    full2 = await (await client.get(f"/v1.41/services/{sid2}?insertDefaults=1")).json()
    assert full2["Spec"]["UpdateConfig"] == {"Parallelism": 2, "Monitor": 1_000_000_000}


async def test_a_scale_that_spells_out_defaults_rolls_no_task(client: TestClient, manager: FakeManager) -> None:
    """The Docker SDK's ``Service.scale()`` sends back the spec it read with ``insertDefaults=true``:
    the template is the same one with defaults spelled out, so the tasks stay up to date."""
    sid = await create(client, {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest"}}})
    svc = manager.store.get("service", sid)
    full = await (await client.get(f"/v1.41/services/{sid}?insertDefaults=true")).json()
    spec = full["Spec"]
    spec["Mode"] = {"Replicated": {"Replicas": 3}}
    resp = await client.post(f"/v1.41/services/{sid}/update?version={svc.Version.Index}", json=spec)
    assert resp.status == 200, await resp.text()
    after = manager.store.get("service", sid)
    assert after.Spec.TaskTemplate == svc.Spec.TaskTemplate and after.Spec.Mode.Replicated.Replicas == 3
    # A real change still is one.
    spec["TaskTemplate"]["ContainerSpec"]["Args"] = ["sleep", "1"]
    resp = await client.post(f"/v1.41/services/{sid}/update?version={after.Version.Index}", json=spec)
    assert resp.status == 200 and manager.store.get("service", sid).Spec.TaskTemplate != svc.Spec.TaskTemplate
