"""Reading one Compose file: YAML into plain data, plus the line of every key for error messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ComposeError
from .files import FileTooLarge, read_bounded

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


# YAML aliases are expanded by everything after parsing (interpolation, the schema, merges), so a
# "billion laughs" file of a few hundred bytes (lists of nine aliases to lists of nine aliases...)
# would become millions of values. go-yaml v3, which docker compose parses with (compose-go),
# refuses "excessive aliasing": past 1,000 decoded nodes and 100 from aliases, at most 99 % of them
# may come from aliases up to 400,000 decodes, that share falling to 10 % at 4,000,000 (decode.go,
# allowedAliasRatio). PyYAML has no limit, so before constructing anything the node graph (aliases
# are shared nodes, so it is as small as the text) is walked once to count the nodes the aliases
# add. The bound is a quarter of go-yaml's ~400,000, as Python walks the expanded data several
# times: a large real file with ``<<: *defaults`` in each of 100 services adds some 2,000.
MAX_ALIAS_NODES = 100_000
# Compose files are some ten levels deep; the loader's walks are recursive (Python's limit is 1,000).
MAX_DEPTH = 100

# libyaml (the same parser go-yaml ports, so the same syntax messages as docker compose) when
# PyYAML has it: several times faster, and it bounds nesting itself where the pure-Python composer
# recurses until RecursionError.
_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse(path: Path) -> Source:
    try:
        raw = read_bounded(path)
    except FileTooLarge as e:
        raise ComposeError(str(e), path) from None
    except OSError as e:
        raise ComposeError(f"cannot read file: {e.strerror}", path) from None
    loader = _YamlLoader(raw)
    try:
        node = loader.get_single_node()
        if node is not None:
            extra, depth = _expansion(node)
            if extra is None:
                raise ComposeError("a YAML alias refers to a node that contains it", path)
            if extra > MAX_ALIAS_NODES:
                raise ComposeError(f"too many YAML alias expansions (more than {MAX_ALIAS_NODES:,} values, "
                                   "as in a 'billion laughs' file)", path)
            if depth > MAX_DEPTH:
                raise ComposeError(f"nested too deeply (more than {MAX_DEPTH} levels)", path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        opened = getattr(e, "context_mark", None)
        if opened is not None and (mark is None or mark.line >= raw.rstrip(b"\n").count(b"\n") + 1):
            mark = opened  # found missing only at the end of the file: where the unclosed thing began says more
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        msg = f"YAML syntax error: {context + ', ' if context else ''}{problem}"
        raise ComposeError(msg, path, mark.line + 1 if mark else None) from None
    except RecursionError:  # the pure-Python composer, without libyaml's own nesting bound
        raise ComposeError("nested too deeply", path) from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ComposeError("top level must be a mapping", path, 1)
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines, 0)
    return Source(path, data, lines)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for kv in node.value for n in kv]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expansion(root: yaml.Node) -> tuple[int | None, int]:
    """How many nodes the aliases add once expanded (None if one is recursive), and the depth of the
    expanded document. An alias is the very node it names, so sizes are memoised per node: one
    iterative walk over the distinct nodes, however large the expansion."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    open_: set[int] = set()  # entered, not finished: meeting one again from below is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            continue
        if key in size:
            continue
        if key in open_:
            return None, 0
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)
    return size[id(root)] - len(size), height[id(root)]


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
