"""``down`` leaves nothing behind: not after a clean lab, not after an engine crash (containerd,
shims, containers and mounts orphaned), not after an ``up`` that failed half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest

from shoal.lab import BRIDGE, Lab, LabError, ProcRef
from shoal.lab import proc as labproc
from tests.lab.conftest import STATE_DIR, LabPool

pytestmark = pytest.mark.lab


def lab_processes(state_dir: Path) -> list[int]:
    """Processes whose command line names the state dir (dockerd, containerd, shims, daemons)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(state_dir) + "/" in cmd:
                found.append(int(entry.name))
    return found


def assert_nothing_left(state_dir: Path, refs: list[ProcRef]) -> None:
    assert [n for n in os.listdir("/run/netns") if n.startswith("shoal-lab-")] == []
    assert [n for n in os.listdir("/sys/class/net") if n.startswith("shoal-lab")] == []
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    assert [r.pid for r in refs if labproc.alive(r)] == []
    assert lab_processes(state_dir) == []
    assert str(state_dir) not in Path("/proc/self/mountinfo").read_text()
    assert not state_dir.exists()
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True, check=True).stdout
    assert "shoal-lab" not in rules


def test_down_after_an_engine_crash_leaves_nothing(lab_pool: LabPool) -> None:
    lab_pool.release()  # one lab per machine
    lab = Lab(STATE_DIR, hosts=1, join=False)
    lab.up()
    h = lab.hosts[0]
    client = docker.DockerClient(base_url=h.engine, version="1.41", timeout=60)
    c = client.containers.run("busybox:latest", ["sleep", "600"], detach=True, ports={"80/tcp": 8080})
    c.reload()
    container = labproc.ref_of(int(c.attrs["State"]["Pid"]))
    assert container is not None
    # Crash the engine: its containerd, shim, docker-proxy, container and mounts are orphaned.
    assert h.dockerd is not None
    os.kill(h.dockerd.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while labproc.alive(h.dockerd) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = labproc.in_netns(h.netns_path)
    assert orphans, "expected containerd and the shim to outlive a SIGKILLed dockerd"
    assert labproc.alive(container)
    lab.down()
    assert_nothing_left(STATE_DIR, [*orphans, container, h.dockerd])


def test_down_after_a_failed_up_leaves_nothing(lab_pool: LabPool) -> None:
    lab_pool.release()
    lab = Lab(STATE_DIR, hosts=2, join=False, daemon_args=["--no-such-flag"])
    with pytest.raises(LabError, match=r"host-\d: shoal daemon exited: .*No such option"):
        lab.up()
    started = [r for h in lab.hosts for r in (h.dockerd, h.daemon) if r is not None]
    assert any(labproc.alive(r) for r in started)  # the engines were up when the daemons failed
    Lab(STATE_DIR).down()  # a fresh object, as `shoal lab down` would be
    assert_nothing_left(STATE_DIR, started)
    Lab(STATE_DIR).down()  # and again: nothing to do is not an error


def test_down_refuses_a_dir_that_holds_no_lab(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me")
    with pytest.raises(LabError, match="holds no lab"):
        Lab(tmp_path).down()
    assert (tmp_path / "precious").read_text() == "keep me"
