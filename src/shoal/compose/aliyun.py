"""Aliyun Container Service's service labels: ``aliyun.scale``, ``aliyun.global``, ``aliyun.depends``,
``aliyun.rolling_updates[.parallelism]`` and ``aliyun.probe.*``, read from a service's ``labels:``.

Aliyun's Compose V1/V2 templates said in labels what V3 files say with ``deploy:`` and
``healthcheck:`` keys (its label reference, "标签说明", pairs each label with the V3 key). So each
label becomes the ServiceSpec field that key fills, and where a file sets both, the Compose key
wins with a warning: it is what Aliyun's own V3 templates use and what docker stack deploy reads.

- ``aliyun.scale: N`` → replicated mode, N replicas (``deploy.replicas`` / v2 ``scale`` win).
- ``aliyun.global: true`` → global mode (``deploy.mode`` wins); with ``aliyun.scale`` an error.
- ``aliyun.depends: a,b`` → the service is created once every task a and b want runs (the stack
  deployer's ``service_healthy``, so a dependency with a probe must also be healthy); merged with
  ``depends_on`` (its condition wins for a service both name). Unknown names, the service itself
  and cycles are errors naming the label.
- ``aliyun.rolling_updates: true`` → update ``aliyun.rolling_updates.parallelism`` tasks (default
  1) at a time, the next once the last runs (and is healthy); ``false`` → all tasks at once, which
  is what Aliyun did without the label. ``deploy.update_config`` wins.
- ``aliyun.probe.url``: ``tcp://container:PORT`` or ``http://container[:PORT]/path`` → the agent-run
  check (``shoal.health.*``, agent/health.py), probed from the node as Aliyun probed from the host;
  ``aliyun.probe.cmd`` → the engine's HEALTHCHECK (``CMD-SHELL``), run inside the container.
  ``aliyun.probe.timeout_seconds`` is the probe's timeout; ``aliyun.probe.initial_delay_seconds``
  the seconds before the first probe counts (engine: ``StartPeriod``; agent: added to the
  initializing timeout, the window failures do not count in). Both every 2 s, Aliyun's interval.

Any other ``aliyun.*`` label is an error naming file, line and key, except the families other parts
of Shoal read from the same labels (``_ELSEWHERE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .. import models as m
from ..extensions import (
    ALIYUN_AUTOSCALE_PREFIX,
    HEALTH_INITIALIZING_TIMEOUT_LABEL,
    HEALTH_INTERVAL_LABEL,
    HEALTH_PORT_LABEL,
    HEALTH_PREFIX,
    HEALTH_REQUEST_LINE_LABEL,
    HEALTH_RESPONSE_TIMEOUT_LABEL,
    parse_health_check,
)
from .loader import Project
from .merge import to_mapping
from .source import KeyPath

PREFIX = "aliyun."
SCALE = "aliyun.scale"
GLOBAL = "aliyun.global"
DEPENDS = "aliyun.depends"
ROLLING_UPDATES = "aliyun.rolling_updates"
PARALLELISM = "aliyun.rolling_updates.parallelism"
PROBE_URL = "aliyun.probe.url"
PROBE_CMD = "aliyun.probe.cmd"
PROBE_TIMEOUT = "aliyun.probe.timeout_seconds"
PROBE_DELAY = "aliyun.probe.initial_delay_seconds"
KNOWN = (SCALE, GLOBAL, DEPENDS, ROLLING_UPDATES, PARALLELISM, PROBE_URL, PROBE_CMD, PROBE_TIMEOUT, PROBE_DELAY)
# Read by other parts of Shoal from the same labels: the load balancer and router, log collection,
# the autoscaler (compose/autoscale.py), the GPU reservation (convert.py).
_ELSEWHERE = ("aliyun.lb.", "aliyun.routing.", "aliyun.log_store_", ALIYUN_AUTOSCALE_PREFIX, "aliyun.gpu")

DEPENDS_CONDITION = "service_healthy"  # every task the dependency wants runs (and is healthy)
PROBE_INTERVAL = "2s"  # Aliyun: "每隔一定时间(默认两秒)"
INITIALIZING_S = 60  # the agent check's default initializing timeout (extensions.HealthCheck)
SECOND_NS = 1_000_000_000
_BOOLS = {"true": True, "false": False}


@dataclass
class Settings:
    """What a service's Aliyun labels ask for; None/empty: the label is absent (or yields to a key)."""

    replicas: int | None = None
    global_mode: bool = False
    depends: list[str] = field(default_factory=list)
    update: m.UpdateConfig | None = None
    healthcheck: m.HealthConfig | None = None
    health_labels: dict[str, str] = field(default_factory=dict)  # shoal.health.* for the service


