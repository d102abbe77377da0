"""nas/ossfs volumes through a real Shoal daemon and the real dockerd: the daemon's agent mounts each
with sshfs from a throwaway sshd (exporting a tmp dir) and binds it into the task's container; the
engine never hears of the driver (no plugin socket in /run/docker/plugins).

The daemon's SHOAL_VOLUME_OPTS says where the server is, so the stack's volumes are written as
Aliyun's files write them (``{driver: nas}``, ossfs with only a bucket). A replaced task finds what
the task before it wrote; an unreachable server rejects the task with the volume's name and ssh's
reason in ``service ps``; a bad option is a 400 and nothing is stored; once the services are gone no
FUSE mount is left under the daemon's data root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from shoal.agent.volumes import available
from tests.integration.conftest import leave_and_stop, shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr
from tests.nas_sshd import NasSshd, sshd_available, start_sshd

pytestmark = pytest.mark.integration

STACK = "volstk"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NasSshd]:
    why = sshd_available() or available()
    if why:
        pytest.skip(why)
    s = start_sshd(tmp_path_factory.mktemp("volsshd"))
    try:
        yield s
    finally:
        s.stop()


def _fuse_mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, sshd: NasSshd) -> Iterator[tuple[ShoalProcess, docker.DockerClient]]:
    """A daemon of this module's own (its environment names the sshd), in a one-node swarm."""
    defaults = f"server={sshd.server},path={sshd.export},identity={sshd.identity},known_hosts={sshd.known_hosts}"
    proc = ShoalProcess(tmp_path_factory.mktemp("volshoal"), env={"SHOAL_VOLUME_OPTS": defaults})
    proc.start()
    client = proc.client()
    try:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
        yield proc, client
        # the services' containers removed, their mounts go: nothing FUSE is left under the data root
        shoal_cli(proc, "stack", "rm", STACK, check=False)
        for s in client.services.list():
            s.remove()
        wait_for(lambda: not _fuse_mounts_under(proc.data), timeout=30)
    finally:
        leave_and_stop(proc)
    assert _fuse_mounts_under(proc.data) == []


COMPOSE = """\
version: "3.8"
services:
  db:
    image: busybox:latest
    # each task counts the runs before it, from the volume: the second sees the first's line
    command: ["sh", "-c", "n=$$(cat /data/log 2>/dev/null | wc -l); echo run $$((n+1)) saw $$n >> /data/log;
              echo page > /site/index.html; exec sleep 3600"]
    stop_grace_period: 1s
    volumes: ["model:/data", "site:/site"]
volumes:
  model:
    driver: nas
  site:
    driver: ossfs
    driver_opts: {bucket: volbucket}
"""


def test_vol_stack_task_replaced_finds_its_data(node: tuple[ShoalProcess, docker.DockerClient], sshd: NasSshd,
                                               tmp_path: Path) -> None:
    proc, _ = node
    f = tmp_path / "docker-compose.yml"
    f.write_text(COMPOSE)
    log = sshd.export / f"{STACK}_model" / "log"  # on the server: <path>/<volume>
    shoal_cli(proc, "stack", "deploy", "-c", str(f), STACK)
    wait_for(lambda: log.exists() and log.read_text() == "run 1 saw 0\n")
    # ossfs: <path>/<bucket>/<volume>
    assert (sshd.export / "volbucket" / f"{STACK}_site" / "index.html").read_text() == "page\n"
    mounts = _fuse_mounts_under(proc.data)
    assert sorted(mounts) == [str(proc.data / "volumes" / "mnt" / "nas" / f"{STACK}_model"),
                              str(proc.data / "volumes" / "mnt" / "ossfs" / f"{STACK}_site")]
    proc.docker_cli("service", "update", "--force", "--detach", f"{STACK}_db")
    wait_for(lambda: log.read_text() == "run 1 saw 0\nrun 2 saw 1\n")
    # the engine saw plain binds, not a volume driver it does not have
    engine = docker.from_env()
    running = engine.containers.list(filters={"label": f"com.docker.stack.namespace={STACK}"})
    assert len(running) == 1
    binds = {m["Destination"]: m for m in running[0].attrs["Mounts"]}
    assert binds["/data"]["Type"] == "bind" and binds["/data"]["Source"] == mounts[0]
    assert not Path("/run/docker/plugins/nas.sock").exists()
    # the daemon stops: the mounts stay with the running container; the restarted daemon takes up the
    # record (the module's end checks that it unmounts once the stack's containers are removed)
    proc.stop()
    assert sorted(_fuse_mounts_under(proc.data)) == mounts
    assert (Path(mounts[0]) / "log").read_text() == "run 1 saw 0\nrun 2 saw 1\n"
    proc.start()


