"""Reading one Compose file: YAML into plain data, plus the line of every key for error messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ComposeError

KeyPath = tuple[str | int, ...]


@dataclass
class Source:
    """One parsed file. ``lines`` maps a key path (``("services", "web", "image")``) to its 1-based line."""

    path: Path
    data: dict[str, Any]
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor the file spells out."""
        for n in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:n]))
            if line is not None:
                return line
        return None

    def error(self, message: str, path: KeyPath) -> ComposeError:
        return ComposeError(message, self.path, self.line_of(path), key_name(path))


def key_name(path: KeyPath) -> str:
    """``services.web.ports[0]`` for a key path."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def parse(path: Path) -> Source:
    try:
        text = path.read_text()
    except OSError as e:
        raise ComposeError(f"cannot read file: {e.strerror}", path) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        msg = f"YAML syntax error: {context + ', ' if context else ''}{problem}"
        raise ComposeError(msg, path, mark.line + 1 if mark else None) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ComposeError("top level must be a mapping", path, 1)
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines, 0)
    return Source(path, data, lines)


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], depth: int) -> None:
    # Anchors make the node graph a DAG; the depth bound only guards against pathological files.
    if depth > 50:
        return
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                sub = (*path, k.value)
                lines.setdefault(sub, k.start_mark.line + 1)
                _walk(v, sub, lines, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, i)
            lines.setdefault(sub, item.start_mark.line + 1)
            _walk(item, sub, lines, depth + 1)
