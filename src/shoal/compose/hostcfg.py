"""The Compose service keys that set the engine (privileged, devices, sysctls, dns ...) → ContainerSpec.

``docker stack deploy`` drops most of these with "Ignoring unsupported options", or silently. Shoal
applies each one (swarm's own ContainerSpec field where moby has one, else Shoal's
``ContainerSpec.HostConfig`` under moby's HostConfig names), or refuses it with an error naming file,
line and key. :data:`SERVICE_KEYS` says, for every service key of every Compose schema, which it is;
tests/unit/compose/test_compose_keys.py walks the schemas against it, and docs/compose.md is its table.
"""

from __future__ import annotations

from typing import Any

from .. import models as m
from .loader import Project
from .merge import to_mapping
from .units import size

# How each service key is treated: "applied" (reaches the service or its container), "refused" (an
# error naming file, line and key, for every value or for the values given in REFUSED_VALUES), or
# "warned" (a warning naming file and line: only where docker stack deploy also just warns and
# Shoal cannot do better, see docs/compose.md).
APPLIED, REFUSED, WARNED = "applied", "refused", "warned"
SERVICE_KEYS: dict[str, str] = {
    # what the service runs
    "image": APPLIED, "command": APPLIED, "entrypoint": APPLIED, "environment": APPLIED, "env_file": APPLIED,
    "working_dir": APPLIED, "user": APPLIED, "group_add": APPLIED, "hostname": APPLIED, "domainname": APPLIED,
    "labels": APPLIED, "tty": APPLIED, "stdin_open": APPLIED, "read_only": APPLIED, "init": APPLIED,
    "stop_signal": APPLIED, "stop_grace_period": APPLIED, "healthcheck": APPLIED, "platform": APPLIED,
    "pull_policy": APPLIED,  # if_not_present (what the agent does); always, never, build are refused
    # the swarm side
    "deploy": APPLIED, "scale": APPLIED, "restart": APPLIED, "depends_on": APPLIED, "profiles": APPLIED,
    "extends": APPLIED, "ports": APPLIED, "networks": APPLIED, "secrets": APPLIED, "configs": APPLIED,
    "volumes": APPLIED, "tmpfs": APPLIED,
    "network_mode": APPLIED, "net": APPLIED,  # host, bridge; none, service:, container: are refused
    # resources
    "cpus": APPLIED, "mem_limit": APPLIED, "mem_reservation": APPLIED, "pids_limit": APPLIED,
    "cpu_shares": APPLIED, "cpu_quota": APPLIED, "cpu_period": APPLIED, "cpu_rt_period": APPLIED,
    "cpu_rt_runtime": APPLIED, "cpuset": APPLIED, "memswap_limit": APPLIED, "mem_swappiness": APPLIED,
    "oom_kill_disable": APPLIED, "oom_score_adj": APPLIED, "blkio_config": APPLIED, "ulimits": APPLIED,
    "shm_size": APPLIED, "storage_opt": APPLIED,
    # privileges, namespaces, devices
    "privileged": APPLIED, "cap_add": APPLIED, "cap_drop": APPLIED, "security_opt": APPLIED,
    "pid": APPLIED, "ipc": APPLIED, "userns_mode": APPLIED,  # "host" (ipc: private, shareable, none too)
    "devices": APPLIED, "device_cgroup_rules": APPLIED, "cgroup_parent": APPLIED, "sysctls": APPLIED,
    "runtime": APPLIED, "isolation": APPLIED,
    # name resolution and logs
    "dns": APPLIED, "dns_search": APPLIED, "dns_opt": APPLIED, "extra_hosts": APPLIED,
    "logging": APPLIED, "log_driver": APPLIED, "log_opt": APPLIED,
    "links": APPLIED,  # a link is the target's name, which resolves anyway; an alias is refused
    # refused: no meaning for a task that may run on any node, or Windows-only
    "external_links": REFUSED, "volumes_from": REFUSED, "mac_address": REFUSED, "volume_driver": REFUSED,
    "cpu_count": REFUSED, "cpu_percent": REFUSED, "credential_spec": REFUSED,
    # warned: docker stack deploy warns too, and there is nothing better to do (docs/compose.md)
    "build": WARNED, "dockerfile": WARNED, "container_name": WARNED, "expose": WARNED,
}

REFUSED_WHY: dict[str, str] = {
    "external_links": "a task cannot link to containers outside the cluster's networks; put the other "
                      "service's network under networks: (external: true) and use its name",
    "volumes_from": "a task may run on any node, away from the containers it would take volumes from; "
                    "share a named volume instead",
    "mac_address": "every replica would claim the same MAC address",
    "volume_driver": "set driver: on the volume under the top-level volumes: instead",
    "cpu_count": "a Windows engine setting; use cpus or deploy.resources.limits.cpus",
    "cpu_percent": "a Windows engine setting; use cpus or deploy.resources.limits.cpus",
    "credential_spec": "a Windows (gMSA) setting; Shoal's nodes run Linux engines",
}


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, str | int | float) else [str(v) for v in value]


