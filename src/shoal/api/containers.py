"""Classic Swarm's container API (``/containers/...``) over Shoal services.

Each container is a one-replica service labelled ``shoal.container=true``: create stores it with
zero replicas (Docker's "created"), start scales it to one, stop/kill back to zero. The scheduler
places its task, so classic expressions in ``Env`` (``constraint:node==host-2``) work unchanged.
Only services with the label are containers: ``docker rm`` can never remove an ordinary service.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from aiohttp import web

from shoal import controlapi
from shoal.api import logs
from shoal.api.common import empty_response, json_response, query_bool, swarm_manager
from shoal.controlapi.filters import match_labels, match_prefix
from shoal.controlapi.names import random_name
from shoal.errors import Conflict, InvalidArgument, NotFound
from shoal.models import (
    ContainerSpec,
    Driver,
    EndpointSpec,
    HealthConfig,
    Mount,
    PortConfig,
    ReplicatedService,
    ResourceLimits,
    ResourceRequirements,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskState,
    now_ts,
    parse_ts,
)
from shoal.store import MemoryStore

CONTAINER_LABEL = "shoal.container"
CONTAINER_FILTERS = ("id", "name", "label", "status")
_NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_PRE_RUN = frozenset(
    {TaskState.NEW, TaskState.ALLOCATED, TaskState.PENDING, TaskState.ASSIGNED, TaskState.ACCEPTED,
     TaskState.PREPARING, TaskState.READY, TaskState.STARTING}
)


# --------------------------------------------------------------------------- look-ups


def is_container(svc: Service) -> bool:
    return (svc.Spec.Labels or {}).get(CONTAINER_LABEL) == "true"


def container_services(store: MemoryStore) -> list[Service]:
    return [s for s in store.list("service") if is_container(s)]


def resolve(store: MemoryStore, ref: str) -> Service:
    """A container by service ID, name or unique ID prefix; 404 ``No such container`` otherwise."""
    name = ref.lstrip("/")
    if name:
        svc = store.get("service", name) or store.service_by_name(name)
        if svc is not None and is_container(svc):
            return svc
        matches = [s for s in container_services(store) if s.ID.startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"multiple IDs found with provided prefix: {name}")
    raise NotFound(f"No such container: {ref}")


def replicas(svc: Service) -> int:
    mode = svc.Spec.Mode
    return (mode.Replicated.Replicas or 0) if mode and mode.Replicated else 0


def latest_task(store: MemoryStore, svc: Service) -> Task | None:
    tasks = store.tasks_of_service(svc.ID)
    return max(tasks, key=lambda t: (t.CreatedAt, t.Version.Index)) if tasks else None


# --------------------------------------------------------------------------- create


def _list(value: Any, what: str) -> list[str] | None:
    """Docker accepts a string or a list of strings for Cmd/Entrypoint."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidArgument(f"json: cannot unmarshal {type(value).__name__} into Go struct field Config.{what}")


def _bind_mount(bind: str) -> Mount:
    """``src:dst[:opts]`` (``-v``); a source without ``/`` is a named volume."""
    parts = bind.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume specification: '{bind}'")
    opts = parts[2].split(",") if len(parts) > 2 else []
    kind = "bind" if parts[0].startswith("/") else "volume"
    return Mount(Type=kind, Source=parts[0], Target=parts[1], ReadOnly="ro" in opts)


def _ports(bindings: Any) -> list[PortConfig] | None:
    """``PortBindings`` (``-p``) → host-mode published ports: the container's node binds them."""
    if not bindings:
        return None
    out: list[PortConfig] = []
    for key, hosts in dict(bindings).items():
        port, _, proto = str(key).partition("/")
        try:
            target = int(port)
            for h in hosts or [{}]:
                raw = str((h or {}).get("HostPort") or "0")
                out.append(PortConfig(Protocol=proto or "tcp", TargetPort=target, PublishedPort=int(raw),
                                      PublishMode="host"))
        except ValueError:
            raise InvalidArgument(f"invalid port specification: {key}") from None
    return out


