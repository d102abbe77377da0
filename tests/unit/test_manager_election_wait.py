"""A write that reaches a manager mid-election waits for the outcome instead of being refused."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from shoal import manager as manager_mod
from shoal.errors import StoreUnavailable, Unavailable
from shoal.manager import Manager


class Terms:
    """The two things ``_settled_leader`` reads of a manager's terms: whether it leads, and the
    election key's record."""

    def __init__(self, record: dict[str, Any] | None) -> None:
        self.record = record
        self.leading = asyncio.Event()
        self.fail = ""

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    async def leader_info(self) -> dict[str, Any] | None:
        if self.fail:
            raise StoreUnavailable(self.fail)
        return self.record


ME = SimpleNamespace(node_id="self")


async def test_taking_office_waits_for_the_components_then_handles_the_write_here() -> None:
    terms = Terms({"node": "self", "addr": "127.0.0.1:2377"})  # elected, still loading
    asyncio.get_running_loop().call_later(0.3, terms.leading.set)
    assert await Manager._settled_leader(ME, terms) is None  # type: ignore[arg-type]


async def test_an_election_in_progress_waits_for_the_winner() -> None:
    terms = Terms(None)
    winner = {"node": "other", "addr": "10.0.0.2:2377"}
    asyncio.get_running_loop().call_later(0.3, lambda: setattr(terms, "record", winner))
    assert await Manager._settled_leader(ME, terms) == winner  # type: ignore[arg-type]


async def test_no_outcome_within_the_wait_is_docker_s_no_leader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_mod, "ELECTION_WAIT_S", 0.3)
    with pytest.raises(Unavailable, match="does not have a leader"):
        await Manager._settled_leader(ME, Terms(None))  # type: ignore[arg-type]


async def test_an_unreachable_store_is_said_at_once() -> None:
    terms = Terms(None)
    terms.fail = "etcd has no quorum"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Unavailable, match="no quorum"):
        await Manager._settled_leader(ME, terms)  # type: ignore[arg-type]
    assert loop.time() - started < 1.0
