"""Secrets and configs: create, inspect, list, update (labels), remove; and a service's references."""

from __future__ import annotations

from shoal.models import ServiceSpec
from shoal.store import MemoryStore


def resolve_service_references(store: MemoryStore, spec: ServiceSpec) -> ServiceSpec:
    """Placeholder until secrets and configs land: the spec unchanged."""
    return spec
