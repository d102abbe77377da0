"""``--opt encrypted``: the agent's kernel probe (its parsing, and a real run on this kernel), the
description labels, and the manager's refusal naming the nodes and why, with nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal.agent.encryption import EncryptionSupport, classify, crypto_algorithms, probe
from shoal.api import create_app
from shoal.api.testing import FakeManager
from shoal.controlapi.encryption import check_encryption
from shoal.dispatcher.sanity import check_description
from shoal.errors import InvalidArgument
from shoal.models import Driver, EngineDescription, InitRequest, NetworkSpec, NodeDescription
from shoal.orchestrator.testutils import make_node, make_store

from .test_api_networks import cli_body, snapshot

CRYPTO_NO_GCM = """name         : cbc(aes)
driver       : cbc(aes-generic)
module       : kernel
priority     : 100

name         : hmac(sha256)
driver       : hmac(sha256-generic)
"""
CRYPTO_GCM = CRYPTO_NO_GCM + "\nname         : rfc4106(gcm(aes))\ndriver       : rfc4106(gcm_base(ctr(aes-generic)))\n"
NO_AEAD = "Error: Requested AEAD algorithm not found."
NO_ESP = "Error: Requested type not found."
NO_WG = "Error: Unknown device type."


def test_crypto_names_parsed() -> None:
    assert crypto_algorithms(CRYPTO_GCM) == {"cbc(aes)", "hmac(sha256)", "rfc4106(gcm(aes))"}


@pytest.mark.parametrize(
    ("aead", "cbc", "wg", "crypto", "want"),
    [
        (None, None, None, "", EncryptionSupport("ipsec")),
        (NO_AEAD, NO_ESP, None, CRYPTO_NO_GCM, EncryptionSupport("wireguard")),
        # This machine: no ESP, no GCM, no WireGuard.
        (NO_AEAD, NO_ESP, NO_WG, CRYPTO_NO_GCM, EncryptionSupport("none", "kernel lacks ESP, GCM and WireGuard")),
        (NO_AEAD, None, NO_WG, CRYPTO_NO_GCM, EncryptionSupport("none", "kernel lacks GCM and WireGuard")),
        (NO_ESP, NO_ESP, NO_WG, CRYPTO_GCM, EncryptionSupport("none", "kernel lacks ESP and WireGuard")),
        ("Error: weird", None, NO_WG, CRYPTO_GCM,
         EncryptionSupport("none", "ESP with AES-GCM failed (Error: weird) and kernel lacks WireGuard")),
    ],
)
def test_probe_verdicts(aead: str | None, cbc: str | None, wg: str | None, crypto: str,
                        want: EncryptionSupport) -> None:
    assert classify(aead, cbc, wg, crypto) == want


async def test_probe_on_this_kernel_in_throwaway_namespaces() -> None:
    # /proc/config.gz here: CONFIG_INET_ESP, CONFIG_CRYPTO_GCM and CONFIG_WIREGUARD are not set.
    support = await probe()
    assert support == EncryptionSupport("none", "kernel lacks ESP, GCM and WireGuard")
    assert support.labels() == {"shoal.encryption": "none",
                                "shoal.encryption.reason": "kernel lacks ESP, GCM and WireGuard"}
    # The labels fit the description's bounds.
    check_description(NodeDescription(Hostname="n1", Engine=EngineDescription(Labels=support.labels())))
    # A value the manager could not read is refused at registration, like any out-of-bounds field.
    bad = NodeDescription(Hostname="n1", Engine=EngineDescription(Labels={"shoal.encryption": "maybe"}))
    with pytest.raises(InvalidArgument, match=r"shoal\.encryption='maybe': one of ipsec, wireguard, none"):
        check_description(bad)


async def test_probe_that_cannot_read_proc_crypto_says_so(tmp_path: Path) -> None:
    support = await probe(tmp_path / "missing")
    assert support.mode == "none" and support.reason.startswith("could not probe the kernel:")


def _describe(store, node, labels: dict[str, str]) -> None:
    desc = msgspec.structs.replace(node.Description, Engine=EngineDescription(Labels=labels))
    with store.tx() as tx:
        tx.update("node", msgspec.structs.replace(node, Description=desc))


def _reported(store, hostname: str, mode: str | None, reason: str = "") -> None:
    labels = {} if mode is None else {"shoal.encryption": mode}
    if reason:
        labels["shoal.encryption.reason"] = reason
    _describe(store, make_node(store, hostname), labels)


ENC = NetworkSpec(Name="secret-net", DriverConfiguration=Driver(Name="overlay", Options={"encrypted": ""}))


def test_refusals_name_nodes_and_reasons() -> None:
    store = make_store()
    check_encryption(NetworkSpec(Name="plain"), [])  # no option: nothing to check
    with pytest.raises(InvalidArgument, match="no node has reported yet whether its kernel can encrypt"):
        check_encryption(ENC, store.list("node"))
    _reported(store, "old-agent", None)
    with pytest.raises(InvalidArgument, match="no node has reported yet"):
        check_encryption(ENC, store.list("node"))
    _reported(store, "n1", "none", "kernel lacks ESP, GCM and WireGuard")
    _reported(store, "n2", "ipsec")
    with pytest.raises(InvalidArgument) as e:
        check_encryption(ENC, store.list("node"))
    assert e.value.message == (
        "cannot create encrypted network secret-net: 2 nodes of 3 cannot encrypt VXLAN traffic: "
        "n1 (kernel lacks ESP, GCM and WireGuard), old-agent (has not reported whether it can encrypt); "
        "Shoal will not send its traffic in clear text, so create it without --opt encrypted or on kernels "
        "with ESP and GCM (or WireGuard)")
    capable = make_store()
    _reported(capable, "a", "ipsec")
    _reported(capable, "b", "wireguard")
    with pytest.raises(InvalidArgument, match="every node's kernel could encrypt, but Shoal's overlay does not"):
        check_encryption(ENC, capable.list("node"))


def test_many_nodes_are_counted_not_all_named() -> None:
    store = make_store()
    for i in range(8):
        _reported(store, f"n{i}", "none", "kernel lacks ESP, GCM and WireGuard")
    with pytest.raises(InvalidArgument) as e:
        check_encryption(ENC, store.list("node"))
    assert "8 nodes of 8" in e.value.message and "n4 (" in e.value.message and "n5 (" not in e.value.message
    assert "and 3 more" in e.value.message


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient, FakeManager]]:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    async with TestClient(TestServer(create_app(m))) as c:
        yield c, m


async def test_api_answers_400_and_stores_nothing(client: tuple[TestClient, FakeManager]) -> None:
    c, manager = client
    for node in manager.store.list("node"):
        _describe(manager.store, node, {"shoal.encryption": "none",
                                        "shoal.encryption.reason": "kernel lacks ESP, GCM and WireGuard"})
    before = snapshot(manager)
    r = await c.post("/v1.41/networks/create", json=cli_body("sec", Options={"encrypted": ""}))
    assert r.status == 400
    assert "(kernel lacks ESP, GCM and WireGuard)" in (await r.json())["message"]
    assert snapshot(manager) == before
    assert (await c.post("/v1.41/networks/create", json=cli_body("plain"))).status == 201
