"""The kernel mesh's batch generator (agent/network/mesh.py) as pure functions: desired state is
checked and normalised, a full batch replaces both tables in one transaction, and a diff touches
only the chains and elements that changed. The kernel side is in tests/integration/test_mesh_kernel.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.agent.network.mesh import (
    Mesh,
    MeshUnavailable,
    PublishedPort,
    VirtualService,
    desired,
    diff_batch,
    full_batch,
    removed_udp_flows,
)

WEB = PublishedPort("tcp", 8080, 80, ("10.0.0.6", "10.0.0.5"), "web")
DNS = PublishedPort("udp", 53, 5353, ("10.0.0.7",), "dns")
VIP = VirtualService("10.0.1.2", ("10.0.1.5", "10.0.1.6"), "web")


def lines(batch: str) -> list[str]:
    return batch.splitlines()


# ------------------------------------------------------------------------------ desired()


def test_desired_normalises_backends_numerically_and_drops_duplicates() -> None:
    s = desired([PublishedPort("tcp", 80, 8000, ("10.0.0.10", "10.0.0.9", "10.0.0.10"))],
                [VirtualService("10.0.1.2", ("10.0.1.20", "10.0.1.3"))])
    assert s.ports[("tcp", 80)].backends == ("10.0.0.9", "10.0.0.10")
    assert s.vips["10.0.1.2"].backends == ("10.0.1.3", "10.0.1.20")


@pytest.mark.parametrize(("ports", "vips", "message"), [
    ([PublishedPort("icmp", 80, 80, ())], [], "protocol 'icmp' is not tcp, udp or sctp"),
    ([PublishedPort("tcp", 0, 80, ())], [], "0 is not a port"),
    ([PublishedPort("tcp", 80, 70000, ())], [], "70000 is not a port"),
    ([PublishedPort("tcp", 80, 80, ("fd00::1",))], [], "'fd00::1' is not an IPv4 address"),
    ([PublishedPort("tcp", 80, 80, ("web",))], [], "'web' is not an IPv4 address"),
    ([PublishedPort("tcp", 80, 80, (), "a"), PublishedPort("tcp", 80, 81, (), "b")], [], "published twice"),
    ([], [VirtualService("10.0.1.300", ())], "'10.0.1.300' is not an IPv4 address"),
    ([], [VirtualService("10.0.1.2", ()), VirtualService("10.0.1.2", ())], "given twice"),
])
def test_desired_rejects_bad_state_with_a_clear_message(ports: list[PublishedPort], vips: list[VirtualService],
                                                        message: str) -> None:
    with pytest.raises(ValueError, match=message):
        desired(ports, vips)


def test_same_port_number_on_tcp_and_udp_is_two_ports() -> None:
    s = desired([PublishedPort("tcp", 53, 53, ()), PublishedPort("udp", 53, 53, ())], [])
    assert set(s.ports) == {("tcp", 53), ("udp", 53)}


# ------------------------------------------------------------------------------ full batch


def test_full_batch_replaces_both_tables_in_one_transaction() -> None:
    text = full_batch(desired([WEB, DNS], [VIP]))
    assert lines(text)[:4] == ["add table inet shoal", "delete table inet shoal",
                               "add table bridge shoal", "delete table bridge shoal"]
    assert "\t\telements = { tcp . 8080 : jump ingress-tcp-8080, udp . 53 : jump ingress-udp-53 }" in text
    assert "\t\telements = { 10.0.1.2 : jump vip-10.0.1.2 }" in text
    assert text.count("\t\telements = { 10.0.1.2 }") == 2  # vip-addrs in the inet and the bridge table
    assert ("ct mark set ct mark or 0x00200000 meta l4proto tcp dnat ip to numgen random mod 2 "
            "map { 0 : 10.0.0.5 . 80, 1 : 10.0.0.6 . 80 }") in text
    assert "ct mark set ct mark or 0x00200000 dnat ip to numgen random mod 2 map { 0 : 10.0.1.5, 1 : 10.0.1.6 }" in text
    assert 'chain ingress-tcp-8080 {\n\t\tcomment "service web"\n' in text
    assert "type nat hook prerouting priority dstnat - 5;" in text
    assert "ct mark & 0x00200000 == 0x00200000 masquerade" in text
    assert 'oifname "shv-*" ether type arp arp daddr ip @vip-addrs counter drop' in text
    assert 'iifname "shv-*" ether type arp arp daddr ip @vip-addrs counter drop' in text


def test_full_batch_does_not_depend_on_input_order() -> None:
    a = full_batch(desired([WEB, DNS], [VIP, VirtualService("10.0.1.1", ())]))
    b = full_batch(desired([DNS, PublishedPort("tcp", 8080, 80, ("10.0.0.5", "10.0.0.6"), "web")],
                           [VirtualService("10.0.1.1", ()), VIP]))
    assert a == b


def test_no_backends_refuses_a_port_and_leaves_a_vip_to_filter_input() -> None:
    text = full_batch(desired([PublishedPort("tcp", 8081, 80, (), "idle")], [VirtualService("10.0.1.3", (), "x")]))
    port_chain = text.split("chain ingress-tcp-8081 {")[1].split("}")[0]
    assert "meta l4proto tcp counter reject with tcp reset" in port_chain and "dnat" not in port_chain
    assert text.split("chain vip-10.0.1.3 {")[1].split("}")[0].strip() == 'comment "service x"'
    assert "ip daddr @vip-addrs ct state != related meta l4proto tcp counter reject with tcp reset" in text


def test_empty_state_still_builds_the_hooks_and_no_elements() -> None:
    text = full_batch(desired([], []))
    assert "elements" not in text and "chain prerouting" in text and "table bridge shoal {" in text


def test_comment_keeps_only_safe_characters() -> None:
    text = full_batch(desired([PublishedPort("tcp", 80, 80, (), 'evil"; flush ruleset; "')], []))
    assert 'comment "service evil__ flush ruleset_ _"' in text


# ------------------------------------------------------------------------------ diff


def test_diff_of_equal_states_is_empty() -> None:
    assert diff_batch(desired([WEB, DNS], [VIP]), desired([DNS, WEB], [VIP])) == ""


def test_backend_change_flushes_and_refills_that_chain_only() -> None:
    old = desired([WEB, DNS], [VIP])
    new = desired([PublishedPort("tcp", 8080, 80, ("10.0.0.5",), "web"), DNS], [VIP])
    assert lines(diff_batch(old, new)) == [
        "flush chain inet shoal ingress-tcp-8080",
        "add rule inet shoal ingress-tcp-8080 ct mark set ct mark or 0x00200000 meta l4proto tcp "
        "dnat ip to numgen random mod 1 map { 0 : 10.0.0.5 . 80 }"]


def test_target_port_change_is_a_rule_change() -> None:
    new = desired([PublishedPort("tcp", 8080, 81, WEB.backends, "web")], [])
    batch = diff_batch(desired([WEB], []), new)
    assert lines(batch)[0] == "flush chain inet shoal ingress-tcp-8080" and ". 81" in batch


def test_last_backend_gone_turns_the_port_into_a_refusal() -> None:
    new = desired([PublishedPort("tcp", 8080, 80, (), "web")], [])
    assert lines(diff_batch(desired([WEB], []), new)) == [
        "flush chain inet shoal ingress-tcp-8080",
        "add rule inet shoal ingress-tcp-8080 meta l4proto tcp counter reject with tcp reset",
        "add rule inet shoal ingress-tcp-8080 counter reject"]


def test_new_and_removed_ports() -> None:
    assert lines(diff_batch(desired([WEB], []), desired([WEB, DNS], []))) == [
        'add chain inet shoal ingress-udp-53 { comment "service dns"; }',
        "add rule inet shoal ingress-udp-53 ct mark set ct mark or 0x00200000 meta l4proto udp "
        "dnat ip to numgen random mod 1 map { 0 : 10.0.0.7 . 5353 }",
        "add element inet shoal published { udp . 53 : jump ingress-udp-53 }"]
    assert lines(diff_batch(desired([WEB, DNS], []), desired([WEB], []))) == [
        "delete element inet shoal published { udp . 53 }",
        "delete chain inet shoal ingress-udp-53"]


def test_renamed_service_remakes_its_chain_deletions_first() -> None:
    new = desired([PublishedPort("tcp", 8080, 80, WEB.backends, "site")], [])
    got = lines(diff_batch(desired([WEB], []), new))
    assert got[:2] == ["delete element inet shoal published { tcp . 8080 }", "delete chain inet shoal ingress-tcp-8080"]
    assert got[2] == 'add chain inet shoal ingress-tcp-8080 { comment "service site"; }'
    assert got[-1] == "add element inet shoal published { tcp . 8080 : jump ingress-tcp-8080 }"


def test_new_and_removed_vips_touch_both_vip_sets() -> None:
    added = lines(diff_batch(desired([], []), desired([], [VIP])))
    assert added == [
        'add chain inet shoal vip-10.0.1.2 { comment "service web"; }',
        "add rule inet shoal vip-10.0.1.2 ct mark set ct mark or 0x00200000 dnat ip to numgen random mod 2 "
        "map { 0 : 10.0.1.5, 1 : 10.0.1.6 }",
        "add element inet shoal vips { 10.0.1.2 : jump vip-10.0.1.2 }",
        "add element inet shoal vip-addrs { 10.0.1.2 }",
        "add element bridge shoal vip-addrs { 10.0.1.2 }"]
    assert lines(diff_batch(desired([], [VIP]), desired([], []))) == [
        "delete element inet shoal vips { 10.0.1.2 }",
        "delete chain inet shoal vip-10.0.1.2",
        "delete element inet shoal vip-addrs { 10.0.1.2 }",
        "delete element bridge shoal vip-addrs { 10.0.1.2 }"]


def test_vip_losing_all_backends_is_an_empty_chain() -> None:
    assert lines(diff_batch(desired([], [VIP]), desired([], [VirtualService("10.0.1.2", (), "web")]))) == [
        "flush chain inet shoal vip-10.0.1.2"]


def test_a_diff_applied_to_the_old_full_batch_state_names_only_changed_chains() -> None:
    ports = [PublishedPort("tcp", 8000 + i, 80, (f"10.0.0.{i + 2}",), f"s{i}") for i in range(50)]
    old = desired(ports, [])
    ports[17] = PublishedPort("tcp", 8017, 80, ("10.0.0.99",), "s17")
    batch = diff_batch(old, desired(ports, []))
    assert all("ingress-tcp-8017" in line for line in lines(batch)) and len(lines(batch)) == 2


# ------------------------------------------------------------------------------ UDP flows


def test_removed_udp_flows() -> None:
    old = desired([PublishedPort("udp", 53, 5353, ("10.0.0.5", "10.0.0.6")), WEB],
                  [VirtualService("10.0.1.2", ("10.0.1.5", "10.0.1.6"))])
    new = desired([PublishedPort("udp", 53, 5353, ("10.0.0.6",)), PublishedPort("tcp", 8080, 80, ())],
                  [VirtualService("10.0.1.2", ("10.0.1.6",))])
    assert removed_udp_flows(old, new) == [(None, "10.0.0.5", 5353), ("10.0.1.2", "10.0.1.5", None)]
    # A new target port moves every flow; a removed port forgets its backends' flows.
    moved = desired([PublishedPort("udp", 53, 5354, ("10.0.0.5", "10.0.0.6"))], [])
    assert removed_udp_flows(old, moved)[:2] == [(None, "10.0.0.5", 5353), (None, "10.0.0.6", 5353)]
    assert removed_udp_flows(old, desired([], [])) == [
        (None, "10.0.0.5", 5353), (None, "10.0.0.6", 5353),
        ("10.0.1.2", "10.0.1.5", None), ("10.0.1.2", "10.0.1.6", None)]


# ------------------------------------------------------------------------------ no nft


async def test_no_nft_binary_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no nft, no iptables
    mesh = Mesh()
    with pytest.raises(MeshUnavailable, match="the nft binary is not installed"):
        await mesh.apply([WEB], [], None)
    assert mesh.applied is None
