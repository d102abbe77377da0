"""`shoal stack ...` (deploy, upgrade, ls, services, ps, scale, rm); `shoal compose` (cli/compose.py) builds on it.

The Compose file is loaded here, in the client, because only the client can read what it names
(``.env``, ``env_file``, secret and config files); the manager receives the resulting objects and
the normalised file, checks the whole stack and applies only what changed (``/shoal/stacks``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shoal import compose
from shoal.cli import format as fmt
from shoal.cli.client import Client, CLIError, client_of, delete_each
from shoal.cli.service import _image, _mode_name, _replicas, task_rows
from shoal.controlapi.users import TEAM_LABEL
from shoal.models import StackSpec

app = typer.Typer(help="Manage stacks (Compose files deployed across the cluster).", no_args_is_help=True)

NAMESPACE = "com.docker.stack.namespace"
POLL_SECONDS = 0.5

ComposeFiles = Annotated[list[Path], typer.Option("--compose-file", "-c", help="Path to a Compose file")]
# Off by default, stricter than docker compose: a Compose file handed to a CI job must not be able to
# send the runner's other files (env_file: /etc/shadow, a secret file: ../../root/.ssh/id_rsa) to the cluster.
Team = Annotated[str | None, typer.Option(
    "--team", help="The team the stack belongs to (label shoal.team on it and on everything it makes); "
                   "a redeploy without it keeps the stack's team")]
AllowOutsideFiles = Annotated[bool, typer.Option(
    "--allow-outside-files",
    help="Let the Compose files name files outside the project folder (the first file's folder): env_file, "
         "secrets' and configs' file, extends' file, a .env symlink. Refused by default, unlike docker compose, "
         "so that a Compose file cannot send this machine's other files into the cluster.")]


def load_project(files: list[Path], name: str | None, profiles: list[str] | None = None,
                 allow_outside_files: bool = False, env_file: Path | None = None, project_dir: Path | None = None,
                 rancher_file: Path | None = None) -> compose.Project:
    """Load and validate Compose files (and a rancher-compose.yml); errors name file and line."""
    for f in [*files, *([rancher_file] if rancher_file else [])]:
        if str(f) != "-" and not f.is_file():
            raise CLIError(f"open {f}: no such file or directory")
    try:
        return compose.load(files, project_dir=project_dir, profiles=profiles, project_name=name,
                            allow_outside_files=allow_outside_files, env_file=env_file, rancher_file=rancher_file)
    except compose.ComposeError as e:
        raise CLIError(str(e)) from None


def load_stack(files: list[Path], name: str | None, profiles: list[str] | None = None,
               allow_outside_files: bool = False, **options: Any) -> tuple[str, StackSpec]:
    """Load, validate and convert Compose files; warnings go to stderr. Errors name file and line.
    ``options``: load_project's env_file, project_dir and rancher_file."""
    project = load_project(files, name, profiles, allow_outside_files, **options)
    stack = name or project.name
    try:
        spec, warnings = compose.to_stack_spec(project, stack)
    except compose.ComposeError as e:
        raise CLIError(str(e)) from None
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return stack, spec


def _print_changes(result: dict[str, Any], dry_run: bool) -> None:
    verbs = {"create": "Creating", "update": "Updating", "remove": "Removing", "wait": "Waiting to create"}
    if dry_run:
        rows = [(c["Kind"], c["Name"], c["Action"], c["Detail"]) for c in result["Changes"]]
        fmt.print_table(["KIND", "NAME", "ACTION", "DETAIL"], rows)
        for name, plan in (result.get("Plans") or {}).items():
            print(f"\n{name}: where its tasks would go")
            fmt.print_table(["SLOT", "NODE", "RESULT"],
                            [(str(p["Slot"] or "-"), p["Node"] or "-", p["Reason"] or "placed") for p in plan])
        return
    for c in result["Changes"]:
        verb = verbs.get(c["Action"])
        if verb:
            detail = f" ({c['Detail']})" if c["Detail"] else ""
            print(f"{verb} {c['Kind']} {c['Name']}{detail}")
    for w in result.get("Warnings") or []:
        print(f"warning: {w}", file=sys.stderr)


def _stack_services(c: Client, stack: str) -> list[dict[str, Any]]:
    return c.get("/services", params={"status": True, "filters": {"label": [f"{NAMESPACE}={stack}"]}})  # type: ignore[no-any-return]


def _running_tasks(c: Client, service_ids: list[str]) -> list[dict[str, Any]]:
    if not service_ids:
        return []
    tasks = c.get("/tasks", params={"filters": {"service": service_ids, "desired-state": ["running"]}})
    return [t for t in tasks if (t.get("Status") or {}).get("State") == "running"]


