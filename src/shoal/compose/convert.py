"""Mapping a loaded :class:`Project` to swarm ServiceSpecs, as ``docker stack deploy`` does.

Covered: image, command/entrypoint, environment + env_file, labels (+ ``com.docker.stack.namespace``),
deploy (mode, replicas, placement, resources, restart/update/rollback config, endpoint_mode), the v2
keys (scale, mem_limit, mem_reservation, cpus, restart), ports, healthcheck, hostname, user,
working_dir, stop_signal, stop_grace_period, and through :mod:`.stack` the service's networks,
mounts, secrets and configs, and through :mod:`.hostcfg` the engine keys (privileged, devices, caps,
sysctls, dns, logging ...). A key a cluster cannot honour is an error naming file, line and key; a
few (build, container_name, expose) are warnings in ``project.warnings``, as with docker stack deploy
(docs/compose.md). :func:`to_stack` adds the stack's networks, secrets, configs and start order.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import msgspec
import yaml

from .. import models as m
from ..extensions import UPDATE_STRATEGY_LABEL
from . import aliyun as compose_aliyun
from . import autoscale as compose_autoscale
from . import health as compose_health
from . import hostcfg, rancher
from . import lbroute as compose_lbroute
from . import schedule as compose_schedule
from .errors import ComposeError
from .loader import Project, env_values
from .merge import to_mapping
from .stack import (
    NAMESPACE_LABEL,
    StackResources,
    attachments,
    file_refs,
    mounts,
    networks,
    secrets_and_configs,
    start_order,
)
from .units import duration, size

__all__ = ["NAMESPACE_LABEL", "StackResources", "duration", "parse_port", "size", "to_service_specs", "to_stack"]

def _nano_cpus(value: Any) -> int:
    return round(float(value) * 1e9)


def _split(value: Any) -> list[str] | None:
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def parse_port(spec: Any) -> list[m.PortConfig]:
    """Short (``[ip:][pub[-pub]:]target[-target][/proto]``) or long port syntax → PortConfigs."""
    if isinstance(spec, dict):
        return [m.PortConfig(TargetPort=int(spec["target"]), PublishedPort=int(spec.get("published") or 0),
                             Protocol=spec.get("protocol", "tcp"), PublishMode=spec.get("mode", "ingress"))]
    text, _, proto = str(spec).partition("/")
    parts = text.rsplit(":", 2)
    target = parts[-1]
    published = parts[-2] if len(parts) >= 2 else ""
    t0, _, t1 = target.partition("-")
    targets = list(range(int(t0), int(t1 or t0) + 1))
    if published:
        p0, _, p1 = published.partition("-")
        pubs = list(range(int(p0), int(p1 or p0) + 1))
        if len(pubs) != len(targets):
            raise ValueError(f"port ranges do not match: {spec!r}")
    else:
        pubs = [0] * len(targets)
    pairs = zip(targets, pubs, strict=True)
    return [m.PortConfig(TargetPort=t, PublishedPort=p, Protocol=proto or "tcp") for t, p in pairs]


def _update(cfg: dict[str, Any] | None) -> m.UpdateConfig | None:
    if cfg is None:
        return None
    return m.UpdateConfig(
        Parallelism=int(cfg.get("parallelism", 1)),
        Delay=duration(cfg.get("delay", 0)),
        FailureAction=cfg.get("failure_action", ""),
        Monitor=duration(cfg.get("monitor", 0)),
        MaxFailureRatio=float(cfg.get("max_failure_ratio", 0)),
        Order=cfg.get("order", ""),
    )


def _restart(svc: dict[str, Any]) -> m.RestartPolicy | None:
    rp = (svc.get("deploy") or {}).get("restart_policy")
    if rp is not None:
        return m.RestartPolicy(
            Condition=m.RestartCondition(rp.get("condition", "any")),
            Delay=duration(rp["delay"]) if "delay" in rp else None,
            MaxAttempts=int(rp["max_attempts"]) if "max_attempts" in rp else None,
            Window=duration(rp["window"]) if "window" in rp else None,
        )
    restart = svc.get("restart")  # v2: the engine's restart policy, translated as docker stack does
    if restart is None:
        return None
    name, _, count = str(restart).partition(":")
    cond = {"no": "none", "always": "any", "unless-stopped": "any", "on-failure": "on-failure"}.get(name, "any")
    return m.RestartPolicy(Condition=m.RestartCondition(cond), MaxAttempts=int(count) if count else None)


def _generic_resources(resv: dict[str, Any], svc: dict[str, Any]) -> list[m.GenericResource]:
    """Compose's ``generic_resources`` reservations, and Aliyun's ``aliyun.gpu: N`` label (the GPU
    count its scheduler honoured) as a discrete ``gpu`` resource."""
    out = []
    for g in resv.get("generic_resources") or []:
        spec = g.get("discrete_resource_spec") or {}
        if spec.get("kind"):
            discrete = {"Kind": spec["kind"], "Value": int(spec.get("value", 0))}
            out.append(m.GenericResource(DiscreteResourceSpec=discrete))
    labels = svc.get("labels") or {}
    if isinstance(labels, list):
        labels = dict(str(item).partition("=")[::2] for item in labels)
    gpu = str(labels.get("aliyun.gpu", "")).strip()
    if gpu.isdigit() and int(gpu) > 0 and not any(g.DiscreteResourceSpec["Kind"] == "gpu" for g in out):
        out.append(m.GenericResource(DiscreteResourceSpec={"Kind": "gpu", "Value": int(gpu)}))
    return out


def _cpu_shares(project: Project, name: str, svc: dict[str, Any]) -> int:
    """NanoCPUs to reserve for v2's ``cpu_shares``.

    Swarm services have no CPU weight, and a weight only means something relative to the other
    containers on the same host, which a cluster does not fix. The closest honest mapping is the
    convention Kubernetes uses in the other direction (a request of 1 CPU becomes cpu.shares 1024):
    ``cpu_shares / 1024`` CPUs reserved, so the scheduler gives heavier services proportionally more
    room. An explicit ``deploy.resources.reservations.cpus`` wins. A note says what was done.
    """
    shares = svc.get("cpu_shares")
    if shares is None:
        return 0
    nanos = max(round(int(shares) * 1e9 / 1024), 1_000_000)  # at least the API's minimum, 0.001 CPU
    project.warnings.append(f"{project.where(('services', name, 'cpu_shares'))}: {name}: cpu_shares {shares} "
                            f"also becomes a reservation of {nanos / 1e9:g} CPUs (1024 shares = 1 CPU)")
    return nanos


def _resources(project: Project, name: str, svc: dict[str, Any]) -> m.ResourceRequirements | None:
    res = (svc.get("deploy") or {}).get("resources") or {}
    lim, resv = res.get("limits") or {}, res.get("reservations") or {}
    shares = _cpu_shares(project, name, svc)
    limits = m.ResourceLimits(
        NanoCPUs=_nano_cpus(lim.get("cpus", svc.get("cpus", 0))),
        MemoryBytes=size(lim.get("memory", svc.get("mem_limit", 0))),
        Pids=max(int(lim.get("pids", svc.get("pids_limit", 0))), 0),  # -1: unlimited, as unset
    )
    reservations = m.ResourceReservations(
        NanoCPUs=_nano_cpus(resv["cpus"]) if "cpus" in resv else shares,
        MemoryBytes=size(resv.get("memory", svc.get("mem_reservation", 0))),
        GenericResources=_generic_resources(resv, svc) or None,
    )
    if limits == m.ResourceLimits() and reservations == m.ResourceReservations():
        return None
    return m.ResourceRequirements(Limits=limits if limits != m.ResourceLimits() else None,
                                  Reservations=reservations if reservations != m.ResourceReservations() else None)


def _healthcheck(hc: dict[str, Any] | None) -> m.HealthConfig | None:
    if hc is None:
        return None
    if hc.get("disable"):
        return m.HealthConfig(Test=["NONE"])
    test = hc.get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    return m.HealthConfig(
        Test=test,
        Interval=duration(hc.get("interval", 0)),
        Timeout=duration(hc.get("timeout", 0)),
        Retries=int(hc.get("retries", 0)),
        StartPeriod=duration(hc.get("start_period", 0)),
    )


def environment(project: Project, svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment: its ``env_file``s in order, then ``environment``; a bare ``KEY``
    takes the value from the shell or ``.env``, or is left out when neither sets it."""
    values: dict[str, str] = {}
    for ef in svc.get("env_file") or []:
        path = Path(ef["path"] if isinstance(ef, dict) else ef)
        if not path.is_file():
            if isinstance(ef, dict) and ef.get("required") is False:
                continue
            raise ComposeError(f"env_file {path} not found")
        values.update({k: v or "" for k, v in env_values(path, "env_file").items()})
    for k, v in to_mapping(svc.get("environment")).items():
        if v is None:
            if k in project.env:
                values[k] = project.env[k]
            continue
        values[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return values


def _service(project: Project, name: str, svc: dict[str, Any], stack: str) -> m.ServiceSpec:
    where = ("services", name)
    deploy = svc.get("deploy") or {}
    if "build" in svc and not svc.get("image"):
        raise project.error("build is not supported in a cluster and no image is set: build and push it first",
                            (*where, "build"))
    if "build" in svc:
        project.warnings.append(f"{project.where((*where, 'build'))}: {name}: build is ignored, using image")
    aliyun = compose_aliyun.settings(project, name, svc)  # aliyun.scale/global/rolling_updates/probe.*
    mode_name = "global" if aliyun.global_mode else deploy.get("mode", "replicated")
    if rancher.is_global(svc.get("labels"), deploy):  # io.rancher.scheduler.global: one task per host
        mode_name = "global"
    replicas = aliyun.replicas if aliyun.replicas is not None else deploy.get("replicas", svc.get("scale"))
    if "container_name" in svc:
        why = f"with {replicas} replicas " if mode_name != "global" and (replicas or 1) > 1 else ""
        project.warnings.append(f"{project.where((*where, 'container_name'))}: {name}: container_name is ignored "
                                f"{why}(task containers are named <service>.<slot>.<task id>)")
    if "links" in svc:
        project.warnings.append(f"{project.where((*where, 'links'))}: {name}: links are ignored; services reach "
                                "each other by name on the stack's networks")
    if "dockerfile" in svc:  # v1's build file: like build, nothing to build in a cluster
        project.warnings.append(f"{project.where((*where, 'dockerfile'))}: {name}: dockerfile is ignored, "
                                "using image")
    if "expose" in svc:
        project.warnings.append(f"{project.where((*where, 'expose'))}: {name}: expose is ignored: services on "
                                "one network reach each other on every port")
    if "net" in svc and "network_mode" not in svc:  # v1's spelling of network_mode
        svc = {**svc, "network_mode": svc["net"]}

    ns = {NAMESPACE_LABEL: stack}
    labels = {k: "" if v is None else str(v) for k, v in to_mapping(svc.get("labels")).items()}
    # Rancher's labels on every container of a stack: what a rancher-compose file's affinity rules
    # (container_label_ne: io.rancher.stack_service.name=${stack_name}/${service_name}) look for.
    labels.update(rancher.task_labels(stack, name))
    deploy_labels = {k: "" if v is None else str(v) for k, v in to_mapping(deploy.get("labels")).items()}
    deploy_labels.update(compose_health.labels(svc))  # Rancher's health_check / x-shoal-healthcheck
    deploy_labels.update(aliyun.health_labels)  # aliyun.probe.url: the same agent-run check
    if "x-shoal-update-strategy" in svc:  # rolling | blue-green (shoal/extensions.py); checked by the manager
        deploy_labels[UPDATE_STRATEGY_LABEL] = str(svc["x-shoal-update-strategy"])
    placement_cfg = deploy.get("placement") or {}
    placement = None
    if placement_cfg:
        prefs = [m.PlacementPreference(Spread={"SpreadDescriptor": p["spread"]})
                 for p in placement_cfg.get("preferences") or [] if "spread" in p]
        placement = m.Placement(Constraints=placement_cfg.get("constraints") or None, Preferences=prefs or None,
                                MaxReplicas=int(placement_cfg.get("max_replicas_per_node", 0)))
    platforms = hostcfg.platforms(svc)
    if platforms:
        placement = m.Placement(Platforms=platforms) if placement is None else msgspec.structs.replace(
            placement, Platforms=platforms)
    ports = [pc for p in svc.get("ports") or [] for pc in parse_port(p)]
    # aliyun.lb.port_* / aliyun.routing.*: the manager's load balancers read the service's labels
    deploy_labels.update(compose_lbroute.service_labels(project, name, labels, deploy_labels, ports))
    container = m.ContainerSpec(
        Image=svc.get("image", ""),
        Labels={**labels, **ns},
        Command=_split(svc.get("entrypoint")),
        Args=_split(svc.get("command")),
        Hostname=svc.get("hostname", ""),
        Env=[f"{k}={v}" for k, v in environment(project, svc).items()] or None,
        Dir=svc.get("working_dir", ""),
        User=str(svc.get("user", "")),
        StopSignal=svc.get("stop_signal", ""),
        StopGracePeriod=duration(svc["stop_grace_period"]) if "stop_grace_period" in svc else None,
        Healthcheck=aliyun.healthcheck or _healthcheck(svc.get("healthcheck")),
        ReadOnly=bool(svc.get("read_only", False)),
        TTY=bool(svc.get("tty", False)),
        OpenStdin=bool(svc.get("stdin_open", False)),
        Init=svc.get("init"),
        Mounts=mounts(project, name, svc, stack) or None,
        Secrets=[m.SecretReference(SecretName=r["name"], File=r["File"])
                 for r in file_refs(project, name, svc, stack, "secrets")] or None,
        Configs=[m.ConfigReference(ConfigName=r["name"], File=r["File"])
                 for r in file_refs(project, name, svc, stack, "configs")] or None,
        **hostcfg.container_fields(project, name, svc),
    )
    if mode_name == "global":
        mode = m.ServiceMode(Global=m.GlobalService())
    else:
        mode = m.ServiceMode(Replicated=m.ReplicatedService(Replicas=int(replicas) if replicas is not None else 1))
    mode, schedule_labels = compose_schedule.apply(project, name, svc, mode)  # x-shoal-schedule: a job
    deploy_labels.update(schedule_labels)
    deploy_labels.update(compose_autoscale.labels(project, name, svc))  # x-shoal-autoscale, aliyun.auto_scaling.*
    endpoint = None
    if ports or deploy.get("endpoint_mode"):
        endpoint = m.EndpointSpec(Mode=deploy.get("endpoint_mode", ""), Ports=ports or None)
    return m.ServiceSpec(
        Name=f"{stack}_{name}",
        Labels={**deploy_labels, **ns},
        TaskTemplate=m.TaskSpec(ContainerSpec=container, Resources=_resources(project, name, svc),
                                RestartPolicy=_restart(svc), Placement=placement,
                                LogDriver=hostcfg.log_driver(project, name, svc),
                                Networks=attachments(project, name, svc, stack)),
        Mode=mode,
        UpdateConfig=aliyun.update or _update(deploy.get("update_config")),
        RollbackConfig=_update(deploy.get("rollback_config")),
        EndpointSpec=endpoint,
    )


def to_stack(project: Project, stack_name: str) -> StackResources:
    """Everything deploying ``project`` as stack ``stack_name`` creates: services, networks,
    secrets, configs, and the order to create services in. Bad input raises a ComposeError naming
    file and line; what a cluster cannot honour is a warning in ``project.warnings``."""
    res = StackResources(warnings=project.warnings)
    networks(project, stack_name, res)
    secrets_and_configs(project, stack_name, res)
    for name, svc in project.services.items():
        try:
            spec = _service(project, name, svc, stack_name)
        except ValueError as e:
            raise project.error(str(e), ("services", name)) from None
        res.services[name] = spec
    start_order(project, res)
    return res


def to_service_specs(project: Project, stack_name: str) -> dict[str, m.ServiceSpec]:
    """One ServiceSpec per active service, keyed by the Compose service name."""
    return to_stack(project, stack_name).services


def to_stack_spec(project: Project, stack_name: str) -> tuple[m.StackSpec, list[str]]:
    """What ``/shoal/stacks`` takes for ``project``: the objects (:func:`to_stack`) and the
    normalised file, plus the warnings (once each). ``shoal stack deploy`` and the web console's
    deploy (the manager converts a pasted file itself) both build it here."""
    from .normalise import normalised  # normalise.py imports this module

    res = to_stack(project, stack_name)
    text = yaml.safe_dump(normalised(project), sort_keys=False, default_flow_style=False)
    resources = m.StackResources(
        Services=res.services or None,
        Networks=res.networks or None,
        Secrets=res.secrets or None,
        Configs=res.configs or None,
        ExternalNetworks=res.external_networks or None,
        ExternalSecrets=res.external_secrets or None,
        ExternalConfigs=res.external_configs or None,
        Order=res.order or None,
        WaitFor=res.wait_for or None,
    )
    warnings = list(dict.fromkeys([*project.warnings, *res.warnings]))  # the same list today; never twice
    return m.StackSpec(Name=stack_name, Compose=text, Resources=resources), warnings
