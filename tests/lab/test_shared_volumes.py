"""A ``driver: nas`` volume follows its service to another host: the task on host-1 writes, host-1 is
drained, the task on host-2 finds what host-1's wrote. Each host's agent mounts the volume itself
(sshfs from a test sshd on the lab's bridge address, which every host reaches) and binds it into its
container; when the service is removed, no host keeps the mount."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

from shoal.agent.volumes import available
from shoal.lab import Lab
from tests.lab.conftest import wait_for
from tests.nas_sshd import sshd_available, start_sshd

pytestmark = pytest.mark.lab(hosts=2, join=True)


def node_availability(lab: Lab, host: str, availability: str) -> None:
    subprocess.run(["docker", "-H", lab.docker_host, "node", "update", "--availability", availability, host],
                   check=True, capture_output=True, timeout=30)


def sshfs_mounts(name: str) -> list[str]:
    """The lab's hosts share this process's mount namespace: every host's mounts of ``name``."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if " - fuse.sshfs " in line and line.split()[4].endswith(f"/{name}")]


def test_vol_service_keeps_its_data_when_it_moves_host(lab: Lab, tmp_path: Path) -> None:
    why = sshd_available() or available()
    if why:
        pytest.skip(why)
    sshd = start_sshd(tmp_path / "sshd", addr=lab.state.gateway)
    client = docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)
    opts = {"server": sshd.server, "path": str(sshd.export), "identity": str(sshd.identity),
            "known_hosts": str(sshd.known_hosts)}
    log = sshd.export / "volmove" / "log"
    service = None
    try:
        node_availability(lab, "host-2", "drain")  # the first task runs on host-1
        service = client.services.create(
            "busybox:latest", ["sh", "-c", "n=$(cat /data/log 2>/dev/null | wc -l); "
                               "echo run $((n+1)) on $(cat /etc/hostname) saw $n >> /data/log; exec sleep 3600"],
            name="volmove", stop_grace_period=1_000_000_000,
            mounts=[docker.types.Mount("/data", "volmove", driver_config=docker.types.DriverConfig("nas", opts))])
        wait_for(lambda: log.exists() and log.read_text().startswith("run 1 "), within=60)
        # (the container wrote before its node's report of it running reached the manager)
        first = wait_for(lambda: [t for t in service.tasks() if t["Status"]["State"] == "running"], within=30)
        assert len(first) == 1
        node_availability(lab, "host-2", "active")
        node_availability(lab, "host-1", "drain")
        wait_for(lambda: len(log.read_text().splitlines()) == 2, within=60)
        assert log.read_text().splitlines()[1].endswith("saw 1")  # the task on host-2 read host-1's line
        # The replacement started only once the old task had stopped (never two writers), and it
        # runs elsewhere (its report may follow its first write).
        tasks = {t["ID"]: t for t in service.tasks()}
        assert tasks[first[0]["ID"]]["Status"]["State"] in ("shutdown", "complete", "failed")
        moved = wait_for(lambda: [t["NodeID"] for t in service.tasks() if t["Status"]["State"] == "running"],
                         within=30)
        assert moved != [first[0]["NodeID"]] and len(moved) == 1
        assert sshfs_mounts("volmove")  # host-2's (host-1's too while its stopped container exists)
        service.remove()
        service = None
        wait_for(lambda: not sshfs_mounts("volmove"), within=60)  # containers removed: each host unmounts
    finally:
        if service is not None:
            service.remove()
        node_availability(lab, "host-1", "active")
        node_availability(lab, "host-2", "active")
        sshd.stop()
