"""Validation and normalisation of service specs, with swarmkit's rules and wording.

Everything here is pure: it inspects a decoded :class:`ServiceSpec` and returns a normalised copy
(defaults Docker shows explicitly, such as ``Mode``) or raises before anything is written.
"""

from __future__ import annotations

import ipaddress
import re

import msgspec

from shoal.controlapi.errors import invalid
from shoal.controlapi.extensions import (
    check_autoscale_labels,
    check_health_labels,
    check_log_store_labels,
    check_schedule_labels,
    check_update_strategy,
)
from shoal.controlapi.lbroute import check_routing_labels
from shoal.errors import InvalidArgument
from shoal.extensions import ClusterSettings, parse_cluster_settings, parse_scheduling
from shoal.models import (
    Cluster,
    ContainerSpec,
    EndpointSpec,
    Node,
    ReplicatedJob,
    ReplicatedService,
    ResourceRequirements,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
    UpdateConfig,
)
from shoal.scheduler import expressions
from shoal.scheduler.constraints import parse_constraints
from shoal.sharedvolumes import VolumeError, check_options, shared_driver

_NAME_RE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$")

# An image reference as the distribution grammar defines it: [domain[:port]/]path[:tag][@digest].
_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_RE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)

_MIN_NANO_CPUS = 1_000_000
_MIN_MEMORY = 4 * 1024 * 1024
_MIN_DURATION = 1_000_000  # 1 ms, swarmkit's minimum for health-check durations


def mode_kind(spec: ServiceSpec) -> str:
    """``replicated``, ``global``, ``replicated-job`` or ``global-job`` (the spec is normalised)."""
    m = spec.Mode
    if m is None or m.Replicated is not None:
        return "replicated"
    if m.Global is not None:
        return "global"
    if m.ReplicatedJob is not None:
        return "replicated-job"
    return "global-job"


def check_constraint(expr: str) -> None:
    """The scheduler's parser decides the syntax; a key it cannot match is refused here, at create
    time, rather than leaving tasks pending forever (Docker accepts it; Shoal says no early)."""
    try:
        (constraint,) = parse_constraints([expr])
    except InvalidArgument as e:
        raise invalid(e.message) from None
    if not constraint.known:
        raise invalid(f"constraint key '{constraint.key}' is not supported")


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise invalid("name must be valid as a DNS name component")
    if len(name) > 63:
        raise invalid("name must be 63 characters or fewer")


def _check_resources(res: ResourceRequirements | None) -> None:
    if res is None:
        return
    for part in (res.Limits, res.Reservations):
        if part is None:
            continue
        if part.NanoCPUs and part.NanoCPUs < _MIN_NANO_CPUS:
            raise invalid(f"invalid cpu value {part.NanoCPUs / 1e9:g}: Must be at least 0.001")
        if part.MemoryBytes and part.MemoryBytes < _MIN_MEMORY:
            raise invalid(f"invalid memory value {part.MemoryBytes}: Must be at least 4MiB")


def _check_generic(res: ResourceRequirements | None) -> None:
    r = res.Reservations if res is not None else None
    for g in (r.GenericResources if r is not None else None) or ():
        d = g.DiscreteResourceSpec
        if d is not None:
            value = d.get("Value")
            if not d.get("Kind") or not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise invalid("invalid generic resource: DiscreteResourceSpec needs a Kind and a Value >= 0")
        elif g.NamedResourceSpec is not None:
            if not g.NamedResourceSpec.get("Kind") or not g.NamedResourceSpec.get("Value"):
                raise invalid("invalid generic resource: NamedResourceSpec needs a Kind and a Value")
        else:
            raise invalid("invalid generic resource: expected DiscreteResourceSpec or NamedResourceSpec")


def _check_preferences(ts: TaskSpec) -> None:
    placement = ts.Placement
    for pref in (placement.Preferences if placement is not None else None) or ():
        d = (pref.Spread or {}).get("SpreadDescriptor", "")
        if not any(d.startswith(p) and len(d) > len(p) for p in ("node.labels.", "engine.labels.")):
            raise invalid(
                f"invalid placement preference spread={d}: expected node.labels.<name> or engine.labels.<name>"
            )


def check_scheduling_labels(spec: ServiceSpec) -> None:
    """Shoal's scheduling service labels and the classic Swarm / Rancher expressions (400 if bad)."""
    try:
        parse_scheduling(spec.Labels)  # shoal.priority, shoal.strategy
    except ValueError as e:
        raise InvalidArgument(f"label {e}") from None
    try:
        expressions.check_spec(spec)
    except InvalidArgument as e:
        raise invalid(e.message) from None


