"""The join limiter's bucket and the per-node call counter."""

from __future__ import annotations

import pytest

from shoal.errors import TooManyRequests
from shoal.transport.limits import CallCounter, JoinLimiter


def test_a_source_gets_its_burst_then_the_rate() -> None:
    lim = JoinLimiter(burst=3, rate=2.0)
    for _ in range(3):
        lim.take("10.0.0.1", now=100.0)
    with pytest.raises(TooManyRequests, match=r"too many join attempts from 10\.0\.0\.1"):
        lim.take("10.0.0.1", now=100.0)
    lim.take("10.0.0.2", now=100.0)  # another source has its own bucket
    lim.take("10.0.0.1", now=100.5)  # half a second at 2/s: one more
    with pytest.raises(TooManyRequests):
        lim.take("10.0.0.1", now=100.5)
    for _ in range(100):
        lim.take("127.0.0.1", now=100.0)  # loopback is not limited
        lim.take("::1", now=100.0)


def test_the_table_of_sources_is_bounded() -> None:
    lim = JoinLimiter(burst=1, rate=0.0, max_sources=2)
    lim.take("10.0.0.1", now=0.0)
    lim.take("10.0.0.2", now=0.0)
    lim.take("10.0.0.3", now=0.0)  # forgets 10.0.0.1, the least recently seen
    assert len(lim._buckets) == 2
    lim.take("10.0.0.1", now=0.0)


def test_calls_in_flight_per_node_are_capped() -> None:
    calls = CallCounter(cap=2)
    with calls.hold("n1"), calls.hold("n1"):
        with pytest.raises(TooManyRequests, match="node n1 has 2 calls in flight"), calls.hold("n1"):
            pass
        with calls.hold("n2"):
            pass
    with calls.hold("n1"):
        pass
    assert calls.held("n1") == calls.held("n2") == 0


def test_an_ipv6_64_is_one_source() -> None:
    lim = JoinLimiter(burst=2, rate=0.0)
    lim.take("2001:db8::1", now=0.0)
    lim.take("2001:db8::2", now=0.0)
    with pytest.raises(TooManyRequests):
        lim.take("2001:db8::ffff", now=0.0)
    lim.take("2001:db8:0:1::1", now=0.0)  # another /64
