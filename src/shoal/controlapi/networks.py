"""Networks: create, inspect, list, remove; and a service's network references resolved to IDs."""

from __future__ import annotations

from shoal.models import ServiceSpec
from shoal.store import MemoryStore


def resolve_service_networks(store: MemoryStore, spec: ServiceSpec) -> ServiceSpec:
    """Placeholder until networks land: the spec unchanged."""
    return spec