def test_vol_unreachable_server_rejects_the_task_naming_the_volume(
        node: tuple[ShoalProcess, docker.DockerClient]) -> None:
    proc, client = node
    proc.docker_cli("service", "create", "--detach", "--name", "voldown", "--restart-condition", "none",
                    "--mount", "type=volume,source=voldownvol,target=/d,volume-driver=nas,"
                    "volume-opt=server=127.0.0.1:1", "busybox:latest", "sleep", "60")
    svc = client.services.get("voldown")

    def rejected() -> str:
        tasks = svc.tasks()
        return str(tasks[0]["Status"].get("Err", "")) if tasks and tasks[0]["Status"]["State"] == "rejected" else ""

    err = str(wait_for(rejected))
    assert err.startswith("nas volume voldownvol: mount 127.0.0.1:") and "Connection refused" in err, err
    ps = proc.docker_cli("service", "ps", "--no-trunc", "--format", "{{.CurrentState}}|{{.Error}}", "voldown").stdout
    assert "Rejected" in ps and "nas volume voldownvol: mount 127.0.0.1:" in ps, ps
    assert not [m for m in _fuse_mounts_under(proc.data) if "voldownvol" in m]
    svc.remove()


def test_vol_bad_option_is_a_400_and_nothing_is_stored(node: tuple[ShoalProcess, docker.DockerClient]) -> None:
    proc, client = node
    res = proc.docker_cli("service", "create", "--detach", "--name", "volbad", "--mount",
                          "type=volume,source=volbadvol,target=/d,volume-driver=ossfs,volume-opt=bucket=b,"
                          "volume-opt=ak_id=x", "busybox:latest", check=False)
    assert res.returncode != 0
    assert "ossfs volume volbadvol: unknown option(s) ak_id (known: bucket, host, identity, known_hosts, path, " \
           "server, user)" in res.stderr, res.stderr
    assert "volbad" not in [s.name for s in client.services.list()]
    with pytest.raises(docker.errors.APIError) as e:
        client.api.create_service(
            {"ContainerSpec": {"Image": "busybox:latest", "Mounts": [
                {"Type": "volume", "Source": "volbadvol", "Target": "/d",
                 "VolumeOptions": {"DriverConfig": {"Name": "nas", "Options": {"server": "a b"}}}}]}},
            name="volbad")
    assert e.value.status_code == 400 and "nas volume volbadvol: bad server 'a b'" in str(e.value.explanation)
    assert "volbad" not in [s.name for s in client.services.list()]
    # and at update: the service keeps its spec
    proc.docker_cli("service", "create", "--detach", "--name", "volupd", "--replicas", "0", "busybox:latest")
    res = proc.docker_cli("service", "update", "--detach", "--mount-add",
                          "type=volume,source=volupdvol,target=/d,volume-driver=nas,volume-opt=path=rel", "volupd",
                          check=False)
    assert res.returncode != 0 and "nas volume volupdvol: path 'rel' must be absolute" in res.stderr, res.stderr
    assert not client.services.get("volupd").attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Mounts")
    client.services.get("volupd").remove()
    # `volume create -d nas`: the engines have no such plugin (they would search 15 s); said at once
    res = proc.docker_cli("volume", "create", "-d", "nas", "volcreated", check=False, timeout=10)
    assert res.returncode != 0 and "nas volumes are mounted by Shoal's agent for a service's tasks" in res.stderr