def _restart(policy: Any) -> RestartPolicy:
    """Docker's container restart policy as the swarm one (no policy: never restart)."""
    policy = policy or {}
    name = policy.get("Name") or "no"
    if name in ("always", "unless-stopped"):
        return RestartPolicy(Condition=RestartCondition.ANY)
    if name == "on-failure":
        retries = int(policy.get("MaximumRetryCount") or 0)
        return RestartPolicy(Condition=RestartCondition.ON_FAILURE, MaxAttempts=retries)
    if name == "no":
        return RestartPolicy(Condition=RestartCondition.NONE)
    raise InvalidArgument(f"invalid restart policy '{name}'")


def _hosts(extra: list[str] | None) -> list[str] | None:
    """``--add-host name:ip`` → swarm's ``IP name`` lines."""
    if not extra:
        return None
    out = []
    for entry in extra:
        host, sep, ip = entry.partition(":")
        if not sep or not host or not ip:
            raise InvalidArgument(f"invalid extra host: {entry}")
        out.append(f"{ip} {host}")
    return out


def spec_from_config(name: str, cfg: dict[str, Any]) -> ServiceSpec:
    """Docker's container config JSON → a zero-replica service spec. Unrelated fields are ignored."""
    image = cfg.get("Image")
    if not image or not isinstance(image, str):
        raise InvalidArgument("image reference must be provided")
    host: dict[str, Any] = cfg.get("HostConfig") or {}
    mounts = [_bind_mount(b) for b in host.get("Binds") or ()]
    try:
        mounts += [msgspec.convert(m, Mount) for m in host.get("Mounts") or ()]
        health = msgspec.convert(cfg["Healthcheck"], HealthConfig) if cfg.get("Healthcheck") else None
    except msgspec.ValidationError as e:
        raise InvalidArgument(str(e)) from None
    stop_timeout = cfg.get("StopTimeout")
    cs = ContainerSpec(
        Image=image,
        Labels=cfg.get("Labels") or None,
        Command=_list(cfg.get("Entrypoint"), "Entrypoint"),
        Args=_list(cfg.get("Cmd"), "Cmd"),
        Hostname=cfg.get("Hostname") or "",
        Env=cfg.get("Env") or None,  # kept verbatim: the scheduler reads constraint:/affinity: here
        Dir=cfg.get("WorkingDir") or "",
        User=cfg.get("User") or "",
        Init=host.get("Init"),
        TTY=bool(cfg.get("Tty")),
        OpenStdin=bool(cfg.get("OpenStdin")),
        ReadOnly=bool(host.get("ReadonlyRootfs")),
        Mounts=mounts or None,
        StopSignal=cfg.get("StopSignal") or "",
        StopGracePeriod=int(stop_timeout) * 1_000_000_000 if isinstance(stop_timeout, int) else None,
        Healthcheck=health,
        Hosts=_hosts(host.get("ExtraHosts")),
        CapabilityAdd=host.get("CapAdd") or None,
        CapabilityDrop=host.get("CapDrop") or None,
    )
    limits = ResourceLimits(
        NanoCPUs=int(host.get("NanoCpus") or 0),
        MemoryBytes=int(host.get("Memory") or 0),
        Pids=max(int(host.get("PidsLimit") or 0), 0),
    )
    log_cfg = host.get("LogConfig") or {}
    ports = _ports(host.get("PortBindings"))
    return ServiceSpec(
        Name=name,
        Labels={CONTAINER_LABEL: "true"},
        TaskTemplate=TaskSpec(
            ContainerSpec=cs,
            Resources=ResourceRequirements(Limits=limits) if limits != ResourceLimits() else None,
            RestartPolicy=_restart(host.get("RestartPolicy")),
            LogDriver=Driver(Name=log_cfg["Type"], Options=log_cfg.get("Config") or None)
            if log_cfg.get("Type") else None,
        ),
        Mode=ServiceMode(Replicated=ReplicatedService(Replicas=0)),
        EndpointSpec=EndpointSpec(Mode="vip", Ports=ports) if ports else None,
    )