def _extra_hosts(project: Project, name: str, value: Any) -> list[str] | None:
    """``host:ip``, ``host=ip`` or a mapping → swarm's ``"IP host"`` lines (as docker-cli converts them)."""
    if value is None:
        return None
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        for i, item in enumerate(value):
            text = str(item)
            host, sep, ip = text.partition("=") if "=" in text else text.partition(":")
            if not sep or not host or not ip:
                raise project.error(f"service {name!r}: invalid extra_hosts entry {text!r} (expected host:ip)",
                                    ("services", name, "extra_hosts", i))
            pairs.append((host, ip))
    return [f"{ip.strip('[]')} {host}" for host, ip in pairs] or None


def _ulimits(value: Any) -> list[m.Ulimit] | None:
    if not value:
        return None
    out = []
    for key, v in sorted(value.items()):
        if isinstance(v, dict):
            out.append(m.Ulimit(Name=key, Soft=int(v["soft"]), Hard=int(v["hard"])))
        else:
            out.append(m.Ulimit(Name=key, Soft=int(v), Hard=int(v)))
    return out


def _devices(project: Project, name: str, value: Any) -> list[m.DeviceMapping] | None:
    """``/dev/x[:/dev/y[:rwm]]`` (or the long form source/target/permissions) → HostConfig.Devices."""
    out = []
    for i, item in enumerate(value or ()):
        if isinstance(item, dict):
            host, cont, perms = str(item.get("source", "")), str(item.get("target", "")), str(
                item.get("permissions", ""))
        else:
            parts = str(item).split(":")
            if len(parts) > 3:
                raise project.error(f"service {name!r}: invalid device {item!r} (expected "
                                    "/dev/host[:/dev/container[:rwm]])", ("services", name, "devices", i))
            host, cont, perms = [*parts, "", ""][:3]
            if len(parts) == 2 and not parts[1].startswith("/"):
                cont, perms = "", parts[1]  # "/dev/x:rw": docker's short form with permissions only
        out.append(m.DeviceMapping(PathOnHost=host, PathInContainer=cont, CgroupPermissions=perms))
    return out or None


def device_requests(project: Project, name: str, svc: dict[str, Any]) -> list[m.DeviceRequest] | None:
    """``deploy.resources.reservations.devices`` (Compose's way to ``--gpus``) → DeviceRequests."""
    resv = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {})
    out = []
    for i, d in enumerate(resv.get("devices") or ()):
        count = d.get("count", 0 if d.get("device_ids") else -1)
        if count == "all":
            count = -1
        try:
            count = int(count)
        except (TypeError, ValueError):
            raise project.error(f"service {name!r}: device count {count!r}: a number or \"all\"",
                                ("services", name, "deploy", "resources", "reservations", "devices", i,
                                 "count")) from None
        options = {k: "" if v is None else str(v) for k, v in to_mapping(d.get("options")).items()}
        out.append(m.DeviceRequest(Driver=str(d.get("driver", "")), Count=count,
                                   DeviceIDs=_list(d.get("device_ids")) or None,
                                   Capabilities=[_list(d.get("capabilities"))] if d.get("capabilities") else None,
                                   Options=options or None))
    return out or None


def _blkio(cfg: dict[str, Any] | None) -> dict[str, Any]:
    if not cfg:
        return {}
    out: dict[str, Any] = {}
    if cfg.get("weight"):
        out["BlkioWeight"] = int(cfg["weight"])
    if cfg.get("weight_device"):
        out["BlkioWeightDevice"] = [m.WeightDevice(Path=d["path"], Weight=int(d["weight"]))
                                    for d in cfg["weight_device"]]
    for key, field, unit in (("device_read_bps", "BlkioDeviceReadBps", True),
                             ("device_write_bps", "BlkioDeviceWriteBps", True),
                             ("device_read_iops", "BlkioDeviceReadIOps", False),
                             ("device_write_iops", "BlkioDeviceWriteIOps", False)):
        if cfg.get(key):
            out[field] = [m.ThrottleDevice(Path=d["path"], Rate=size(d["rate"]) if unit else int(d["rate"]))
                          for d in cfg[key]]
    return out


