"""Bad requests to a live daemon get Docker's status and one-line message, and change nothing."""

from __future__ import annotations

import json
import subprocess

import docker
import pytest

from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration

GOOD = {"Name": "keep", "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Command": ["sleep", "600"]}},
        "Mode": {"Replicated": {"Replicas": 1}}}


def post(client: docker.DockerClient, path: str, body: object, **params: object) -> tuple[int, dict]:
    api = client.api
    resp = api._post(api._url(path), data=json.dumps(body), params=params,
                     headers={"Content-Type": "application/json"})
    return resp.status_code, resp.json() if resp.content else {}


def snapshot(client: docker.DockerClient) -> str:
    return json.dumps([client.api.services(), client.api.nodes()], sort_keys=True)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({**GOOD, "Name": "x", "Bogus": 1}, 400, "unknown field"),
        ({**GOOD, "Name": "x", "Mode": {"Replicated": {"Replicas": "three"}}}, 400, "Replicas"),
        ({**GOOD, "Name": "x", "Mode": {"Replicated": {"Replicas": -1}}}, 400, "Replicas"),
        ({"Name": "x", "TaskTemplate": {"ContainerSpec": {}}}, 400, "image reference must be provided"),
        ({**GOOD}, 409, "already exists"),
        ("{not json", 400, ""),
    ],
)
def test_bad_create(swarm: docker.DockerClient, body: object, status: int, needle: str) -> None:
    if not swarm.api.services(filters={"name": "keep"}):
        assert post(swarm, "/services/create", GOOD)[0] == 201
    before = snapshot(swarm)
    code, err = post(swarm, "/services/create", body) if not isinstance(body, str) else _raw(swarm, body)
    assert code == status
    assert isinstance(err.get("message"), str) and "\n" not in err["message"].strip()
    assert needle.lower() in err["message"].lower()
    assert snapshot(swarm) == before


def _raw(client: docker.DockerClient, text: str) -> tuple[int, dict]:
    api = client.api
    resp = api._post(api._url("/services/create"), data=text, headers={"Content-Type": "application/json"})
    return resp.status_code, resp.json()


def test_stale_version_and_unknown_objects(swarm: docker.DockerClient) -> None:
    code, created = post(swarm, "/services/create", {**GOOD, "Name": "versioned"})
    assert code == 201
    svc = swarm.api.inspect_service(created["ID"])
    before = snapshot(swarm)
    spec = svc["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = 4
    code, err = post(swarm, f"/services/{svc['ID']}/update", spec, version=svc["Version"]["Index"] - 1)
    assert code == 409 and "out of sequence" in err["message"]
    assert snapshot(swarm) == before
    for path in ("/services/nope", "/tasks/nope", "/nodes/nope"):
        resp = swarm.api._get(swarm.api._url(path))
        assert resp.status_code == 404 and "not found" in resp.json()["message"]


def test_cli_errors_are_one_line(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    res = subprocess.run(["docker", "-H", shoal.host, "service", "scale", "nope=3"], capture_output=True, text=True)
    assert res.returncode != 0 and "not found" in res.stderr
    shoal_cli = subprocess.run([_shoal_bin(), "-H", shoal.host, "service", "rm", "nope"],
                               capture_output=True, text=True)
    assert shoal_cli.returncode == 1
    assert shoal_cli.stderr.count("\n") == 1 and "Traceback" not in shoal_cli.stderr


def _shoal_bin() -> str:
    import sys
    from pathlib import Path

    return str(Path(sys.executable).with_name("shoal"))
