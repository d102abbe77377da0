"""The Compose loader's input bounds (issue 11): YAML alias bombs, file sizes, and files named outside
the project folder. Each attack is a real file on disk loaded by the real loader (and, last, the CLI)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from shoal.cli.main import app
from shoal.compose import ComposeError, load, to_stack
from shoal.compose import source as compose_source
from shoal.compose.files import MAX_CONFIG_BYTES, MAX_FILE_BYTES, MAX_SECRET_BYTES

EXAMPLES = Path(__file__).parents[2] / "examples"
SERVICE = "services:\n  web:\n    image: busybox\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def bomb(levels: int) -> str:
    """Billion laughs: a list of 9 strings, then ``levels - 1`` lists of 9 aliases to the one before."""
    lines = [SERVICE.rstrip("\n"), 'x-l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        lines.append(f"x-l{n}: &l{n} [" + ",".join([f"*l{n - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- YAML aliases


@pytest.mark.parametrize("levels", [6, 9])
def test_billion_laughs_is_refused(tmp_path: Path, levels: int) -> None:
    # 6 levels (342 bytes): aliases add 672,588 values, which the unbounded loader did expand (~1 s);
    # 9 levels (486 bytes): 490 million, which it never finished. Both stop at the count, at once.
    f = write(tmp_path / "docker-compose.yml", bomb(levels))
    assert f.stat().st_size < 500
    with pytest.raises(ComposeError) as e:
        load([f], env={})
    assert e.value.file == f
    assert str(e.value) == (f"{f}: too many YAML alias expansions (more than 100,000 values, as in a "
                            "'billion laughs' file)")


def test_bomb_through_merge_keys_is_refused(tmp_path: Path) -> None:
    # The same growth through mappings and ``<<`` (what real files use aliases for).
    lines = [SERVICE.rstrip("\n"), "x-m0: &m0 {" + ", ".join(f"k{i}: v" for i in range(9)) + "}"]
    for n in range(1, 6):
        lines.append(f"x-m{n}: &m{n} {{" + ", ".join(f"k{i}: *m{n - 1}" for i in range(9)) + "}")
    lines.append("x-top: {<<: *m5}")
    f = write(tmp_path / "compose.yml", "\n".join(lines) + "\n")
    with pytest.raises(ComposeError, match="too many YAML alias expansions"):
        load([f], env={})


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    # An anchor used inside itself expands forever (the unbounded loader died of RecursionError).
    f = write(tmp_path / "compose.yml", SERVICE + "x-loop: &loop\n  - a\n  - *loop\n")
    with pytest.raises(ComposeError, match="a YAML alias refers to a node that contains it"):
        load([f], env={})


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "compose.yml", SERVICE + "x-deep: " + "[" * 150 + "]" * 150 + "\n")
    with pytest.raises(ComposeError, match=r"nested too deeply \(more than 100 levels\)"):
        load([f], env={})


def test_pure_python_yaml_is_bounded_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without libyaml, PyYAML's composer recurses: a RecursionError must still be one ComposeError.
    monkeypatch.setattr(compose_source, "_YamlLoader", yaml.SafeLoader)
    with pytest.raises(ComposeError, match="too many YAML alias expansions"):
        load([write(tmp_path / "bomb.yml", bomb(9))], env={})
    deep = write(tmp_path / "deep.yml", SERVICE + "x-deep: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ComposeError, match="nested too deeply"):
        load([deep], env={})
    assert load([write(tmp_path / "ok.yml", SERVICE)], env={}).services["web"]["image"] == "busybox"


def test_expansion_count_is_exact() -> None:
    # outer list, the anchored list and its 2 scalars: 4 nodes; expanded, the 2 aliases add 3 each.
    node = yaml.compose("[&a [1, 2], *a, *a]", Loader=yaml.SafeLoader)
    assert compose_source._expansion(node) == (6, 3)
    assert compose_source._expansion(yaml.compose("{a: [b, {c: d}]}", Loader=yaml.SafeLoader)) == (0, 4)


@pytest.mark.parametrize(("aliases", "refused"), [(100, False), (101, True)])
def test_alias_bound_is_exact(tmp_path: Path, aliases: int, refused: bool) -> None:
    # An anchored list of 999 strings is 1,000 nodes: 100 aliases to it add exactly the bound.
    text = SERVICE + "x-a: &a [" + ",".join(["s"] * 999) + "]\nx-b: [" + ",".join(["*a"] * aliases) + "]\n"
    f = write(tmp_path / "compose.yml", text)
    if refused:
        with pytest.raises(ComposeError, match="too many YAML alias expansions"):
            compose_source.parse(f)
    else:
        assert len(compose_source.parse(f).data["x-b"]) == aliases


def test_ordinary_aliases_still_load(tmp_path: Path) -> None:
    # ``<<: *defaults`` in 300 services, as real files do: far under the bound.
    lines = ["x-defaults: &defaults", "  restart: always", "  environment: {A: '1', B: '2'}",
             "  labels: [a=1, b=2]", "services:"]
    for i in range(300):
        lines += [f"  s{i}:", "    <<: *defaults", f"    image: busybox:{i}"]
    p = load([write(tmp_path / "compose.yml", "\n".join(lines) + "\n")], env={})
    assert len(p.services) == 300
    assert p.services["s299"]["environment"] == {"A": "1", "B": "2"}


# --------------------------------------------------------------------------- sizes


def test_oversized_compose_file_is_refused(tmp_path: Path) -> None:
    # Valid YAML (a comment pads it), so only the bound refuses it.
    f = write(tmp_path / "compose.yml", SERVICE + "#" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ComposeError) as e:
        load([f], env={})
    assert str(e.value) == f"{f}: file is larger than 4 MiB"


def test_endless_compose_file_is_refused_without_reading_it_all() -> None:
    # /dev/zero has no size to check first: the read itself stops past the bound.
    with pytest.raises(ComposeError, match="/dev/zero: file is larger than 4 MiB"):
        load([Path("/dev/zero")], project_dir=Path("/dev"), env={})


def test_oversized_dotenv_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "compose.yml", SERVICE)
    write(tmp_path / ".env", "A=1\n" + "#" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ComposeError) as e:
        load([f], env={})
    assert str(e.value) == f"{tmp_path / '.env'}: file is larger than 4 MiB"


def test_oversized_env_file_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "compose.yml", SERVICE + "    env_file: big.env\n")
    write(tmp_path / "big.env", "A=1\n" + "#" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ComposeError) as e:
        to_stack(load([f], env={}), "s")
    assert str(e.value) == f"{tmp_path / 'big.env'}: env_file: file is larger than 4 MiB"


@pytest.mark.parametrize(("section", "limit", "text"), [("secrets", MAX_SECRET_BYTES, "500 KiB"),
                                                        ("configs", MAX_CONFIG_BYTES, "1000 KiB")])
def test_oversized_secret_or_config_file_is_refused(tmp_path: Path, section: str, limit: int, text: str) -> None:
    f = write(tmp_path / "compose.yml", f"version: '3.8'\n{SERVICE}{section}:\n  big:\n    file: ./big.bin\n")
    (tmp_path / "big.bin").write_bytes(b"x" * (limit + 1))
    pattern = rf"{section}\.big\.file: {section[:-1]} 'big': .*big.bin is larger than {text}, Swarm's limit"
    with pytest.raises(ComposeError, match=pattern):
        to_stack(load([f], env={}), "s")


# --------------------------------------------------------------------------- files outside the project


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A project folder and, beside it, a folder of files no Compose file in the project may name."""
    project, secret = tmp_path / "project", tmp_path / "outside" / "id_rsa"
    write(secret, "LEAKED=private key\n")
    write(project / "inside.env", "OK=1\n")
    return project, secret


