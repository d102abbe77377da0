"""Two managers on etcd (real daemons, real etcd members): the joining manager receives the swarm's
data key over the join, secrets written through either are sealed in etcd, the other manager leads
with the same key when the first dies, and a manager holding another key does not campaign."""

from __future__ import annotations

import base64
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from shoal.store.sealing import KEY_FILE, Keyring
from tests.integration.conftest import wait_for
from tests.integration.test_managers_ha import Mgr, _try, etcdctl, managers, swarm_on_etcd  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration]

PAYLOADS = (b"first-secret-payload-1", b"second-secret-payload-2")


def etcd_dump(m: Mgr, tmp: Path) -> bytes:
    """Every value under /shoal, and an etcdctl snapshot (what a backup holds)."""
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    values = subprocess.run(etcdctl(m, "get", "--prefix", "/shoal"), capture_output=True, env=env,
                            check=True, timeout=30).stdout
    snap = tmp / f"backup-{m.n}.db"
    subprocess.run(etcdctl(m, "snapshot", "save", str(snap)), capture_output=True, env=env, check=True,
                   timeout=30)
    return values + snap.read_bytes()


def assert_private(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        if p.is_socket():
            continue
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert (mode == 0o700) if p.is_dir() else (mode & 0o077 == 0), f"{p} is {mode:o}"


def test_a_joined_manager_holds_the_data_key_and_leads_with_it(managers: list[Mgr], tmp_path: Path) -> None:  # noqa: F811
    m1, m2, _ = managers
    swarm_on_etcd(m1, m2)
    key1, key2 = m1.proc.data / KEY_FILE, m2.proc.data / KEY_FILE
    assert key1.read_text() == key2.read_text()
    assert stat.S_IMODE(key2.stat().st_mode) == 0o600
    wait_for(lambda: _try(lambda: len(m2.client().nodes.list()) == 2), timeout=40)

    m2.client().secrets.create(name="s1", data=PAYLOADS[0])  # a follower: the leader (m1) writes it
    tokens = [m1.client().swarm.attrs["JoinTokens"][r].encode() for r in ("Worker", "Manager")]
    dump = etcd_dump(m1, tmp_path)
    for plain in (PAYLOADS[0], base64.b64encode(PAYLOADS[0]), *tokens):
        assert plain not in dump
    assert b"/shoal/secret/" in dump and b"/shoal/service/" not in dump  # it is there, sealed whole
    for m in (m1, m2):
        assert_private(m.proc.data)

    # The leader's daemon dies (its member lives on): m2 leads and seals with the key it was given.
    m1.proc.stop(signal.SIGKILL)
    wait_for(lambda: m2.leader(), timeout=30)
    m2.client().secrets.create(name="s2", data=PAYLOADS[1])
    dump = etcd_dump(m2, tmp_path)
    assert PAYLOADS[1] not in dump and base64.b64encode(PAYLOADS[1]) not in dump

    # m1 comes back with another swarm's key: it says why, does not campaign, and m2 keeps leading.
    key1.write_text(Keyring.new().to_json())
    m1.proc.start()
    wait_for(lambda: "does not campaign" in m1.proc.log.read_text(), timeout=30)
    assert m2.leader()
    assert sorted(s.name for s in m2.client().secrets.list()) == ["s1", "s2"]

    # With the swarm's key again it follows, and reads both secrets.
    m1.proc.stop()
    key1.write_text(key2.read_text())
    m1.proc.start()
    wait_for(lambda: _try(lambda: sorted(s.name for s in m1.client().secrets.list()) == ["s1", "s2"]), timeout=40)
