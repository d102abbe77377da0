"""`shoal compose`: docker-compose's and rancher-compose's commands over a stack.

A Compose project is a stack (cli/stack.py, the manager's ``/shoal/stacks``): ``up`` deploys it,
``scale``/``ps``/``rm``/``logs`` act on its services, ``config`` prints the merged file. The global
options come before the subcommand, as both tools take them (``shoal compose -p dockercoins up -d``):
``-f`` (repeatable), ``-p``, ``--env-file``, ``--project-directory``, and rancher-compose's ``-r``.
Without ``-f`` the first of compose.yaml, compose.yml, docker-compose.yml, docker-compose.yaml in the
project directory (default: here) is used, with a rancher-compose.yml beside it if there is one.

``upgrade SVC`` is Rancher's in-service upgrade: SVC is updated to the file's definition in batches
(Shoal's rolling update; a service labelled ``shoal.update-strategy: blue-green`` is released
blue-green instead). ``upgrade SVC NEW`` is the service-to-service upgrade: NEW (from the file) is
created beside SVC and scaled up batch by batch while SVC is scaled down, each batch only once the
new tasks run (start-first), then with ``--cleanup`` SVC is removed.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
import yaml

from shoal import compose as compose_lib
from shoal.cli import service as service_cli
from shoal.cli import stack as stack_cli
from shoal.cli.client import Client, CLIError, client_of
from shoal.compose import rancher

app = typer.Typer(help="Compose commands, for people coming from docker-compose and rancher-compose.",
                  no_args_is_help=True)

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
_META = "shoal.compose.options"
# What an upgrade waits at most for one batch's new tasks to run before it gives up (and says so).
BATCH_TIMEOUT = 300.0


@dataclass
class Options:
    """The global options, resolved lazily: only commands that need the files read them."""

    files: list[Path] = field(default_factory=list)
    project_name: str | None = None
    env_file: Path | None = None
    project_directory: Path | None = None
    rancher_file: Path | None = None
    profiles: list[str] = field(default_factory=list)
    allow_outside_files: bool = False
    _project: compose_lib.Project | None = None

    def compose_files(self) -> list[Path]:
        if self.files:
            return self.files
        where = self.project_directory or Path(".")
        for name in DEFAULT_FILES:
            if (where / name).is_file():
                return [where / name]
        raise CLIError(f"no configuration file provided: not found ({' or '.join(DEFAULT_FILES)} in "
                       f"{where.resolve()})")

    def rancher(self) -> Path | None:
        if self.rancher_file is not None:
            return self.rancher_file
        files = self.compose_files()
        return rancher.beside(files[0]) if str(files[0]) != "-" else None

    def load_options(self) -> dict[str, Any]:
        return {"env_file": self.env_file, "project_dir": self.project_directory, "rancher_file": self.rancher()}

    def project(self) -> compose_lib.Project:
        if self._project is None:
            self._project = stack_cli.load_project(self.compose_files(), self.project_name, self.profiles or None,
                                                   self.allow_outside_files, **self.load_options())
        return self._project

    def stack(self) -> str:
        """The project (stack) name: -p, else what loading the files says (COMPOSE_PROJECT_NAME, name:, folder)."""
        return self.project_name or self.project().name


def options(ctx: typer.Context) -> Options:
    opts = ctx.meta.get(_META)
    return opts if isinstance(opts, Options) else Options()


@app.callback()
def main(
    ctx: typer.Context,
    file: Annotated[list[Path] | None, typer.Option("--file", "-f", help="Compose file(s), merged in order")] = None,
    project_name: Annotated[str | None, typer.Option("--project-name", "-p", help="Project (stack) name")] = None,
    env_file: Annotated[Path | None, typer.Option("--env-file", "-e", help="Variables file instead of .env")] = None,
    project_directory: Annotated[Path | None, typer.Option(
        "--project-directory", help="Where the files are looked for and relative paths start (default: here)")] = None,
    rancher_file: Annotated[Path | None, typer.Option(
        "--rancher-file", "-r", help="rancher-compose.yml (default: the one beside the Compose file, if any)")] = None,
    profile: Annotated[list[str] | None, typer.Option("--profile", help="Profiles to enable")] = None,
    allow_outside_files: stack_cli.AllowOutsideFiles = False,
) -> None:
    """Compose commands (global options before the subcommand: `shoal compose -p NAME up -d`)."""
    ctx.meta[_META] = Options(files=list(file or []), project_name=project_name, env_file=env_file,
                              project_directory=project_directory, rancher_file=rancher_file,
                              profiles=list(profile or []), allow_outside_files=allow_outside_files)


def _with(ctx: typer.Context, file: list[Path] | None, project_name: str | None) -> Options:
    """The global options, with ``-f``/``-p`` given after ``up``/``down`` (Shoal's older spelling) on top."""
    opts = options(ctx)
    if file:
        opts.files, opts._project = list(file), None
    if project_name:
        opts.project_name = project_name
    return opts


@app.command()
def up(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(
        metavar="[SERVICE...]", help="With --upgrade: these only")] = None,
    file: Annotated[list[Path] | None, typer.Option("--file", "-f", help="Compose file(s)", hidden=True)] = None,
    project_name: Annotated[str | None, typer.Option("--project-name", "-p", hidden=True)] = None,
    profile: Annotated[list[str] | None, typer.Option("--profile", help="Profiles to enable")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return without waiting for convergence")] = False,
    remove_orphans: Annotated[bool, typer.Option("--remove-orphans", help="Remove services not in the file")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change and where tasks would go")] = False,
    allow_outside_files: stack_cli.AllowOutsideFiles = False,
    upgrade_: Annotated[bool, typer.Option(
        "--upgrade", "-u", "--recreate", help="rancher-compose's in-service upgrade of changed services")] = False,
    force_upgrade: Annotated[bool, typer.Option(
        "--force-upgrade", "--force-recreate", help="Upgrade even the services that did not change")] = False,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="With --upgrade: tasks per batch")] = None,
    interval: Annotated[int | None, typer.Option(
        "--interval", min=0, help="With --upgrade: ms between batches")] = None,
    confirm_upgrade: Annotated[bool, typer.Option(
        "--confirm-upgrade", "-c", help="Accepted: Shoal removes the old tasks as it goes")] = False,
    pull: Annotated[bool, typer.Option("--pull", help="Accepted: each engine pulls the image it lacks")] = False,
) -> None:
    """Deploy the project across the cluster (the same as `shoal stack deploy`); with --upgrade,
    Rancher's in-service upgrade of the named (or all) services, batch by batch."""
    opts = _with(ctx, file, project_name)
    opts.allow_outside_files = opts.allow_outside_files or allow_outside_files
    if upgrade_ or force_upgrade:
        c = client_of(ctx)
        for name in names or list(opts.project().services):
            old = _services(c, opts.stack(), [name])[0]
            _in_service(c, opts, old, name, batch_size, interval, not detach, -1, force_upgrade)
        return
    if names:
        raise CLIError("up deploys the whole project; name services with --upgrade only")
    stack_cli._deploy(ctx, opts.compose_files(), opts.project_name, remove_orphans, dry_run, detach,
                      profiles=(profile or opts.profiles) or None,
                      allow_outside_files=allow_outside_files or opts.allow_outside_files, **opts.load_options())


