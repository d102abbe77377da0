"""Bad update/rollback configs over HTTP: a 400 with Docker's (or swarmkit's) wording, nothing stored
changes; and the one line `shoal service ps` prints about an update in progress or paused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal import controlapi
from shoal.api import create_app
from shoal.api.testing import FakeManager
from shoal.cli.service import update_status_lines
from shoal.errors import InvalidArgument
from shoal.models import ContainerSpec, InitRequest, ServiceSpec, TaskSpec, UpdateConfig


@pytest.fixture
async def manager() -> FakeManager:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    return m


@pytest.fixture
async def client(manager: FakeManager) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(manager))) as c:
        yield c


def spec(**extra: Any) -> dict[str, Any]:
    return {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest"}},
            "Mode": {"Replicated": {"Replicas": 1}}, **extra}


def snapshot(manager: FakeManager) -> tuple[int, bytes]:
    s = manager.store
    return s.revision, msgspec.json.encode(sorted(s.list("service"), key=lambda o: o.ID))


BAD: list[tuple[dict[str, Any], str]] = [
    ({"UpdateConfig": {"Parallelism": -1}}, "Expected `int` >= 0 - at `$.UpdateConfig.Parallelism`"),
    ({"RollbackConfig": {"Parallelism": -2}}, "Expected `int` >= 0 - at `$.RollbackConfig.Parallelism`"),
    ({"UpdateConfig": {"Delay": -1}}, "at `$.UpdateConfig.Delay`"),
    ({"UpdateConfig": {"MaxFailureRatio": 1.5}}, "at `$.UpdateConfig.MaxFailureRatio`"),
    ({"UpdateConfig": {"FailureAction": "panic"}}, "unrecognized update failure action panic"),
    ({"RollbackConfig": {"FailureAction": "retry"}}, "unrecognized update failure action retry"),
    ({"UpdateConfig": {"Order": "sideways"}}, "unrecognized update order sideways"),
    ({"RollbackConfig": {"Order": "random"}}, "unrecognized update order random"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
async def test_bad_update_configs_are_400_and_change_nothing(
    client: TestClient, manager: FakeManager, extra: dict[str, Any], message: str
) -> None:
    resp = await client.post("/v1.41/services/create", json=spec())
    svc = await (await client.get(f"/services/{(await resp.json())['ID']}")).json()
    before = snapshot(manager)
    resp = await client.post("/v1.41/services/create", json={**spec(**extra), "Name": "other"})
    got = await resp.json()
    assert resp.status == 400 and message in got["message"], got
    url = f"/v1.41/services/{svc['ID']}/update?version={svc['Version']['Index']}"
    resp = await client.post(url, json={**svc["Spec"], **extra})
    got = await resp.json()
    assert resp.status == 400 and message in got["message"], got
    assert snapshot(manager) == before


def test_specs_built_in_python_are_checked_too(manager: FakeManager) -> None:
    """Stacks and the cron scheduler hand the control API specs that never went through the decoder."""
    store = manager.store
    base = ServiceSpec(Name="web", TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")))
    for uc, message in [
        (UpdateConfig(Parallelism=-1), "update-parallelism cannot be negative"),
        (UpdateConfig(Delay=-1), "update-delay cannot be negative"),
        (UpdateConfig(Monitor=-1), "update-monitor cannot be negative"),
        (UpdateConfig(MaxFailureRatio=2.0), "update-maxfailureratio cannot be less than 0 or bigger than 1"),
    ]:
        with pytest.raises(InvalidArgument, match=message) as exc:
            controlapi.create_service(store, msgspec.structs.replace(base, UpdateConfig=uc))
        assert exc.value.status == 400
    assert store.list("service") == []


def test_ps_update_status_line() -> None:
    paused = {"ID": "a", "Spec": {"Name": "web"}, "UpdateStatus": {
        "State": "paused", "Message": "update paused due to failure or early termination of task x1"}}
    assert update_status_lines([paused]) == [
        "update: paused — update paused due to failure or early termination of task x1"]
    rolled = {"ID": "b", "Spec": {"Name": "api"}, "UpdateStatus": {"State": "rollback_completed",
                                                                   "Message": "rollback completed"}}
    plain = {"ID": "c", "Spec": {"Name": "db"}}
    assert update_status_lines([paused, rolled, plain]) == [
        "web update: paused — update paused due to failure or early termination of task x1",
        "api update: rollback completed — rollback completed",
    ]


def test_inspect_pretty_shows_update_status() -> None:
    from shoal.cli.service import _pretty_service

    svc = {"ID": "a", "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": 2}}}, "UpdateStatus": {
        "State": "rollback_completed", "StartedAt": "2020-01-01T00:00:00Z", "CompletedAt": "2020-01-01T00:01:00Z",
        "Message": "rollback completed"}}
    lines = [" ".join(line.split()) for line in _pretty_service(svc).splitlines()]
    at = lines.index("UpdateStatus:")
    assert lines[at + 1] == "State: rollback_completed"
    assert lines[at + 2].startswith("Started:") and lines[at + 2].endswith(" ago")
    assert lines[at + 3].startswith("Completed:") and lines[at + 3].endswith(" ago")
    assert lines[at + 4] == "Message: rollback completed"
    assert "UpdateStatus" not in _pretty_service({**svc, "UpdateStatus": None})