def labels(svc: dict[str, Any]) -> dict[str, str]:
    """The service's ``aliyun.*`` labels (list or mapping form), values as strings."""
    return {str(k): "" if v is None else str(v) for k, v in to_mapping(svc.get("labels")).items()
            if str(k).startswith(PREFIX)}


def label_path(svc: dict[str, Any], name: str, key: str) -> KeyPath:
    """The key path of label ``key`` in service ``name``, so an error points at its line."""
    raw = svc.get("labels")
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            if str(item).partition("=")[0] == key:
                return ("services", name, "labels", i)
        return ("services", name, "labels")
    return ("services", name, "labels", key)


def depends(svc: dict[str, Any]) -> list[str]:
    """The names ``aliyun.depends`` lists (comma separated, blanks ignored)."""
    raw = labels(svc).get(DEPENDS, "")
    return [d.strip() for d in raw.split(",") if d.strip()]


def settings(project: Project, name: str, svc: dict[str, Any]) -> Settings:
    """Service ``name``'s Aliyun labels checked and mapped; bad ones raise the project's ComposeError
    at the label's line; a label a Compose key overrides adds a warning to ``project.warnings``."""
    mine = labels(svc)
    out = Settings()
    if not mine:
        return out

    def error(key: str, message: str) -> Exception:
        return project.error(f"{name}: {key}: {message}", label_path(svc, name, key))

    def warn(key: str, message: str) -> None:
        project.warnings.append(f"{project.where(label_path(svc, name, key))}: {name}: {key}: {message}")

    for key in mine:
        if key not in KNOWN and not key.startswith(_ELSEWHERE):
            raise error(key, f"unknown Aliyun label; Shoal honours {', '.join(KNOWN)} and the "
                             "aliyun.lb.*, aliyun.routing.*, aliyun.log_store_*, aliyun.auto_scaling.* and "
                             "aliyun.gpu families (docs/compose.md)")
    deploy = svc.get("deploy") or {}

    is_global = _bool(mine, GLOBAL, error) if GLOBAL in mine else False
    if SCALE in mine:
        scale = _whole(mine, SCALE, error)
        if is_global:
            raise error(SCALE, f"a global service ({GLOBAL}: true) runs one task per node; it takes no count")
        if "replicas" in deploy or "scale" in svc:
            which = "deploy.replicas" if "replicas" in deploy else "scale"
            warn(SCALE, f"{which} is set too and wins (Aliyun's V3 templates use it)")
        elif deploy.get("mode") == "global":
            raise error(SCALE, "deploy.mode is global; a global service takes no count")
        else:
            out.replicas = scale
    if is_global:
        if "mode" in deploy:
            if deploy["mode"] != "global":
                warn(GLOBAL, f"deploy.mode {deploy['mode']!r} is set too and wins")
        elif "replicas" in deploy or "scale" in svc:
            raise error(GLOBAL, "a global service runs one task per node; it takes no replicas/scale")
        else:
            out.global_mode = True

    if DEPENDS in mine:
        out.depends = _depends(project, name, svc, error)

    if ROLLING_UPDATES in mine:
        rolling = _bool(mine, ROLLING_UPDATES, error)
        parallelism = 1
        if PARALLELISM in mine:
            parallelism = _whole(mine, PARALLELISM, error)
            if parallelism < 1:
                raise error(PARALLELISM, "must be at least 1")
            if not rolling:
                raise error(PARALLELISM, f"takes effect only with {ROLLING_UPDATES}: true")
        if "update_config" in deploy:
            warn(ROLLING_UPDATES, "deploy.update_config is set too and wins")
        elif rolling:
            out.update = m.UpdateConfig(Parallelism=parallelism, FailureAction="pause", Order="stop-first")
        else:
            out.update = m.UpdateConfig(Parallelism=0, FailureAction="pause", Order="stop-first")
    elif PARALLELISM in mine:
        raise error(PARALLELISM, f"takes effect only with {ROLLING_UPDATES}: true (Aliyun's rule)")

    _probe(project, name, svc, mine, out, error, warn)
    return out


def _bool(mine: dict[str, str], key: str, error: Any) -> bool:
    value = _BOOLS.get(mine[key].strip().lower())
    if value is None:
        raise error(key, f"{mine[key]!r}: must be true or false")
    return value


def _whole(mine: dict[str, str], key: str, error: Any) -> int:
    text = mine[key].strip()
    if not re.fullmatch(r"\d+", text):
        raise error(key, f"{mine[key]!r}: must be a whole number, 0 or more")
    return int(text)


