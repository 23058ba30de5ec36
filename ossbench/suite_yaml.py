"""Reading a suite file safely: bounded reads, bounded YAML, and the line of every YAML path.

A suite is a few KB of YAML written by a person, so anything far bigger, deeper or more repetitive is a
mistake or an attack and is refused with one message before it can hang the process or eat its memory:

- only regular files are read (a FIFO would block forever, /dev/zero would never end), at most
  MAX_FILE_BYTES of them;
- nesting depth and node count are capped while the node graph is composed, before PyYAML's recursive
  composer could overflow the stack;
- aliases are resolved on the composed graph, not by expanding it: the size and depth the document would
  have once every alias is expanded are computed with an explicit stack and a memo per node, so an alias
  bomb ("billion laughs") is refused in microseconds and a recursive alias is found as a cycle;
- only then are Python objects built and the lines indexed (a walk bounded by the expanded size).

The loader also reads YAML 1.2 scientific notation (`1e-6`, `2E5`, `1.0e6`) as floats, where YAML 1.1
(PyYAML's default) reads them as text.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import SuiteError

YamlPath = tuple[Union[str, int], ...]

MAX_FILE_BYTES = 1 << 20  # 1 MiB: the shipped suites are under 5 KB; far bigger is not a hand-written suite
MAX_NODES = 100_000  # YAML nodes once aliases are expanded: bounds the line index and validation work
MAX_DEPTH = 64  # nesting: a suite is about 5 deep; each level costs PyYAML's composer ~3 Python frames

# YAML 1.2 floats that YAML 1.1 reads as text: an exponent without a dot or without a sign (`1e-6`, `1.0e6`)
_SCIENTIFIC = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _SuiteLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the depth and node caps applied while composing."""

    def __init__(self, text: str, path: str) -> None:
        super().__init__(text)
        self.suite_path, self.depth, self.nodes = path, 0, 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.nodes += 1  # an alias counts once here; its expansion is counted on the graph
        if self.nodes > MAX_NODES:
            raise self.refuse(f"more than {MAX_NODES} YAML nodes; a suite is a short file")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.refuse(f"YAML nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def refuse(self, message: str) -> SuiteError:
        return SuiteError(message, path=self.suite_path, line=self.peek_event().start_mark.line + 1)


_SuiteLoader.add_implicit_resolver("tag:yaml.org,2002:float", _SCIENTIFIC, list("-+0123456789."))


def read_suite_text(path: str | Path) -> str:
    """The text of a suite file: a regular file of at most MAX_FILE_BYTES, in UTF-8."""
    p = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below by its type
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SuiteError("no such file", path=p) from None
    except OSError as e:
        raise SuiteError(f"cannot read: {e.strerror or e}", path=p) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
            raise SuiteError(f"is {kind}; a suite must be a regular file", path=p)
        try:
            data = f.read(MAX_FILE_BYTES + 1)  # a regular file can still grow or be endless (/proc)
        except OSError as e:
            raise SuiteError(f"cannot read: {e.strerror or e}", path=p) from None
    if len(data) > MAX_FILE_BYTES:
        raise SuiteError(f"larger than {MAX_FILE_BYTES // 1024} KiB; a suite is a short YAML file", path=p)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SuiteError(f"cannot read: not UTF-8 text ({e.reason} at byte {e.start})", path=p) from None


def load_yaml(text: str, path: str) -> tuple[Any, dict[YamlPath, int]]:
    """The document's Python value and the 1-based line of every YAML path in it."""
    loader = _SuiteLoader(text, path)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_expansion(node, path)
        lines = _index_lines(node, path)
        return loader.construct_document(node), lines
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise SuiteError(f"invalid YAML: {problem}", path=path, line=mark.line + 1 if mark else None) from None
    except ValueError as e:  # a scalar PyYAML cannot convert, e.g. an integer of more than 4300 digits
        raise SuiteError(f"invalid YAML value: {e}", path=path) from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, path: str) -> None:
    """Refuse a graph whose alias expansion is over MAX_NODES or MAX_DEPTH, or that contains itself.

    Post-order walk with an explicit stack; each distinct node is sized once (memo by identity), so the
    work is linear in the composed graph however many times aliases multiply it.
    """
    size: dict[int, int] = {}  # expanded node count of each finished node
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_nodes.discard(key)
            if size[key] > MAX_NODES:
                raise SuiteError(f"YAML aliases expand to more than {MAX_NODES} nodes (an alias bomb?)",
                                 path=path, line=node.start_mark.line + 1)
            if depth[key] > MAX_DEPTH:
                raise SuiteError(f"YAML aliases expand to more than {MAX_DEPTH} levels of nesting",
                                 path=path, line=node.start_mark.line + 1)
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise SuiteError("a YAML alias refers to a node that contains it (a recursive alias)",
                             path=path, line=node.start_mark.line + 1)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in reversed(_children(node)) if id(k) not in size)


def _index_lines(root: yaml.Node, path: str) -> dict[YamlPath, int]:
    """YAML path -> 1-based line, over the expanded document (bounded by MAX_NODES); refuses duplicate
    keys and keys that are not plain scalars. Visits in document order, so the first mistake is reported."""
    lines: dict[YamlPath, int] = {(): root.start_mark.line + 1}
    # (node, its path); a mapping entry is visited as (key node, value node, path of the mapping, keys seen)
    stack: list[tuple[Any, ...]] = [(root, ())]
    while stack:
        item = stack.pop()
        if len(item) == 4:
            key_node, node, at, seen = item
            if not isinstance(key_node, yaml.ScalarNode):
                raise SuiteError("a mapping key must be plain text", path=path,
                                 line=key_node.start_mark.line + 1, field=dotted(at) or None)
            key = key_node.value
            if key in seen:
                raise SuiteError(f"duplicate key {key!r}", path=path, line=key_node.start_mark.line + 1,
                                 field=dotted(at + (key,)))
            seen.add(key)
            at = at + (key,)
            lines[at] = key_node.start_mark.line + 1
        else:
            node, at = item
        if isinstance(node, yaml.MappingNode):
            seen_keys: set[str] = set()
            stack.extend((k, v, at, seen_keys) for k, v in reversed(node.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, child in reversed(list(enumerate(node.value))):
                lines[at + (i,)] = child.start_mark.line + 1
                stack.append((child, at + (i,)))
    return lines


def dotted(path: YamlPath) -> str:
    """A YAML path as users write it: ``variants.window128.window``, ``sweep[0].seq_len[2]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