def check_swarm_labels(labels: dict[str, str] | None) -> None:
    """The swarm spec's scheduling labels (strategy, overcommit ratios): for swarm init/update."""
    try:
        parse_cluster_settings(labels)
    except ValueError as e:
        raise InvalidArgument(f"label {e}") from None


def check_reservation_fits(spec: ServiceSpec, nodes: list[Node], cluster: Cluster | None) -> None:
    """Refuse a CPU/memory reservation larger than the biggest node offers (x overcommit).

    Only the nodes in the store are known: with none, anything goes (nodes may join later).
    """
    res = spec.TaskTemplate.Resources
    r = res.Reservations if res is not None else None
    if r is None or not nodes:
        return
    settings = ClusterSettings.of_cluster(cluster)
    max_cpu = max(n.Description.Resources.NanoCPUs for n in nodes) * settings.cpu_overcommit
    max_mem = max(n.Description.Resources.MemoryBytes for n in nodes) * settings.memory_overcommit
    if r.NanoCPUs and r.NanoCPUs > max_cpu:
        raise InvalidArgument(
            f"no node can satisfy the reservation: {r.NanoCPUs / 1e9:g} CPUs requested, "
            f"the largest node offers {max_cpu / 1e9:g} (overcommit {settings.cpu_overcommit:g})"
        )
    if r.MemoryBytes and r.MemoryBytes > max_mem:
        raise InvalidArgument(
            f"no node can satisfy the reservation: {r.MemoryBytes} bytes of memory requested, "
            f"the largest node offers {int(max_mem)} (overcommit {settings.memory_overcommit:g})"
        )


def _check_container(cs: ContainerSpec) -> None:
    if not cs.Image:
        raise invalid("ContainerSpec: image reference must be provided")
    if not _IMAGE_RE.match(cs.Image):
        raise invalid(f'ContainerSpec: "{cs.Image}" is not a valid repository/tag')
    seen: set[str] = set()
    for m in cs.Mounts or ():
        if m.Type not in ("bind", "volume", "tmpfs", "npipe", "cluster"):
            raise invalid(f"ContainerSpec: invalid mount type: {m.Type}")
        if not m.Target.startswith("/"):
            raise invalid(f"ContainerSpec: invalid mount target, must be an absolute path: {m.Target}")
        if m.Target in seen:
            raise invalid(f"ContainerSpec: duplicate mount point: {m.Target}")
        if m.Type == "bind" and not m.Source.startswith("/"):
            raise invalid(f"ContainerSpec: invalid bind mount source, must be an absolute path: {m.Source}")
        shared = shared_driver(m.VolumeOptions) if m.Type == "volume" else None
        if shared is not None and "{{" not in m.Source:  # a templated name is checked once expanded, on the node
            try:
                # the server may come from the node's SHOAL_VOLUME_OPTS: only the node knows it is missing
                check_options(shared[0], m.Source, shared[1], need_server=False)
            except VolumeError as e:
                raise invalid(f"ContainerSpec: {e}") from None
        seen.add(m.Target)
    hc = cs.Healthcheck
    if hc is not None:
        for label, value in (("Interval", hc.Interval), ("Timeout", hc.Timeout), ("StartPeriod", hc.StartPeriod)):
            if value and value < _MIN_DURATION:
                raise invalid(f"ContainerSpec: {label} in HealthConfig cannot be less than 1ms")


_IPC_MODES = ("", "host", "private", "shareable", "none")
_CGROUP_RULE = re.compile(r"^[acb] (?:\d+|\*):(?:\d+|\*) [rwm]{1,3}$")
_DNS_KEYS = ("Nameservers", "Search", "Options")


