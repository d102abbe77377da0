"""Which container creates a follower passes to the leader: those naming one of the swarm's
networks, and those naming a network the follower does not know yet (its store trails the leader's
by a moment after `docker network create`); never the engines' own (bridge, host, none,
container:x) or an engine network of ours by its engine name."""

from __future__ import annotations

from shoal.api.attach import unknown_network
from shoal.api.containers import _may_name_a_shoal_network
from shoal.models import Network, NetworkSpec, Version
from shoal.orchestrator.testutils import make_store


class _Manager:
    def __init__(self) -> None:
        self.store = make_store()


def _add_network(m: _Manager, name: str, attachable: bool = True) -> None:
    with m.store.tx() as tx:
        tx.create("network", Network(ID=f"{name}id0123456789abcdefghij"[:25], Version=Version(), CreatedAt="",
                                     UpdatedAt="", Spec=NetworkSpec(Name=name, Attachable=attachable)))


def cfg(mode: str = "", endpoints: list[str] | None = None) -> dict[str, object]:
    out: dict[str, object] = {"HostConfig": {"NetworkMode": mode} if mode else {}}
    if endpoints:
        out["NetworkingConfig"] = {"EndpointsConfig": {e: {} for e in endpoints}}
    return out


def test_known_and_unknown_user_networks_go_to_the_leader() -> None:
    m = _Manager()
    _add_network(m, "hanet")
    assert _may_name_a_shoal_network(m, cfg("hanet"))  # type: ignore[arg-type]
    assert _may_name_a_shoal_network(m, cfg(endpoints=["newer"]))  # type: ignore[arg-type]
    assert unknown_network(m.store, "newer") and not unknown_network(m.store, "hanet")


def test_the_engines_own_networks_stay_here() -> None:
    m = _Manager()
    for mode in ("", "bridge", "host", "none", "default", "container:abc", "shl-0123456789"):
        assert not _may_name_a_shoal_network(m, cfg(mode)), mode  # type: ignore[arg-type]
