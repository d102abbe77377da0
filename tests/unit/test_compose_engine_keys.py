"""Every Compose service key is applied or refused with file, line and key (compose/hostcfg.py);
the engine keys reach the create body; ContainerSpec.HostConfig is validated; generic resources
(GPUs by UUID) are claimed by the scheduler and given to the container."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from shoal import models as m
from shoal.agent.executor.docker import generic_resources
from shoal.agent.executor.spec import container_config
from shoal.compose import ComposeError, load
from shoal.compose.convert import to_stack
from shoal.compose.hostcfg import APPLIED, REFUSED, SERVICE_KEYS, WARNED
from shoal.compose.schema import WHEELS, schema_dir
from shoal.controlapi.validate import validate_service_spec
from shoal.errors import InvalidArgument
from shoal.scheduler.nodeinfo import NodeInfo, claim_generic

# A value each refused or warned key accepts in its schema, and the file version that has the key.
SAMPLES: dict[str, tuple[str, str]] = {
    "external_links": ("[other]", "3.8"), "volumes_from": ("[other]", "2.4"),
    "mac_address": ("02:42:ac:11:00:02", "2.4"), "volume_driver": ("local", "2.4"),
    "cpu_count": ("2", "2.4"), "cpu_percent": ("50", "2.4"), "credential_spec": ("{file: c.json}", "3.8"),
    "build": (".", "3.8"), "container_name": ("one", "3.8"), "expose": ("['80']", "3.8"),
    "dockerfile": ("Dockerfile", "1"),
}


def schema_service_keys() -> dict[str, set[str]]:
    """Every service key of every Compose schema Shoal validates against, with the schemas having it."""
    out: dict[str, set[str]] = {}
    for names in WHEELS.values():
        for name in names:
            schema = json.loads((schema_dir() / name).read_text())
            for key in schema["definitions"]["service"]["properties"]:
                out.setdefault(key, set()).add(name)
    return out


def _file(tmp_path: Path, key: str, value: str, version: str) -> Path:
    f = tmp_path / "docker-compose.yml"
    if version == "1":
        f.write_text(f"app:\n  image: busybox\n  {key}: {value}\n")
    elif version == "spec":  # the Compose Specification, with a second service to refer to
        f.write_text(f"services:\n  db:\n    image: busybox\n  app:\n    image: busybox\n    {key}: {value}\n")
    else:
        f.write_text(f"version: '{version}'\nservices:\n  app:\n    image: busybox\n    {key}: {value}\n")
    return f


def test_every_schema_service_key_is_applied_or_answered(tmp_path: Path) -> None:
    load([_file(tmp_path, "image", "busybox", "3.8")], env={})  # fetches the schemas if missing
    keys = schema_service_keys()
    assert len(keys) > 70 and not set(keys) - set(SERVICE_KEYS), set(keys) - set(SERVICE_KEYS)
    for key in sorted(keys):
        if SERVICE_KEYS[key] == APPLIED:
            continue
        value, version = SAMPLES[key]
        f = _file(tmp_path, key, value, version)
        line = 3 if version == "1" else 5
        if SERVICE_KEYS[key] == REFUSED:
            with pytest.raises(ComposeError) as err:
                to_stack(load([f], env={}), "s")
            assert str(err.value).startswith(f"{f}:{line}: services.app.{key}: ") and key in err.value.message
        else:
            assert SERVICE_KEYS[key] == WARNED
            p = load([f], env={})
            to_stack(p, "s")
            assert any(w.startswith(f"{f}:{line}: app: {key}") for w in p.warnings), (key, p.warnings)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("pid", "container:abc", "pid 'container:abc' is not possible"),
    ("ipc", "service:db", "ipc 'service:db' is not possible"),
    ("userns_mode", "private", "userns_mode 'private' is not possible"),
    ("pull_policy", "always", "pull_policy 'always' is not possible"),
    ("links", "['db:database']", "link alias 'db:database'"),
    ("extra_hosts", "['nohost']", "invalid extra_hosts entry 'nohost'"),
    ("logging", "{options: {max-size: 1m}}", "log options need a driver"),
])
def test_values_a_task_cannot_have_are_errors_with_file_and_line(tmp_path: Path, key: str, value: str,
                                                                 message: str) -> None:
    f = _file(tmp_path, key, value, "spec")
    with pytest.raises(ComposeError) as err:
        to_stack(load([f], env={}), "s")
    assert str(err.value).startswith(f"{f}:6: services.app.{key}") and message in str(err.value)


COMPOSE = """\
services:
  app:
    image: busybox:latest
    privileged: true
    pid: host
    ipc: shareable
    devices: ["/dev/null:/dev/mynull:rw", "/dev/zero"]
    device_cgroup_rules: ["c 1:3 mr"]
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    sysctls: [net.core.somaxconn=1024]
    ulimits: {nproc: 512, nofile: {soft: 1024, hard: 2048}}
    dns: 10.0.0.53
    dns_search: example.org
    dns_opt: ["ndots:2"]
    extra_hosts: ["db:10.0.0.5", "v6=::1"]
    logging: {driver: syslog, options: {tag: app}}
    init: true
    shm_size: 64m
    domainname: example.org
    group_add: [audio]
    oom_score_adj: 100
    oom_kill_disable: true
    security_opt: ["no-new-privileges:true"]
    platform: linux/arm64
    pids_limit: 100
    cpuset: "0"
    cpu_quota: 50000
    cpu_period: 100000
    mem_swappiness: 10
    memswap_limit: -1
    cgroup_parent: shoal.slice
    runtime: runc
    storage_opt: {size: 1G}
    blkio_config: {weight: 300, device_read_bps: [{path: /dev/sda, rate: 1mb}]}
    deploy:
      resources:
        reservations:
          devices: [{capabilities: [gpu], count: all, driver: nvidia}]
