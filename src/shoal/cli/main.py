"""The `shoal` command: the daemon, and a client for a Shoal daemon's Docker-compatible API.

Errors are one line on stderr, never a traceback: a daemon error is "Error response from daemon:
<message>" (exit 1), an unreachable daemon says so (exit 1), a bad flag value is a usage error
(exit 2). Set SHOAL_DEBUG=1 to get the traceback of an unexpected error.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import platform
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # recent Typer vendors click; older ones use the click package
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef]

from shoal import API_VERSION, __version__
from shoal.cli import bench, compose, console, job, lab, logs, metrics, node, service, stack, store, swarm, user
from shoal.cli.client import DEFAULT_HOST, Client, CLIError, TLSSettings, describe_error, resolve_host
from shoal.cli.parse import flag, parse_choice
from shoal.cli.secret import config_app, secret_app


class ShoalGroup(TyperGroup):
    """The root command: maps every failure to the CLI's one-line error and exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (click_exc.ClickException, typer.Exit, typer.Abort):
            raise
        except CLIError as e:
            _fail(e.message, e.code)
        except BrokenPipeError:
            # The reader went away (`shoal service logs web | head`): stop quietly, as a SIGPIPE'd
            # process does, and keep Python from complaining when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except Exception as e:
            host = ctx.obj.host if isinstance(ctx.obj, Client) else resolve_host(None)
            err = describe_error(e, host)
            if err is not None:
                _fail(err.message, err.code)
            if os.environ.get("SHOAL_DEBUG"):
                raise
            _fail(f"Error: {type(e).__name__}: {e}", 1)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run without click's standalone handling so usage errors print as one line."""
        try:
            rv = super().main(args=args, prog_name=prog_name or "shoal", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except click_exc.NoArgsIsHelpError as e:
            print(e.format_message())
            rv = 0
        except click_exc.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = ctx.command_path if ctx is not None else "shoal"
            hint = f" See '{where} --help'." if isinstance(e, click_exc.UsageError) else ""
            message = " ".join(e.format_message().split())
            if hint and not message.endswith((".", "?", "!")):
                message += "."
            print(f"{where}: {message}{hint}", file=sys.stderr)
            rv = e.exit_code
        except typer.Abort:
            print("Aborted.", file=sys.stderr)
            rv = 1
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str, code: int) -> None:
    print(message, file=sys.stderr)
    raise typer.Exit(code)


app = typer.Typer(
    cls=ShoalGroup,
    name="shoal",
    help="Shoal: a container orchestrator that speaks the Docker Engine API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["--help"]},
)
app.add_typer(service.app, name="service")
app.add_typer(node.app, name="node")
app.add_typer(swarm.app, name="swarm")
app.add_typer(lab.app, name="lab")
app.add_typer(bench.app, name="bench")
app.add_typer(stack.app, name="stack")
app.add_typer(compose.app, name="compose")
app.add_typer(secret_app, name="secret")
app.add_typer(config_app, name="config")
app.add_typer(job.app, name="job")
app.add_typer(store.app, name="store")
app.add_typer(user.app, name="user")
app.add_typer(metrics.app, name="metrics")
app.add_typer(logs.app, name="logs")
app.command("audit")(user.audit)
app.command("console")(console.console)


@app.callback()
def root(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option("--host", "-H", metavar="ADDR",
                     help=f"Daemon socket to connect to (default: $SHOAL_HOST, $DOCKER_HOST, {DEFAULT_HOST})"),
    ] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Use TLS; implied by --tlsverify")] = False,
    tlsverify: Annotated[bool, typer.Option("--tlsverify", help="Use TLS and verify the daemon "
                                            "(default: $DOCKER_TLS_VERIFY)")] = False,
    tlscacert: Annotated[str | None, typer.Option("--tlscacert", help="Trust certs signed only by this CA "
                                                   "(default: $DOCKER_CERT_PATH/ca.pem)")] = None,
    tlscert: Annotated[str | None, typer.Option("--tlscert", help="TLS certificate file "
                                                 "(default: $DOCKER_CERT_PATH/cert.pem)")] = None,
    tlskey: Annotated[str | None, typer.Option("--tlskey", help="TLS key file "
                                                "(default: $DOCKER_CERT_PATH/key.pem)")] = None,
) -> None:
    settings = TLSSettings.resolve(tls, tlsverify, tlscacert, tlscert, tlskey)
    ctx.obj = Client(resolve_host(host), tls=settings, token=os.environ.get("SHOAL_TOKEN", ""))


LogLevel = parse_choice("debug", "info", "warning", "error")


