"""Shoal's Compose extension mappings (``x-shoal-healthcheck``, Rancher's ``health_check``,
``x-shoal-autoscale``): each key stands for one ``shoal.*`` label (extensions.py), so the same two
steps serve them all — check the mapping's shape, and say a label's error in the file's words."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def mapping_values(cfg: Any, known: Mapping[str, str], numbers: tuple[type, ...] = (int,)) -> dict[str, str]:
    """``cfg``'s values as strings, by Compose key; ValueError naming the key for a bad shape."""
    if not isinstance(cfg, dict):
        raise ValueError("must be a mapping")
    out: dict[str, str] = {}
    for key, value in cfg.items():
        if key not in known:
            raise ValueError(f"unsupported key {key!r} (known: {', '.join(known)})")
        if isinstance(value, bool) or not isinstance(value, (*numbers, str)):
            raise ValueError(f"{key}: must be a number or a string")
        out[key] = str(value)
    return out


def in_compose_words(message: str, known: Mapping[str, str]) -> str:
    """A label's error message with each label named by the Compose key that set it."""
    for key, label in known.items():
        message = message.replace(label, key)
    return message
