"""Compose project → everything a stack deploy creates (to_stack): networks, volumes as mounts,
secrets, configs, start order, autoscaling labels, extension keys."""

from __future__ import annotations

import base64
from pathlib import Path

import msgspec
import pytest

from shoal import models as m
from shoal.compose import ComposeError, load, normalised, to_stack

DATA = Path(__file__).parent / "compose"
STACK = DATA / "stack" / "docker-compose.yml"
NS = {"com.docker.stack.namespace": "st"}


@pytest.fixture(scope="module")
def stack():
    project = load([STACK], env={})
    return project, to_stack(project, "st")


def _write(tmp_path: Path, text: str, name: str = "docker-compose.yml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def test_networks(stack) -> None:
    project, res = stack
    assert set(res.networks) == {"st_front", "st_back", "st_default"}
    assert res.networks["st_front"] == m.NetworkSpec(
        Name="st_front", Labels={"tier": "front", **NS}, DriverConfiguration=m.Driver(Name="overlay"), Attachable=True
    )
    back = res.networks["st_back"]
    assert back.Internal and back.DriverConfiguration == m.Driver(Name="overlay", Options={"encrypted": ""})
    assert back.IPAMOptions == m.IPAMOptions(Configs=[m.IPAMConfig(Subnet="10.9.0.0/24")])
    assert res.networks["st_default"].Labels == NS
    assert res.external_networks == ["outside", "corp-net"]
    assert any(w.startswith(f"{STACK.resolve()}:52: network front: driver 'bridge'") for w in project.warnings)
    web = res.services["web"].TaskTemplate.Networks
    assert web == [
        m.NetworkAttachmentConfig(Target="st_back", Aliases=["web"]),
        m.NetworkAttachmentConfig(Target="st_front", Aliases=["web", "www"]),
    ]
    assert [n.Target for n in res.services["api"].TaskTemplate.Networks] == ["corp-net", "outside", "st_back"]
    assert res.services["db"].TaskTemplate.Networks == [m.NetworkAttachmentConfig(Target="st_default", Aliases=["db"])]
    # network_mode: host is the predefined host network, alone and without aliases (see test_network_mode).
    assert res.services["cache"].TaskTemplate.Networks == [m.NetworkAttachmentConfig(Target="host")]


def test_volumes_become_mounts(stack) -> None:
    project, res = stack
    mounts = res.services["web"].TaskTemplate.ContainerSpec.Mounts
    assert mounts == [
        m.Mount(
            Type="volume",
            Source="st_data",
            Target="/var/lib/data",
            ReadOnly=True,
            VolumeOptions={
                "Labels": {"backup": "yes", **NS},
                "DriverConfig": {"Name": "local", "Options": {"type": "tmpfs", "device": "tmpfs"}},
            },
        ),
        m.Mount(Type="volume", Target="/cache"),
        m.Mount(Type="bind", Source=str(STACK.parent / "html"), Target="/usr/share/nginx/html"),
        m.Mount(Type="tmpfs", Target="/run", TmpfsOptions={"SizeBytes": 64 << 20}),
        m.Mount(Type="volume", Source="shared-data", Target="/shared", VolumeOptions={"NoCopy": True, "Labels": NS}),
        m.Mount(Type="volume", Source="ext", Target="/ext"),
    ]
    assert any(":15: web: bind mount" in w and "must exist on every node" in w for w in project.warnings)


def test_secrets_and_configs(stack) -> None:
    _project, res = stack
    assert res.secrets == {
        "st_db_password": m.SecretSpec(Name="st_db_password", Labels=NS, Data=base64.b64encode(b"s3cret\n").decode())
    }
    assert res.external_secrets == ["prod_api_key"]
    conf = base64.b64encode(b"events {}\n").decode()
    assert res.configs == {
        "st_nginx_conf": m.ConfigSpec(Name="st_nginx_conf", Labels=NS, Data=conf),
        "extra-conf": m.ConfigSpec(Name="extra-conf", Labels=NS, Data=conf),
    }
    c = res.services["web"].TaskTemplate.ContainerSpec
    assert c.Secrets == [
        m.SecretReference(
            SecretName="st_db_password", File={"Name": "db_password", "UID": "0", "GID": "0", "Mode": 0o444}
        ),
        m.SecretReference(
            SecretName="prod_api_key", File={"Name": "/etc/api.key", "UID": "100", "GID": "0", "Mode": 0o400}
        ),
    ]
    assert c.Configs == [
        m.ConfigReference(
            ConfigName="st_nginx_conf", File={"Name": "/nginx_conf", "UID": "0", "GID": "0", "Mode": 0o444}
        ),
        m.ConfigReference(
            ConfigName="extra-conf", File={"Name": "/etc/extra.conf", "UID": "0", "GID": "0", "Mode": 0o444}
        ),
    ]
    # Every spec is valid for the control API: it round-trips through msgspec's strict decoding.
    for spec in res.services.values():
        assert msgspec.json.decode(msgspec.json.encode(spec), type=m.ServiceSpec) == spec


def test_order_autoscale_and_extensions(stack) -> None:
    project, res = stack
    assert res.order == [["cache", "db"], ["api"], ["web"]]
    assert res.wait_for == {
        "web": {"api": "service_started"},
        "api": {"db": "service_started", "cache": "service_started"},
    }
    assert res.services["web"].Labels["aliyun.auto_scaling.max_cpu"] == "80"
    assert project.extensions == {"x-shoal-policy": {"spread": "zone"}}
    doc = normalised(project)
    assert doc["x-shoal-policy"] == {"spread": "zone"}
    assert doc["services"]["web"]["x-shoal-canary"] == "true"


def test_long_depends_on_waves_and_cycle(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        """services:
  a: {image: busybox, depends_on: {b: {condition: service_healthy}, c: {condition: service_completed_successfully}}}
  b: {image: busybox, depends_on: [c]}
  c: {image: busybox}
  d: {image: busybox}
""",
    )
    res = to_stack(load([f], env={}), "s")
    assert res.order == [["c", "d"], ["b"], ["a"]]
    assert res.wait_for["a"] == {"b": "service_healthy", "c": "service_completed_successfully"}
    f = _write(
        tmp_path,
        """services:
  a: {image: busybox, depends_on: [b]}
  b: {image: busybox, depends_on: [c]}
  c: {image: busybox, depends_on: [a]}
  d: {image: busybox}
""",
    )
    with pytest.raises(ComposeError, match=r"circular depends_on: a -> b -> c -> a") as e:
        to_stack(load([f], env={}), "s")
    assert e.value.line == 2 and e.value.key == "services.a.depends_on"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "services:\n  web:\n    image: busybox\n    volumes:\n      - data:/data\n",
            5,
            "named volume 'data' is used in service 'web' but no declaration was found",
        ),
        (
            "services:\n  web:\n    image: busybox\n    networks: [front]\n",
            4,
            "service 'web' refers to undefined network 'front'",
        ),
        (
            "services:\n  web:\n    image: busybox\n    secrets: [pw]\n",
            4,
            "service 'web' refers to undefined secret 'pw'",
        ),
        (
            "services:\n  web:\n    image: busybox\nsecrets:\n  pw:\n    file: ./missing.txt\n",
            6,
            "secret 'pw': cannot read",
        ),
        (
            "services:\n  web:\n    image: busybox\nconfigs:\n  c:\n    environment: NOPE\n",
            6,
            "config 'c': environment variable NOPE is not set",
        ),
    ],
)
def test_undefined_references_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    f = _write(tmp_path, text)
    with pytest.raises(ComposeError) as e:
        to_stack(load([f], env={}), "s")
    assert e.value.file == f.resolve() and e.value.line == line
    assert message in e.value.message