def outside_cases(project: Path, secret: Path) -> dict[str, tuple[str, str]]:
    """Case → (compose file text, the key its error must name)."""
    rel = os.path.relpath(secret, project)
    return {
        "env_file absolute": (SERVICE + f"    env_file: {secret}\n", "services.web.env_file"),
        "env_file ../": (SERVICE + f"    env_file: [inside.env, {rel}]\n", "services.web.env_file"),
        "secret file": (f"version: '3.8'\n{SERVICE}secrets:\n  key:\n    file: {rel}\n", "secrets.key.file"),
        "config file": (f"version: '3.8'\n{SERVICE}configs:\n  key:\n    file: {secret}\n", "configs.key.file"),
        "extends file": ("services:\n  web:\n    extends:\n      file: " + rel.replace("id_rsa", "base.yml")
                         + "\n      service: base\n", "services.web.extends.file"),
        "env_file symlink": (SERVICE + "    env_file: link.env\n", "services.web.env_file"),
        "secret symlinked folder": (f"version: '3.8'\n{SERVICE}secrets:\n  key:\n    file: linked/id_rsa\n",
                                    "secrets.key.file"),
    }


CASES = list(outside_cases(Path("/p"), Path("/o/id_rsa")))


def project_with(project: Path, secret: Path, case: str) -> tuple[Path, str]:
    text, key = outside_cases(project, secret)[case]
    write(secret.parent / "base.yml", "services:\n  base:\n    image: busybox\n    env_file: id_rsa\n")
    (project / "link.env").symlink_to(secret)
    (project / "linked").symlink_to(secret.parent)
    return write(project / "docker-compose.yml", text), key


