"""A task's ContainerSpec → the body of the engine's ``POST /containers/create``.

Follows swarmkit's ``dockerapi/container.go`` and moby's cluster executor: Command replaces the
image's entrypoint and Args its cmd; Hosts lines ("IP name aliases") become ExtraHosts ("name:IP");
limits and reservations become cgroup settings (a CPU reservation only matters to the scheduler).
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from shoal.agent.executor.base import container_name, service_name, task_labels, task_ports
from shoal.models import SECOND, ContainerSpec, GenericResource, Mount, Task
from shoal.netmode import task_network_mode

_TEMPLATE = re.compile(r"\{\{\s*\.(Service|Task|Node)\.(\w+)\s*\}\}")


def expand(value: str, task: Task, hostname: str = "") -> str:
    """Swarm's placeholders (``{{.Task.Slot}}``, ``{{.Node.Hostname}}`` ...) in Hostname, Env, Mounts."""
    if "{{" not in value:
        return value
    fields = {
        ("Service", "ID"): task.ServiceID,
        ("Service", "Name"): service_name(task),
        ("Task", "ID"): task.ID,
        ("Task", "Name"): container_name(task),
        ("Task", "Slot"): str(task.Slot or task.NodeID),
        ("Node", "ID"): task.NodeID,
        ("Node", "Hostname"): hostname,
    }
    return _TEMPLATE.sub(lambda m: fields.get((m.group(1), m.group(2)), m.group(0)), value)


def stop_grace_s(spec: ContainerSpec | None, default_ns: int) -> int:
    """StopGracePeriod in whole seconds, rounded up (the engine's stop timeout is in seconds)."""
    ns = spec.StopGracePeriod if spec is not None and spec.StopGracePeriod is not None else default_ns
    return math.ceil(ns / SECOND)


def _mount(m: Mount, task: Task, hostname: str) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": m.Type, "Target": expand(m.Target, task, hostname), "ReadOnly": m.ReadOnly}
    if m.Source and m.Type != "tmpfs":
        out["Source"] = expand(m.Source, task, hostname)
    if m.Consistency:
        out["Consistency"] = m.Consistency
    if m.BindOptions:
        out["BindOptions"] = m.BindOptions
    if m.VolumeOptions:
        out["VolumeOptions"] = m.VolumeOptions
    if m.TmpfsOptions:
        out["TmpfsOptions"] = m.TmpfsOptions
    return out


