"""The cluster's images through the real docker CLI and SDK on Shoal (api/images.py), against the
real engine: images, tag, history, inspect, rmi, commit, image prune, save/load; login and pull from
a local registry that wants a password; and a service that pulls from it with and only with
--with-registry-auth (the agent gets the credentials in its tasks)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = pytest.mark.integration

USER, PASSWORD = "shoal", "shoal-img-pw"
# bcrypt of PASSWORD (the registry's htpasswd takes bcrypt only; made once with libxcrypt, cost 4)
HTPASSWD = f"{USER}:$2b$04$.9F8ZOg4W2Y1HT8kqE6pH.x5hGEHhbELH0Vtzztzv3itdbEk9TNBm\n"
LABEL = "shoal-img-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def swarm(shoal: ShoalProcess) -> Iterator[docker.DockerClient]:
    """One one-node swarm for the module (the tests clean up what they make)."""
    client = shoal.client()
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
    yield client
    client.swarm.leave(force=True)


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    return docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient) -> Iterator[str]:
    """A distribution registry on a free loopback port (engines take http there) with htpasswd
    auth, holding busybox as ``<addr>/shoal-img/busybox:latest``; the engine does not keep that tag."""
    d = tmp_path_factory.mktemp("registry")
    addr = f"127.0.0.1:{_free_port()}"
    (d / "htpasswd").write_text(HTPASSWD)
    (d / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d}/data\n"
        f"http:\n  addr: {addr}\n"
        f"auth:\n  htpasswd:\n    realm: shoal-test\n    path: {d}/htpasswd\n")
    with open(d / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=log, stderr=log)
    try:
        def up() -> bool:
            try:
                urllib.request.urlopen(f"http://{addr}/v2/", timeout=1)
            except urllib.error.HTTPError as e:
                return e.code == 401  # it answers, and wants credentials
            except OSError:
                return False
            return False
        wait_for(up, timeout=20, interval=0.1)
        repo = f"{addr}/shoal-img/busybox"
        engine.images.get("busybox:latest").tag(repo, "latest")
        auth = {"username": USER, "password": PASSWORD}
        for line in engine.images.push(repo, "latest", auth_config=auth, stream=True, decode=True):
            assert "error" not in line, line
        engine.images.remove(f"{repo}:latest")
        yield addr
    finally:
        untag(engine, f"{addr}/shoal-img/busybox")
        proc.terminate()
        proc.wait(10)


def untag(engine: docker.DockerClient, repo: str) -> None:
    """Remove every tag and digest reference of ``repo`` from the engine, never by ID: the image is
    busybox's, which stays."""
    for img in engine.images.list(name=repo):
        refs = [*img.tags, *(d for d in img.attrs.get("RepoDigests") or () if d.startswith(repo + "@"))]
        for ref in refs:
            if ref.startswith(repo):
                try:
                    engine.images.remove(ref)
                except docker.errors.NotFound:
                    pass  # a digest reference goes with the repository's last tag


def cli(shoal: ShoalProcess, config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The docker CLI on Shoal with a config dir of the test's own (its logins stay there)."""
    return subprocess.run(["docker", "--config", str(config), "-H", shoal.host, *args], input=stdin,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})


