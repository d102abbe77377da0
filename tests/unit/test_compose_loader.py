"""The Compose loader over a small corpus of valid and invalid files of every version."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.compose import ComposeError, load
from shoal.compose.interpolate import InterpolationError, interpolate_str

DATA = Path(__file__).parent / "compose"


def _load(*names: str, **kw) -> object:
    kw.setdefault("env", {})
    return load([DATA / n for n in names], **kw)


# --------------------------------------------------------------------------- formats


def test_v1_services_at_top_level() -> None:
    p = _load("valid/v1.yml")
    assert p.format == "v1"
    assert set(p.services) == {"web", "redis"}
    assert p.services["web"]["links"] == ["redis"]
    assert p.locate(("services", "web", "ports")) == (DATA / "valid/v1.yml", 4)


def test_v2_keys_kept() -> None:
    p = _load("valid/v2.yml")
    assert p.format == "2.4"
    assert p.services["app"]["scale"] == 2
    assert p.services["app"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert "data" in p.volumes


def test_v3_with_interpolated_int() -> None:
    p = _load("valid/v3.yml", env={"TAG": "x"})
    assert p.format == "3.8"
    vote = p.services["vote"]
    assert vote["deploy"]["replicas"] == 3  # "${REPLICAS:-3}" converted back to an int before validation
    assert vote["environment"] == {"PRICE": "$5", "TAG": "x"}
    p = _load("valid/v3.yml", env={"REPLICAS": "7"})
    assert p.services["vote"]["deploy"]["replicas"] == 7
    assert any("TAG variable is not set" in w for w in p.warnings)


def test_compose_spec_name_env_file_and_profiles() -> None:
    with pytest.raises(ComposeError, match="only in profile"):
        _load("valid/spec.yml")
    p = _load("valid/spec.yml", profiles=["debug"])
    assert p.format == "spec" and p.name == "demo"
    assert p.services["web"]["image"] == "busybox:latest"
    assert p.services["web"]["env_file"] == [str(DATA / "valid" / "web.env")]


# --------------------------------------------------------------------------- interpolation and .env


@pytest.mark.parametrize(
    ("text", "env", "out"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("$A-$B", {"A": "1"}, "1-"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A-d}", {}, "d"),
        ("${A:+alt}", {"A": "x"}, "alt"),
        ("${A:-${B:-deep}}", {}, "deep"),
        ("$${A}", {"A": "1"}, "${A}"),
        ("${A:?boom}", {"A": "v"}, "v"),
    ],
)
def test_interpolate_forms(text: str, env: dict[str, str], out: str) -> None:
    assert interpolate_str(text, env) == out


@pytest.mark.parametrize(("text", "env"), [("${A:?boom}", {"A": ""}), ("${A?boom}", {}), ("a $ b", {}), ("${A", {})])
def test_interpolate_errors(text: str, env: dict[str, str]) -> None:
    with pytest.raises(InterpolationError):
        interpolate_str(text, env)


def test_dotenv_file_and_shell_precedence() -> None:
    p = load([DATA / "dotenv/docker-compose.yml"], env={})
    web = p.services["web"]
    assert web["image"] == "busybox:from-dotenv"
    assert web["environment"] == {"WHO": "nobody", "EMPTY": "fallback", "EMPTY2": ""}
    p = load([DATA / "dotenv/docker-compose.yml"], env={"TAG": "shell", "WHO": "me"})
    assert p.services["web"]["image"] == "busybox:shell"
    assert p.services["web"]["environment"]["WHO"] == "me"


# --------------------------------------------------------------------------- merging, extends, profiles


def test_several_files_merge() -> None:
    p = _load("multi/base.yml", "multi/override.yml")
    web = p.services["web"]
    assert web["image"] == "busybox:2"
    assert web["command"] == ["sleep", "2"]
    assert web["ports"] == ["80:80", "443:443"]
    assert web["environment"] == {"A": "1", "B": "3", "C": "4"}
    assert web["labels"] == {"x": "1", "y": "2"}
    assert web["volumes"] == ["other:/data", "/tmp:/tmp"]
    assert web["deploy"] == {"replicas": 4, "resources": {"limits": {"memory": "10M"}}}
    assert "extra" in p.services


def test_extends_across_files_and_within() -> None:
    p = _load("extends/app.yml")
    assert p.services["web"]["image"] == "busybox"
    assert p.services["web"]["environment"] == {"LEVEL": "web"}
    assert p.services["web"]["labels"] == {"tier": "base"}
    assert p.services["worker"]["command"] == "work"
    assert p.services["worker"]["environment"] == {"LEVEL": "web"}
    assert "extends" not in p.services["worker"]


def test_profiles() -> None:
    assert set(_load("profiles/p.yml").services) == {"app"}
    assert set(_load("profiles/p.yml", profiles=["tools"]).services) == {"app", "tools"}
    assert set(_load("profiles/p.yml", profiles=["debug"]).services) == {"app", "debug", "tools"}
    assert set(_load("profiles/p.yml").disabled) == {"debug", "tools"}


# --------------------------------------------------------------------------- bad input: file, line and key


@pytest.mark.parametrize(
    ("name", "line", "key", "text"),
    [
        ("invalid/syntax.yml", 4, "", "YAML syntax error"),
        ("invalid/schema.yml", 5, "services.web.imagee", "unsupported key 'imagee'"),
        ("invalid/schema_type.yml", 6, "services.web.deploy.replicas", "'many' is not of type 'integer'"),
        ("invalid/depends.yml", 4, "services.web.depends_on", "undefined service 'db'"),
        ("invalid/required.yml", 5, "services.web.environment.PASSWORD", "DB_PASSWORD is missing a value: set the"),
        ("invalid/v1_bad.yml", 3, "web.deploy", "unsupported key 'deploy'"),
        ("invalid/v2_bad.yml", 5, "services.web.deploy", "unsupported key 'deploy'"),
        ("invalid/bad_interp.yml", 4, "services.web.command", "invalid interpolation format"),
        ("extends/loop.yml", 9, "services.c.extends", "circular reference in extends"),
    ],
)
def test_bad_input_names_file_line_and_key(name: str, line: int, key: str, text: str) -> None:
    with pytest.raises(ComposeError) as err:
        _load(name)
    e = err.value
    assert e.file == (DATA / name).resolve()
    assert e.line == line
    assert e.key == key
    assert text in e.message
    assert str(e).startswith(f"{e.file}:{line}")


def test_missing_file() -> None:
    with pytest.raises(ComposeError, match="cannot read file"):
        _load("nope.yml")
