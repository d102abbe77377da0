"""Flag value parsers of the shoal CLI: docker's syntax, docker's numbers."""

from __future__ import annotations

import pytest

from shoal.cli import format as fmt
from shoal.cli.parse import (
    kv_map,
    merge_env,
    normalize_image,
    parse_cpus,
    parse_duration,
    parse_env,
    parse_filter,
    parse_label,
    parse_memory,
    parse_mount,
    parse_network,
    parse_placement_pref,
    parse_publish,
    parse_scale,
    parse_uint,
    port_key,
)

S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("10s", 10 * S),
        ("1m30s", 90 * S),
        ("1.5h", 5400 * S),
        ("300ms", 300_000_000),
        ("2us", 2_000),
        ("2µs", 2_000),
        ("7ns", 7),
        ("0", 0),
        ("1h2m3s4ms", 3723 * S + 4_000_000),
        (".5s", 500_000_000),
    ],
)
def test_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "10", "5x", "s", "1m30", "-1s", "1.s.", "abc"])
def test_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("512M", 512 << 20),
        ("512m", 512 << 20),
        ("1g", 1 << 30),
        ("1GiB", 1 << 30),
        ("1.5g", 3 << 29),
        ("64k", 64 << 10),
        ("1024", 1024),
        ("100b", 100),
    ],
)
def test_memory(text: str, n: int) -> None:
    assert parse_memory(text) == n


@pytest.mark.parametrize("text", ["", "-1m", "1x", "m", "1 gigabyte"])
def test_memory_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_memory(text)


def test_cpus() -> None:
    assert parse_cpus("0.5") == 500_000_000
    assert parse_cpus("2") == 2 * S
    assert parse_cpus("0.000000001") == 1
    with pytest.raises(ValueError, match="too precise"):
        parse_cpus("0.0000000001")
    with pytest.raises(ValueError):
        parse_cpus("half")
    with pytest.raises(ValueError):
        parse_cpus("-1")


def test_uint() -> None:
    assert parse_uint("3") == 3
    assert parse_uint("0") == 0
    for bad in ("-1", "x", "1.5"):
        with pytest.raises(ValueError, match="invalid syntax"):
            parse_uint(bad)


def ports(spec: str) -> list[tuple[str, int, int, str]]:
    return [(p.Protocol, p.PublishedPort, p.TargetPort, p.PublishMode) for p in parse_publish(spec)]


def test_publish_short() -> None:
    assert ports("8080:80") == [("tcp", 8080, 80, "ingress")]
    assert ports("53:53/udp") == [("udp", 53, 53, "ingress")]
    assert ports("80") == [("tcp", 0, 80, "ingress")]
    assert ports("8080:80/sctp") == [("sctp", 8080, 80, "ingress")]
    assert ports("8080-8081:80-81") == [("tcp", 8080, 80, "ingress"), ("tcp", 8081, 81, "ingress")]


def test_publish_long() -> None:
    assert ports("published=8080,target=80") == [("tcp", 8080, 80, "ingress")]
    assert ports("target=80,published=9000,protocol=udp,mode=host") == [("udp", 9000, 80, "host")]
    assert ports("target=80") == [("tcp", 0, 80, "ingress")]


@pytest.mark.parametrize(
    "spec",
    [
        "published=8080",  # no target
        "target=80,mode=bridge",
        "target=80,protocol=icmp",
        "target=80,colour=blue",
        "target=eighty",
        "target",
        "8080-8082:80-81",
        "8080:80/icmp",
        "70000:80",
        "a:b:c:d",
        "8080:",
        "127.0.0.1:8080:80",  # docker: "hostip is not supported"
        "[::1]:8080:80",
    ],
)
def test_publish_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_publish(spec)


def test_port_key() -> None:
    assert port_key("80") == (80, "tcp")
    assert port_key("53/udp") == (53, "udp")
    assert port_key("8080:80") == (80, "tcp")
    assert port_key("published=1,target=2,protocol=udp") == (2, "udp")