@app.command()
def down(
    ctx: typer.Context,
    file: Annotated[list[Path] | None, typer.Option("--file", "-f", help="Compose file(s)", hidden=True)] = None,
    project_name: Annotated[str | None, typer.Option("--project-name", "-p", hidden=True)] = None,
    allow_outside_files: stack_cli.AllowOutsideFiles = False,
) -> None:
    """Remove the project's services, networks, secrets and configs (`shoal stack rm`)."""
    opts = _with(ctx, file, project_name)
    opts.allow_outside_files = opts.allow_outside_files or allow_outside_files
    stack_cli.rm(ctx, [opts.stack()])


@app.command()
def scale(
    ctx: typer.Context,
    pairs: Annotated[list[str], typer.Argument(metavar="SERVICE=NUM...")],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return without waiting for convergence")] = False,
) -> None:
    """Set the number of tasks of services (rancher-compose scale rng=3)."""
    stack_cli.scale(ctx, options(ctx).stack(), pairs, detach)


@app.command()
def ps(
    ctx: typer.Context,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Do not truncate output")] = False,
) -> None:
    """List the project's tasks: where each runs, or why it waits."""
    stack_cli.ps(ctx, options(ctx).stack(), no_trunc)


def _services(c: Client, stack: str, names: list[str]) -> list[dict[str, Any]]:
    """The stack's services (all, or those named by their Compose names), sorted; unknown ones are an error."""
    svcs = {s["Spec"]["Name"]: s for s in stack_cli._stack_services(c, stack)}
    if not svcs:
        raise CLIError(f"Nothing found in stack: {stack}")
    if not names:
        return [svcs[n] for n in sorted(svcs)]
    out = []
    for n in names:
        svc = svcs.get(f"{stack}_{n}") or svcs.get(n)
        if svc is None:
            raise CLIError(f"no such service: {n} (in stack {stack})")
        out.append(svc)
    return out