@app.command()
def daemon(
    hosts: Annotated[
        list[str] | None, typer.Option("--host", "-H", metavar="ADDR", help="Socket(s) to listen on (repeatable)")
    ] = None,
    data_root: Annotated[str, typer.Option(help="Where the daemon keeps its state")] = "/var/lib/shoal",
    engine: Annotated[str, typer.Option(help="The node's container engine")] = "unix:///var/run/docker.sock",
    advertise_addr: Annotated[str | None, typer.Option(help="Address other nodes reach this one at")] = None,
    hostname: Annotated[str | None, typer.Option(help="This node's name in the swarm (default: the engine's)")] = None,
    log_level: Annotated[str, typer.Option("--log-level", "-l", parser=flag(LogLevel))] = "info",
    tls: Annotated[bool, typer.Option("--tls", help="Use TLS on TCP listeners; implied by --tlsverify")] = False,
    tlsverify: Annotated[bool, typer.Option("--tlsverify", help="Use TLS and require a client certificate")] = False,
    tlscacert: Annotated[str | None, typer.Option(
        "--tlscacert", help="CA whose client certificates are trusted as admins (dockerd's meaning)")] = None,
    tlscert: Annotated[str | None, typer.Option(
        "--tlscert", help="Server certificate (default: one the daemon makes under <data-root>/tls)")] = None,
    tlskey: Annotated[str | None, typer.Option("--tlskey", help="Server certificate's key")] = None,
    insecure_tcp: Annotated[bool, typer.Option(
        "--insecure-tcp", help="Allow -H tcp://... without TLS: anyone who reaches it controls the swarm")] = False,
    stats_interval: Annotated[float, typer.Option(
        "--stats-interval", min=0, help="Seconds between samples of the tasks' CPU/memory (0: none)")] = 10.0,
    metrics_addr: Annotated[str | None, typer.Option(
        "--metrics-addr", metavar="HOST:PORT",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP, /metrics only)")] = None,
) -> None:
    """Run the Shoal daemon (manager and agent) in the foreground."""
    from shoal.api.tls import TLSConfigError, TLSOptions
    from shoal.daemon import run_daemon  # the daemon pulls in the whole manager: load it only here
    from shoal.metrics import MetricsAddrError

    options = TLSOptions(tls=tls or tlsverify, verify=tlsverify, cacert=tlscacert, cert=tlscert, key=tlskey)
    try:
        options.check()
        result = run_daemon(
            hosts=hosts or [DEFAULT_HOST],
            data_root=data_root,
            engine=engine,
            advertise_addr=advertise_addr,
            hostname=hostname,
            log_level=log_level,
            tls=options,
            insecure_tcp=insecure_tcp,
            stats_interval_s=stats_interval,
            metrics_addr=metrics_addr,
        )
        if inspect.iscoroutine(result):
            try:
                asyncio.run(result)
            except KeyboardInterrupt:
                pass
    except (TLSConfigError, MetricsAddrError) as e:
        raise CLIError(f"shoal daemon: {e}") from None


def _client(ctx: typer.Context) -> Client:
    obj = ctx.find_root().obj
    assert isinstance(obj, Client)
    return obj


@app.command()
def info(ctx: typer.Context) -> None:
    """Display system-wide information."""
    c = _client(ctx)
    i = c.info()
    sw = i.get("Swarm") or {}
    lines = [
        "Server:",
        f" Containers: {i.get('Containers', 0)}",
        f"  Running: {i.get('ContainersRunning', 0)}",
        f" Server Version: {i.get('ServerVersion', '')}",
        f" Swarm: {sw.get('LocalNodeState', 'inactive')}",
    ]
    if sw.get("LocalNodeState") == "active":
        lines += [
            f"  NodeID: {sw.get('NodeID', '')}",
            f"  Is Manager: {str(bool(sw.get('ControlAvailable'))).lower()}",
        ]
        cluster = sw.get("Cluster") or {}
        if cluster:
            orch = (cluster.get("Spec") or {}).get("Orchestration") or {}
            lines += [
                f"  ClusterID: {cluster.get('ID', '')}",
                f"  Managers: {sw.get('Managers', 0)}",
                f"  Nodes: {sw.get('Nodes', 0)}",
                "  Orchestration:",
                f"   Task History Retention Limit: {orch.get('TaskHistoryRetentionLimit', 5)}",
            ]
        lines.append(f"  Node Address: {sw.get('NodeAddr', '')}")
        managers = [m.get("Addr", "") for m in sw.get("RemoteManagers") or []]
        if managers:
            lines += ["  Manager Addresses:", *[f"   {a}" for a in managers]]
    lines += [
        f" Operating System: {i.get('OperatingSystem', '')}",
        f" OSType: {i.get('OSType', '')}",
        f" Architecture: {i.get('Architecture', '')}",
        f" CPUs: {i.get('NCPU', 0)}",
        f" Total Memory: {i.get('MemTotal', 0) / (1 << 30):.3g}GiB",
        f" Name: {i.get('Name', '')}",
        f" ID: {i.get('ID', '')}",
    ]
    print("\n".join(lines))


@app.command()
def version(ctx: typer.Context) -> None:
    """Show the Shoal version information."""
    c = _client(ctx)
    print("Client: Shoal")
    print(f" Version:\t{__version__}".expandtabs(16))
    print(f" API version:\t{API_VERSION}".expandtabs(16))
    print(f" Python:\t{platform.python_version()}".expandtabs(16))
    print(f" OS/Arch:\t{sys.platform}/{platform.machine()}".expandtabs(16))
    print()
    v = c.get("/version")
    print("Server: Shoal")
    rows = [("Version", v.get("Version", "")), ("API version", f"{v.get('ApiVersion', '')} "
            f"(minimum version {v.get('MinAPIVersion', '')})"), ("Git commit", v.get("GitCommit", "")),
            ("OS/Arch", f"{v.get('Os', '')}/{v.get('Arch', '')}")]
    for k, val in rows:
        if val:
            print(f" {k}:\t{val}".expandtabs(16))


def main() -> None:
    """Console-script entry point."""
    app()
