"""`shoal service ...`: create, ls, ps, inspect, scale, update, rm, logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
import typer

from shoal.cli import format as fmt
from shoal.cli.client import Client, CLIError, client_of, delete_each
from shoal.cli.parse import (
    flag,
    parse_choice,
    parse_cpus,
    parse_duration,
    parse_env,
    parse_filter,
    parse_generic_resource,
    parse_label,
    parse_memory,
    parse_mount,
    parse_network,
    parse_placement_pref,
    parse_publish,
    parse_ratio,
    parse_scale,
    parse_uint,
    port_key,
)
from shoal.cli.progress import wait_converged
from shoal.cli.secret import parse_config_ref, parse_secret_ref
from shoal.cli.spec import (
    MODES,
    ServiceOptions,
    SpecError,
    UpdateOptions,
    UpdatePolicy,
    apply_update,
    build_spec,
    spec_from_json,
    spec_to_json,
)
from shoal.extensions import UPDATE_STRATEGY_LABEL
from shoal.models import NetworkAttachmentConfig

app = typer.Typer(help="Manage services.", no_args_is_help=True)


# --------------------------------------------------------------------------- shared flag types

Duration = Annotated[int | None, typer.Option(parser=flag(parse_duration), metavar="DURATION")]
UInt = Annotated[int | None, typer.Option(parser=flag(parse_uint), metavar="UINT")]
Cpus = Annotated[int | None, typer.Option(parser=flag(parse_cpus), metavar="CPUS")]
Memory = Annotated[int | None, typer.Option(parser=flag(parse_memory), metavar="BYTES")]
Str = Annotated[str | None, typer.Option()]
Strs = Annotated[list[str] | None, typer.Option()]
Detach = Annotated[
    bool, typer.Option("--detach", "-d", help="Exit immediately instead of waiting for the service to converge")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Suppress progress output")]
RestartCond = Annotated[
    str | None,
    typer.Option(parser=flag(parse_choice("none", "on-failure", "any")), help='"none"|"on-failure"|"any"'),
]
Order = Annotated[str | None, typer.Option(parser=flag(parse_choice("start-first", "stop-first")))]
# rolling|blue-green, sent as the service label shoal.update-strategy (checked by the daemon: 400).
Strategy = Annotated[str | None, typer.Option("--strategy", help='Update strategy: "rolling"|"blue-green"')]


def _strategy_label(strategy: str | None) -> list[str]:
    return [] if strategy is None else [f"{UPDATE_STRATEGY_LABEL}={strategy}"]
FailureAction = Annotated[str | None, typer.Option(parser=flag(parse_choice("pause", "continue", "rollback")))]
Ratio = Annotated[float | None, typer.Option(parser=flag(parse_ratio))]
Bool = Annotated[bool | None, typer.Option()]


def _update_policy(parallelism: int | None, delay: int | None, monitor: int | None,
                   failure_action: str | None, ratio: float | None, order: str | None) -> UpdatePolicy:
    return UpdatePolicy(parallelism, delay, monitor, failure_action, ratio, order)


def _flatten(items: list[list[Any]] | None) -> list[Any]:
    return [x for group in items or [] for x in group]


def _spec_error(e: SpecError) -> CLIError:
    return CLIError(str(e), 2)


def _warnings(resp: Any) -> None:
    for w in (resp or {}).get("Warnings") or []:
        print(w, file=sys.stderr)


def _converge(c: Client, service_id: str, detach: bool, quiet: bool, old_ids: frozenset[str] = frozenset()) -> None:
    if detach:
        return
    try:
        if quiet:
            _wait_quietly(c, service_id, old_ids)
        else:
            wait_converged(c, service_id, old_ids)
    except KeyboardInterrupt:
        raise CLIError(
            f"Operation continuing in background.\nUse `shoal service ps {service_id}` to check progress.", 130
        ) from None


def _wait_quietly(c: Client, service_id: str, old_ids: frozenset[str]) -> None:
    from shoal.cli.progress import POLL_SECONDS, snapshot

    filters = {"service": [service_id], "desired-state": ["running"]}
    while True:
        svc = c.get("/services/{0}", service_id)
        if snapshot(svc, c.get("/tasks", params={"filters": filters}), old_ids).converged:
            return
        time.sleep(POLL_SECONDS)


# --------------------------------------------------------------------------- create


def _resolve_networks(c: Client, networks: list[NetworkAttachmentConfig] | None) -> None:
    """Name networks by ID, as the docker CLI does (so a missing network fails before the service)."""
    for net in networks or []:
        net.Target = str(c.get("/networks/{0}", net.Target, params={"scope": "swarm"})["Id"])


@app.command(context_settings={"allow_interspersed_args": False})
def create(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(metavar="IMAGE")],
    command: Annotated[list[str] | None, typer.Argument(metavar="[COMMAND] [ARG...]")] = None,
    name: Annotated[str, typer.Option("--name", help="Service name")] = "",
    replicas: Annotated[int | None, typer.Option(parser=flag(parse_uint), help="Number of tasks")] = None,
    max_concurrent: UInt = None,
    total_completions: Annotated[
        int | None, typer.Option(parser=flag(parse_uint), help="Completions a replicated job needs (= --replicas)")
    ] = None,
    mode: Annotated[str, typer.Option(parser=flag(parse_choice(*MODES)), help="Service mode")] = "replicated",
    publish: Annotated[
        list[Any] | None,
        typer.Option("--publish", "-p", parser=flag(parse_publish), metavar="SPEC",
                     help="Publish a port: 8080:80[/udp] or published=8080,target=80,protocol=tcp,mode=ingress"),
    ] = None,
    endpoint_mode: Annotated[str | None, typer.Option(parser=flag(parse_choice("vip", "dnsrr")))] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", parser=flag(parse_env))] = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", parser=flag(parse_label))] = None,
    container_label: Annotated[list[str] | None, typer.Option(parser=flag(parse_label))] = None,
    constraint: Strs = None,
    placement_pref: Annotated[list[Any] | None, typer.Option(parser=flag(parse_placement_pref))] = None,
    replicas_max_per_node: UInt = None,
    network: Annotated[list[Any] | None, typer.Option(parser=flag(parse_network))] = None,
    mount: Annotated[list[Any] | None, typer.Option(parser=flag(parse_mount))] = None,
    secret: Annotated[list[Any] | None, typer.Option(parser=flag(parse_secret_ref), metavar="SECRET",
                                                     help="Specify secrets to expose to the service")] = None,
    config: Annotated[list[Any] | None, typer.Option(parser=flag(parse_config_ref), metavar="CONFIG",
                                                     help="Specify configurations to expose to the service")] = None,
    limit_cpu: Cpus = None,
    limit_memory: Memory = None,
    limit_pids: UInt = None,
    reserve_cpu: Cpus = None,
    reserve_memory: Memory = None,
    restart_condition: RestartCond = None,
    restart_delay: Duration = None,
    restart_max_attempts: UInt = None,
    restart_window: Duration = None,
    update_parallelism: UInt = None,
    update_delay: Duration = None,
    update_monitor: Duration = None,
    update_failure_action: FailureAction = None,
    update_max_failure_ratio: Ratio = None,
    update_order: Order = None,
    rollback_parallelism: UInt = None,
    rollback_delay: Duration = None,
    rollback_monitor: Duration = None,
    rollback_failure_action: FailureAction = None,
    rollback_max_failure_ratio: Ratio = None,
    rollback_order: Order = None,
    entrypoint: Str = None,
    workdir: Annotated[str | None, typer.Option("--workdir", "-w")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u")] = None,
    group: Strs = None,
    hostname: Str = None,
    host: Annotated[list[str] | None, typer.Option("--host", help="Add a custom host-to-IP mapping (host:ip)")] = None,
    stop_grace_period: Duration = None,
    stop_signal: Str = None,
    tty: Annotated[bool, typer.Option("--tty", "-t")] = False,
    read_only: bool = False,
    init: bool = False,
    health_cmd: Str = None,
    health_interval: Duration = None,
    health_timeout: Duration = None,
    health_retries: UInt = None,
    health_start_period: Duration = None,
    no_healthcheck: bool = False,
    log_driver: Str = None,
    log_opt: Strs = None,
    with_registry_auth: Annotated[bool, typer.Option(hidden=True)] = False,
    detach: Detach = False,
    quiet: Quiet = False,
    strategy: Strategy = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show where each task would go; create nothing")] = False,
    generic_resource: Annotated[
        list[Any] | None, typer.Option(parser=flag(parse_generic_resource), help="Reserve e.g. gpu=2")
    ] = None,
) -> None:
    """Create a new service."""
    if total_completions is not None:  # Shoal's spelling of what docker calls --replicas for a job
        if mode != "replicated-job" or replicas not in (None, total_completions):
            raise CLIError("total-completions can only be used with replicated-job mode, instead of --replicas", 2)
        replicas = total_completions
    opts = ServiceOptions(
        image=image, args=command or None, entrypoint=entrypoint, name=name, mode=mode, replicas=replicas,
        max_concurrent=max_concurrent, publish=_flatten(publish), endpoint_mode=endpoint_mode,
        env=env or [], labels=[*(label or []), *_strategy_label(strategy)],
        container_labels=container_label or [], constraints=constraint or [],
        placement_prefs=placement_pref or [], max_replicas=replicas_max_per_node, networks=network or [],
        mounts=mount or [], limit_cpu=limit_cpu, limit_memory=limit_memory, limit_pids=limit_pids,
        reserve_cpu=reserve_cpu, reserve_memory=reserve_memory, restart_condition=restart_condition,
        restart_delay=restart_delay, restart_max_attempts=restart_max_attempts, restart_window=restart_window,
        update=_update_policy(update_parallelism, update_delay, update_monitor, update_failure_action,
                              update_max_failure_ratio, update_order),
        rollback=_update_policy(rollback_parallelism, rollback_delay, rollback_monitor, rollback_failure_action,
                                rollback_max_failure_ratio, rollback_order),
        workdir=workdir, user=user, groups=group or [], hostname=hostname, hosts=host or [],
        stop_grace_period=stop_grace_period, stop_signal=stop_signal, tty=tty, read_only=read_only, init=init,
        health_cmd=health_cmd, health_interval=health_interval, health_timeout=health_timeout,
        health_retries=health_retries, health_start_period=health_start_period, no_healthcheck=no_healthcheck,
        log_driver=log_driver, log_opts=log_opt or [], generic_resources=generic_resource or [],
        secrets=secret or [], configs=config or [],
    )
    try:
        spec = build_spec(opts)
    except SpecError as e:
        raise _spec_error(e) from None
    c = client_of(ctx)
    _resolve_networks(c, spec.TaskTemplate.Networks)
    if dry_run:
        _print_plan(c.post("/shoal/plan", body=spec_to_json(spec)))
        return
    resp = c.post("/services/create", body=spec_to_json(spec))
    _warnings(resp)
    service_id = str(resp["ID"])
    _converge(c, service_id, detach, quiet)
    print(service_id)


def _print_plan(rows: list[dict[str, Any]]) -> None:
    """The placement plan: one row per task (per node for a global service)."""
    fmt.print_table(
        ["SLOT", "NODE", "RESULT"],
        [(str(r["Slot"] or "-"), r["Node"] or "-", r["Reason"] or "placed") for r in rows],
    )


# --------------------------------------------------------------------------- ls / ps / inspect


def _mode_name(mode: dict[str, Any]) -> str:
    for key, label in (("Replicated", "replicated"), ("Global", "global"),
                       ("ReplicatedJob", "replicated job"), ("GlobalJob", "global job")):
        if key in mode:
            return label
    return "replicated"


def _replicas(svc: dict[str, Any]) -> str:
    mode = svc["Spec"].get("Mode") or {}
    status = svc.get("ServiceStatus") or {}
    running, desired = status.get("RunningTasks", 0), status.get("DesiredTasks", 0)
    completed = status.get("CompletedTasks", 0)
    if "ReplicatedJob" in mode:  # as docker shows jobs: "0/2 (4/4 completed)"
        return f"{running}/{desired} ({completed}/{mode['ReplicatedJob'].get('TotalCompletions', 0)} completed)"
    if "GlobalJob" in mode:
        return f"{running}/{desired} ({completed}/{desired + completed} completed)"
    if not status and "Replicated" in mode:
        desired = mode["Replicated"].get("Replicas", 1)
    limit = ((svc["Spec"].get("TaskTemplate") or {}).get("Placement") or {}).get("MaxReplicas")
    return f"{running}/{desired}" + (f" (max {limit} per node)" if limit else "")


def _image(spec: dict[str, Any], no_trunc: bool = False) -> str:
    image = str(((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", ""))
    return image if no_trunc else image.split("@", 1)[0]


def _filters(items: list[tuple[str, str]] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in items or []:
        out.setdefault(k, []).append(v)
    return out


@app.command("ls")
def ls(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only display IDs")] = False,
    filter_: Annotated[list[Any] | None, typer.Option("--filter", "-f", parser=flag(parse_filter))] = None,
) -> None:
    """List services."""
    c = client_of(ctx)
    services = c.get("/services", params={"status": True, "filters": _filters(filter_) or None})
    services.sort(key=lambda s: s["Spec"].get("Name", ""))
    if quiet:
        for s in services:
            print(s["ID"])
        return
    rows = [
        (fmt.trunc_id(s["ID"]), s["Spec"].get("Name", ""), _mode_name(s["Spec"].get("Mode") or {}),
         _replicas(s), _image(s["Spec"]), fmt.ports((s.get("Endpoint") or {}).get("Ports")))
        for s in services
    ]
    fmt.print_table(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows)


def _task_name(task: dict[str, Any], service_name: str, no_trunc: bool) -> str:
    base = f"{service_name}.{task['Slot']}" if task.get("Slot") else f"{service_name}.{task.get('NodeID', '')}"
    return f"{base}.{task['ID']}" if no_trunc else base


def _task_error(task: dict[str, Any], no_trunc: bool) -> str:
    err = str((task.get("Status") or {}).get("Err", ""))
    if not err:
        return ""
    if not no_trunc and len(err) > 30:
        err = err[:29] + "…"
    return f'"{err}"'


def task_rows(tasks: list[dict[str, Any]], services: dict[str, str], nodes: dict[str, str],
              no_trunc: bool, now: float | None = None) -> list[tuple[str, ...]]:
    """`docker service ps` rows: tasks grouped by slot, newest first, history marked with " \\_ "."""
    named = [(_task_name(t, services.get(t["ServiceID"], t["ServiceID"]), no_trunc), t) for t in tasks]
    named.sort(key=lambda nt: nt[1].get("CreatedAt", ""), reverse=True)
    named.sort(key=lambda nt: (services.get(nt[1]["ServiceID"], ""), nt[1].get("Slot", 0), nt[1].get("NodeID", "")))
    rows = []
    prev_key: tuple[str, int, str] | None = None
    for name, t in named:
        key = (t["ServiceID"], t.get("Slot", 0), "" if t.get("Slot") else t.get("NodeID", ""))
        shown = f" \\_ {name}" if key == prev_key else name
        prev_key = key
        status = t.get("Status") or {}
        port_list = (status.get("PortStatus") or {}).get("Ports")
        rows.append((
            fmt.trunc_id(t["ID"], no_trunc),
            shown,
            _image({"TaskTemplate": t.get("Spec") or {}}, no_trunc),
            nodes.get(t.get("NodeID", ""), t.get("NodeID", "")),
            fmt.pretty_state(str(t.get("DesiredState", ""))),
            f"{fmt.pretty_state(str(status.get('State', '')))} {fmt.ago(status.get('Timestamp', ''), now)}".strip()
            + (f" ({health})" if (health := (status.get("Health") or {}).get("Status")) else ""),
            _task_error(t, no_trunc),
            fmt.ports(port_list),
        ))
    return rows


@app.command("ps")
def ps(
    ctx: typer.Context,
    services: Annotated[list[str], typer.Argument(metavar="SERVICE...")],
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Do not truncate output")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only display task IDs")] = False,
    filter_: Annotated[list[Any] | None, typer.Option("--filter", "-f", parser=flag(parse_filter))] = None,
) -> None:
    """List the tasks of one or more services."""
    c = client_of(ctx)
    resolved = {}
    found = []
    for s in services:
        svc = c.get("/services/{0}", s)
        resolved[svc["ID"]] = svc["Spec"].get("Name", svc["ID"])
        found.append(svc)
    filters = _filters(filter_)
    filters["service"] = list(resolved)
    tasks = c.get("/tasks", params={"filters": filters})
    if quiet:
        for t in tasks:
            print(t["ID"])
        return
    for line in [*update_status_lines(found), *autoscale_lines(found)]:
        print(line)
    nodes = c.node_names() if tasks else {}
    headers = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]
    fmt.print_table(headers, task_rows(tasks, resolved, nodes, no_trunc))


def _pretty_service(s: dict[str, Any]) -> str:
    spec = s["Spec"]
    mode = spec.get("Mode") or {}
    task = spec.get("TaskTemplate") or {}
    cs = task.get("ContainerSpec") or {}
    lines = [f"ID:\t\t{s['ID']}", f"Name:\t\t{spec.get('Name', '')}"]
    if spec.get("Labels"):
        lines.append("Labels:")
        lines += [f" {k}={v}" for k, v in spec["Labels"].items()]
    lines.append(f"Service Mode:\t{_mode_name(mode).title()}")
    if "Replicated" in mode:
        lines.append(f" Replicas:\t{mode['Replicated'].get('Replicas', 1)}")
    st = s.get("UpdateStatus") or {}
    if st.get("State"):
        # docker's pretty template: Completed only once the update (or rollback) has ended.
        lines += ["UpdateStatus:", f" State:\t\t{st['State']}"]
        if st.get("StartedAt"):
            lines.append(f" Started:\t{fmt.ago(st['StartedAt'])}")
        if st.get("CompletedAt"):
            lines.append(f" Completed:\t{fmt.ago(st['CompletedAt'])}")
        lines.append(f" Message:\t{st.get('Message', '')}")
    placement = task.get("Placement") or {}
    if placement.get("Constraints"):
        lines.append("Placement:")
        lines.append(f" Constraints:\t{placement['Constraints']}")
    for title, key in (("UpdateConfig", "UpdateConfig"), ("RollbackConfig", "RollbackConfig")):
        uc = spec.get(key)
        if uc:
            lines += [f"{title}:", f" Parallelism:\t{uc.get('Parallelism', 0)}"]
            if uc.get("Delay"):
                lines.append(f" Delay:\t\t{fmt.duration(uc['Delay'])}")
            lines += [f" On failure:\t{uc.get('FailureAction', '')}",
                      f" Monitoring Period: {fmt.duration(uc.get('Monitor', 0))}",
                      f" Max failure ratio: {uc.get('MaxFailureRatio', 0)}",
                      f" Update order:      {uc.get('Order', '')}"]
    lines += ["ContainerSpec:", f" Image:\t\t{cs.get('Image', '')}"]
    if cs.get("Command"):
        lines.append(f" Command:\t{' '.join(cs['Command'])}")
    if cs.get("Args"):
        lines.append(f" Args:\t\t{' '.join(cs['Args'])}")
    if cs.get("Env"):
        lines.append(f" Env:\t\t{' '.join(cs['Env'])}")
    if cs.get("Dir"):
        lines.append(f" Dir:\t\t{cs['Dir']}")
    if cs.get("User"):
        lines.append(f" User:\t\t{cs['User']}")
    if cs.get("Mounts"):
        lines.append("Mounts:")
        for m in cs["Mounts"]:
            lines.append(f" Target:\t{m.get('Target')}\n  Source:\t{m.get('Source', '')}\n"
                         f"  ReadOnly:\t{str(m.get('ReadOnly', False)).lower()}\n  Type:\t\t{m.get('Type')}")
    res = task.get("Resources") or {}
    lim, rsv = res.get("Limits") or {}, res.get("Reservations") or {}
    if any(lim.values()) or any(v for v in rsv.values() if isinstance(v, int)):
        lines.append("Resources:")
        for title, part in (("Reservations", rsv), ("Limits", lim)):
            if part.get("NanoCPUs") or part.get("MemoryBytes"):
                lines.append(f" {title}:")
                if part.get("NanoCPUs"):
                    lines.append(f"  CPU:\t\t{fmt.cpus(part['NanoCPUs'])}")
                if part.get("MemoryBytes"):
                    lines.append(f"  Memory:\t{fmt.size(part['MemoryBytes'])}")
    endpoint = spec.get("EndpointSpec") or {}
    lines.append(f"Endpoint Mode:\t{endpoint.get('Mode', 'vip')}")
    ports = (s.get("Endpoint") or {}).get("Ports") or endpoint.get("Ports") or []
    if ports:
        lines.append("Ports:")
        for p in ports:
            lines += [f" PublishedPort = {p.get('PublishedPort', 0)}", f"  Protocol = {p.get('Protocol', 'tcp')}",
                      f"  TargetPort = {p.get('TargetPort', 0)}", f"  PublishMode = {p.get('PublishMode', 'ingress')}"]
    return fmt.align("\n".join(lines))


@app.command()
def inspect(
    ctx: typer.Context,
    services: Annotated[list[str], typer.Argument(metavar="SERVICE...")],
    pretty: Annotated[bool, typer.Option("--pretty", help="Print the information in a human friendly format")] = False,
) -> None:
    """Display detailed information on one or more services."""
    c = client_of(ctx)
    found = [c.get("/services/{0}", s) for s in services]
    if pretty:
        print("\n\n".join(_pretty_service(s) for s in found))
    else:
        fmt.print_json(found)


STATS_REFRESH_S = 2.0


def stats_rows(stats: dict[str, Any]) -> tuple[list[list[str]], str]:
    """`docker stats`-like rows, one per task, and the service's line under them."""
    rows = [[f"{stats['Name']}.{t['Slot'] or t['NodeID'][:12]}", t["TaskID"][:12], t["NodeID"][:12],
             f"{t['CPUPercent']:.2f}%", f"{t['CPULimitPercent']:.2f}%",
             f"{fmt.size(t['MemoryBytes'])} / {fmt.size(t['MemoryLimitBytes'])}",
             f"{fmt.size(t['NetworkRxBytes'])} / {fmt.size(t['NetworkTxBytes'])}", str(t["Pids"])]
            for t in stats["Tasks"]]
    u = stats.get("Usage")
    if u is None:
        return rows, f"{stats['Name']}: no running task has reported yet"
    total = (f"{stats['Name']}: {u['Tasks']} task(s), CPU {u['CPUPercentSum']:.2f}% "
             f"(avg {u['CPUPercentAvg']:.2f}%, {u['CPULimitPercentAvg']:.2f}% of limit), "
             f"memory {fmt.size(u['MemoryBytesSum'])} (avg {fmt.size(int(u['MemoryBytesAvg']))})")
    return rows, total