@app.command()
def logs(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(metavar="[SERVICE...]")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow log output")] = False,
    tail: Annotated[str, typer.Option("--tail", "-n", help='Number of lines to show from the end ("all")')] = "all",
    timestamps: Annotated[bool, typer.Option("--timestamps", "-t", help="Show timestamps")] = False,
) -> None:
    """Show the logs of the project's services (each line prefixed with its task)."""
    c = client_of(ctx)
    targets = [s["Spec"]["Name"] for s in _services(c, options(ctx).stack(), list(names or []))]

    def one(name: str) -> None:
        service_cli.logs(ctx, name, follow=follow, tail=tail, timestamps=timestamps, since=None, no_trunc=False,
                         no_task_ids=False, raw=False)

    if not follow or len(targets) == 1:
        for name in targets:
            one(name)
        return
    # Following several services: one stream each, lines interleaved as they come (docker compose does too).
    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in targets]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    except KeyboardInterrupt:
        return


@app.command("rm")
def rm(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(metavar="[SERVICE...]")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Do not ask (Shoal never asks)")] = False,
    stop: Annotated[bool, typer.Option("--stop", "-s", help="Accepted: removing a service stops its tasks")] = False,
) -> None:
    """Remove the named services of the project, or the whole project (its stack) without names."""
    stack = options(ctx).stack()
    if not names:
        stack_cli.rm(ctx, [stack])
        return
    c = client_of(ctx)
    for svc in _services(c, stack, names):
        c.delete("/services/{0}", svc["ID"])
        print(f"Removing service {svc['Spec']['Name']}")


@app.command()
def config(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only validate; print nothing")] = False,
    services: Annotated[bool, typer.Option("--services", help="Print the service names")] = False,
) -> None:
    """Validate the files (with rancher-compose.yml merged in) and print the normalised project."""
    project = options(ctx).project()
    for w in project.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if quiet:
        return
    if services:
        print("\n".join(project.services))
        return
    sys.stdout.write(yaml.safe_dump(compose_lib.normalised(project), sort_keys=False, default_flow_style=False))


# --------------------------------------------------------------------------- upgrade


def _spec_of(opts: Options, name: str) -> Any:
    """The ServiceSpec the files give service ``name`` (as the Docker API's JSON)."""
    project = opts.project()
    if name not in project.services:
        raise CLIError(f"no such service in the Compose files: {name}")
    try:
        res = compose_lib.to_stack(project, opts.stack())
    except compose_lib.ComposeError as e:
        raise CLIError(str(e)) from None
    return msgspec.to_builtins(res.services[name])


def _replicas(svc: dict[str, Any]) -> int:
    rep = (svc["Spec"].get("Mode") or {}).get("Replicated")
    if rep is None:
        raise CLIError(f"service {svc['Spec']['Name']} is not a replicated service; it cannot be upgraded in batches")
    return int(rep.get("Replicas") or 0)


def _running(c: Client, service_id: str, since_ids: set[str] | None = None) -> int:
    return sum(1 for t in stack_cli._running_tasks(c, [service_id]) if not since_ids or t["ID"] not in since_ids)


def _wait_running(c: Client, svc: dict[str, Any], want: int, old_ids: set[str] | None = None) -> None:
    deadline = time.monotonic() + BATCH_TIMEOUT
    while _running(c, svc["ID"], old_ids) < want:
        if time.monotonic() > deadline:
            raise CLIError(f"{svc['Spec']['Name']}: {want} task(s) not running after {BATCH_TIMEOUT:.0f}s "
                           f"(see `shoal compose ps`); upgrade stopped")
        time.sleep(stack_cli.POLL_SECONDS)


def _changed(c: Client, opts: Options, full_name: str) -> bool:
    """Whether the file changes the tasks of ``full_name`` (the manager's own diff, by a dry run)."""
    _, spec = stack_cli.load_stack(opts.compose_files(), opts.project_name, opts.profiles or None,
                                   opts.allow_outside_files, **opts.load_options())
    result = c.post("/shoal/stacks/{0}/update", opts.stack(), body=msgspec.to_builtins(spec),
                    params={"dryRun": True})
    return any(ch["Kind"] == "service" and ch["Name"] == full_name and ch["Action"] == "update"
               and "TaskTemplate" in ch["Detail"] for ch in result["Changes"])