def wait_stack(c: Client, stack: str, old_tasks: dict[str, set[str]] | None = None) -> None:
    """Poll until every service of the stack runs all its tasks, no update is under way and no
    service is still waiting for its dependencies; a Rich progress bar on stderr meanwhile.

    ``old_tasks``: for each service this deploy updated, the task IDs it had before. Only tasks
    made since count for those, so an update that has not started yet when the first poll comes
    (the orchestrator acts after the deploy returns) is not taken for a finished one."""
    old_tasks = old_tasks or {}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tasks"),
                  TimeElapsedColumn(), TextColumn("{task.fields[note]}", style="yellow"),
                  console=fmt.stderr()) as bar:
        job = bar.add_task(stack, total=None, note="")
        while True:
            st = c.get("/shoal/stacks/{0}", stack)
            services = _stack_services(c, stack)
            fresh: dict[str, int] = {}
            for t in _running_tasks(c, [s["ID"] for s in services if s["ID"] in old_tasks]):
                if t["ID"] not in old_tasks[t["ServiceID"]]:
                    fresh[t["ServiceID"]] = fresh.get(t["ServiceID"], 0) + 1
            running = desired = 0
            notes: list[str] = []
            busy = False
            for s in services:
                mode = s["Spec"].get("Mode") or {}
                if "ReplicatedJob" in mode or "GlobalJob" in mode:
                    continue
                name = s["Spec"]["Name"]
                status = s.get("ServiceStatus") or {}
                want = status.get("DesiredTasks", 0)
                have = fresh.get(s["ID"], 0) if s["ID"] in old_tasks else status.get("RunningTasks", 0)
                running += min(have, want)
                desired += want
                upd = s.get("UpdateStatus") or {}
                state = upd.get("State", "")
                if state in ("updating", "rollback_started"):
                    busy = True
                    notes.append(f"{name} {state}")
                elif state in ("paused", "rollback_paused", "rollback_completed") and s["ID"] in old_tasks:
                    # Every one of these ends this deploy's update of the service without it.
                    raise CLIError(f"update of {name} did not complete ({state}): {upd.get('Message', '')}")
            status = st.get("Status") or {}
            if status.get("Pending"):
                busy = True
                notes.append(status.get("Message") or "waiting for dependencies")
            bar.update(job, total=desired or None, completed=running, note="; ".join(notes)[:80])
            if not busy and running == desired:
                bar.update(job, description=f"{stack}: converged", note="")
                return
            time.sleep(POLL_SECONDS)


def _deploy(ctx: typer.Context, files: list[Path], name: str | None, prune: bool, dry_run: bool, detach: bool,
            must_exist: bool = False, profiles: list[str] | None = None, allow_outside_files: bool = False,
            team: str | None = None, **options: Any) -> None:
    if not files:
        raise CLIError("Please specify a Compose file (with --compose-file).")
    c = client_of(ctx)
    stack, spec = load_stack(files, name, profiles, allow_outside_files, **options)
    if team:  # the stack, and everything it makes, belongs to the team (api/auth.py, docs/security.md)
        spec = msgspec.structs.replace(spec, Labels={**(spec.Labels or {}), TEAM_LABEL: team})
    body = msgspec.to_builtins(spec)
    params = {"prune": prune or None, "dryRun": dry_run or None}
    watch = not dry_run and not detach
    before: dict[str, set[str]] = {}
    if watch:  # the tasks each service has now, to tell the ones an update makes
        ids = {s["ID"]: s["Spec"]["Name"] for s in _stack_services(c, stack)}
        for t in _running_tasks(c, list(ids)):
            before.setdefault(t["ServiceID"], set()).add(t["ID"])
    if must_exist:  # 404 "stack X not found" rather than a new stack
        result = c.post("/shoal/stacks/{0}/update", stack, body=body, params=params)
    else:
        result = c.post("/shoal/stacks", body=body, params=params)
    _print_changes(result, dry_run)
    if watch:
        # Only a changed task template replaces tasks (replicas or labels alone do not).
        updated = {ch["Name"] for ch in result["Changes"]
                   if ch["Kind"] == "service" and ch["Action"] == "update" and "TaskTemplate" in ch["Detail"]}
        by_name = {s["Spec"]["Name"]: s["ID"] for s in _stack_services(c, stack)}
        wait_stack(c, stack, {by_name[n]: before.get(by_name[n], set()) for n in updated if n in by_name})