@app.command()
def stats(
    ctx: typer.Context,
    services: Annotated[list[str], typer.Argument(metavar="SERVICE...")],
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Print once instead of refreshing")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the raw figures as JSON (once)")] = False,
) -> None:
    """Live CPU, memory and network of a service's tasks, and the service's total (sampled by the
    agents every --stats-interval seconds)."""
    c = client_of(ctx)
    ids = [c.get("/services/{0}", s)["ID"] for s in services]
    headers = ["TASK", "ID", "NODE", "CPU %", "CPU % OF LIMIT", "MEM USAGE / LIMIT", "NET I/O", "PIDS"]
    while True:
        figures = [c.get("/shoal/services/{0}/stats", i) for i in ids]
        if json_:
            fmt.print_json(figures)
            return
        if not no_stream and sys.stdout.isatty():
            sys.stdout.write("\x1b[2J\x1b[H")  # clear, as `docker stats` redraws
        rows: list[list[str]] = []
        totals = []
        for f in figures:
            r, total = stats_rows(f)
            rows.extend(r)
            totals.append(total)
        fmt.print_table(headers, rows)
        for line in totals:
            print(line)
        if no_stream:
            return
        sys.stdout.flush()
        time.sleep(STATS_REFRESH_S)


# --------------------------------------------------------------------------- scale / update / rm


