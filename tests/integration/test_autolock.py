"""Autolock through the real docker CLI against a real ``shoal daemon`` (one daemon for the module):
``swarm init --autolock`` prints the key; a restart comes up locked (``docker info``: locked, other
calls get Docker's 503 text); ``swarm unlock`` refuses a wrong key and takes the right one from
stdin; secrets still reach tasks; ``unlock-key``, ``unlock-key --rotate`` and
``swarm update --autolock=false``."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import docker
import pytest

from shoal.store.autolock import SWARM_LOCKED
from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = [pytest.mark.integration]

KEY_RE = re.compile(r"SWMKEY-1-[A-Za-z0-9+/]{43}")
PAYLOAD = "autolock-secret-for-tasks"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    proc = ShoalProcess(tmp_path_factory.mktemp("autolock"))
    proc.start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            try:
                proc.client().swarm.leave(force=True)  # removes the tasks' containers
            except docker.errors.APIError:
                pass
        proc.stop()


def unlock(d: ShoalProcess, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "-H", d.host, "swarm", "unlock"], input=key + "\n", capture_output=True,
                          text=True, timeout=60)


def restart(d: ShoalProcess) -> None:
    d.stop()
    d.start()


def state(d: ShoalProcess) -> str:
    return d.docker_cli("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()


def test_autolock_through_the_docker_cli(daemon: ShoalProcess) -> None:
    d = daemon
    out = d.docker_cli("swarm", "init", "--autolock", "--advertise-addr", "127.0.0.1",
                       "--listen-addr", listen_addr()).stdout
    m = KEY_RE.search(out)
    assert m is not None, out
    key = m.group(0)
    assert "docker swarm unlock" in out  # the CLI's own advice, after GET /swarm/unlockkey
    assert d.docker_cli("swarm", "unlock-key", "-q").stdout.strip() == key
    res = d.docker_cli("swarm", "unlock", check=False)
    assert res.returncode != 0 and "swarm is not locked" in res.stderr
    swarm = d.client().swarm.attrs
    assert swarm["Spec"]["EncryptionConfig"] == {"AutoLockManagers": True} and "UnlockKey" not in swarm
    subprocess.run(["docker", "-H", d.host, "secret", "create", "s1", "-"], input=PAYLOAD, text=True,
                   capture_output=True, check=True, timeout=60)

    restart(d)
    assert state(d) == "locked"
    res = d.docker_cli("service", "ls", check=False)
    assert res.returncode != 0 and SWARM_LOCKED in res.stderr
    res = d.docker_cli("swarm", "leave", check=False)
    assert res.returncode != 0 and "Please unlock it first" in res.stderr
    bad = unlock(d, "SWMKEY-1-" + "A" * 43)
    assert bad.returncode != 0 and "swarm could not be unlocked: invalid key provided" in bad.stderr, bad.stderr
    bad = unlock(d, "not-a-key")
    assert bad.returncode != 0 and "invalid key string" in bad.stderr, bad.stderr
    assert state(d) == "locked"
    ok = unlock(d, key)
    assert ok.returncode == 0, ok.stderr
    assert state(d) == "active"

    # The store's secret still opens and reaches a task.
    d.docker_cli("service", "create", "--detach", "--name", "reader", "--secret", "s1",
                 "--restart-condition", "none", "busybox:latest", "sh", "-c", "cat /run/secrets/s1; echo; sleep 60")
    wait_for(lambda: PAYLOAD in d.docker_cli("service", "logs", "reader", check=False).stdout, timeout=60)
    d.docker_cli("service", "rm", "reader")

    rotated = d.docker_cli("swarm", "unlock-key", "--rotate", "-q").stdout.strip()
    assert KEY_RE.fullmatch(rotated) and rotated != key
    assert d.docker_cli("swarm", "unlock-key", "-q").stdout.strip() == rotated
    restart(d)
    assert state(d) == "locked"
    assert unlock(d, key).returncode != 0  # the old key no longer opens this manager's keys
    assert unlock(d, rotated).returncode == 0

    d.docker_cli("swarm", "update", "--autolock=false")
    res = d.docker_cli("swarm", "unlock-key", check=False)
    assert res.returncode != 0 and "no unlock key is set" in res.stderr
    restart(d)
    assert state(d) == "active"
