"""The console's Compose deploy loads a pasted file alone: its errors carry their line, and it can read
neither the manager's files nor its environment (console/deploy.py)."""

from __future__ import annotations

import os

import pytest

from shoal.console.deploy import ComposeRejected, _load

FILE = """\
services:
  web:
    image: busybox:${CS_TAG:-latest}
    command: sleep 600
    environment:
      HOME_SEEN: ${HOME}
"""


def test_cs_a_pasted_file_sees_no_environment_of_the_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CS_TAG", "from-the-manager")
    spec, warnings, lines = _load(FILE, "cs-env")
    web = spec.Resources.Services["web"]
    assert web.TaskTemplate.ContainerSpec.Image == "busybox:latest"  # the default, not the manager's value
    assert web.TaskTemplate.ContainerSpec.Env == ["HOME_SEEN="]
    assert os.environ["HOME"] not in str(spec)
    assert any("HOME" in w for w in warnings)
    assert lines[("services", "web", "image")] == 3


@pytest.mark.parametrize(("text", "line", "words"), [
    (FILE.replace("    command:", "    comand:"), 4, "comand"),
    (FILE + "    ports: [80:80\n", 7, "YAML syntax error"),
    (FILE + "    env_file: /etc/shadow\n", 7, "/etc/shadow cannot be read"),
    (FILE + "    env_file: ./.env\n", None, "env_file .env not found"),  # only its own file exists
    (FILE + "    secrets: [db]\nsecrets:\n  db:\n    file: ../../etc/hostname\n", 10, "cannot be read"),
    ("services: []\n", 1, "services"),
])
def test_cs_errors_name_their_line(text: str, line: int | None, words: str) -> None:
    with pytest.raises(ComposeRejected) as info:
        _load(text, "cs-bad")
    assert info.value.line == line, info.value.message
    assert words in info.value.message
    assert "shoal-console-" not in info.value.message  # the private folder's path is not shown