def _task_ids(c: Client, service_id: str) -> frozenset[str]:
    tasks = c.get("/tasks", params={"filters": {"service": [service_id], "desired-state": ["running"]}})
    return frozenset(t["ID"] for t in tasks)


@app.command()
def scale(
    ctx: typer.Context,
    pairs: Annotated[list[Any], typer.Argument(metavar="SERVICE=REPLICAS...", parser=flag(parse_scale))],
    detach: Detach = False,
) -> None:
    """Scale one or more replicated services."""
    c = client_of(ctx)
    failed = []
    for name, n in pairs:
        try:
            svc = c.get("/services/{0}", name)
            spec = svc["Spec"]
            mode = spec.get("Mode") or {}
            if "Replicated" in mode:
                mode["Replicated"]["Replicas"] = n
            elif "ReplicatedJob" in mode:
                mode["ReplicatedJob"]["TotalCompletions"] = n
            else:
                raise CLIError(f"{name}: scale can only be used with replicated or replicated-job mode")
            _warnings(c.post("/services/{0}/update", svc["ID"], body=spec,
                             params={"version": svc["Version"]["Index"]}))
            print(f"{name} scaled to {n}")
            _converge(c, svc["ID"], detach, False)
        except CLIError as e:
            print(e.message, file=sys.stderr)
            failed.append(name)
        except Exception as e:
            from shoal.cli.client import describe_error

            err = describe_error(e, c.host)
            if err is None:
                raise
            print(err.message, file=sys.stderr)
            failed.append(name)
    if failed:
        raise typer.Exit(1)