def test_images_tag_history_inspect_rmi_through_the_cli(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    (node,) = swarm.nodes.list()
    host = node.attrs["Description"]["Hostname"]
    listed = shoal.docker_cli("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout.splitlines()
    busybox_id = swarm.images.get("busybox:latest").id
    assert f"busybox:latest {busybox_id.removeprefix('sha256:')[:12]}" in listed
    summary = next(i for i in swarm.api.images() if i["Id"] == busybox_id)
    assert summary["Nodes"] == [host] and "busybox:latest" in summary["RepoTags"]

    shoal.docker_cli("tag", "busybox:latest", f"{LABEL}:v1")
    try:
        doc = json.loads(shoal.docker_cli("image", "inspect", f"{LABEL}:v1").stdout)[0]
        assert doc["Id"] == busybox_id and doc["Nodes"] == [host] and f"{LABEL}:v1" in doc["RepoTags"]
        assert swarm.images.get(f"{LABEL}:v1").id == busybox_id  # the SDK's get
        hist = shoal.docker_cli("history", "--format", "{{.ID}}", f"{LABEL}:v1").stdout.split()
        assert hist[0] == busybox_id.removeprefix("sha256:")[:12]
    finally:
        out = shoal.docker_cli("rmi", f"{LABEL}:v1").stdout
    assert out == f"Untagged: {LABEL}:v1\n"
    res = shoal.docker_cli("rmi", f"{LABEL}:v1", check=False)
    assert res.returncode != 0 and f"No such image: {LABEL}:v1" in res.stderr
    for args in (("image", "inspect", "shoal-img-nothing"), ("rmi", "shoal-img-nothing"),
                 ("tag", "shoal-img-nothing", "x"), ("history", "shoal-img-nothing")):
        res = shoal.docker_cli(*args, check=False)
        real = subprocess.run(["docker", "-H", "unix:///var/run/docker.sock", *args], capture_output=True, text=True)
        assert (res.returncode, res.stderr) == (real.returncode, real.stderr) and res.returncode != 0, args  # as Docker


def test_commit_prune_save_and_load(shoal: ShoalProcess, swarm: docker.DockerClient, tmp_path: Path) -> None:
    shoal.docker_cli("create", "--name", "shoal-img-ctr", "busybox:latest", "true")
    try:
        # docker commit goes to the container's node; no repository: a dangling image, for prune
        image_id = shoal.docker_cli("commit", "-c", f"LABEL {LABEL}=1", "shoal-img-ctr").stdout.strip()
        assert image_id.startswith("sha256:")
    finally:
        shoal.docker_cli("rm", "shoal-img-ctr")
    # only this test's image: the host engine is shared
    out = shoal.docker_cli("image", "prune", "-f", "--filter", f"label={LABEL}=1").stdout
    assert f"deleted: {image_id}" in out.lower() and "Total reclaimed space" in out
    res = shoal.docker_cli("image", "inspect", image_id, check=False)
    assert res.returncode != 0

    # docker import: the tar (request body) to every ready node, its image ID back prefixed by node
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tf:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"hello\n"))
    out = shoal.docker_cli("import", str(rootfs), f"{LABEL}:imported").stdout
    host = swarm.nodes.list()[0].attrs["Description"]["Hostname"]
    assert out.startswith(f"{host}: sha256:"), out
    assert shoal.docker_cli("rmi", f"{LABEL}:imported").stdout.startswith(f"Untagged: {LABEL}:imported\nDeleted: ")

    shoal.docker_cli("tag", "busybox:latest", f"{LABEL}:saved")
    tar = tmp_path / "saved.tar"
    try:
        shoal.docker_cli("save", "-o", str(tar), f"{LABEL}:saved")
        assert tar.stat().st_size > 100_000
        shoal.docker_cli("rmi", f"{LABEL}:saved")
        assert shoal.docker_cli("load", "-i", str(tar)).stdout == f"Loaded image: {LABEL}:saved\n"
        shoal.docker_cli("rmi", f"{LABEL}:saved")
        (loaded,) = swarm.images.load(tar.read_bytes())  # the SDK reads the "Loaded image" line
        assert f"{LABEL}:saved" in loaded.tags
    finally:
        shoal.docker_cli("rmi", f"{LABEL}:saved", check=False)


