"""nas/ossfs shared volumes: the option rules (shoal/sharedvolumes.py), the API's check of a service's
mounts, and the agent's mounts (agent/volumes.py) through a real throwaway sshd + sshfs (no dockerd):
reference counts by task, the record across a restart, and failures that name the volume."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.agent.volumes import SharedVolumes, available
from shoal.controlapi.validate import validate_service_spec
from shoal.errors import InvalidArgument
from shoal.models import ContainerSpec, Mount, ServiceSpec, TaskSpec
from shoal.sharedvolumes import VolumeError, check_options, parse_defaults, parse_options, shared_driver, with_defaults
from tests.nas_sshd import NasSshd, sshd_available, start_sshd


def test_vol_nas_options_map_to_server_path_and_volume() -> None:
    r = parse_options("nas", "inception_model", {"server": "10.0.0.5:2222", "path": "/export", "user": "data",
                                                 "identity": "/etc/shoal/key", "vers": "4.0", "mode": "755"})
    assert (r.host, r.port, r.directory, r.user, r.identity) == ("10.0.0.5", 2222, "/export/inception_model",
                                                                "data", "/etc/shoal/key")
    assert r.target() == "data@10.0.0.5:/export/inception_model"
    # Aliyun's `host` names the mount target too; the default port and path
    assert parse_options("nas", "v", {"host": "nas.example"}).target() == "nas.example:/v"
    assert parse_options("nas", "v", {"host": "nas.example"}).port == 22


def test_vol_ossfs_bucket_is_a_sub_directory() -> None:
    r = parse_options("ossfs", "website", {"bucket": "my-site", "server": "[::1]:22", "path": "/oss/"})
    assert (r.host, r.directory) == ("::1", "/oss/my-site/website")
    assert r.made == ("/oss/my-site", "/oss/my-site/website")  # made on the server at the first mount


@pytest.mark.parametrize(("driver", "opts", "error"), [
    ("nas", {}, "missing option server"),
    ("ossfs", {"server": "h"}, "missing option bucket"),
    ("nas", {"server": "h", "bucket": "b"}, "unknown option(s) bucket (known: host, identity, known_hosts, path, "
                                            "server, user)"),
    ("ossfs", {"server": "h", "bucket": "b", "ak_id": "x"}, "unknown option(s) ak_id"),
    ("nas", {"server": "h:99999"}, "bad port"),
    ("nas", {"server": "h h"}, "bad server"),
    ("nas", {"server": "h", "host": "h"}, "not both"),
    ("nas", {"server": "h", "path": "rel"}, "must be absolute"),
    ("nas", {"server": "h", "path": "/a/../etc"}, "without '..'"),
    ("nas", {"server": "h", "identity": "key"}, "absolute path on the node"),
    ("nas", {"server": "h", "user": "a b"}, "bad user"),
    ("ossfs", {"server": "h", "bucket": "../x"}, "bad bucket"),
])
def test_vol_bad_options_are_refused_with_the_reason(driver: str, opts: dict[str, str], error: str) -> None:
    with pytest.raises(VolumeError) as e:
        parse_options(driver, "v", opts)
    assert str(e.value).startswith(f"{driver} volume v: ")
    assert error in str(e.value)


def test_vol_a_volume_name_is_one_path_segment() -> None:
    with pytest.raises(VolumeError, match="letters, digits"):
        parse_options("nas", "../etc", {"server": "h"})
    with pytest.raises(VolumeError, match="needs a name"):
        check_options("nas", "", {"server": "h"})


def test_vol_a_missing_server_is_the_nodes_business_at_the_api() -> None:
    check_options("ossfs", "site", {"bucket": "b"}, need_server=False)  # no error: SHOAL_VOLUME_OPTS may say
    with pytest.raises(VolumeError, match="bad server"):
        check_options("nas", "v", {"server": "a/b"}, need_server=False)


def test_vol_node_defaults_fill_what_an_aliyun_file_leaves_out(tmp_path: Path) -> None:
    d = parse_defaults("server=nas.example:2222, path=/export,identity=/etc/shoal/key")
    # the seed's `website: {driver: ossfs, driver_opts: {bucket: ...}}`
    assert parse_options("ossfs", "website", with_defaults(d, {"bucket": "site"})).target() == \
        "nas.example:/export/site/website"
    # the volume's own host wins over the default server (both would be refused)
    assert parse_options("ossfs", "w", with_defaults(d, {"bucket": "b", "host": "other"})).host == "other"
    with pytest.raises(VolumeError, match="SHOAL_VOLUME_OPTS: bad item 'bucket=x'"):
        parse_defaults("server=h,bucket=x")
    with pytest.raises(VolumeError, match="bad item 'server'"):
        parse_defaults("server")
    with pytest.raises(VolumeError, match="must be absolute"):
        parse_defaults("path=export")
    assert SharedVolumes(tmp_path, defaults="nope").defaults_error.startswith("SHOAL_VOLUME_OPTS: bad item")


def test_vol_shared_driver_picks_nas_and_ossfs_only() -> None:
    assert shared_driver({"DriverConfig": {"Name": "nas", "Options": {"server": "h"}}}) == ("nas", {"server": "h"})
    assert shared_driver({"DriverConfig": {"Name": "ossfs"}}) == ("ossfs", {})
    assert shared_driver({"DriverConfig": {"Name": "local", "Options": {"type": "tmpfs"}}}) is None
    assert shared_driver({"NoCopy": True}) is None
    assert shared_driver(None) is None


def _spec(source: str, driver: str, opts: dict[str, str]) -> ServiceSpec:
    m = Mount(Type="volume", Source=source, Target="/data",
              VolumeOptions={"DriverConfig": {"Name": driver, "Options": opts}})
    return ServiceSpec(Name="volsvc", TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest",
                                                                                        Mounts=[m])))


def test_vol_api_refuses_a_bad_option_and_lets_a_missing_server_through() -> None:
    with pytest.raises(InvalidArgument) as e:
        validate_service_spec(_spec("volsite", "ossfs", {"bucket": "b", "ak_id": "x"}))
    assert "ossfs volume volsite: unknown option(s) ak_id" in str(e.value)
    with pytest.raises(InvalidArgument, match="bad server"):
        validate_service_spec(_spec("volsite", "nas", {"server": "no such:1"}))
    validate_service_spec(_spec("volmodel", "nas", {}))  # Aliyun's `{driver: nas}`: the node's defaults say where
    validate_service_spec(_spec("vol{{.Task.Slot}}", "nas", {}))  # expanded on the node, checked there
    validate_service_spec(_spec("anything", "local", {"whatever": "x"}))  # the engine's business


# ---------------------------------------------------------------------------- real mounts


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NasSshd]:
    why = sshd_available() or available()
    if why or os.geteuid() != 0:
        pytest.skip(why or "sshd and FUSE mounts need root")
    s = start_sshd(tmp_path_factory.mktemp("volsshd"))
    try:
        yield s
    finally:
        s.stop()


def _opts(sshd: NasSshd, **more: str) -> dict[str, str]:
    return {"server": sshd.server, "path": str(sshd.export), "identity": str(sshd.identity),
            "known_hosts": str(sshd.known_hosts), **more}


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[SharedVolumes]:
    v = SharedVolumes(tmp_path / "root", defaults="")
    try:
        yield v
    finally:
        _unmount_all(v)


def _unmount_all(v: SharedVolumes) -> None:
    """A failed test must not leave a FUSE mount behind."""
    for mp in v.mounted():
        subprocess.run(["fusermount", "-u", "-z", str(mp)], check=False)


def _nas(mp: Path, sshd: NasSshd, source: str) -> list[dict[str, object]]:
    return [{"Type": "volume", "Source": source, "Target": "/data", "ReadOnly": True,
             "VolumeOptions": {"DriverConfig": {"Name": "nas", "Options": _opts(sshd)}}},
            {"Type": "volume", "Source": "volplain", "Target": "/plain"}]


async def test_vol_mounts_are_shared_by_tasks_and_go_with_the_last(volumes: SharedVolumes, sshd: NasSshd) -> None:
    binds = await volumes.bind_mounts("task1", _nas(volumes.root, sshd, "volunit1"))
    mp = volumes.mountpoint("nas", "volunit1")
    # the nas mount became a bind of the node's sshfs mount; the other is the engine's, untouched
    assert binds == [{"Type": "bind", "Source": str(mp), "Target": "/data", "ReadOnly": True},
                     {"Type": "volume", "Source": "volplain", "Target": "/plain"}]
    assert volumes.mounted() == [mp]
    (mp / "data").write_text("kept")
    assert (sshd.export / "volunit1" / "data").read_text() == "kept"  # written on the server
    # a second task on the node shares the mount; the first's container removed keeps it
    await volumes.bind_mounts("task2", _nas(volumes.root, sshd, "volunit1"))
    volumes.container_created("c1", "task1")
    volumes.container_created("c2", "task2")
    await volumes.container_removed("c1")
    assert (mp / "data").read_text() == "kept" and volumes.uses("task2") and not volumes.uses("task1")
    # the record survives an agent restart: the new object unmounts after the last container goes
    again = SharedVolumes(volumes.root, defaults="")
    assert again.volumes["nas/volunit1"].users == {"task2"}
    await again.container_removed("c2")
    assert again.mounted() == [] and not mp.exists()
    assert (sshd.export / "volunit1" / "data").read_text() == "kept"  # the data stays on the server
    assert again.volumes == {}


async def test_vol_ossfs_bucket_and_node_defaults(tmp_path: Path, sshd: NasSshd) -> None:
    o = _opts(sshd)
    volumes = SharedVolumes(tmp_path / "root", defaults=",".join(f"{k}={v}" for k, v in o.items()))
    try:
        mp = await volumes.acquire("t", "ossfs", "volsite", {"bucket": "volbucket"})
        (mp / "index.html").write_text("hi")
        assert (sshd.export / "volbucket" / "volsite" / "index.html").read_text() == "hi"
        # the same name from another server while a task uses it: refused, not silently the wrong data
        with pytest.raises(VolumeError, match=r"ossfs volume volsite: mounted on this node from .* for 1 other"):
            await volumes.acquire("t2", "ossfs", "volsite", {"bucket": "volbucket", "server": "127.0.0.1:1"})
        await volumes.release("t")
        assert volumes.mounted() == []
    finally:
        _unmount_all(volumes)


async def test_vol_a_mount_that_fails_says_which_volume_and_why(volumes: SharedVolumes, sshd: NasSshd) -> None:
    missing = {**_opts(sshd), "path": f"{sshd.export}/none/deeper"}
    with pytest.raises(VolumeError) as e:
        await volumes.acquire("t", "nas", "volmissing", missing)
    assert str(e.value).startswith(f"nas volume volmissing: mount 127.0.0.1:{sshd.export}/none/deeper/volmissing "
                                   f"(port {sshd.port}) failed:")
    with pytest.raises(VolumeError, match=r"nas volume volnokey: .* failed: .*Permission denied"):
        await volumes.acquire("t", "nas", "volnokey", {**_opts(sshd), "identity": "/nonexistent-key"})
    with pytest.raises(VolumeError, match=r"nas volume voldown: .* failed: .*Connection refused"):
        await volumes.acquire("t", "nas", "voldown", {**_opts(sshd), "server": "127.0.0.1:1"})
    with pytest.raises(VolumeError, match="nas volume volnone: missing option server"):
        await volumes.acquire("t", "nas", "volnone", {})
    # the first volume of a task mounted, the second failing: the first is let go too
    mounts = _nas(volumes.root, sshd, "volok")
    mounts.append({"Type": "volume", "Source": "voldown", "Target": "/down",
                   "VolumeOptions": {"DriverConfig": {"Name": "nas", "Options": {**_opts(sshd),
                                                                                 "server": "127.0.0.1:1"}}}})
    with pytest.raises(VolumeError, match="voldown"):
        await volumes.bind_mounts("t3", mounts)
    assert volumes.mounted() == [] and not volumes.uses("t3") and not volumes.uses("t")


async def test_vol_a_full_assignment_set_sweeps_users_left_without_a_container(volumes: SharedVolumes,
                                                                             sshd: NasSshd) -> None:
    mp = await volumes.acquire("kept", "nas", "volsweep", _opts(sshd))
    await volumes.acquire("running", "nas", "volsweep", _opts(sshd))
    await volumes.acquire("killed", "nas", "volsweep", _opts(sshd))  # the agent died before its create
    volumes.container_created("c-running", "running")
    await volumes.sweep({"kept"})  # "running" is unassigned but its container still binds the mount
    assert volumes.volumes["nas/volsweep"].users == {"kept", "running"}
    await volumes.release("kept")
    await volumes.container_removed("c-running")
    assert volumes.mounted() == [] and not mp.exists()