@app.command()
def update(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE")],
    image: Str = None,
    args: Annotated[str | None, typer.Option("--args", help="Service command args")] = None,
    entrypoint: Str = None,
    replicas: UInt = None,
    env_add: Annotated[list[str] | None, typer.Option(parser=flag(parse_env))] = None,
    env_rm: Strs = None,
    label_add: Annotated[list[str] | None, typer.Option(parser=flag(parse_label))] = None,
    label_rm: Strs = None,
    container_label_add: Annotated[list[str] | None, typer.Option(parser=flag(parse_label))] = None,
    container_label_rm: Strs = None,
    constraint_add: Strs = None,
    constraint_rm: Strs = None,
    placement_pref_add: Annotated[list[Any] | None, typer.Option(parser=flag(parse_placement_pref))] = None,
    replicas_max_per_node: UInt = None,
    publish_add: Annotated[list[Any] | None, typer.Option(parser=flag(parse_publish))] = None,
    publish_rm: Annotated[list[Any] | None, typer.Option(parser=flag(port_key))] = None,
    endpoint_mode: Annotated[str | None, typer.Option(parser=flag(parse_choice("vip", "dnsrr")))] = None,
    mount_add: Annotated[list[Any] | None, typer.Option(parser=flag(parse_mount))] = None,
    mount_rm: Strs = None,
    network_add: Annotated[list[Any] | None, typer.Option(parser=flag(parse_network))] = None,
    network_rm: Strs = None,
    limit_cpu: Cpus = None,
    limit_memory: Memory = None,
    limit_pids: UInt = None,
    reserve_cpu: Cpus = None,
    reserve_memory: Memory = None,
    restart_condition: RestartCond = None,
    restart_delay: Duration = None,
    restart_max_attempts: UInt = None,
    restart_window: Duration = None,
    update_parallelism: UInt = None,
    update_delay: Duration = None,
    update_monitor: Duration = None,
    update_failure_action: FailureAction = None,
    update_max_failure_ratio: Ratio = None,
    update_order: Order = None,
    rollback_parallelism: UInt = None,
    rollback_delay: Duration = None,
    rollback_monitor: Duration = None,
    rollback_failure_action: FailureAction = None,
    rollback_max_failure_ratio: Ratio = None,
    rollback_order: Order = None,
    workdir: Annotated[str | None, typer.Option("--workdir", "-w")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u")] = None,
    group_add: Strs = None,
    hostname: Str = None,
    stop_grace_period: Duration = None,
    stop_signal: Str = None,
    tty: Bool = None,
    read_only: Bool = None,
    init: Bool = None,
    health_cmd: Str = None,
    health_interval: Duration = None,
    health_timeout: Duration = None,
    health_retries: UInt = None,
    health_start_period: Duration = None,
    no_healthcheck: bool = False,
    log_driver: Str = None,
    log_opt: Strs = None,
    force: Annotated[bool, typer.Option("--force", help="Force update even if no changes require it")] = False,
    strategy: Strategy = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="Rollback to previous specification")] = False,
    with_registry_auth: Annotated[bool, typer.Option(hidden=True)] = False,
    detach: Detach = False,
    quiet: Quiet = False,
) -> None:
    """Update a service."""
    opts = UpdateOptions(
        image=image, args_str=args, entrypoint=entrypoint, replicas=replicas, env=env_add or [],
        env_rm=env_rm or [], labels=[*(label_add or []), *_strategy_label(strategy)], label_rm=label_rm or [],
        container_labels=container_label_add or [], container_label_rm=container_label_rm or [],
        constraints=constraint_add or [], constraint_rm=constraint_rm or [],
        placement_prefs=placement_pref_add or [], max_replicas=replicas_max_per_node, publish=_flatten(publish_add),
        publish_rm=publish_rm or [], endpoint_mode=endpoint_mode, mounts=mount_add or [],
        mount_rm=mount_rm or [], networks=network_add or [], network_rm=network_rm or [],
        limit_cpu=limit_cpu, limit_memory=limit_memory, limit_pids=limit_pids, reserve_cpu=reserve_cpu,
        reserve_memory=reserve_memory, restart_condition=restart_condition, restart_delay=restart_delay,
        restart_max_attempts=restart_max_attempts, restart_window=restart_window,
        update=_update_policy(update_parallelism, update_delay, update_monitor, update_failure_action,
                              update_max_failure_ratio, update_order),
        rollback=_update_policy(rollback_parallelism, rollback_delay, rollback_monitor, rollback_failure_action,
                                rollback_max_failure_ratio, rollback_order),
        workdir=workdir, user=user, groups=group_add or [], hostname=hostname,
        stop_grace_period=stop_grace_period, stop_signal=stop_signal, tty=tty, read_only=read_only, init=init,
        health_cmd=health_cmd, health_interval=health_interval, health_timeout=health_timeout,
        health_retries=health_retries, health_start_period=health_start_period, no_healthcheck=no_healthcheck,
        log_driver=log_driver, log_opts=log_opt or [], force=force,
    )
    c = client_of(ctx)
    svc = c.get("/services/{0}", service)
    params: dict[str, Any] = {"version": svc["Version"]["Index"]}
    if rollback:
        # Server-side rollback to PreviousSpec, as `docker service update --rollback` asks for.
        body = svc["Spec"]
        params["rollback"] = "previous"
        changed_template = True
    else:
        try:
            spec = apply_update(spec_from_json(svc["Spec"]), opts)
        except SpecError as e:
            raise _spec_error(e) from None
        _resolve_networks(c, [n for n in spec.TaskTemplate.Networks or [] if n in opts.networks])
        body = spec_to_json(spec)
        before = msgspec.to_builtins(spec_from_json(svc["Spec"]).TaskTemplate)
        changed_template = body.get("TaskTemplate") != before
    old_ids = _task_ids(c, svc["ID"]) if changed_template and not detach else frozenset()
    _warnings(c.post("/services/{0}/update", svc["ID"], body=body, params=params))
    print(service)
    _converge(c, svc["ID"], detach, quiet, old_ids)


