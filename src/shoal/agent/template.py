"""Config templating (``Templating: {Name: "golang"}``), as swarmkit's template package renders it
on the node when a task's files are written.

The placeholders swarmkit documents are supported: ``{{.Service.ID}}``, ``{{.Service.Name}}``,
``{{.Node.ID}}``, ``{{.Node.Hostname}}``, ``{{.Node.Platform.OS}}``, ``{{.Node.Platform.Architecture}}``,
``{{.Task.ID}}``, ``{{.Task.Name}}``, ``{{.Task.Slot}}``, and the functions ``{{env "X"}}`` (the
task's container environment), ``{{secret "target"}}`` and ``{{config "target"}}`` (a file the task
references, by its target name), with Go's ``{{-``/``-}}`` trimming and ``{{/* comments */}}``.
Anything else (pipelines, if/range) is an error that fails the task, rather than a silent wrong
file: a full Go text/template engine is not worth carrying for configs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

GOLANG = "golang"

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_FIELD = re.compile(r"^\.[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_CALL = re.compile(r'^(env|secret|config)\s+("(?:[^"\\]|\\.)*"|`[^`]*`)$')


class TemplateError(Exception):
    pass


def render(text: str, ctx: dict[str, Any], funcs: dict[str, Callable[[str], str]]) -> str:
    out: list[str] = []
    pos = 0
    for m in _ACTION.finditer(text):
        literal = text[pos:m.start()]
        if m.group(1):
            literal = literal.rstrip()
        out.append(literal)
        out.append(_action(m.group(2).strip(), ctx, funcs))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(text[pos:])
    return "".join(out)


def _action(body: str, ctx: dict[str, Any], funcs: dict[str, Callable[[str], str]]) -> str:
    if body.startswith("/*") and body.endswith("*/"):
        return ""
    if _FIELD.match(body):
        value: Any = ctx
        for part in body[1:].split("."):
            if not isinstance(value, dict) or part not in value:
                raise TemplateError(f"template: can't evaluate field {part} in {body}")
            value = value[part]
        return str(value)
    call = _CALL.match(body)
    if call:
        name, arg = call.group(1), call.group(2)
        return funcs[name](json.loads(arg) if arg.startswith('"') else arg[1:-1])
    raise TemplateError(f"template: unsupported action {{{{{body}}}}} (Shoal renders fields, env, secret, config)")