def test_env_and_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_TEST_VAR", "from-shell")
    monkeypatch.delenv("SHOAL_TEST_UNSET", raising=False)
    assert parse_env("A=1") == "A=1"
    assert parse_env("A=") == "A="
    assert parse_env("SHOAL_TEST_VAR") == "SHOAL_TEST_VAR=from-shell"
    assert parse_env("SHOAL_TEST_UNSET") == "SHOAL_TEST_UNSET"
    with pytest.raises(ValueError):
        parse_env("=x")
    assert parse_label("tier=web") == "tier=web"
    with pytest.raises(ValueError):
        parse_label("=web")
    assert kv_map(["a=1", "b", "c=x=y"]) == {"a": "1", "b": "", "c": "x=y"}
    assert merge_env(["A=1", "B=2", "A=3"]) == ["B=2", "A=3"]
    assert normalize_image("busybox") == "busybox:latest"
    assert normalize_image("localhost:5000/foo/bar") == "localhost:5000/foo/bar:latest"
    assert normalize_image("busybox:1.36") == "busybox:1.36"
    assert normalize_image("busybox@sha256:abc") == "busybox@sha256:abc"


def test_scale_and_filter() -> None:
    assert parse_scale("web=5") == ("web", 5)
    assert parse_scale("web=0") == ("web", 0)
    for bad in ("web", "=3", "web=-1", "web=x"):
        with pytest.raises(ValueError):
            parse_scale(bad)
    assert parse_filter("desired-state=running") == ("desired-state", "running")
    assert parse_filter("label=a=b") == ("label", "a=b")
    with pytest.raises(ValueError):
        parse_filter("running")


def test_mount() -> None:
    m = parse_mount("type=bind,source=/srv,target=/data,readonly")
    assert (m.Type, m.Source, m.Target, m.ReadOnly) == ("bind", "/srv", "/data", True)
    v = parse_mount("src=vol,dst=/v,volume-label=a=b,volume-driver=local,volume-opt=o=1,volume-nocopy")
    assert v.Type == "volume"
    assert v.VolumeOptions == {"Labels": {"a": "b"}, "DriverConfig": {"Name": "local", "Options": {"o": "1"}},
                               "NoCopy": True}
    t = parse_mount("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1770")
    assert t.TmpfsOptions == {"SizeBytes": 64 << 20, "Mode": 0o1770}
    assert parse_mount("type=bind,src=/a,dst=/b,ro=false").ReadOnly is False
    for bad in ("source=/a", "type=bind,target=/b,volume-nocopy", "type=disk,target=/b", "target=/b,size=1"):
        with pytest.raises(ValueError):
            parse_mount(bad)


def test_network_and_placement_pref() -> None:
    assert parse_network("backend").Target == "backend"
    n = parse_network("name=backend,alias=db,alias=pg,driver-opt=mtu=1400")
    assert (n.Target, n.Aliases, n.DriverOpts) == ("backend", ["db", "pg"], {"mtu": "1400"})
    assert parse_placement_pref("spread=node.labels.zone").Spread == {"SpreadDescriptor": "node.labels.zone"}
    with pytest.raises(ValueError):
        parse_placement_pref("pack=node.id")


# --------------------------------------------------------------------------- output formatting


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "Less than a second"),
        (1, "1 second"),
        (45, "45 seconds"),
        (61, "About a minute"),
        (300, "5 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (21 * 86400, "3 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert fmt.human_duration(seconds) == text


def test_ago_and_durations() -> None:
    from shoal.models import parse_ts

    ts = "2024-01-01T00:00:00.000000000Z"
    assert fmt.ago(ts, now=parse_ts(ts) + 5) == "5 seconds ago"
    assert fmt.ago(ts, now=parse_ts(ts) + 0.1) == "less than a second ago"
    assert fmt.ago("") == ""
    assert fmt.duration(0) == "0s"
    assert fmt.duration(5 * S) == "5s"
    assert fmt.duration(90 * S) == "1m30s"
    assert fmt.duration(3600 * S) == "1h0m0s"
    assert fmt.duration(250_000_000) == "250ms"
    assert fmt.size(512 << 20) == "512MiB"
    assert fmt.cpus(500_000_000) == "0.5"


def test_ports_column() -> None:
    assert fmt.ports([{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"},
                      {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 53, "PublishMode": "host"}]) == (
        "*:8080->80/tcp, *:53->53/udp"
    )
    assert fmt.ports(None) == ""


def test_generic_resource_flag() -> None:
    from shoal.cli.parse import parse_generic_resource

    assert parse_generic_resource("gpu=2") == ("gpu", 2)
    for bad in ("gpu", "gpu=0", "=2", "gpu=two", "gpu=-1"):
        with pytest.raises(ValueError):
            parse_generic_resource(bad)