def update_status_lines(services: list[dict[str, Any]]) -> list[str]:
    """One line per service with an UpdateStatus ("update: paused — <why>"), shown above `ps`'s
    table: the docker CLI shows it only in inspect, where a paused update is easy to miss."""
    out = []
    for svc in services:
        st = svc.get("UpdateStatus") or {}
        if not st.get("State"):
            continue
        head = "update" if len(services) == 1 else f"{svc['Spec'].get('Name', svc['ID'])} update"
        line = f"{head}: {st['State'].replace('_', ' ')}"
        out.append(f"{line} — {st['Message']}" if st.get("Message") else line)
    return out


@app.command()
def autoscale(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE")],
    min_: Annotated[int | None, typer.Option("--min", help="Fewest replicas (default 1)")] = None,
    max_: Annotated[int | None, typer.Option("--max", help="Most replicas (required)")] = None,
    cpu_target: Annotated[float | None, typer.Option("--cpu-target", help="Average CPU, % of a task's limit")] = None,
    memory_target: Annotated[float | None, typer.Option("--memory-target", help="Average memory, % of limit")] = None,
    step: Annotated[int | None, typer.Option("--step", help="Tasks added or removed at once (default 1)")] = None,
    window: Annotated[str | None, typer.Option("--window", help="How long past the target before acting "
                                                                "(default 30s)")] = None,
    cooldown: Annotated[str | None, typer.Option("--cooldown", help="After scaling, how long before scaling in "
                                                                    "(default 2m)")] = None,
    off: Annotated[bool, typer.Option("--off", help="Stop autoscaling the service (its replicas stay)")] = False,
) -> None:
    """Scale a replicated service on its tasks' CPU or memory, between --min and --max."""
    from shoal import extensions as ext

    given = {ext.AUTOSCALE_MIN_LABEL: min_, ext.AUTOSCALE_MAX_LABEL: max_, ext.AUTOSCALE_CPU_TARGET_LABEL: cpu_target,
             ext.AUTOSCALE_MEMORY_TARGET_LABEL: memory_target, ext.AUTOSCALE_STEP_LABEL: step,
             ext.AUTOSCALE_WINDOW_LABEL: window, ext.AUTOSCALE_COOLDOWN_LABEL: cooldown}
    if off and any(v is not None for v in given.values()):
        raise CLIError("shoal service autoscale: --off takes no other option")
    if not off and all(v is None for v in given.values()):
        raise CLIError("shoal service autoscale: nothing to set (give --max and --cpu-target or --memory-target, "
                       "or --off)")
    c = client_of(ctx)
    svc = c.get("/services/{0}", service)
    spec = svc["Spec"]
    labels = {k: v for k, v in (spec.get("Labels") or {}).items()
              if not k.startswith((ext.AUTOSCALE_PREFIX, ext.ALIYUN_AUTOSCALE_PREFIX))}
    if not off:
        labels.update({k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in given.items() if v is not None})
        try:
            ext.parse_autoscale(labels)
        except ValueError as e:
            msg = str(e)
            for label in ext.AUTOSCALE_LABELS:  # name the flag, not the label
                msg = msg.replace(f"label {label}", "--" + label.removeprefix(ext.AUTOSCALE_PREFIX))
                msg = msg.replace(label, "--" + label.removeprefix(ext.AUTOSCALE_PREFIX))
            raise CLIError(f"shoal service autoscale: {msg}") from None
    spec["Labels"] = labels
    _warnings(c.post("/services/{0}/update", svc["ID"], body=spec, params={"version": svc["Version"]["Index"]}))
    print(f"{spec.get('Name', service)}: autoscaling {'off' if off else 'on'}")


