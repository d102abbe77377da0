"""``x-shoal-schedule`` in a Compose service: the service becomes a scheduled job.

Either a cron expression (``x-shoal-schedule: "*/5 * * * *"``) or a mapping with ``cron`` and the
optional ``timezone``, ``concurrency``, ``history`` and ``missed``. It becomes the service's
``shoal.schedule*`` labels (shoal/extensions.py defines them; the daemon checks them again) and
turns the service's mode into a job: replicated-job with ``deploy.replicas`` completions per run
(one by default), or global-job for ``deploy.mode: global``. A bad value is an error at its file
and line, before anything is sent.
"""

from __future__ import annotations

from typing import Any

from shoal import extensions as ext
from shoal import models as m

from .loader import Project

EXTENSION_KEY = "x-shoal-schedule"
_KEYS = {
    "cron": ext.SCHEDULE_LABEL,
    "timezone": ext.SCHEDULE_TIMEZONE_LABEL,
    "concurrency": ext.SCHEDULE_CONCURRENCY_LABEL,
    "history": ext.SCHEDULE_HISTORY_LABEL,
    "missed": ext.SCHEDULE_MISSED_LABEL,
}


def _labels(cfg: Any) -> dict[str, str]:
    if isinstance(cfg, str):
        cfg = {"cron": cfg}
    if not isinstance(cfg, dict):
        raise ValueError("must be a cron expression or a mapping with a cron key")
    out: dict[str, str] = {}
    for key, value in cfg.items():
        if key not in _KEYS:
            raise ValueError(f"unsupported key {key!r} (known: {', '.join(_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"{key}: must be a string or a number")
        out[_KEYS[key]] = str(value)
    if ext.SCHEDULE_LABEL not in out:
        raise ValueError("a cron key is required")
    try:
        ext.parse_schedule(out)
    except ValueError as e:  # name the Compose key, not the label
        msg = str(e)
        for key, label in sorted(_KEYS.items(), key=lambda kv: -len(kv[1])):
            msg = msg.replace(label, key)
        raise ValueError(msg) from None
    return out


def apply(
    project: Project, name: str, svc: dict[str, Any], mode: m.ServiceMode
) -> tuple[m.ServiceMode, dict[str, str]]:
    """The service's mode and extra labels: unchanged and none without ``x-shoal-schedule``."""
    if EXTENSION_KEY not in svc:
        return mode, {}
    try:
        labels = _labels(svc[EXTENSION_KEY])
    except ValueError as e:
        raise project.error(f"{name}: {EXTENSION_KEY}: {e}", ("services", name, EXTENSION_KEY)) from None
    if mode.Global is not None:
        return m.ServiceMode(GlobalJob=m.GlobalJob()), labels
    n = mode.Replicated.Replicas if mode.Replicated is not None and mode.Replicated.Replicas is not None else 1
    return m.ServiceMode(ReplicatedJob=m.ReplicatedJob(MaxConcurrent=n, TotalCompletions=n)), labels