def _in_service(c: Client, opts: Options, svc: dict[str, Any], name: str, batch_size: int | None,
                interval: int | None, wait: bool, scale: int, force: bool = False) -> None:
    spec = _spec_of(opts, name)
    if not force and not _changed(c, opts, svc["Spec"]["Name"]):
        # Nothing to roll: waiting for new tasks would wait for ever (rancher-compose says the same).
        print(f"{svc['Spec']['Name']} is up to date (--force-upgrade replaces its tasks anyway)")
        return
    upd = dict(spec.get("UpdateConfig") or {"Parallelism": 1, "Delay": 2_000_000_000, "Order": "stop-first"})
    if batch_size is not None:
        upd["Parallelism"] = batch_size
    if interval is not None:
        upd["Delay"] = interval * 1_000_000
    spec["UpdateConfig"] = upd
    keep = _replicas(svc) if scale < 0 else scale  # Rancher keeps the service's scale unless told
    if "Replicated" in (spec.get("Mode") or {}):
        spec["Mode"] = {"Replicated": {"Replicas": keep}}
    spec["TaskTemplate"]["ForceUpdate"] = (svc["Spec"].get("TaskTemplate") or {}).get("ForceUpdate", 0) + force
    before = {t["ID"] for t in stack_cli._running_tasks(c, [svc["ID"]])}
    c.post("/services/{0}/update", svc["ID"], body=spec, params={"version": svc["Version"]["Index"]})
    print(f"Upgrading {svc['Spec']['Name']} (batch size {upd['Parallelism']}, interval "
          f"{upd['Delay'] // 1_000_000} ms, {upd.get('Order') or 'stop-first'})")
    if not wait:
        return
    stack_cli.wait_stack(c, opts.stack(), {svc["ID"]: before})
    print(f"Upgraded {svc['Spec']['Name']}")


def _service_to_service(c: Client, opts: Options, old: dict[str, Any], new_name: str, batch_size: int | None,
                        interval: int | None, scale: int, cleanup: bool) -> None:
    stack = opts.stack()
    spec = _spec_of(opts, new_name)
    upd = spec.get("UpdateConfig") or {}
    batch = batch_size if batch_size is not None else int(upd.get("Parallelism") or 2)  # rancher-compose: 2
    pause = (interval if interval is not None else 2000) / 1000  # rancher-compose: 2000 ms
    target = _replicas(old) if scale < 0 else scale
    found = [s for s in stack_cli._stack_services(c, stack) if s["Spec"]["Name"] == spec["Name"]]
    if found:
        new = found[0]
        have = _replicas(new)
    else:
        spec["Mode"] = {"Replicated": {"Replicas": 0}}
        c.post("/services/create", body=spec)
        print(f"Creating service {spec['Name']}")
        new = next(s for s in stack_cli._stack_services(c, stack) if s["Spec"]["Name"] == spec["Name"])
        have = 0
    left = _replicas(old)
    key_old, key_new = old["Spec"]["Name"], new["Spec"]["Name"]
    while have < target or left > 0:
        if have < target:  # start first: the new batch runs before the old one goes
            have = min(target, have + batch)
            c.post("/shoal/stacks/{0}/scale", stack, body={key_new: have})
            _wait_running(c, new, have)
        left = 0 if have >= target else max(0, left - batch)
        c.post("/shoal/stacks/{0}/scale", stack, body={key_old: left})
        print(f"{key_new}: {have}/{target}, {key_old}: {left}")
        if have < target or left > 0:
            time.sleep(pause)
    if cleanup:
        c.delete("/services/{0}", old["ID"])
        print(f"Removing service {key_old}")


@app.command()
def upgrade(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE")],
    new_service: Annotated[str | None, typer.Argument(metavar="[NEW_SERVICE]")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Tasks per batch (default: the file's upgrade_strategy/update_config)")] = None,
    interval: Annotated[int | None, typer.Option(
        "--interval", min=0, help="Milliseconds between batches (default: the file's, else 2000)")] = None,
    scale: Annotated[int, typer.Option("--scale", help="Final number of tasks (default: the service's now)")] = -1,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait for the upgrade to complete")] = False,
    cleanup: Annotated[bool, typer.Option(
        "--cleanup", "-c", help="Remove the old service once upgraded (service-to-service; implies --wait)")] = False,
    pull: Annotated[bool, typer.Option("--pull", help="Accepted: each engine pulls the image it lacks")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="In-service: replace the tasks even if nothing changed")] = False,
) -> None:
    """Rancher's upgrade: SERVICE to its definition in the file, or SERVICE → NEW_SERVICE batch by batch."""
    opts = options(ctx)
    c = client_of(ctx)
    old = _services(c, opts.stack(), [service])[0]
    if new_service is None:
        _in_service(c, opts, old, service, batch_size, interval, wait or cleanup, scale, force)
    else:
        _service_to_service(c, opts, old, new_service, batch_size, interval, scale, cleanup)