async def create(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    store = manager.store
    name = request.query.get("name", "").lstrip("/")
    if name and not _NAME_RE.match(name):
        raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    try:
        cfg = json.loads(await request.read() or b"null")
    except ValueError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise InvalidArgument("Config cannot be empty in order to create a container")
    if name:
        other = store.service_by_name(name)
        if other is not None:
            raise Conflict(
                f'Conflict. The container name "/{name}" is already in use by container "{other.ID}". '
                "You have to remove (or rename) that container to be able to reuse that name."
            )
    else:
        name = random_name()
        while store.service_by_name(name) is not None:
            name = random_name()
    svc = controlapi.create_service(store, spec_from_config(name, cfg))
    return json_response({"Id": svc.ID, "Warnings": []}, status=201)


# --------------------------------------------------------------------------- start / stop


def _scale(store: MemoryStore, svc: Service, n: int, force: bool = False) -> None:
    tmpl = svc.Spec.TaskTemplate
    if force:  # a new task for a slot whose task already ended (start of an exited container)
        tmpl = msgspec.structs.replace(tmpl, ForceUpdate=tmpl.ForceUpdate + 1)
    spec = msgspec.structs.replace(
        svc.Spec, Mode=ServiceMode(Replicated=ReplicatedService(Replicas=n)), TaskTemplate=tmpl
    )
    controlapi.update_service(store, svc.ID, svc.Version.Index, spec)


async def start(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    svc = resolve(manager.store, request.match_info["id"])
    if replicas(svc) == 0:
        _scale(manager.store, svc, 1)
        return empty_response(204)
    task = latest_task(manager.store, svc)
    if task is not None and task.Status.State.terminal and task.DesiredState <= TaskState.RUNNING:
        _scale(manager.store, svc, 1, force=True)
        return empty_response(204)
    return empty_response(304)


async def stop(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    svc = resolve(manager.store, request.match_info["id"])
    if replicas(svc) == 0:
        return empty_response(304)
    _scale(manager.store, svc, 0)
    return empty_response(204)


async def kill(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    svc = resolve(manager.store, request.match_info["id"])
    if replicas(svc) == 0:
        raise Conflict(f"Cannot kill container: {request.match_info['id']}: Container {svc.ID} is not running")
    _scale(manager.store, svc, 0)
    return empty_response(204)


# --------------------------------------------------------------------------- views


def _ago(ts: str) -> str:
    """Docker's HumanDuration, coarse: "3 seconds", "About a minute", "2 hours"."""
    try:
        secs = max(now_ts_seconds() - parse_ts(ts), 0.0)
    except ValueError:
        return "Less than a second"
    if secs < 1:
        return "Less than a second"
    if secs < 60:
        return f"{int(secs)} seconds"
    minutes = int(secs // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(secs / 3600)
    return "About an hour" if hours == 1 else f"{hours} hours"


def now_ts_seconds() -> float:
    return parse_ts(now_ts())


def _exit_code(task: Task | None) -> int:
    cs = task.Status.ContainerStatus if task is not None else None
    return cs.ExitCode if cs is not None else 0


def container_state(store: MemoryStore, svc: Service) -> tuple[str, str, Task | None]:
    """(Docker state, ps status text, the task it comes from)."""
    task = latest_task(store, svc)
    if task is None:
        if svc.PreviousSpec is None:
            return "created", "Created", None
        return "exited", f"Exited (0) {_ago(svc.UpdatedAt)} ago", None  # its task was already reaped
    st = task.Status.State
    if st is TaskState.RUNNING:
        return "running", f"Up {_ago(task.Status.Timestamp)}", task
    if st in _PRE_RUN:
        if task.Status.Err:
            return "created", f"Created ({task.Status.Err})", task
        return "created", "Created", task
    return "exited", f"Exited ({_exit_code(task)}) {_ago(task.Status.Timestamp)} ago", task


def _node(store: MemoryStore, task: Task | None) -> dict[str, str] | None:
    node = store.get("node", task.NodeID) if task is not None and task.NodeID else None
    if node is None:
        return None
    return {"ID": node.ID, "Name": node.Description.Hostname, "Addr": node.Status.Addr}


def _command(cs: ContainerSpec) -> str:
    return " ".join([*(cs.Command or ()), *(cs.Args or ())])


def _created(ts: str) -> int:
    try:
        return int(parse_ts(ts))
    except ValueError:
        return 0


def summary(store: MemoryStore, svc: Service) -> dict[str, Any]:
    cs = svc.Spec.TaskTemplate.ContainerSpec or ContainerSpec()
    state, status, task = container_state(store, svc)
    node = _node(store, task)
    name = f"/{node['Name']}/{svc.Spec.Name}" if node else f"/{svc.Spec.Name}"
    endpoint = svc.Spec.EndpointSpec
    ports = [
        {"PrivatePort": p.TargetPort, "PublicPort": p.PublishedPort, "Type": p.Protocol,
         **({"IP": node["Addr"]} if node else {})}
        for p in ((endpoint.Ports if endpoint else None) or ())
    ]
    return {
        "Id": svc.ID,
        "Names": [name],
        "Image": cs.Image,
        "Command": _command(cs),
        "Created": _created(svc.CreatedAt),
        "State": state,
        "Status": status,
        "Labels": cs.Labels or {},
        "Ports": ports,
    }


async def list_containers(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    filters = controlapi.parse_filters(request.query.get("filters"), CONTAINER_FILTERS)
    everything = query_bool(request, "all")
    out = []
    for svc in sorted(container_services(manager.store), key=lambda s: s.CreatedAt, reverse=True):
        item = summary(manager.store, svc)
        if filters.get("id") and not match_prefix(svc.ID, filters["id"]):
            continue
        if filters.get("name") and not any(n in svc.Spec.Name for n in filters["name"]):
            continue
        if filters.get("label") and not match_labels(item["Labels"], filters["label"]):
            continue
        if filters.get("status"):
            if item["State"] not in filters["status"]:
                continue
        elif not everything and item["State"] != "running":
            continue
        out.append(item)
    return json_response(out)


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    svc = resolve(manager.store, request.match_info["id"])
    cs = svc.Spec.TaskTemplate.ContainerSpec or ContainerSpec()
    state, _, task = container_state(manager.store, svc)
    cstatus = task.Status.ContainerStatus if task is not None else None
    running = state == "running"
    return json_response({
        "Id": svc.ID,
        "Name": f"/{svc.Spec.Name}",
        "Created": svc.CreatedAt,
        "Image": cs.Image,
        "Path": (cs.Command or cs.Args or [""])[0],
        "Args": [*(cs.Command or ()), *(cs.Args or ())][1:],
        "State": {
            "Status": state,
            "Running": running,
            "Paused": False,
            "Restarting": False,
            "Dead": False,
            "Pid": cstatus.PID if cstatus is not None and running else 0,
            "ExitCode": _exit_code(task) if state == "exited" else 0,
            "Error": task.Status.Err if task is not None else "",
            "StartedAt": task.Status.Timestamp if task is not None and state != "created" else "",
            "FinishedAt": task.Status.Timestamp if task is not None and state == "exited" else "",
        },
        "Config": {
            "Image": cs.Image,
            "Cmd": cs.Args,
            "Entrypoint": cs.Command,
            "Env": cs.Env or [],
            "Labels": cs.Labels or {},
            "Hostname": cs.Hostname,
            "WorkingDir": cs.Dir,
            "User": cs.User,
            "Tty": cs.TTY,
            "OpenStdin": cs.OpenStdin,
        },
        "HostConfig": {},
        "Mounts": [],
        "Node": _node(manager.store, task),
        "ShoalTaskID": task.ID if task is not None else "",
    })


async def remove(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    ref = request.match_info["id"]
    svc = resolve(manager.store, ref)
    state, _, task = container_state(manager.store, svc)
    active = replicas(svc) > 0 and task is not None and not task.Status.State.terminal
    if (state == "running" or active) and not query_bool(request, "force"):
        raise Conflict(
            f"You cannot remove a running container {svc.ID}. "
            "Stop the container before attempting removal or force remove"
        )
    controlapi.remove_service(manager.store, svc.ID)
    return empty_response(204)


async def container_logs(request: web.Request) -> web.StreamResponse:
    """``docker logs``: the lines of every task this container has run, without the details prefix
    (the CLI prints frames verbatim, unlike ``service logs``)."""
    manager = swarm_manager(request)
    svc = resolve(manager.store, request.match_info["id"])
    logs.parse_options(request)
    tasks = sorted((t for t in manager.store.tasks_of_service(svc.ID) if logs.task_has_run(t)),
                   key=lambda t: t.CreatedAt)
    cs = svc.Spec.TaskTemplate.ContainerSpec
    return await logs.stream_logs(request, manager, tasks, bool(cs and cs.TTY), svc.ID)