def autoscale_lines(services: list[dict[str, Any]]) -> list[str]:
    """What `service ps` says of the autoscaler's last decision on each service."""
    out = []
    for s in services:
        st = s.get("AutoscaleStatus")
        if st:
            when = fmt.ago(st["At"]) if st.get("At") else ""
            out.append(f"{s['Spec'].get('Name', s['ID'])}: autoscaled {st.get('PreviousReplicas', 0)} → "
                       f"{st.get('Replicas', 0)} {when}: {st.get('Reason', '')}")
    return out


@app.command()
def rollback(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE")],
    detach: Detach = False,
    quiet: Quiet = False,
) -> None:
    """Revert changes to a service's configuration (its previous spec, rolled out with its
    rollback config), as `docker service rollback`."""
    c = client_of(ctx)
    svc = c.get("/services/{0}", service)
    old_ids = frozenset() if detach else _task_ids(c, svc["ID"])
    _warnings(c.post("/services/{0}/update", svc["ID"], body=svc["Spec"],
                     params={"version": svc["Version"]["Index"], "rollback": "previous"}))
    print(service)
    _converge(c, svc["ID"], detach, quiet, old_ids)


@app.command("rm")
def rm(ctx: typer.Context, services: Annotated[list[str], typer.Argument(metavar="SERVICE...")]) -> None:
    """Remove one or more services."""
    delete_each(client_of(ctx), "/services/{0}", services)


