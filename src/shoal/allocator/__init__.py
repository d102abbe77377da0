"""Overlay network allocation on the manager: subnets, VXLAN ids, task, node and VIP addresses."""

from shoal.allocator.allocator import NetworkAllocator, holds_addresses, wants_vips
from shoal.allocator.ipam import (
    VXLAN_ID_KEY,
    AddressPool,
    PoolExhausted,
    choose_subnet,
    next_vxlan_id,
    parse_subnet,
    vxlan_ids,
)

__all__ = [
    "VXLAN_ID_KEY",
    "AddressPool",
    "NetworkAllocator",
    "PoolExhausted",
    "choose_subnet",
    "holds_addresses",
    "next_vxlan_id",
    "parse_subnet",
    "vxlan_ids",
    "wants_vips",
]
