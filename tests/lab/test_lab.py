"""The lab itself: separate hosts on one bridge, each engine with the preload images, and fault
injection that really breaks what it says (real namespaces, dockerds and daemons; no mocks)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import docker
import pytest

from shoal.lab import REGISTRY, Lab, LabError

pytestmark = pytest.mark.lab(hosts=2, join=False)


def in_host(lab: Lab, host: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab.nsenter(host, *argv), capture_output=True, text=True, timeout=timeout)


def reachable(lab: Lab, src: str, addr: str) -> bool:
    return in_host(lab, src, "busybox", "ping", "-c", "1", "-W", "1", addr).returncode == 0


def engine(lab: Lab, host: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=lab.host(host).engine, version="1.41", timeout=60)


def answers(url: str) -> bool:
    try:
        return bool(docker.APIClient(base_url=url, version="1.41", timeout=3).ping())
    except (docker.errors.DockerException, OSError):
        return False


def test_each_host_has_its_own_engine_name_address_and_the_preload_image(lab: Lab) -> None:
    ids = set()
    for h in lab.hosts:
        client = engine(lab, h.name)
        info = client.info()
        assert info["Name"] == h.name  # own UTS namespace: nodes are told apart by hostname
        ids.add(info["ID"])
        tags = {t for img in client.images.list() for t in img.tags}
        assert {"busybox:latest", f"{REGISTRY}/busybox:latest"} <= tags
        # A container on the host's network sees the host's address and name: it runs *in* the host.
        out = client.containers.run("busybox:latest", ["sh", "-c", "hostname; ip -4 addr show eth0"],
                                    network_mode="host", remove=True).decode()
        assert out.splitlines()[0] == h.name
        assert f"inet {h.addr}/24" in out
        assert client.containers.run("busybox:latest", "true", remove=True) == b""
    assert len(ids) == len(lab.hosts)  # not the machine's engine ID shared through /etc/docker/key.json


def test_hosts_reach_each_other_and_the_registry_but_nothing_beyond(lab: Lab, tmp_path: Path) -> None:
    h1, h2 = lab.hosts[0], lab.hosts[1]
    (tmp_path / "index.html").write_text("from host-1\n")
    server = subprocess.Popen(lab.nsenter(h1.name, "busybox", "httpd", "-f", "-p", f"{h1.addr}:8000",
                                          "-h", str(tmp_path)))
    try:
        deadline = time.monotonic() + 5
        while True:
            # (no `wget -T`: Debian's static busybox segfaults on it; in_host's timeout bounds the wait)
            got = in_host(lab, h2.name, "busybox", "wget", "-q", "-O", "-", f"http://{h1.addr}:8000/")
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got.stdout == "from host-1\n", got.stderr
    finally:
        server.kill()
        server.wait()
    catalog = in_host(lab, h2.name, "busybox", "wget", "-q", "-O", "-", f"http://{REGISTRY}/v2/_catalog")
    assert '"busybox"' in catalog.stdout
    # An address outside the lab is routed to the bridge and dropped there (the lab's own rule).
    before = drop_count()
    assert not reachable(lab, h2.name, "192.0.2.1")  # TEST-NET-1: never a real host
    assert drop_count() > before


def drop_count() -> int:
    out = subprocess.run(["iptables", "-w", "-L", "FORWARD", "-v", "-x", "-n"], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines() if "shoal-lab" in line and "DROP" in line]
    assert rows, out
    return int(rows[0][0])


def test_cut_takes_the_link_down_and_restore_brings_it_back(lab: Lab) -> None:
    h2 = lab.hosts[1]
    assert reachable(lab, "host-1", h2.addr)
    lab.cut("h2")
    assert Path(f"/sys/class/net/{h2.veth}/operstate").read_text().strip() == "down"
    assert [s.link for s in lab.status()] == ["up", "down"]
    assert not reachable(lab, "host-1", h2.addr)
    assert not reachable(lab, "host-2", lab.hosts[0].addr)
    lab.restore("2")
    assert [s.link for s in lab.status()] == ["up", "up"]
    assert reachable(lab, "host-1", h2.addr)


def test_kill_kills_the_daemon_and_restore_starts_it_again(lab: Lab) -> None:
    h2 = lab.host("host-2")
    old = h2.daemon
    assert old is not None and answers(h2.api)
    lab.kill("host-2")
    assert not Path(f"/proc/{old.pid}").exists() or "Z" in Path(f"/proc/{old.pid}/stat").read_text().split(")")[-1][:3]
    assert not answers(h2.api)
    status = lab.status()[1]
    assert (status.daemon_running, status.engine_running) == (False, True)  # the engine is untouched
    with pytest.raises(LabError, match="host-2: its Shoal daemon is not running"):
        lab.kill("host-2")
    lab.restore("host-2")
    assert h2.daemon is not None and h2.daemon.pid != old.pid
    assert answers(h2.api)


def test_stop_engine_stops_dockerd_and_restore_brings_it_back_with_its_images(lab: Lab) -> None:
    h2 = lab.host(2)
    lab.stop_engine("h2")
    assert not answers(h2.engine)
    assert lab.status()[1].engine_running is False
    lab.restore("h2")
    assert answers(h2.engine)
    assert engine(lab, "h2").containers.run("busybox:latest", "true", remove=True) == b""


def test_host_names_and_bad_ones(lab: Lab) -> None:
    assert lab.host("host-2") is lab.host("h2") is lab.host("2") is lab.host(2)
    with pytest.raises(LabError, match=r"unknown host 'host-3': this lab has host-1 … host-2"):
        lab.host("host-3")
    with pytest.raises(LabError, match="unknown host 'web'"):
        lab.host("web")


def test_cli_status_and_a_second_up_is_refused(lab: Lab) -> None:
    shoal = ["shoal", "lab"]
    exe = Path(__import__("sys").executable).with_name("shoal")
    if exe.exists():
        shoal = [str(exe), "lab"]
    st = subprocess.run([*shoal, "status", "--state-dir", str(lab.state_dir)], capture_output=True, text=True)
    assert st.returncode == 0, st.stderr
    lines = st.stdout.splitlines()
    assert lines[-1] == f"DOCKER_HOST={lab.docker_host}"
    assert any(line.split()[:3] == ["host-2", "10.77.0.2", "up"] for line in lines)
    again = subprocess.run([*shoal, "up", "--hosts", "2", "--state-dir", str(lab.state_dir)],
                           capture_output=True, text=True)
    assert again.returncode == 1
    assert "a lab is already up at" in again.stderr
    elsewhere = subprocess.run([*shoal, "up", "--hosts", "2", "--state-dir", str(lab.state_dir) + "-other"],
                               capture_output=True, text=True)
    assert elsewhere.returncode == 1
    assert f"a lab already exists on this machine (state dir {lab.state_dir})" in elsewhere.stderr
    assert not Path(str(lab.state_dir) + "-other").exists()
    # `down` aimed at the wrong state dir leaves the lab alone.
    wrong = subprocess.run([*shoal, "down", "--state-dir", str(lab.state_dir) + "-other"],
                           capture_output=True, text=True)
    assert wrong.returncode == 1
    assert f"the lab on this machine is at {lab.state_dir}" in wrong.stderr
    assert all(s.engine_running and s.daemon_running and s.link == "up" for s in lab.status())


async def test_the_api_also_works_inside_an_event_loop(lab: Lab) -> None:
    lab.cut("host-2")  # runs its coroutine on a worker thread: this loop is busy running the test
    assert lab.status()[1].link == "down"
    lab.restore("host-2")
    assert lab.status()[1].link == "up"
    assert reachable(lab, "host-1", lab.hosts[1].addr)