def _check_hosts(cs: ContainerSpec) -> None:
    """Hosts are swarm's "IP name [alias...]" lines (the agent turns them into ExtraHosts)."""
    for line in cs.Hosts or ():
        parts = line.split()
        ok = len(parts) >= 2
        if ok:
            try:
                ipaddress.ip_address(parts[0])
            except ValueError:
                ok = False
        if not ok:
            raise invalid(f'ContainerSpec: invalid Hosts entry "{line}": expected "IP hostname [alias...]"')
    dns = cs.DNSConfig or {}
    for key, value in dns.items():
        if key not in _DNS_KEYS:
            raise invalid(f"ContainerSpec: unknown DNSConfig field {key!r} (Nameservers, Search, Options)")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise invalid(f"ContainerSpec: DNSConfig.{key} must be a list of strings")
    for ns in dns.get("Nameservers") or ():
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            raise invalid(f"ContainerSpec: DNSConfig.Nameservers: {ns!r} is not an IP address") from None
    for u in cs.Ulimits or ():
        if not u.Name:
            raise invalid("ContainerSpec: a ulimit needs a Name")
        if u.Hard != -1 and (u.Soft == -1 or u.Soft > u.Hard):  # -1: unlimited
            raise invalid(f"ContainerSpec: invalid ulimit {u.Name}: soft limit {u.Soft} is above hard limit {u.Hard}")


def _check_host_config(cs: ContainerSpec) -> None:
    """Shoal's ContainerSpec.HostConfig: what a task on any node can be (no other container's
    namespaces: container IDs are one engine's own, and a task may land anywhere)."""
    hc = cs.HostConfig
    if hc is None:
        return
    if hc.PidMode not in ("", "host"):
        raise invalid(f"HostConfig: PidMode {hc.PidMode!r}: a service's task may use \"host\" only (another "
                      "container's namespace is on one node; a task may run on any)")
    if hc.IpcMode not in _IPC_MODES:
        raise invalid(f"HostConfig: IpcMode {hc.IpcMode!r}: one of host, private, shareable, none (another "
                      "container's namespace is on one node; a task may run on any)")
    if hc.UsernsMode not in ("", "host"):
        raise invalid(f"HostConfig: UsernsMode {hc.UsernsMode!r}: only \"host\" is possible")
    for d in hc.Devices or ():
        if not d.PathOnHost.startswith("/"):
            raise invalid(f"HostConfig: device path on the host must be absolute: {d.PathOnHost!r}")
        if d.PathInContainer and not d.PathInContainer.startswith("/"):
            raise invalid(f"HostConfig: device path in the container must be absolute: {d.PathInContainer!r}")
        if d.CgroupPermissions and set(d.CgroupPermissions) - set("rwm"):
            raise invalid(f"HostConfig: device {d.PathOnHost}: invalid permissions {d.CgroupPermissions!r} "
                          "(some of r, w, m)")
    for rule in hc.DeviceCgroupRules or ():
        if not _CGROUP_RULE.match(rule):
            raise invalid(f"HostConfig: invalid device cgroup rule {rule!r} (e.g. \"c 1:3 mr\")")
    for r in hc.DeviceRequests or ():
        if r.Count < -1:
            raise invalid(f"HostConfig: DeviceRequests: invalid Count {r.Count} (-1 means all)")
        if r.Count and r.DeviceIDs:
            raise invalid("HostConfig: DeviceRequests: cannot set both Count and DeviceIDs")
    if hc.BlkioWeight and hc.BlkioWeight < 10:
        raise invalid(f"HostConfig: BlkioWeight {hc.BlkioWeight}: 0 (unset) or 10 to 1000")
    for opt in hc.SecurityOpt or ():
        if not opt or opt != opt.strip():
            raise invalid(f"HostConfig: invalid SecurityOpt {opt!r}")


def _check_task(ts: TaskSpec) -> None:
    _check_resources(ts.Resources)
    _check_generic(ts.Resources)
    _check_preferences(ts)
    if ts.Placement is not None:
        for expr in ts.Placement.Constraints or ():
            check_constraint(expr)
    if ts.PluginSpec is not None or ts.NetworkAttachmentSpec is not None:
        raise invalid("RuntimeSpec: unimplemented runtime in service spec")
    if ts.ContainerSpec is None:
        raise invalid("TaskSpec: missing runtime")
    _check_container(ts.ContainerSpec)
    _check_hosts(ts.ContainerSpec)
    _check_host_config(ts.ContainerSpec)


def _check_update_config(uc: UpdateConfig | None) -> None:
    if uc is None:
        return
    if uc.FailureAction not in ("", "pause", "continue", "rollback"):
        raise InvalidArgument(f"unrecognized update failure action {uc.FailureAction}")
    if uc.Order not in ("", "stop-first", "start-first"):
        raise InvalidArgument(f"unrecognized update order {uc.Order}")
    # The API's decoder already refuses negatives; specs built in Python (stacks, the cron
    # scheduler) are checked here too, with swarmkit's wording.
    if uc.Parallelism < 0:
        raise invalid("TaskSpec: update-parallelism cannot be negative")
    if uc.Delay < 0:
        raise invalid("TaskSpec: update-delay cannot be negative")
    if uc.Monitor < 0:
        raise invalid("TaskSpec: update-monitor cannot be negative")
    if not 0 <= uc.MaxFailureRatio <= 1:
        raise invalid("TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1")