def test_login_and_pull_from_a_registry_that_wants_a_password(shoal: ShoalProcess, swarm: docker.DockerClient,
                                                              engine: docker.DockerClient, registry: str,
                                                              tmp_path: Path) -> None:
    host = swarm.nodes.list()[0].attrs["Description"]["Hostname"]
    image = f"{registry}/shoal-img/busybox:latest"
    anonymous = tmp_path / "anonymous"
    res = cli(shoal, anonymous, "pull", image)
    assert res.returncode != 0 and "no basic auth credentials" in res.stderr, res

    logged_in = tmp_path / "logged-in"
    res = cli(shoal, logged_in, "login", registry, "-u", USER, "--password-stdin", stdin=PASSWORD)
    assert res.returncode == 0 and "Login Succeeded" in res.stdout, res
    res = cli(shoal, logged_in, "login", registry, "-u", USER, "--password-stdin", stdin="wrong")
    assert res.returncode != 0 and "unauthorized" in res.stderr.lower(), res
    try:
        res = cli(shoal, logged_in, "pull", image)
        assert res.returncode == 0, res
        assert f"{host}: Status: Downloaded newer image for {image}" in res.stdout  # classic Swarm's node prefix
        assert engine.images.get(image).id == engine.images.get("busybox:latest").id
        untag(engine, image.rsplit(":", 1)[0])
        # the SDK's pull, with its own credentials
        pulled = swarm.images.pull(image.rsplit(":", 1)[0], tag="latest",
                                   auth_config={"username": USER, "password": PASSWORD})
        assert image in pulled.tags
        # /distribution (the engine asks the registry, with the client's credentials)
        data = swarm.images.get_registry_data(image, auth_config={"username": USER, "password": PASSWORD})
        assert data.id.startswith("sha256:")
        with pytest.raises(docker.errors.APIError, match="no basic auth credentials"):
            swarm.images.get_registry_data(image)
        # docker push, from the node that has the image, with the login's credentials
        pushed = f"{registry}/shoal-img/pushed:1"
        assert cli(shoal, logged_in, "tag", "busybox:latest", pushed).returncode == 0
        res = cli(shoal, logged_in, "push", pushed)
        assert res.returncode == 0 and "1: digest: sha256:" in res.stdout, res
    finally:
        untag(engine, image.rsplit(":", 1)[0])
        untag(engine, f"{registry}/shoal-img/pushed")


def _task_states(client: docker.DockerClient, name: str) -> list[tuple[str, str]]:
    return [(t["Status"]["State"], t["Status"].get("Err", "")) for t in client.api.tasks(filters={"service": name})]


def test_a_service_pulls_with_registry_auth_and_not_without(shoal: ShoalProcess, swarm: docker.DockerClient,
                                                            engine: docker.DockerClient, registry: str,
                                                            tmp_path: Path) -> None:
    image = f"{registry}/shoal-img/busybox:latest"
    config = tmp_path / "cfg"
    assert cli(shoal, config, "login", registry, "-u", USER, "--password-stdin", stdin=PASSWORD).returncode == 0
    try:
        res = cli(shoal, config, "service", "create", "--detach", "--name", "shoal-img-noauth", image, "sleep", "600")
        assert res.returncode == 0, res
        states = wait_for(lambda: [s for s in _task_states(swarm, "shoal-img-noauth")
                                   if s[0] in ("rejected", "failed")])
        assert "no basic auth credentials" in states[0][1], states  # the registry's own reason
        ps = cli(shoal, config, "service", "ps", "--no-trunc", "--format", "{{.Error}}", "shoal-img-noauth").stdout
        assert "no basic auth credentials" in ps
        swarm.services.get("shoal-img-noauth").remove()

        started = time.monotonic()
        res = cli(shoal, config, "service", "create", "--detach", "--with-registry-auth", "--name", "shoal-img-auth",
                  "--stop-signal", "KILL", image, "sleep", "600")  # KILL: sleep as PID 1 ignores TERM
        assert res.returncode == 0, res
        wait_for(lambda: ("running", "") in _task_states(swarm, "shoal-img-auth"))
        print(f"pulled and started with registry auth in {time.monotonic() - started:.1f}s")
        spec = json.loads(cli(shoal, config, "service", "inspect", "shoal-img-auth").stdout)[0]
        assert "PullOptions" not in json.dumps(spec)  # never shown, as Docker
        assert spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith(image + "@sha256:")  # /distribution
    finally:
        for name in ("shoal-img-noauth", "shoal-img-auth"):
            try:
                swarm.services.get(name).remove()
            except docker.errors.NotFound:
                pass
        wait_for(lambda: not engine.containers.list(all=True, sparse=True,
                                                    filters={"label": "shoal.service.name=shoal-img-auth"}))
        untag(engine, image.rsplit(":", 1)[0])