@pytest.mark.parametrize("case", CASES)
def test_file_outside_the_project_is_refused(layout: tuple[Path, Path], case: str) -> None:
    project, secret = layout
    f, key = project_with(project, secret, case)
    with pytest.raises(ComposeError) as e:
        to_stack(load([f], env={}), "s")
    msg = str(e.value)
    assert e.value.file == f and e.value.line is not None and e.value.key.startswith(key), msg
    assert f"is outside the project folder {project.resolve()}: " in msg
    assert "stricter than docker compose" in msg and "--allow-outside-files" in msg
    assert str(secret.parent) in msg  # the path it really names, symlinks followed


@pytest.mark.parametrize("case", CASES)
def test_file_outside_the_project_is_allowed_with_the_flag(layout: tuple[Path, Path], case: str) -> None:
    project, secret = layout
    f, _ = project_with(project, secret, case)
    res = to_stack(load([f], env={}, allow_outside_files=True), "s")
    shipped = [*(s.Data for s in res.secrets.values()), *(c.Data for c in res.configs.values())]
    env = res.services["web"].TaskTemplate.ContainerSpec.Env or []
    assert "LEAKED=private key" in env or base64.b64encode(secret.read_bytes()).decode() in shipped


def test_dotenv_symlink_out_of_the_project_is_refused(layout: tuple[Path, Path]) -> None:
    project, secret = layout
    f = write(project / "compose.yml", SERVICE.replace("busybox", "busybox:${LEAKED}"))
    (project / ".env").symlink_to(secret)
    with pytest.raises(ComposeError) as e:
        load([f], env={})
    assert str(e.value).startswith(f"{project / '.env'}: {project / '.env'} (really {secret}) is outside the project")
    assert load([f], env={}, allow_outside_files=True).services["web"]["image"] == "busybox:private key"


def test_files_inside_the_project_still_load(layout: tuple[Path, Path]) -> None:
    project, _ = layout
    write(project / "conf" / "app.conf", "x=1\n")
    write(project / "conf" / "base.yml", "services:\n  base:\n    image: busybox\n    env_file: ../inside.env\n")
    (project / "conf" / "again.env").symlink_to(project / "inside.env")  # a symlink that stays inside
    text = ("services:\n  web:\n    extends: {file: conf/base.yml, service: base}\n"
            "    env_file: [conf/again.env]\nconfigs:\n  app:\n    file: ./conf/app.conf\n")
    res = to_stack(load([write(project / "compose.yml", text)], env={}), "s")
    assert "OK=1" in (res.services["web"].TaskTemplate.ContainerSpec.Env or [])
    assert res.configs["s_app"].Data == base64.b64encode(b"x=1\n").decode()


def test_project_dir_is_the_root_when_given(layout: tuple[Path, Path]) -> None:
    # With an explicit project folder, the rule is relative to it, not to the first file's folder.
    project, _ = layout
    f = write(project / "sub" / "compose.yml", SERVICE + "    env_file: ../inside.env\n")
    assert load([f], project_dir=project, env={}).services["web"]
    with pytest.raises(ComposeError, match="is outside the project folder"):
        load([f], project_dir=project / "sub", env={})


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*/docker-compose.yml")), ids=lambda p: p.parent.name)
def test_examples_load_without_the_flag(example: Path) -> None:
    assert to_stack(load([example], env={}), "demo").services


# --------------------------------------------------------------------------- the CLI


def cli(*args: str) -> object:
    # No daemon: a refused file must be reported before any request; an accepted one then fails to connect.
    return CliRunner().invoke(app, ["-H", "unix:///nonexistent/shoal.sock", *args],
                              env={"SHOAL_HOST": None, "DOCKER_HOST": None})