def _depends(project: Project, name: str, svc: dict[str, Any], error: Any) -> list[str]:
    deps = depends(svc)
    if not deps:
        raise error(DEPENDS, "names no service (a comma-separated list of the file's services)")
    for dep in deps:
        if dep == name:
            raise error(DEPENDS, f"service {name!r} cannot depend on itself")
        if dep in project.services:
            continue
        if dep in project.disabled:
            profs = ", ".join(project.disabled[dep].get("profiles") or [])
            raise error(DEPENDS, f"{dep!r} is only in profile(s) {profs}")
        raise error(DEPENDS, f"undefined service {dep!r} (services: {', '.join(sorted(project.services))})")
    return deps


def _seconds(mine: dict[str, str], key: str, error: Any) -> int:
    text = mine[key].strip()
    if not re.fullmatch(r"\d+", text):
        raise error(key, f"{mine[key]!r}: must be a whole number of seconds")
    return int(text)


def _probe(project: Project, name: str, svc: dict[str, Any], mine: dict[str, str], out: Settings,
           error: Any, warn: Any) -> None:
    url, cmd = mine.get(PROBE_URL, "").strip(), mine.get(PROBE_CMD, "").strip()
    extras = [k for k in (PROBE_TIMEOUT, PROBE_DELAY) if k in mine]
    if not url and not cmd:
        for key in (PROBE_URL, PROBE_CMD):
            if key in mine:
                raise error(key, "is empty")
        for key in extras:  # Aliyun ignores them without a probe; say so rather than drop them silently
            warn(key, f"ignored without {PROBE_URL} or {PROBE_CMD}")
        return
    if url and cmd:
        raise error(PROBE_CMD, f"a service takes {PROBE_URL} or {PROBE_CMD}, not both")
    timeout = _seconds(mine, PROBE_TIMEOUT, error) if PROBE_TIMEOUT in mine else None
    if timeout == 0:
        raise error(PROBE_TIMEOUT, "must be at least 1")
    delay = _seconds(mine, PROBE_DELAY, error) if PROBE_DELAY in mine else 0
    if cmd:
        key = PROBE_CMD
        if "healthcheck" in svc:
            raise error(key, "the service has a healthcheck too; use one of them")
        out.healthcheck = m.HealthConfig(Test=["CMD-SHELL", cmd], Interval=2 * SECOND_NS,
                                         Timeout=(timeout or 0) * SECOND_NS, StartPeriod=delay * SECOND_NS)
        return
    key = PROBE_URL
    for other in ("health_check", "x-shoal-healthcheck"):
        if other in svc:
            raise error(key, f"the service has {other} too; use one of them")
    if any(str(k).startswith(HEALTH_PREFIX) for k in to_mapping((svc.get("deploy") or {}).get("labels"))):
        raise error(key, f"the service has {HEALTH_PREFIX}* labels too; use one of them")
    health = {HEALTH_INTERVAL_LABEL: PROBE_INTERVAL, **_url_labels(url, lambda msg: error(key, msg))}
    if timeout is not None:
        health[HEALTH_RESPONSE_TIMEOUT_LABEL] = f"{timeout}s"
    if delay:
        health[HEALTH_INITIALIZING_TIMEOUT_LABEL] = f"{INITIALIZING_S + delay}s"
    try:
        parse_health_check(health)  # the agent's own check of what it will read (a port in range ...)
    except ValueError as e:
        raise error(key, f"{url!r}: {e}") from None
    out.health_labels = health


def _url_labels(url: str, error: Any) -> dict[str, str]:
    """``tcp://container:PORT`` → a TCP connect to PORT; ``http://container[:PORT]/path`` → ``GET
    /path`` on PORT (80 by default). The host must be the word ``container``, as Aliyun requires."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise error(f"{url!r}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("tcp", "http"):
        raise error(f"{url!r}: the scheme must be tcp or http (tcp://container:3306, http://container:8080/ping)")
    if parts.hostname != "container":
        raise error(f"{url!r}: the host must be the word 'container' (the probe goes to each task's container)")
    if scheme == "tcp":
        if port is None or (parts.path not in ("", "/")) or parts.query:
            raise error(f"{url!r}: a TCP probe is tcp://container:PORT")
        return {HEALTH_PORT_LABEL: str(port)}
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(c.isspace() for c in path):
        raise error(f"{url!r}: the path may not contain spaces")
    return {HEALTH_PORT_LABEL: str(port or 80), HEALTH_REQUEST_LINE_LABEL: f"GET {path} HTTP/1.0"}