def _extra_hosts(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        parts = line.split()
        out.extend(f"{name}:{parts[0]}" for name in parts[1:])
    return out


def _host_config(spec: ContainerSpec) -> dict[str, Any]:
    """Shoal's ContainerSpec.HostConfig, already under moby's names: copied as it is, with the
    defaults ``docker run --device`` fills in (the engine itself does not)."""
    if spec.HostConfig is None:
        return {}
    out: dict[str, Any] = msgspec.to_builtins(spec.HostConfig)  # omit_defaults: only what was set
    for dev in out.get("Devices") or ():
        dev.setdefault("PathInContainer", dev["PathOnHost"])
        dev.setdefault("CgroupPermissions", "rwm")
    return out


def is_gpu_kind(kind: str) -> bool:
    """Whether a generic resource kind is a GPU (``gpu``, ``NVIDIA-GPU``, ``nvidia.com/gpu`` ...)."""
    return "gpu" in kind.lower()


def resource_env(assigned: list[GenericResource] | None) -> list[str]:
    """``DOCKER_RESOURCE_<KIND>=v1,v2`` for the generic resources the scheduler gave the task, as
    swarmkit's executor writes them (genericresource.EnvFormat): named values, or a discrete count."""
    values: dict[str, list[str]] = {}
    for g in assigned or ():
        if g.NamedResourceSpec and g.NamedResourceSpec.get("Kind"):
            r = g.NamedResourceSpec
            values.setdefault(str(r["Kind"]).upper(), []).append(str(r.get("Value", "")))
        elif g.DiscreteResourceSpec and g.DiscreteResourceSpec.get("Kind"):
            d = g.DiscreteResourceSpec
            values.setdefault(str(d["Kind"]).upper(), []).append(str(d.get("Value", 0)))
    return [f"DOCKER_RESOURCE_{k}={','.join(v)}" for k, v in sorted(values.items())]


def gpu_request(assigned: list[GenericResource] | None) -> tuple[dict[str, Any] | None, list[str]]:
    """The DeviceRequest (and NVIDIA_VISIBLE_DEVICES) for the GPUs assigned to a task.

    GPUs a node names (``NVIDIA-GPU=GPU-uuid``) are given by ID, so two tasks never share one; a
    GPU count (a discrete kind) can only ask the driver for that many, as ``--gpus N`` does."""
    ids: list[str] = []
    count = 0
    for g in assigned or ():
        if g.NamedResourceSpec and is_gpu_kind(str(g.NamedResourceSpec.get("Kind", ""))):
            ids.append(str(g.NamedResourceSpec.get("Value", "")))
        elif g.DiscreteResourceSpec and is_gpu_kind(str(g.DiscreteResourceSpec.get("Kind", ""))):
            count += int(g.DiscreteResourceSpec.get("Value", 0) or 0)
    if ids:
        req = {"Driver": "nvidia", "DeviceIDs": ids, "Capabilities": [["gpu"]]}
        return req, [f"NVIDIA_VISIBLE_DEVICES={','.join(ids)}"]
    if count:
        return {"Driver": "nvidia", "Count": count, "Capabilities": [["gpu"]]}, []
    return None, []


def container_config(task: Task, hostname: str = "", default_grace_ns: int = 10 * SECOND) -> dict[str, Any]:
    """The create body (Config + HostConfig in one object, as the API takes it)."""
    spec = task.Spec.ContainerSpec or ContainerSpec()
    cfg: dict[str, Any] = {
        "Image": spec.Image,
        "Labels": task_labels(task),
        "Env": [expand(e, task, hostname) for e in spec.Env or []] + resource_env(task.GenericResources),
        "Tty": spec.TTY,
        "OpenStdin": spec.OpenStdin,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "StopTimeout": stop_grace_s(spec, default_grace_ns),
    }
    if spec.Command:
        cfg["Entrypoint"] = list(spec.Command)
        cfg["Cmd"] = list(spec.Args or [])
    elif spec.Args:
        cfg["Cmd"] = list(spec.Args)
    if spec.Hostname:
        cfg["Hostname"] = expand(spec.Hostname, task, hostname)
    if spec.Dir:
        cfg["WorkingDir"] = spec.Dir
    if spec.Domainname:
        cfg["Domainname"] = spec.Domainname
    if spec.User:
        cfg["User"] = spec.User
    if spec.StopSignal:
        cfg["StopSignal"] = spec.StopSignal
    hc = spec.Healthcheck
    if hc is not None:
        cfg["Healthcheck"] = {
            "Test": hc.Test,
            "Interval": hc.Interval,
            "Timeout": hc.Timeout,
            "Retries": hc.Retries,
            "StartPeriod": hc.StartPeriod,
        }

    host: dict[str, Any] = {"ReadonlyRootfs": spec.ReadOnly, **_host_config(spec)}
    gpus, gpu_env = gpu_request(task.GenericResources)
    # A service that states its own devices or device requests has said how it reaches its GPUs.
    if gpus is not None and not host.get("DeviceRequests") and not host.get("Devices"):
        host["DeviceRequests"] = [gpus]
        cfg["Env"].extend(e for e in gpu_env if not any(x.startswith("NVIDIA_VISIBLE_DEVICES=") for x in cfg["Env"]))
    if spec.Init is not None:
        host["Init"] = spec.Init
    if spec.Mounts:
        host["Mounts"] = [_mount(m, task, hostname) for m in spec.Mounts]
    if spec.Hosts:
        host["ExtraHosts"] = _extra_hosts(spec.Hosts)
    if spec.Sysctls:
        host["Sysctls"] = spec.Sysctls
    if spec.CapabilityAdd:
        host["CapAdd"] = spec.CapabilityAdd
    if spec.CapabilityDrop:
        host["CapDrop"] = spec.CapabilityDrop
    if spec.Ulimits:
        host["Ulimits"] = [{"Name": u.Name, "Soft": u.Soft, "Hard": u.Hard} for u in spec.Ulimits]
    if spec.Groups:
        host["GroupAdd"] = spec.Groups
    if spec.OomScoreAdj:
        host["OomScoreAdj"] = spec.OomScoreAdj
    if spec.Isolation:
        host["Isolation"] = spec.Isolation
    if spec.DNSConfig:
        dns = spec.DNSConfig
        host["Dns"] = dns.get("Nameservers") or []
        host["DnsSearch"] = dns.get("Search") or []
        host["DnsOptions"] = dns.get("Options") or []
    res = task.Spec.Resources
    if res is not None and res.Limits is not None:
        if res.Limits.NanoCPUs:
            host["NanoCpus"] = res.Limits.NanoCPUs
        if res.Limits.MemoryBytes:
            host["Memory"] = res.Limits.MemoryBytes
        if res.Limits.Pids:
            host["PidsLimit"] = res.Limits.Pids
    if res is not None and res.Reservations is not None and res.Reservations.MemoryBytes:
        host["MemoryReservation"] = res.Reservations.MemoryBytes
    if task.Spec.LogDriver is not None and task.Spec.LogDriver.Name:
        host["LogConfig"] = {"Type": task.Spec.LogDriver.Name, "Config": task.Spec.LogDriver.Options or {}}

    mode = task_network_mode(task)
    if mode:
        # Swarm's predefined networks are the engine's own (moby's cluster executor does the same).
        host["NetworkMode"] = mode
    published = task_ports(task, "host")
    if published and mode != "host":  # on the host network a port is the process's own: nothing to bind
        exposed: dict[str, dict[str, Any]] = {}
        bindings: dict[str, list[dict[str, str]]] = {}
        for p in published:
            key = f"{p.TargetPort}/{p.Protocol or 'tcp'}"
            exposed[key] = {}
            # An empty HostPort asks the engine for a free one (PublishedPort 0).
            bindings.setdefault(key, []).append({"HostPort": str(p.PublishedPort) if p.PublishedPort else ""})
        cfg["ExposedPorts"] = exposed
        host["PortBindings"] = bindings
    cfg["HostConfig"] = host
    return cfg