@app.command()
def deploy(
    ctx: typer.Context,
    stack: Annotated[str, typer.Argument(metavar="STACK")],
    compose_file: ComposeFiles,
    prune: Annotated[bool, typer.Option("--prune", help="Remove services no longer in the file")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change and where tasks would go")] = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return without waiting for convergence")] = False,
    allow_outside_files: AllowOutsideFiles = False,
    team: Team = None,
) -> None:
    """Deploy a new stack or update an existing one (only what changed)."""
    _deploy(ctx, compose_file, stack, prune, dry_run, detach, allow_outside_files=allow_outside_files, team=team)


@app.command()
def upgrade(
    ctx: typer.Context,
    stack: Annotated[str, typer.Argument(metavar="STACK")],
    compose_file: ComposeFiles,
    prune: Annotated[bool, typer.Option("--prune", help="Remove services no longer in the file")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change and where tasks would go")] = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return without waiting for convergence")] = False,
    allow_outside_files: AllowOutsideFiles = False,
    team: Team = None,
) -> None:
    """Roll an existing stack to a new Compose file: changed services update per their update_config."""
    _deploy(ctx, compose_file, stack, prune, dry_run, detach, must_exist=True, allow_outside_files=allow_outside_files,
            team=team)


@app.command("ls")
def ls(ctx: typer.Context) -> None:
    """List stacks."""
    rows = [(s["Name"], str(s["Services"]), s["Orchestrator"], s["State"]) for s in client_of(ctx).get("/shoal/stacks")]
    fmt.print_table(["NAME", "SERVICES", "ORCHESTRATOR", "STATE"], rows)


@app.command()
def services(ctx: typer.Context, stack: Annotated[str, typer.Argument(metavar="STACK")]) -> None:
    """List the services of a stack."""
    c = client_of(ctx)
    svcs = sorted(_stack_services(c, stack), key=lambda s: s["Spec"].get("Name", ""))
    if not svcs:
        raise CLIError(f"Nothing found in stack: {stack}")
    rows = [(fmt.trunc_id(s["ID"]), s["Spec"].get("Name", ""), _mode_name(s["Spec"].get("Mode") or {}),
             _replicas(s), _image(s["Spec"]), fmt.ports((s.get("Endpoint") or {}).get("Ports"))) for s in svcs]
    fmt.print_table(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows)


@app.command()
def ps(
    ctx: typer.Context,
    stack: Annotated[str, typer.Argument(metavar="STACK")],
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Do not truncate output")] = False,
) -> None:
    """List the tasks of a stack."""
    c = client_of(ctx)
    svcs = {s["ID"]: s["Spec"]["Name"] for s in _stack_services(c, stack)}
    if not svcs:
        raise CLIError(f"Nothing found in stack: {stack}")
    tasks = c.get("/tasks", params={"filters": {"service": list(svcs)}})
    headers = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]
    fmt.print_table(headers, task_rows(tasks, svcs, c.node_names() if tasks else {}, no_trunc))


@app.command()
def scale(
    ctx: typer.Context,
    stack: Annotated[str, typer.Argument(metavar="STACK")],
    pairs: Annotated[list[str], typer.Argument(metavar="SERVICE=REPLICAS...")],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return without waiting for convergence")] = False,
) -> None:
    """Scale services of a stack (rancher-compose scale): `shoal stack scale vote worker=3 result=2`."""
    counts: dict[str, int] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key or not value.isdigit():
            raise CLIError(f"invalid scale specifier {p!r}: expected SERVICE=REPLICAS, e.g. worker=3", 2)
        counts[key] = int(value)
    c = client_of(ctx)
    for s, count in zip(c.post("/shoal/stacks/{0}/scale", stack, body=counts), counts.values(), strict=False):
        print(f"{s['Name']} scaled to {count}")
    if not detach:
        wait_stack(c, stack)


@app.command("inspect")
def inspect(ctx: typer.Context, stack: Annotated[str, typer.Argument(metavar="STACK")]) -> None:
    """Show a stack object (its normalised Compose file, resources and status) as JSON."""
    fmt.print_json([client_of(ctx).get("/shoal/stacks/{0}", stack)])


@app.command("rm")
def rm(ctx: typer.Context, stacks: Annotated[list[str], typer.Argument(metavar="STACK...")]) -> None:
    """Remove stacks: their services, then their networks, secrets and configs."""

    def removed(name: str, body: Any) -> None:
        print(f"Removing stack {name}")
        for w in (body or {}).get("Warnings") or []:
            print(f"warning: {w}", file=sys.stderr)

    delete_each(client_of(ctx), "/shoal/stacks/{0}", stacks, done=removed)