def test_secret_from_environment_name_and_v1_implicit_volume(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        """services:
  web:
    image: busybox
    secrets: [{source: token, target: tok, mode: 0440}]
secrets:
  token:
    environment: TOKEN
    labels: [kind=api]
networks:
  default:
    name: shared-default
""",
    )
    res = to_stack(load([f], env={"TOKEN": "abc"}), "s")
    assert res.secrets["s_token"] == m.SecretSpec(
        Name="s_token",
        Labels={"kind": "api", "com.docker.stack.namespace": "s"},
        Data=base64.b64encode(b"abc").decode(),
    )
    assert res.services["web"].TaskTemplate.ContainerSpec.Secrets[0].File["Mode"] == 0o440
    assert list(res.networks) == ["shared-default"]
    assert res.services["web"].TaskTemplate.Networks[0].Target == "shared-default"
    # v1 files create named volumes on first use; no declaration needed.
    f = _write(tmp_path, "web:\n  image: busybox\n  volumes: ['data:/data', 'cache:/c:nocopy']\n", "v1.yml")
    mounts = to_stack(load([f], env={}), "s").services["web"].TaskTemplate.ContainerSpec.Mounts
    assert [(x.Source, x.Target) for x in mounts] == [("s_data", "/data"), ("s_cache", "/c")]
    assert mounts[1].VolumeOptions["NoCopy"] is True
    f = _write(tmp_path, "services:\n  web:\n    image: busybox\n    tmpfs: ['/tmp:size=1m,mode=1777', /run]\n")
    mounts = to_stack(load([f], env={}), "s").services["web"].TaskTemplate.ContainerSpec.Mounts
    assert mounts == [m.Mount(Type="tmpfs", Target="/tmp", TmpfsOptions={"SizeBytes": 1 << 20, "Mode": 0o1777}),
                      m.Mount(Type="tmpfs", Target="/run")]


