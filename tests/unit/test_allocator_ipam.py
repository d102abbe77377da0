"""IPAM pieces: address pools (serial, high end, ranges, exhaustion), subnet choice, VXLAN ids."""

from __future__ import annotations

import ipaddress

import pytest

from shoal.allocator.ipam import (
    FIRST_VXLAN_ID,
    AddressPool,
    PoolExhausted,
    check_no_overlap,
    choose_subnet,
    ip_of,
    next_vxlan_id,
    parse_subnet,
    vxlan_ids,
)
from shoal.errors import InvalidArgument


def addr(ip: int) -> str:
    return str(ipaddress.IPv4Address(ip))


def test_pool_hands_out_serially_skipping_gateway_and_wraps() -> None:
    pool = AddressPool("10.0.1.0/29")  # .1 gateway, .2-.6 usable, .7 broadcast
    got = [addr(pool.allocate()) for _ in range(5)]
    assert got == ["10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.1.6"]
    with pytest.raises(PoolExhausted):
        pool.allocate()
    pool.release(ip_of("10.0.1.3"))
    pool.release(ip_of("10.0.1.1"))  # the gateway is never released
    assert addr(pool.allocate()) == "10.0.1.3"
    with pytest.raises(PoolExhausted):
        pool.allocate()


def test_released_address_is_not_reused_at_once() -> None:
    pool = AddressPool("10.0.1.0/24")
    a = pool.allocate()
    pool.release(a)
    b = pool.allocate()
    assert b != a and addr(b) == "10.0.1.3"


def test_high_allocation_from_top_and_cidr() -> None:
    pool = AddressPool("10.0.1.0/24")
    assert pool.cidr(pool.allocate_high()) == "10.0.1.254/24"
    assert pool.cidr(pool.allocate_high()) == "10.0.1.253/24"
    assert pool.cidr(pool.allocate()) == "10.0.1.2/24"


def test_user_gateway_and_range() -> None:
    pool = AddressPool("10.9.0.0/24", gateway="10.9.0.254", ip_range="10.9.0.128/26")
    assert addr(pool.allocate()) == "10.9.0.128"
    assert addr(pool.allocate_high()) == "10.9.0.191"
    assert pool.free_count() == 62


def test_reserve_marks_used() -> None:
    pool = AddressPool("10.0.1.0/24")
    pool.reserve(ip_of("10.0.1.2/24"))
    assert addr(pool.allocate()) == "10.0.1.3"


def test_choose_subnet_skips_taken_blocks() -> None:
    assert choose_subnet([], None, None) == "10.0.0.0/24"
    assert choose_subnet(["10.0.0.0/24", "10.0.1.0/24"], ["10.0.0.0/8"], 24) == "10.0.2.0/24"
    # A larger user subnet is jumped over whole.
    assert choose_subnet(["10.0.0.0/16"], ["10.0.0.0/8"], 24) == "10.1.0.0/24"
    assert choose_subnet([], ["192.168.0.0/16"], 20) == "192.168.0.0/20"
    # Falls through to the next pool when one is full.
    assert choose_subnet(["172.20.0.0/24"], ["172.20.0.0/24", "172.21.0.0/16"], 24) == "172.21.0.0/24"
    with pytest.raises(PoolExhausted):
        choose_subnet(["172.20.0.0/23"], ["172.20.0.0/23"], 24)


def test_choose_subnet_is_fast_on_a_crowded_pool() -> None:
    taken = [f"10.0.{i}.0/24" for i in range(200)]
    assert choose_subnet(taken, None, None) == "10.0.200.0/24"


def test_parse_subnet_and_overlap() -> None:
    assert str(parse_subnet("10.5.0.0/16")) == "10.5.0.0/16"
    for bad in ("10.5.0.1/16", "nonsense", "fd00::/64", "10.0.0.0/31"):
        with pytest.raises(InvalidArgument):
            parse_subnet(bad)
    with pytest.raises(InvalidArgument, match=r"overlaps 10\.5\.0\.0/16 of network front"):
        check_no_overlap(parse_subnet("10.5.3.0/24"), [("front", "10.5.0.0/16")])
    check_no_overlap(parse_subnet("10.6.0.0/24"), [("front", "10.5.0.0/16")])


def test_vxlan_ids() -> None:
    assert next_vxlan_id([]) == FIRST_VXLAN_ID
    assert next_vxlan_id([4096, 4097, 4099]) == 4098
    assert vxlan_ids({"com.docker.network.driver.overlay.vxlanid_list": "4097,4100"}) == [4097, 4100]
    assert vxlan_ids(None) == []
