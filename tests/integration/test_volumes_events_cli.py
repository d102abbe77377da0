"""Volumes, events, system df and info across the cluster, through the real docker CLI and SDK against
a one-node swarm on the machine's dockerd. Everything made here is labelled ``shoalvt`` (prune and
listings are filtered by it: the engine is shared)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import docker
import pytest

from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = pytest.mark.integration
LABEL = "shoalvt"


@pytest.fixture(scope="module")
def cluster(shoal: ShoalProcess) -> Iterator[tuple[docker.DockerClient, str]]:
    """One swarm for the module (the session daemon's), and its node's hostname."""
    client = shoal.client()
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
    try:
        (node,) = client.nodes.list()
        yield client, node.attrs["Description"]["Hostname"]
    finally:
        for v in docker.DockerClient(base_url="unix:///var/run/docker.sock").volumes.list(filters={"label": LABEL}):
            v.remove(force=True)
        client.swarm.leave(force=True)


def test_volumes_through_the_cli_and_the_sdk(shoal: ShoalProcess, cluster: tuple[docker.DockerClient, str]) -> None:
    client, host = cluster
    assert shoal.docker_cli("volume", "create", "--label", LABEL, "vt-all").stdout.strip() == "vt-all"
    out = shoal.docker_cli("volume", "create", "-d", "local", "-o", "type=tmpfs", "-o", "device=tmpfs",
                           "--label", LABEL, f"{host}/vt-one").stdout.strip()
    assert out == f"{host}/vt-one"  # made on that node only, named as the cluster lists it
    names = shoal.docker_cli("volume", "ls", "-q", "--filter", f"label={LABEL}").stdout.split()
    assert sorted(names) == [f"{host}/vt-all", f"{host}/vt-one"]
    elsewhere = shoal.docker_cli("volume", "ls", "-q", "--filter", f"label={LABEL}", "--filter", "node=elsewhere")
    assert elsewhere.stdout == ""  # classic Swarm's node filter
    doc = json.loads(shoal.docker_cli("volume", "inspect", "vt-one").stdout)[0]
    assert doc["Name"] == f"{host}/vt-one" and doc["Options"] == {"device": "tmpfs", "type": "tmpfs"}
    res = shoal.docker_cli("volume", "inspect", "nosuch-vt", check=False)
    assert res.returncode != 0 and "no such volume" in res.stderr

    sdk = client.volumes.create("vt-sdk", labels={LABEL: "1"}, driver_opts={"type": "tmpfs", "device": "tmpfs"})
    assert sdk.name == "vt-sdk" and sdk.attrs["Labels"] == {LABEL: "1"}  # made on every node
    assert client.volumes.get("vt-sdk").name == f"{host}/vt-sdk"
    sdk.remove()  # every copy
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get("vt-sdk")
    shoal.docker_cli("volume", "rm", f"{host}/vt-one")  # (the engine itself never prunes one with options)
    pruned = shoal.docker_cli("volume", "prune", "-f", "--filter", f"label={LABEL}").stdout
    assert f"{host}/vt-all" in pruned
    assert shoal.docker_cli("volume", "ls", "-q", "--filter", f"label={LABEL}").stdout == ""


def test_events_merge_the_engines_and_the_swarm_and_until_ends_them(
        shoal: ShoalProcess, cluster: tuple[docker.DockerClient, str]) -> None:
    client, host = cluster
    since = time.time()
    shoal.docker_cli("volume", "create", "--label", LABEL, "vt-ev")
    client.secrets.create(name="vt-secret", data=b"x").remove()
    shoal.docker_cli("volume", "rm", "vt-ev")
    until = time.time() + 0.5
    # Bounded: the CLI returns once `until` passes, with the replay in time order.
    out = shoal.docker_cli("events", "--since", f"{since:.9f}", "--until", f"{until:.9f}", "--format",
                           "{{json .}}", timeout=30).stdout
    evs = [json.loads(line) for line in out.splitlines()]
    seen = [(e["Type"], e["Action"], e["Actor"]["Attributes"].get("name", e["Actor"]["ID"])) for e in evs
            if e["Type"] in ("volume", "secret")]
    assert seen == [("volume", "create", "vt-ev"), ("secret", "create", "vt-secret"),
                    ("secret", "remove", "vt-secret"), ("volume", "destroy", "vt-ev")], seen
    vol = next(e for e in evs if e["Type"] == "volume")
    assert vol["Actor"]["Attributes"]["node.name"] == host  # classic Swarm's mark (the CLI drops the "node" field)
    assert [e["timeNano"] for e in evs] == sorted(e["timeNano"] for e in evs)

    # Live, through the SDK, with a filter: a service's swarm events arrive as they happen.
    start = time.time()
    stream = client.events(decode=True, since=start, until=start + 2.5, filters={"type": "service"})
    svc = client.services.create("busybox:latest", ["sleep", "60"], name="vt-events-svc",
                                 mode=docker.types.ServiceMode("replicated", replicas=0))
    svc.remove()
    got = [(e["Action"], e["Actor"]["Attributes"]["name"], e["scope"]) for e in stream]  # ends at `until`
    assert got == [("create", "vt-events-svc", "swarm"), ("remove", "vt-events-svc", "swarm")]


def test_system_df_and_info_speak_for_the_cluster(shoal: ShoalProcess,
                                                  cluster: tuple[docker.DockerClient, str]) -> None:
    _client, host = cluster
    df = shoal.docker_cli("system", "df", "--format", "{{.Type}}").stdout.split("\n")
    assert df[:4] == ["Images", "Containers", "Local Volumes", "Build Cache"]
    info = shoal.docker_cli("info")
    assert info.stderr == "" or "WARNING" in info.stderr
    assert " Nodes: 1\n" in info.stdout and f"  {host}: 127.0.0.1\n" in info.stdout
    assert "   └ Status: Healthy\n" in info.stdout and " Strategy: spread\n" in info.stdout
    engine = docker.DockerClient(base_url="unix:///var/run/docker.sock").info()
    doc = json.loads(shoal.docker_cli("info", "--format", "{{json .}}").stdout)
    assert doc["NCPU"] == engine["NCPU"] and doc["MemTotal"] == engine["MemTotal"]
    assert doc["Swarm"]["ControlAvailable"] is True  # the swarm part as before