def _namespace(project: Project, name: str, svc: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = svc.get(key)
    if value is None:
        return ""
    value = str(value)
    if value in allowed:
        return value
    if value.startswith(("service:", "container:")):
        why = "a task may run on any node, away from the container whose namespace it would share"
    else:
        why = f"possible values: {', '.join(allowed)}"
    raise project.error(f"service {name!r}: {key} {value!r} is not possible for a cluster service ({why})",
                        ("services", name, key))


def host_config(project: Project, name: str, svc: dict[str, Any]) -> m.HostConfig | None:
    """Shoal's ContainerSpec.HostConfig for the keys swarm mode has no field for."""
    policy = svc.get("pull_policy")
    if policy is not None and policy not in ("if_not_present", "missing"):
        raise project.error(f"service {name!r}: pull_policy {policy!r} is not possible: a node pulls an image "
                            "when it does not have it (if_not_present); pin a digest (image@sha256:...) to "
                            "change what runs", ("services", name, "pull_policy"))
    swappiness = svc.get("mem_swappiness")
    hc = m.HostConfig(
        Privileged=bool(svc.get("privileged", False)),
        PidMode=_namespace(project, name, svc, "pid", ("host",)),
        IpcMode=_namespace(project, name, svc, "ipc", ("host", "private", "shareable", "none")),
        UsernsMode=_namespace(project, name, svc, "userns_mode", ("host",)),
        CgroupParent=str(svc.get("cgroup_parent", "")),
        Runtime=str(svc.get("runtime", "")),
        Devices=_devices(project, name, svc.get("devices")),
        DeviceCgroupRules=_list(svc.get("device_cgroup_rules")) or None,
        DeviceRequests=device_requests(project, name, svc),
        ShmSize=size(svc["shm_size"]) if svc.get("shm_size") is not None else 0,
        SecurityOpt=_list(svc.get("security_opt")) or None,
        StorageOpt={str(k): str(v) for k, v in (svc.get("storage_opt") or {}).items()} or None,
        OomKillDisable=svc.get("oom_kill_disable"),
        MemorySwappiness=int(swappiness) if swappiness is not None else None,
        MemorySwap=-1 if str(svc.get("memswap_limit", "")) == "-1" else size(svc.get("memswap_limit", 0)),
        CpuShares=int(svc.get("cpu_shares", 0)),
        CpuPeriod=int(svc.get("cpu_period", 0) or 0),
        CpuQuota=int(svc.get("cpu_quota", 0) or 0),
        CpuRealtimePeriod=int(svc.get("cpu_rt_period", 0) or 0),
        CpuRealtimeRuntime=int(svc.get("cpu_rt_runtime", 0) or 0),
        CpusetCpus=str(svc.get("cpuset", "")),
        **_blkio(svc.get("blkio_config")),
    )
    return None if hc == m.HostConfig() else hc


def container_fields(project: Project, name: str, svc: dict[str, Any]) -> dict[str, Any]:
    """The ContainerSpec fields of the engine keys (swarm's own fields first, then HostConfig)."""
    for key, why in REFUSED_WHY.items():
        if key in svc:
            raise project.error(f"service {name!r}: {key} is not supported: {why}", ("services", name, key))
    for i, link in enumerate(svc.get("links") or ()):
        target, _, alias = str(link).partition(":")
        if alias and alias != target:
            raise project.error(f"service {name!r}: link alias {link!r}: a cluster service is reached by its "
                                f"name; give {target!r} the alias under networks: <net>: aliases: instead",
                                ("services", name, "links", i))
    dns: dict[str, list[str]] = {}
    for key, field in (("dns", "Nameservers"), ("dns_search", "Search"), ("dns_opt", "Options")):
        if svc.get(key):
            dns[field] = _list(svc[key])
    sysctls = {k: "" if v is None else str(v) for k, v in to_mapping(svc.get("sysctls")).items()}
    return {
        "Groups": _list(svc.get("group_add")) or None,
        "Domainname": str(svc.get("domainname", "")),
        "Hosts": _extra_hosts(project, name, svc.get("extra_hosts")),
        "DNSConfig": dns or None,
        "Sysctls": sysctls or None,
        "CapabilityAdd": _list(svc.get("cap_add")) or None,
        "CapabilityDrop": _list(svc.get("cap_drop")) or None,
        "Ulimits": _ulimits(svc.get("ulimits")),
        "OomScoreAdj": int(svc.get("oom_score_adj", 0)),
        "Isolation": str(svc.get("isolation", "")),
        "HostConfig": host_config(project, name, svc),
    }


def log_driver(project: Project, name: str, svc: dict[str, Any]) -> m.Driver | None:
    """``logging`` (or v2's ``log_driver``/``log_opt``) → TaskTemplate.LogDriver."""
    logging = svc.get("logging") or {}
    driver = logging.get("driver", svc.get("log_driver"))
    options = logging.get("options", svc.get("log_opt"))
    if not driver and not options:
        return None
    if not driver:
        # Swarm applies a task's log options only with its driver: they would be dropped.
        key = ("logging", "options") if "logging" in svc else ("log_opt",)
        raise project.error(f"service {name!r}: log options need a driver (logging: driver: json-file, ...)",
                            ("services", name, *key))
    opts = {str(k): "" if v is None else str(v) for k, v in (options or {}).items()}
    return m.Driver(Name=str(driver), Options=opts or None)


def platforms(svc: dict[str, Any]) -> list[m.Platform] | None:
    """``platform: linux/arm64[/v8]`` → a placement platform (the scheduler matches node OS/arch)."""
    value = svc.get("platform")
    if not value:
        return None
    os_name, _, rest = str(value).partition("/")
    return [m.Platform(OS=os_name, Architecture=rest.partition("/")[0])]