def test_cpu_shares_become_a_proportional_reservation() -> None:
    p = load([DATA / "valid/v2.yml"], env={})
    app = to_stack(p, "st").services["app"]
    assert app.TaskTemplate.Resources.Reservations.NanoCPUs == 500_000_000  # 512 shares = 0.5 CPU
    assert any("v2.yml:9: app: cpu_shares 512 also becomes a reservation of 0.5 CPUs" in w for w in p.warnings)
    assert app.TaskTemplate.ContainerSpec.HostConfig.CpuShares == 512  # and the container's own weight


def test_extension_keys_follow_the_schemas(tmp_path: Path) -> None:
    f = _write(tmp_path, "version: '3.8'\nx-shoal-a: 1\nservices:\n  w:\n    image: busybox\n    x-shoal-b: 2\n")
    p = load([f], env={})
    assert p.extensions == {"x-shoal-a": 1} and p.services["w"]["x-shoal-b"] == 2
    f = _write(tmp_path, "version: '3.2'\nservices:\n  w:\n    image: busybox\nx-shoal-a: 1\n")
    with pytest.raises(ComposeError, match=r"extension keys need version 3\.4") as e:
        load([f], env={})
    assert e.value.line == 5


def test_normalised_has_one_spelling_per_key() -> None:
    doc = normalised(load([DATA / "valid/v1_more.yml"], env={}))
    app = doc["services"]["app"]
    assert app["environment"] == {"MODE": "prod", "EMPTY": ""}
    assert app["labels"] == {"tier": "back"}
    assert app["ports"] == [{"target": 9000, "protocol": "tcp", "mode": "ingress"},
                            {"target": 9001, "published": 9001, "protocol": "udp", "mode": "ingress"}]
    assert app["volumes"] == [
        {"type": "volume", "source": "data", "target": "/data"},
        {"type": "bind", "source": str(DATA / "valid" / "conf"), "target": "/etc/app", "read_only": True},
        {"type": "volume", "target": "/var/cache/app"},
    ]
    doc = normalised(load([DATA / "valid/spec.yml"], env={}, profiles=["debug"]))
    assert doc["name"] == "demo" and "env_file" not in doc["services"]["web"]
    assert doc["services"]["web"]["environment"] == {"FROM_FILE": "1"}
    assert doc["services"]["web"]["depends_on"] == {"cache": {"condition": "service_started"}}


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("none", "service 'web': network_mode 'none' is not available to swarm services"),
        ("service:db", "a swarm task cannot share another container's network namespace"),
        ("container:abc", "a swarm task cannot share another container's network namespace"),
        ("nosuch", "unknown network_mode 'nosuch'"),
    ],
)
def test_network_mode_a_swarm_cannot_honour_is_an_error(tmp_path: Path, mode: str, message: str) -> None:
    f = _write(tmp_path, f"services:\n  web:\n    image: busybox\n    network_mode: '{mode}'\n  db:\n    image: x\n")
    with pytest.raises(ComposeError) as e:
        to_stack(load([f], env={}), "s")
    assert e.value.line == 4 and message in e.value.message


def test_network_mode_host_and_bridge_are_the_predefined_networks(tmp_path: Path) -> None:
    f = _write(tmp_path, "services:\n  web:\n    image: busybox\n    network_mode: host\n"
                         "  old:\n    image: busybox\n    network_mode: bridge\n"
                         "  ext:\n    image: busybox\n    networks: [hostnet]\n"
                         "networks:\n  hostnet:\n    external: true\n    name: host\n")
    res = to_stack(load([f], env={}), "s")
    assert res.services["web"].TaskTemplate.Networks == [m.NetworkAttachmentConfig(Target="host")]
    assert res.services["old"].TaskTemplate.Networks == [m.NetworkAttachmentConfig(Target="bridge")]
    # Swarm's own idiom (an external network named host): no alias, as docker stack deploy does.
    assert res.services["ext"].TaskTemplate.Networks == [m.NetworkAttachmentConfig(Target="host")]
    assert res.networks == {} and res.external_networks == ["host"]  # no s_default for nobody
    both = _write(tmp_path, "services:\n  web:\n    image: busybox\n    network_mode: host\n    networks: [a]\n"
                            "networks:\n  a: {}\n", "both.yml")
    with pytest.raises(ComposeError, match="mutually exclusive network_mode and networks"):
        to_stack(load([both], env={}), "s")
