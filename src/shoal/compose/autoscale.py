"""Autoscaling in Compose files: ``x-shoal-autoscale`` and Aliyun's ``aliyun.auto_scaling.*`` labels.

``x-shoal-autoscale`` is a mapping in a service — ``min``, ``max``, ``cpu-target``,
``memory-target``, ``step``, ``window``, ``cooldown`` — and becomes the service's
``shoal.autoscale.*`` labels (shoal/extensions.py), which is what the API checks and the autoscaler
reads. Aliyun's files put ``aliyun.auto_scaling.*`` among a service's ``labels:`` (container
labels in Compose); Aliyun's platform read them from there, so here they are copied onto the
service's labels as they are. A bad value is an error naming the service and key, at its line.
"""

from __future__ import annotations

from typing import Any

from shoal import extensions as ext
from shoal.compose.keymap import in_compose_words, mapping_values
from shoal.compose.loader import Project
from shoal.compose.merge import to_mapping

EXTENSION_KEY = "x-shoal-autoscale"
_LABELS = {
    "min": ext.AUTOSCALE_MIN_LABEL, "max": ext.AUTOSCALE_MAX_LABEL, "cpu-target": ext.AUTOSCALE_CPU_TARGET_LABEL,
    "memory-target": ext.AUTOSCALE_MEMORY_TARGET_LABEL, "step": ext.AUTOSCALE_STEP_LABEL,
    "window": ext.AUTOSCALE_WINDOW_LABEL, "cooldown": ext.AUTOSCALE_COOLDOWN_LABEL,
}


def labels(project: Project, name: str, svc: dict[str, Any]) -> dict[str, str]:
    """The service labels that carry its autoscaling policy (none without one)."""
    out: dict[str, str] = {}
    where: tuple[str, ...] = ("services", name, "labels")
    for key, value in to_mapping(svc.get("labels")).items():
        if str(key).startswith(ext.ALIYUN_AUTOSCALE_PREFIX):
            out[str(key)] = "" if value is None else str(value)
    if EXTENSION_KEY in svc:
        where = ("services", name, EXTENSION_KEY)
        try:
            out.update({_LABELS[k]: v for k, v in mapping_values(svc[EXTENSION_KEY], _LABELS, (int, float)).items()})
        except ValueError as e:
            raise project.error(f"{name}: {EXTENSION_KEY}: {e}", where) from None
    if out:
        try:
            ext.parse_autoscale(out)
        except ValueError as e:
            raise project.error(f"{name}: {in_compose_words(str(e), _LABELS)}", where) from None
    return out