@pytest.mark.parametrize("command", [["stack", "deploy", "-c", "{f}", "demo"],
                                     ["stack", "upgrade", "--dry-run", "-c", "{f}", "demo"],
                                     ["compose", "up", "-f", "{f}"],
                                     ["compose", "down", "-f", "{f}"]])
def test_cli_refuses_in_one_line_and_the_flag_allows(layout: tuple[Path, Path], command: list[str]) -> None:
    project, secret = layout
    f = write(project / "docker-compose.yml", SERVICE + f"    env_file: {secret}\n")
    args = [a.replace("{f}", str(f)) for a in command]
    result = cli(*args)
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    lines = result.stderr.splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and "Traceback" not in result.output  # type: ignore[attr-defined]
    assert lines[0].startswith(f"{f}:4: services.web.env_file: {secret} is outside the project folder")
    assert lines[0].endswith("pass --allow-outside-files to allow it")
    allowed = cli(*args[:2], "--allow-outside-files", *args[2:])
    assert allowed.stderr.strip() == (  # type: ignore[attr-defined]
        "Cannot connect to the Shoal daemon at unix:///nonexistent/shoal.sock. Is the daemon running?")


def test_cli_refuses_a_bomb_in_one_line(tmp_path: Path) -> None:
    f = write(tmp_path / "docker-compose.yml", bomb(9))
    result = cli("stack", "deploy", "-c", str(f), "demo")
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert result.stderr == (  # type: ignore[attr-defined]
        f"{f}: too many YAML alias expansions (more than 100,000 values, as in a 'billion laughs' file)\n")


def test_cli_help_documents_the_flag() -> None:
    result = CliRunner().invoke(app, ["stack", "deploy", "--help"], env={"COLUMNS": "200"})
    assert "--allow-outside-files" in result.output and "unlike docker compose" in result.output


def test_substitution_amplification_is_refused(tmp_path: Path) -> None:
    # A 1 MiB .env value named 20 times is 20 MiB; a 2 MiB file could name it 500,000 times.
    (tmp_path / ".env").write_text("BIG=" + "x" * (1 << 20) + "\n")
    labels = "".join(f"      l{i}: ${{BIG}}\n" for i in range(20))
    f = write(tmp_path / "compose.yml", SERVICE + "    labels:\n" + labels)
    with pytest.raises(ComposeError, match=r"compose.yml:21: services.web.labels.l16: variables substituted into "
                                           r"the Compose files add up to more than 16 MiB"):
        load([f], env={})


def test_substitution_budget_spans_files(tmp_path: Path) -> None:
    env = {"BIG": "x" * (6 << 20)}
    one = write(tmp_path / "a.yml", SERVICE + "    labels: {a: '${BIG}', b: '$BIG'}\n")
    two = write(tmp_path / "b.yml", SERVICE + "    labels: {c: '${BIG:-small}'}\n")
    assert len(load([one], env=env).services["web"]["labels"]["b"]) == 6 << 20
    with pytest.raises(ComposeError, match="add up to more than 16 MiB"):
        load([one, two], env=env)


@pytest.mark.parametrize("where", [".env", "env_file"])
def test_env_file_doubling_is_refused(tmp_path: Path, where: str) -> None:
    """``B=${A}${A}`` doubles A: twenty such lines of a 1 KB file made 500 MB (python-dotenv has no bound)."""
    lines = ["A0=" + "x" * 1000] + [f"A{i}=${{A{i - 1}}}${{A{i - 1}}}" for i in range(1, 40)]
    write(tmp_path / ("vars.env" if where == "env_file" else ".env"), "\n".join(lines) + "\n")
    text = SERVICE + ("    env_file: vars.env\n" if where == "env_file" else "")
    f = write(tmp_path / "compose.yml", text)
    with pytest.raises(ComposeError, match="its variables expand to more than 4 MiB"):
        to_stack(load([f], env={}), "s")


def test_env_files_still_read_as_dotenv_does(tmp_path: Path) -> None:
    write(tmp_path / "vars.env", "A=1\nB=${A}-x\n# comment\nexport C='q u o'\nD\nA=2\nE=${A}\n")
    f = write(tmp_path / "compose.yml", SERVICE + "    env_file: vars.env\n")
    env = to_stack(load([f], env={}), "s").services["web"].TaskTemplate.ContainerSpec.Env
    assert env == ["A=2", "B=1-x", "C=q u o", "D=", "E=2"]
