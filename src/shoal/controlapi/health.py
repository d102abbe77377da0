"""Validation of a service's agent-run health check labels (``shoal.health.*``, agent/health.py).

Checked when a service is created or updated, so a typo is a 400 that names the label, and not a
check that silently never runs on the nodes.
"""

from __future__ import annotations

from shoal.agent.health import parse_check
from shoal.errors import InvalidArgument
from shoal.models import ServiceSpec


def check_health_labels(spec: ServiceSpec) -> None:
    """400 for a malformed ``shoal.health.*`` label; nothing is stored (called before any write)."""
    try:
        parse_check(spec.Labels)
    except ValueError as e:
        raise InvalidArgument(f"label {e}") from None
