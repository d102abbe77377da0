"""Agent-run health checks in Compose files: Rancher's ``health_check:`` and ``x-shoal-healthcheck``.

rancher-compose.yml (and Rancher 1.x's docker-compose.yml) put a ``health_check:`` mapping in a
service: port, request_line, interval / response_timeout / initializing_timeout /
reinitializing_timeout in milliseconds, healthy_threshold, unhealthy_threshold, strategy. No
Compose schema knows the key, so the loader lifts it out of the copy it validates (after checking
it here, with the file and line of a bad value) and keeps it in the service. ``x-shoal-healthcheck``
takes the same keys wherever the file's version allows extension keys in a service. Both become the
service's ``shoal.health.*`` labels (shoal/extensions.py), which is what the API and the agents read.
"""

from __future__ import annotations

from typing import Any

from shoal import extensions as ext

from .keymap import in_compose_words, mapping_values
from .source import Source

RANCHER_KEY = "health_check"
EXTENSION_KEY = "x-shoal-healthcheck"
_LABELS = {
    "port": ext.HEALTH_PORT_LABEL,
    "request_line": ext.HEALTH_REQUEST_LINE_LABEL,
    "interval": ext.HEALTH_INTERVAL_LABEL,
    "response_timeout": ext.HEALTH_RESPONSE_TIMEOUT_LABEL,
    "healthy_threshold": ext.HEALTH_HEALTHY_THRESHOLD_LABEL,
    "unhealthy_threshold": ext.HEALTH_UNHEALTHY_THRESHOLD_LABEL,
    "initializing_timeout": ext.HEALTH_INITIALIZING_TIMEOUT_LABEL,
    "reinitializing_timeout": ext.HEALTH_REINITIALIZING_TIMEOUT_LABEL,
    "strategy": ext.HEALTH_STRATEGY_LABEL,
}


def _labels(cfg: Any) -> dict[str, str]:
    """The labels one check mapping stands for; ValueError (with the key) if it is malformed."""
    values = mapping_values(cfg, _LABELS)
    if values.get("request_line") == "":
        del values["request_line"]  # Rancher's way of saying "TCP"
    out = {_LABELS[k]: v for k, v in values.items()}
    try:
        ext.parse_health_check(out)
    except ValueError as e:  # name the Compose key, not the label
        msg = in_compose_words(str(e), _LABELS)
        raise ValueError(msg.replace(f"{ext.HEALTH_PREFIX}*", "health check").replace("labels", "keys")) from None
    return out


def lift(services: Any, src: Source, where: tuple[str, ...]) -> Any:
    """``services`` without their ``health_check`` keys, for schema validation; each one removed is
    checked first (a bad one raises the source's error at its line)."""
    if not isinstance(services, dict):
        return services
    out = services
    for name, svc in services.items():
        if not isinstance(svc, dict) or not (RANCHER_KEY in svc or EXTENSION_KEY in svc):
            continue
        check(svc, src, (*where, name))
        if RANCHER_KEY in svc:
            out = dict(out) if out is services else out
            out[name] = {k: v for k, v in svc.items() if k != RANCHER_KEY}
    return out


def check(svc: dict[str, Any], src: Source, where: tuple[str, ...]) -> None:
    if RANCHER_KEY in svc and EXTENSION_KEY in svc:
        raise src.error(f"use either {RANCHER_KEY} or {EXTENSION_KEY}, not both", (*where, EXTENSION_KEY))
    for key in (RANCHER_KEY, EXTENSION_KEY):
        if key in svc:
            try:
                _labels(svc[key])
            except ValueError as e:
                raise src.error(str(e), (*where, key)) from None


def labels(svc: dict[str, Any]) -> dict[str, str]:
    """The ``shoal.health.*`` labels of a loaded service (empty without a check). Raises ValueError
    for a malformed one (the loader has normally said so already, with its line)."""
    cfg = svc.get(EXTENSION_KEY, svc.get(RANCHER_KEY))
    return _labels(cfg) if cfg is not None else {}