# --------------------------------------------------------------------------- logs


def split_log_frame(payload: bytes, timestamps: bool) -> tuple[str, dict[str, str], str]:
    """One frame ``[ts ]details line`` into (timestamp, details, line), as docker's logWriter splits it."""
    from urllib.parse import unquote

    text = payload.decode(errors="replace")
    ts = ""
    if timestamps:
        ts, _, text = text.partition(" ")
    details_txt, _, line = text.partition(" ")
    details: dict[str, str] = {}
    for pair in details_txt.split(","):
        k, eq, v = pair.partition("=")
        if eq:
            details[unquote(k)] = unquote(v)
    return ts, details, line


class LogPrefixer:
    """Turns log details into docker's ``svc.slot.taskid@node    | `` prefix, caching lookups."""

    def __init__(self, c: Client, no_trunc: bool, no_task_ids: bool) -> None:
        self.c = c
        self.no_trunc = no_trunc
        self.no_task_ids = no_task_ids
        self._tasks: dict[str, dict[str, Any]] = {}
        self._services: dict[str, str] = {}
        self._nodes: dict[str, str] | None = None

    def _node(self, node_id: str) -> str:
        if self._nodes is None or node_id not in self._nodes:
            self._nodes = self.c.node_names()
        return self._nodes.get(node_id, node_id)

    def prefix(self, details: dict[str, str]) -> str:
        task_id = details.get("com.docker.swarm.task.id", "")
        service_id = details.get("com.docker.swarm.service.id", "")
        node_id = details.get("com.docker.swarm.node.id", "")
        if task_id and task_id not in self._tasks:
            self._tasks[task_id] = self.c.get("/tasks/{0}", task_id)
        if service_id and service_id not in self._services:
            self._services[service_id] = self.c.get("/services/{0}", service_id)["Spec"].get("Name", service_id)
        task = self._tasks.get(task_id, {"Slot": 0, "NodeID": node_id})
        name = self._services.get(service_id, service_id)
        name = f"{name}.{task['Slot']}" if task.get("Slot") else f"{name}.{task.get('NodeID', node_id)}"
        if not self.no_task_ids:
            name += "." + fmt.trunc_id(task_id, self.no_trunc)
        return f"{name}@{self._node(node_id)}"


