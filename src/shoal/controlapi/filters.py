"""Docker's list filters: ``{"name": {"web": true}}`` (or the legacy ``{"name": ["web"]}``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from shoal.errors import InvalidArgument

Filters = dict[str, list[str]]


def parse_filters(raw: str | None, accepted: Iterable[str]) -> Filters:
    """Decode and check a ``filters`` query value; an unknown key is a 400, as in Docker."""
    if not raw:
        return {}
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        raise InvalidArgument(f"invalid filters: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("invalid filters: expected a JSON object")
    allowed = set(accepted)
    out: Filters = {}
    for key, value in data.items():
        if key not in allowed:
            raise InvalidArgument(f"invalid filter '{key}'")
        if isinstance(value, Mapping):
            values = [str(k) for k, on in value.items() if on]
        elif isinstance(value, list):
            values = [str(v) for v in value]
        elif isinstance(value, str):
            values = [value]
        else:
            raise InvalidArgument(f"invalid filter '{key}': values must be a list or an object")
        if values:
            out[key] = values
    return out


def match_labels(labels: Mapping[str, str] | None, wanted: list[str]) -> bool:
    """Every ``key`` or ``key=value`` in ``wanted`` holds (Docker ANDs label filters)."""
    labels = labels or {}
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def match_prefix(value: str, prefixes: list[str]) -> bool:
    return any(value.startswith(p) for p in prefixes)