def _check_endpoint(ep: EndpointSpec | None) -> None:
    if ep is None:
        return
    if ep.Mode not in ("", "vip", "dnsrr"):
        raise InvalidArgument(f'invalid resolution mode: "{ep.Mode}"')
    seen: set[tuple[int, str]] = set()
    for p in ep.Ports or ():
        if p.Protocol not in ("tcp", "udp", "sctp"):
            raise invalid(f"EndpointSpec: invalid protocol '{p.Protocol}': must be tcp, udp or sctp")
        if p.PublishMode not in ("ingress", "host"):
            raise invalid(f"EndpointSpec: invalid publish mode '{p.PublishMode}': must be ingress or host")
        if p.TargetPort == 0:
            raise invalid("EndpointSpec: TargetPort must be provided")
        if ep.Mode == "dnsrr" and p.PublishMode == "ingress":
            raise invalid("EndpointSpec: port published with ingress mode can't be used with dnsrr mode")
        if p.PublishedPort == 0:
            continue
        if (p.PublishedPort, p.Protocol) in seen:
            raise invalid("EndpointSpec: duplicate published ports provided")
        seen.add((p.PublishedPort, p.Protocol))


def _normalise_mode(mode: ServiceMode | None) -> ServiceMode:
    if mode is None:
        return ServiceMode(Replicated=ReplicatedService(Replicas=1))
    count = sum(m is not None for m in (mode.Replicated, mode.Global, mode.ReplicatedJob, mode.GlobalJob))
    if count > 1:
        raise InvalidArgument("must specify only one service mode")
    if count == 0:
        return ServiceMode(Replicated=ReplicatedService(Replicas=1))
    if mode.Replicated is not None and mode.Replicated.Replicas is None:
        return ServiceMode(Replicated=ReplicatedService(Replicas=1))
    if mode.ReplicatedJob is not None:
        return _normalise_replicated_job(mode)
    return mode


def _normalise_replicated_job(mode: ServiceMode) -> ServiceMode:
    """Moby's defaults made explicit (the docker CLI dereferences both fields in ``service ls``):
    MaxConcurrent 1 when absent, TotalCompletions equal to MaxConcurrent when absent."""
    job = mode.ReplicatedJob
    assert job is not None
    concurrent = 1 if job.MaxConcurrent is None else job.MaxConcurrent
    total = concurrent if job.TotalCompletions is None else job.TotalCompletions
    if concurrent == job.MaxConcurrent and total == job.TotalCompletions:
        return mode
    return ServiceMode(ReplicatedJob=ReplicatedJob(MaxConcurrent=concurrent, TotalCompletions=total))


def _check_job(spec: ServiceSpec) -> None:
    """Jobs run to completion instead of being rolled: swarmkit refuses an update config on them."""
    if mode_kind(spec).endswith("-job") and spec.UpdateConfig is not None:
        raise InvalidArgument("Jobs may not have an update config")


def validate_service_spec(spec: ServiceSpec) -> ServiceSpec:
    """Check a spec as swarmkit (and moby's conversion) would; return it with ``Mode`` made explicit."""
    _check_name(spec.Name)
    _check_task(spec.TaskTemplate)
    _check_update_config(spec.UpdateConfig)
    _check_update_config(spec.RollbackConfig)
    _check_endpoint(spec.EndpointSpec)
    check_scheduling_labels(spec)
    check_health_labels(spec)
    check_routing_labels(spec)  # aliyun.lb.port_* / aliyun.routing.* (controlapi/lbroute.py)
    mode = _normalise_mode(spec.Mode)
    _check_job(msgspec.structs.replace(spec, Mode=mode))
    check_update_strategy(spec, mode)  # shoal.update-strategy (controlapi/extensions.py)
    check_schedule_labels(msgspec.structs.replace(spec, Mode=mode))  # shoal.schedule* (controlapi/extensions.py)
    check_autoscale_labels(spec, mode)  # shoal.autoscale.*, aliyun.auto_scaling.* (controlapi/extensions.py)
    check_log_store_labels(spec)  # aliyun.log_store_*
    return spec if mode is spec.Mode else msgspec.structs.replace(spec, Mode=mode)