def _log_lines(c: Client, target: str, params: dict[str, Any]) -> Iterator[bytes]:
    """Service logs when ``target`` names a service, else task logs (as docker tries both)."""
    import docker.errors

    try:
        svc = c.get("/services/{0}", target)
        path, ident, tty = "/services/{0}/logs", svc["ID"], svc["Spec"]["TaskTemplate"]["ContainerSpec"].get("TTY")
    except docker.errors.NotFound:
        try:
            task = c.get("/tasks/{0}", target)
        except docker.errors.NotFound:
            raise CLIError(f"Error: no such task or service: {target}") from None
        path, ident, tty = "/tasks/{0}/logs", task["ID"], task["Spec"]["ContainerSpec"].get("TTY")
    if tty:
        raise CLIError("Error: logs of a service with a TTY are not supported by this CLI")
    return c.stream_frames(path, ident, params=params)


@app.command()
def logs(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="SERVICE|TASK")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow log output")] = False,
    tail: Annotated[str, typer.Option("--tail", "-n", help='Number of lines to show from the end ("all")')] = "all",
    timestamps: Annotated[bool, typer.Option("--timestamps", "-t", help="Show timestamps")] = False,
    since: Annotated[str | None, typer.Option("--since")] = None,
    no_trunc: Annotated[bool, typer.Option("--no-trunc")] = False,
    no_task_ids: Annotated[bool, typer.Option("--no-task-ids")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Do not neatly format logs")] = False,
) -> None:
    """Fetch the logs of a service or task."""
    c = client_of(ctx)
    params = {"stdout": True, "stderr": True, "follow": follow, "tail": tail, "timestamps": timestamps,
              "details": True, "since": since}
    prefixer = LogPrefixer(c, no_trunc, no_task_ids)
    out = sys.stdout
    try:
        for frame in _log_lines(c, target, params):
            ts, details, line = split_log_frame(frame, timestamps)
            head = f"{ts} " if ts else ""
            if not raw:
                head += prefixer.prefix(details) + "    | "
            out.write(head + line)
            if not line.endswith("\n"):
                out.write("\n")
            out.flush()
    except KeyboardInterrupt:
        return
