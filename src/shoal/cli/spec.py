"""Building and changing a ServiceSpec from command-line flags, the way the docker CLI does.

`build_spec` mirrors docker/cli's `serviceOptions.ToService`: positional COMMAND ARGS go to
ContainerSpec.Args (only --entrypoint sets Command); Placement, Resources, Mode and EndpointSpec are
always sent (empty when no flag is given), while RestartPolicy, UpdateConfig and RollbackConfig are
sent only when one of their flags is, then filled with swarmkit's defaults for the rest. Sending the
same shape as the docker CLI keeps both clients on the same daemon code paths.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, fields

import msgspec

from shoal.cli.parse import kv_map, merge_env, normalize_image
from shoal.models import (
    ConfigReference,
    ContainerSpec,
    Driver,
    EndpointSpec,
    GenericResource,
    GlobalJob,
    GlobalService,
    HealthConfig,
    Mount,
    NetworkAttachmentConfig,
    Placement,
    PlacementPreference,
    PortConfig,
    ReplicatedJob,
    ReplicatedService,
    ResourceLimits,
    ResourceRequirements,
    ResourceReservations,
    RestartCondition,
    RestartPolicy,
    SecretReference,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
    UpdateConfig,
)

MODES = ("replicated", "global", "replicated-job", "global-job")


@dataclass
class UpdatePolicy:
    """--update-* or --rollback-* flags; None means "flag not given"."""

    parallelism: int | None = None
    delay: int | None = None
    monitor: int | None = None
    failure_action: str | None = None
    max_failure_ratio: float | None = None
    order: str | None = None

    def given(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


@dataclass
class ServiceOptions:
    """Flags shared by `service create` and `service update`. None (or empty) means "not given"."""

    image: str | None = None
    args: list[str] | None = None
    entrypoint: str | None = None
    name: str = ""
    mode: str = "replicated"
    replicas: int | None = None
    max_concurrent: int | None = None
    publish: list[PortConfig] = field(default_factory=list)
    endpoint_mode: str | None = None
    env: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    container_labels: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    placement_prefs: list[PlacementPreference] = field(default_factory=list)
    max_replicas: int | None = None
    networks: list[NetworkAttachmentConfig] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    limit_cpu: int | None = None
    limit_memory: int | None = None
    limit_pids: int | None = None
    reserve_cpu: int | None = None
    reserve_memory: int | None = None
    generic_resources: list[tuple[str, int]] = field(default_factory=list)
    restart_condition: str | None = None
    restart_delay: int | None = None
    restart_max_attempts: int | None = None
    restart_window: int | None = None
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    rollback: UpdatePolicy = field(default_factory=UpdatePolicy)
    workdir: str | None = None
    user: str | None = None
    groups: list[str] = field(default_factory=list)
    hostname: str | None = None
    hosts: list[str] = field(default_factory=list)
    stop_grace_period: int | None = None
    stop_signal: str | None = None
    tty: bool | None = None
    read_only: bool | None = None
    init: bool | None = None
    health_cmd: str | None = None
    health_interval: int | None = None
    health_timeout: int | None = None
    health_retries: int | None = None
    health_start_period: int | None = None
    no_healthcheck: bool = False
    log_driver: str | None = None
    log_opts: list[str] = field(default_factory=list)
    secrets: list[SecretReference] = field(default_factory=list)
    configs: list[ConfigReference] = field(default_factory=list)


class SpecError(ValueError):
    """Flags that parse one by one but do not make a spec together (e.g. --replicas with global)."""


# swarmkit's defaults, which the docker CLI fills in when only some of a policy's flags are given.
DEFAULT_RESTART_DELAY = 5_000_000_000
DEFAULT_UPDATE_MONITOR = 5_000_000_000


def default_restart_policy() -> RestartPolicy:
    return RestartPolicy(Condition=RestartCondition.ANY, Delay=DEFAULT_RESTART_DELAY, MaxAttempts=0)


def default_update_config() -> UpdateConfig:
    return UpdateConfig(
        Parallelism=1, Delay=0, Monitor=DEFAULT_UPDATE_MONITOR, FailureAction="pause",
        MaxFailureRatio=0.0, Order="stop-first",
    )


def _apply_policy(cfg: UpdateConfig, p: UpdatePolicy) -> UpdateConfig:
    if p.parallelism is not None:
        cfg.Parallelism = p.parallelism
    if p.delay is not None:
        cfg.Delay = p.delay
    if p.monitor is not None:
        cfg.Monitor = p.monitor
    if p.failure_action is not None:
        cfg.FailureAction = p.failure_action
    if p.max_failure_ratio is not None:
        cfg.MaxFailureRatio = p.max_failure_ratio
    if p.order is not None:
        cfg.Order = p.order
    return cfg


def _restart_given(o: ServiceOptions) -> bool:
    return any(
        v is not None
        for v in (o.restart_condition, o.restart_delay, o.restart_max_attempts, o.restart_window)
    )


def _apply_restart(rp: RestartPolicy, o: ServiceOptions) -> RestartPolicy:
    if o.restart_condition is not None:
        rp.Condition = RestartCondition(o.restart_condition)
    if o.restart_delay is not None:
        rp.Delay = o.restart_delay
    if o.restart_max_attempts is not None:
        rp.MaxAttempts = o.restart_max_attempts
    if o.restart_window is not None:
        rp.Window = o.restart_window
    return rp


def _health(o: ServiceOptions) -> HealthConfig | None:
    have = any(
        v is not None
        for v in (o.health_cmd, o.health_interval, o.health_timeout, o.health_retries, o.health_start_period)
    )
    if o.no_healthcheck:
        if have:
            raise SpecError("--no-healthcheck conflicts with --health-* options")
        return HealthConfig(Test=["NONE"])
    if not have:
        return None
    return HealthConfig(
        Test=["CMD-SHELL", o.health_cmd] if o.health_cmd else None,
        Interval=o.health_interval or 0,
        Timeout=o.health_timeout or 0,
        Retries=o.health_retries or 0,
        StartPeriod=o.health_start_period or 0,
    )


def service_mode(o: ServiceOptions) -> ServiceMode:
    if o.mode == "replicated":
        return ServiceMode(Replicated=ReplicatedService(Replicas=o.replicas))
    if o.mode == "global":
        if o.replicas is not None:
            raise SpecError("replicas can only be used with replicated or replicated-job mode")
        return ServiceMode(Global=GlobalService())
    if o.mode == "replicated-job":
        concurrent = o.max_concurrent if o.max_concurrent is not None else o.replicas
        return ServiceMode(ReplicatedJob=ReplicatedJob(MaxConcurrent=concurrent, TotalCompletions=o.replicas))
    if o.mode == "global-job":
        if o.replicas is not None:
            raise SpecError("replicas can only be used with replicated or replicated-job mode")
        return ServiceMode(GlobalJob=GlobalJob())
    raise SpecError(f"Unknown mode: {o.mode}, only replicated and global supported")


def _extra_hosts(hosts: list[str]) -> list[str] | None:
    """``name:ip`` (docker's --host) to swarmkit's "IP name" hosts-file lines."""
    out = []
    for h in hosts:
        name, _, ip = h.partition(":")
        out.append(f"{ip} {name}")
    return out or None


def build_spec(o: ServiceOptions) -> ServiceSpec:
    """The ServiceSpec `docker service create` would send for these flags."""
    if not o.image:
        raise SpecError("an image is required")
    if o.max_concurrent is not None and o.mode != "replicated-job":
        raise SpecError("max-concurrent can only be used with replicated-job mode")
    container = ContainerSpec(
        Image=normalize_image(o.image),
        Labels=kv_map(o.container_labels) or None,
        Command=shlex.split(o.entrypoint) if o.entrypoint else None,
        Args=list(o.args) if o.args else None,
        Hostname=o.hostname or "",
        Env=merge_env(o.env) or None,
        Dir=o.workdir or "",
        User=o.user or "",
        Groups=list(o.groups) or None,
        Init=bool(o.init),
        TTY=bool(o.tty),
        ReadOnly=bool(o.read_only),
        Mounts=list(o.mounts) or None,
        StopSignal=o.stop_signal or "",
        StopGracePeriod=o.stop_grace_period,
        Healthcheck=_health(o),
        Hosts=_extra_hosts(o.hosts),
        DNSConfig={},
        Secrets=list(o.secrets) or None,
        Configs=list(o.configs) or None,
    )
    task = TaskSpec(
        ContainerSpec=container,
        Resources=ResourceRequirements(
            Limits=ResourceLimits(
                NanoCPUs=o.limit_cpu or 0, MemoryBytes=o.limit_memory or 0, Pids=o.limit_pids or 0
            ),
            Reservations=ResourceReservations(
                NanoCPUs=o.reserve_cpu or 0, MemoryBytes=o.reserve_memory or 0,
                GenericResources=[
                    GenericResource(DiscreteResourceSpec={"Kind": kind, "Value": n}) for kind, n in o.generic_resources
                ] or None,
            ),
        ),
        RestartPolicy=_apply_restart(default_restart_policy(), o) if _restart_given(o) else None,
        Placement=Placement(
            Constraints=list(o.constraints) or None,
            Preferences=list(o.placement_prefs) or None,
            MaxReplicas=o.max_replicas or 0,
        ),
        Networks=sorted(o.networks, key=lambda n: n.Target) or None,
        LogDriver=Driver(Name=o.log_driver, Options=kv_map(o.log_opts) or None) if o.log_driver else None,
    )
    return ServiceSpec(
        Name=o.name,
        Labels=kv_map(o.labels),
        TaskTemplate=task,
        Mode=service_mode(o),
        UpdateConfig=_apply_policy(default_update_config(), o.update) if o.update.given() else None,
        RollbackConfig=_apply_policy(default_update_config(), o.rollback) if o.rollback.given() else None,
        EndpointSpec=EndpointSpec(Mode=(o.endpoint_mode or "vip").lower(), Ports=list(o.publish) or None),
    )


def spec_to_json(spec: ServiceSpec) -> dict[str, object]:
    return msgspec.to_builtins(spec)  # type: ignore[no-any-return]


def spec_from_json(data: dict[str, object]) -> ServiceSpec:
    try:
        return msgspec.convert(data, ServiceSpec)
    except msgspec.ValidationError as e:
        raise SpecError(f"the daemon returned a service spec this CLI cannot edit: {e}") from None


# --------------------------------------------------------------------------- service update


@dataclass
class UpdateOptions(ServiceOptions):
    """`service update` flags: the shared ones (replacing values) plus the -add/-rm list edits."""

    env_rm: list[str] = field(default_factory=list)
    label_rm: list[str] = field(default_factory=list)
    container_label_rm: list[str] = field(default_factory=list)
    constraint_rm: list[str] = field(default_factory=list)
    publish_rm: list[tuple[int, str]] = field(default_factory=list)
    mount_rm: list[str] = field(default_factory=list)
    network_rm: list[str] = field(default_factory=list)
    args_str: str | None = None
    force: bool = False


def _mode_for_update(spec: ServiceSpec, replicas: int | None) -> None:
    if replicas is None:
        return
    mode = spec.Mode or ServiceMode(Replicated=ReplicatedService())
    if mode.Replicated is not None:
        mode.Replicated.Replicas = replicas
    elif mode.ReplicatedJob is not None:
        mode.ReplicatedJob.TotalCompletions = replicas
    else:
        raise SpecError("replicas can only be used with replicated or replicated-job mode")
    spec.Mode = mode


def _env_update(current: list[str] | None, add: list[str], rm: list[str]) -> list[str] | None:
    drop = {k.partition("=")[0] for k in rm}
    env = [e for e in current or [] if e.partition("=")[0] not in drop]
    return merge_env([*env, *add]) or None


def _map_update(current: dict[str, str] | None, add: list[str], rm: list[str]) -> dict[str, str] | None:
    out = dict(current or {})
    for k in rm:
        out.pop(k, None)
    out.update(kv_map(add))
    return out or None


def apply_update(spec: ServiceSpec, o: UpdateOptions) -> ServiceSpec:
    """Edit ``spec`` in place (it is the CLI's own decoded copy) as `docker service update` does."""
    task = spec.TaskTemplate
    c = task.ContainerSpec or ContainerSpec()
    task.ContainerSpec = c
    if o.image:
        c.Image = normalize_image(o.image)
    if o.args_str is not None:
        c.Args = shlex.split(o.args_str) or None
    if o.entrypoint is not None:
        c.Command = shlex.split(o.entrypoint) or None
    for attr, value in (("Dir", o.workdir), ("User", o.user), ("Hostname", o.hostname), ("StopSignal", o.stop_signal)):
        if value is not None:
            setattr(c, attr, value)
    if o.stop_grace_period is not None:
        c.StopGracePeriod = o.stop_grace_period
    for attr, value in (("TTY", o.tty), ("ReadOnly", o.read_only), ("Init", o.init)):
        if value is not None:
            setattr(c, attr, value)
    c.Env = _env_update(c.Env, o.env, o.env_rm)
    c.Labels = _map_update(c.Labels, o.container_labels, o.container_label_rm)
    spec.Labels = _map_update(spec.Labels, o.labels, o.label_rm)
    if o.groups:
        c.Groups = sorted({*(c.Groups or []), *o.groups})
    health = _health(o)
    if health is not None:
        c.Healthcheck = health

    if o.mounts or o.mount_rm:
        targets = {m.Target for m in o.mounts} | set(o.mount_rm)
        c.Mounts = [m for m in c.Mounts or [] if m.Target not in targets] + list(o.mounts) or None

    placement = task.Placement or Placement()
    if o.constraints or o.constraint_rm:
        kept = [x for x in placement.Constraints or [] if x not in o.constraint_rm]
        placement.Constraints = kept + [x for x in o.constraints if x not in kept] or None
    if o.placement_prefs:
        placement.Preferences = [*(placement.Preferences or []), *o.placement_prefs]
    if o.max_replicas is not None:
        placement.MaxReplicas = o.max_replicas
    task.Placement = placement

    if any(v is not None for v in (o.limit_cpu, o.limit_memory, o.limit_pids, o.reserve_cpu, o.reserve_memory)):
        res = task.Resources or ResourceRequirements()
        lim = res.Limits or ResourceLimits()
        rsv = res.Reservations or ResourceReservations()
        lim.NanoCPUs = o.limit_cpu if o.limit_cpu is not None else lim.NanoCPUs
        lim.MemoryBytes = o.limit_memory if o.limit_memory is not None else lim.MemoryBytes
        lim.Pids = o.limit_pids if o.limit_pids is not None else lim.Pids
        rsv.NanoCPUs = o.reserve_cpu if o.reserve_cpu is not None else rsv.NanoCPUs
        rsv.MemoryBytes = o.reserve_memory if o.reserve_memory is not None else rsv.MemoryBytes
        res.Limits, res.Reservations = lim, rsv
        task.Resources = res

    if _restart_given(o):
        task.RestartPolicy = _apply_restart(task.RestartPolicy or default_restart_policy(), o)
    if o.update.given():
        spec.UpdateConfig = _apply_policy(spec.UpdateConfig or default_update_config(), o.update)
    if o.rollback.given():
        spec.RollbackConfig = _apply_policy(spec.RollbackConfig or default_update_config(), o.rollback)

    if o.networks or o.network_rm:
        nets = [n for n in task.Networks or spec.Networks or [] if n.Target not in o.network_rm]
        have = {n.Target for n in nets}
        task.Networks = sorted(nets + [n for n in o.networks if n.Target not in have], key=lambda n: n.Target) or None
        spec.Networks = None  # the deprecated service-level field moves to the task template, as docker does

    if o.log_driver:
        task.LogDriver = Driver(Name=o.log_driver, Options=kv_map(o.log_opts) or None)

    endpoint = spec.EndpointSpec or EndpointSpec()
    if o.endpoint_mode is not None:
        endpoint.Mode = o.endpoint_mode.lower()
    if o.publish or o.publish_rm:
        new_keys = {(p.TargetPort, p.Protocol) for p in o.publish}
        kept = [
            p for p in endpoint.Ports or []
            if (p.TargetPort, p.Protocol) not in set(o.publish_rm) and (p.TargetPort, p.Protocol) not in new_keys
        ]
        endpoint.Ports = kept + list(o.publish) or None
    spec.EndpointSpec = endpoint

    _mode_for_update(spec, o.replicas)
    if o.force:
        task.ForceUpdate += 1
    return spec