"""


def _task(spec: m.ServiceSpec, generic: list[m.GenericResource] | None = None) -> m.Task:
    return m.Task(ID="t1", Version=m.Version(), CreatedAt="", UpdatedAt="", Spec=spec.TaskTemplate, ServiceID="s",
                  Status=m.TaskStatus(), DesiredState=m.TaskState.RUNNING, Slot=1, GenericResources=generic)


def test_engine_keys_reach_the_create_body(tmp_path: Path) -> None:
    f = tmp_path / "compose.yml"
    f.write_text(COMPOSE)
    p = load([f], env={})
    spec = validate_service_spec(to_stack(p, "s").services["app"])
    assert not p.warnings
    # What an API client sends is what a stored spec decodes back to (strict: no unknown fields).
    assert msgspec.json.decode(msgspec.json.encode(spec), type=m.ServiceSpec) == spec
    assert spec.TaskTemplate.Placement.Platforms == [m.Platform(OS="linux", Architecture="arm64")]
    body = container_config(_task(spec))
    h = body["HostConfig"]
    assert (h["Privileged"], h["PidMode"], h["IpcMode"]) == (True, "host", "shareable")
    assert h["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull", "CgroupPermissions": "rw"},
                            {"PathOnHost": "/dev/zero", "PathInContainer": "/dev/zero", "CgroupPermissions": "rwm"}]
    assert h["DeviceCgroupRules"] == ["c 1:3 mr"]
    assert h["DeviceRequests"] == [{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}]
    assert (h["CapAdd"], h["CapDrop"], h["Sysctls"]) == (["NET_ADMIN"], ["MKNOD"], {"net.core.somaxconn": "1024"})
    assert h["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}, {"Name": "nproc", "Soft": 512, "Hard": 512}]
    assert (h["Dns"], h["DnsSearch"], h["DnsOptions"]) == (["10.0.0.53"], ["example.org"], ["ndots:2"])
    assert h["ExtraHosts"] == ["db:10.0.0.5", "v6:::1"]
    assert h["LogConfig"] == {"Type": "syslog", "Config": {"tag": "app"}}
    assert (h["Init"], h["ShmSize"], h["OomScoreAdj"], h["OomKillDisable"]) == (True, 64 << 20, 100, True)
    assert (h["GroupAdd"], h["SecurityOpt"], h["PidsLimit"]) == (["audio"], ["no-new-privileges:true"], 100)
    assert (h["CpusetCpus"], h["CpuQuota"], h["CpuPeriod"]) == ("0", 50000, 100000)
    assert (h["MemorySwappiness"], h["MemorySwap"], h["CgroupParent"], h["Runtime"]) == (10, -1, "shoal.slice", "runc")
    assert h["StorageOpt"] == {"size": "1G"} and h["BlkioWeight"] == 300
    assert h["BlkioDeviceReadBps"] == [{"Path": "/dev/sda", "Rate": 1 << 20}]
    assert body["Domainname"] == "example.org"


def _spec(host_config: dict | None = None, **container: object) -> m.ServiceSpec:
    cs = {"Image": "busybox", **container}
    if host_config is not None:
        cs["HostConfig"] = host_config
    raw = {"Name": "x", "TaskTemplate": {"ContainerSpec": cs}}
    return msgspec.json.decode(msgspec.json.encode(raw), type=m.ServiceSpec)


@pytest.mark.parametrize(("host_config", "container", "message"), [
    ({"PidMode": "container:abc"}, {}, "PidMode 'container:abc'"),
    ({"IpcMode": "container:abc"}, {}, "IpcMode 'container:abc'"),
    ({"UsernsMode": "keep-id"}, {}, "UsernsMode 'keep-id'"),
    ({"Devices": [{"PathOnHost": "dev/null"}]}, {}, "must be absolute: 'dev/null'"),
    ({"Devices": [{"PathOnHost": "/dev/null", "CgroupPermissions": "rx"}]}, {}, "invalid permissions 'rx'"),
    ({"DeviceCgroupRules": ["c 1:3"]}, {}, "invalid device cgroup rule"),
    ({"DeviceRequests": [{"Count": 1, "DeviceIDs": ["0"]}]}, {}, "cannot set both Count and DeviceIDs"),
    ({"BlkioWeight": 5}, {}, "BlkioWeight 5"),
    (None, {"Hosts": ["db 10.0.0.1"]}, 'invalid Hosts entry "db 10.0.0.1"'),
    (None, {"DNSConfig": {"Nameservers": ["dns.example"]}}, "'dns.example' is not an IP address"),
    (None, {"DNSConfig": {"Servers": ["10.0.0.1"]}}, "unknown DNSConfig field 'Servers'"),
    (None, {"Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 5}]}, "soft limit 10 is above hard limit 5"),
])
def test_host_config_validation(host_config: dict | None, container: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_service_spec(_spec(host_config, **container))
    assert message in err.value.message


def test_unknown_host_config_field_is_refused_by_the_decoder() -> None:
    with pytest.raises(msgspec.ValidationError, match="Privilegd"):
        _spec({"Privilegd": True})


def _gpu_node(labels: dict[str, str]) -> NodeInfo:
    desc = m.NodeDescription(Hostname="n1", Resources=m.Resources(GenericResources=generic_resources(labels)))
    return NodeInfo(m.Node(ID="n1", Version=m.Version(), CreatedAt="", UpdatedAt="", Spec=m.NodeSpec(),
                           Description=desc))


def _gpu_service(n: int) -> m.ServiceSpec:
    resv = m.ResourceReservations(GenericResources=[m.GenericResource(
        DiscreteResourceSpec={"Kind": "NVIDIA-GPU", "Value": n})])
    return m.ServiceSpec(Name="g", TaskTemplate=m.TaskSpec(ContainerSpec=m.ContainerSpec(Image="busybox"),
                                                           Resources=m.ResourceRequirements(Reservations=resv)))


def test_named_gpus_are_claimed_and_given_to_the_container() -> None:
    info = _gpu_node({"shoal.generic-resource.NVIDIA-GPU": "GPU-b, GPU-a,GPU-c", "shoal.generic-resource.fpga": "1"})
    assert info.capacity_generic == {"NVIDIA-GPU": 3, "fpga": 1}
    first = msgspec.structs.replace(_task(_gpu_service(2)), NodeID="n1")
    first = msgspec.structs.replace(first, GenericResources=claim_generic(info, first))
    info.add_task(first)
    assert [g.NamedResourceSpec["Value"] for g in first.GenericResources] == ["GPU-a", "GPU-b"]
    second = msgspec.structs.replace(_task(_gpu_service(1)), ID="t2", NodeID="n1")
    assert claim_generic(info, second) == [m.GenericResource(NamedResourceSpec={"Kind": "NVIDIA-GPU",
                                                                                "Value": "GPU-c"})]
    body = container_config(first)
    assert "DOCKER_RESOURCE_NVIDIA-GPU=GPU-a,GPU-b" in body["Env"]  # swarmkit's EnvFormat
    assert "NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b" in body["Env"]
    assert body["HostConfig"]["DeviceRequests"] == [{"Driver": "nvidia", "DeviceIDs": ["GPU-a", "GPU-b"],
                                                     "Capabilities": [["gpu"]]}]


def test_counted_gpus_and_aliyun_label() -> None:
    info = _gpu_node({"aliyun.gpu": "2"})
    assert info.capacity_generic == {"gpu": 2}
    spec = _gpu_service(1)
    resv = m.ResourceReservations(GenericResources=[m.GenericResource(DiscreteResourceSpec={"Kind": "gpu",
                                                                                            "Value": 1})])
    spec = msgspec.structs.replace(spec, TaskTemplate=msgspec.structs.replace(
        spec.TaskTemplate, Resources=m.ResourceRequirements(Reservations=resv)))
    t = msgspec.structs.replace(_task(spec), NodeID="n1")
    t = msgspec.structs.replace(t, GenericResources=claim_generic(info, t))
    assert t.GenericResources == [m.GenericResource(DiscreteResourceSpec={"Kind": "gpu", "Value": 1})]
    body = container_config(t)
    assert "DOCKER_RESOURCE_GPU=1" in body["Env"]
    assert body["HostConfig"]["DeviceRequests"] == [{"Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]]}]
    # A service that says how it reaches its devices keeps its own requests.
    own = _spec({"DeviceRequests": [{"Driver": "amd", "Count": 1}]})
    body = container_config(msgspec.structs.replace(_task(own), GenericResources=t.GenericResources))
    assert body["HostConfig"]["DeviceRequests"] == [{"Driver": "amd", "Count": 1}]
