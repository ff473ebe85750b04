"""YAML read with the location of every key and value: safe, bounded (depth, values), plain data only.

Every problem a user can make in a manifest is reported at `file:line:col` with its JSON path; this
module turns the YAML's node marks into those locations.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from renderer.errors import ManifestError, Problem

Path_ = tuple[str | int, ...]


@dataclass
class Located:
    """Parsed YAML data plus the location of every key and value in it."""

    file: str
    data: Any
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """The closest known location for a path: the node itself, or its nearest parent."""
        table = self.keys if key else self.values
        for n in range(len(path), -1, -1):
            if path[:n] in table:
                return table[path[:n]]
            if path[:n] in self.values:
                return self.values[path[:n]]
        return (1, 1)

    def problem(self, path: Path_, message: str, *, key: bool = False, **kw: Any) -> Problem:
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, message, json_path(path), **kw)


def json_path(path: Path_) -> str:
    text = "$"
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part)}]"
    return text


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


# libyaml's loader when PyYAML was built with it (the wheels are): the same nodes and marks, faster.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# Limits that keep a hostile or mistaken file from exhausting the machine. A real manifest is
# a few levels deep; libyaml's composer recurses in C (it crashed the process at 50,000
# levels), so depth is checked on the event stream, which is flat, before anything is composed.
MAX_DEPTH = 64


# Values (keys, scalars, lists, mappings), aliases counted as expanded: stops "billion laughs",
# and bounds time and memory. Measured: 160,000 inline prompts (~800,000 values) took 16 s and
# 625 MB to check on the shared 2-core machine; 250,000 values (~50,000 inline prompts) stays
# within a few seconds. Long prompt lists belong in prompt files, which are cheaper to read.
MAX_VALUES = 250_000


_TOO_MANY = (
    "a manifest holds a few thousand values; put long prompt lists in a prompt file "
    "(.csv, .jsonl or .txt), and repeat values with aliases only a few times"
)


_YAML = "tag:yaml.org,2002:"


_PLAIN_TAGS = {_YAML + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}


_TAG_HINTS = {
    _YAML + "binary": "binary (!!binary) values are not accepted; write the value as text",
    _YAML + "timestamp": "this is read by YAML as a date or time; quote it to keep it text",
    _YAML + "set": "!!set is not accepted; write a list",
    _YAML + "omap": "!!omap is not accepted; write a mapping",
    _YAML + "pairs": "!!pairs is not accepted; write a mapping",
}


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _yaml_error(text: str, file: str, exc: yaml.YAMLError) -> ManifestError:
    if isinstance(exc, yaml.reader.ReaderError):
        line, col = _line_col(text, max(0, min(exc.position, len(text))))
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        return ManifestError(
            [
                Problem(
                    file,
                    line,
                    col,
                    f"invalid YAML: the character {what} is not allowed "
                    "(control characters and NUL bytes cannot appear in a manifest)",
                )
            ]
        )
    if isinstance(exc, yaml.MarkedYAMLError) and _Loader is not yaml.SafeLoader:
        # libyaml's messages drop detail ("found character '\t'"); syntax errors are rare,
        # so the pure-Python parser is asked again for the clearer wording.
        try:
            yaml.SafeLoader(text).get_single_node()
        except yaml.MarkedYAMLError as clearer:
            exc = clearer
        except (yaml.YAMLError, RecursionError):
            pass
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    reason = " ".join(
        str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p
    )
    return ManifestError([Problem(file, line, col, f"invalid YAML: {reason or exc}")])


def _event_at(event: yaml.Event) -> tuple[int, int]:
    """1-based (line, column) of a parser event (events from a string always carry marks)."""
    mark = event.start_mark
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _check_depth(text: str, file: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, or more than MAX_VALUES values as written, reading
    events only as far as the first offending one (nothing is composed yet)."""
    try:
        _walk_depth(text, file, _Loader)
    except yaml.YAMLError as exc:
        # libyaml 0.2.5+ (PyYAML 6.0.4's wheels) refuses 1,000 levels while its scanner looks
        # ahead for a simple key, before the parser reaches level MAX_DEPTH + 1. The pure-Python
        # scanner has no such limit, so the text is walked again with it: the verdict and its
        # location are then the same for every PyYAML the project allows.
        if _Loader is yaml.SafeLoader or "nesting depth" not in str(exc):
            raise
        _walk_depth(text, file, yaml.SafeLoader)


def _walk_depth(text: str, file: str, loader: Any) -> None:
    depth = 0
    count = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, (yaml.NodeEvent, yaml.CollectionStartEvent)):
            count += 1
            if count > MAX_VALUES:
                line, col = _event_at(event)
                raise ManifestError(
                    [
                        Problem(
                            file,
                            line,
                            col,
                            f"the manifest holds more than {MAX_VALUES:,} values",
                            allowed=_TOO_MANY,
                        )
                    ]
                )
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line, col = _event_at(event)
                raise ManifestError(
                    [
                        Problem(
                            file,
                            line,
                            col,
                            f"nested more than {MAX_DEPTH} levels deep",
                            allowed="a manifest needs a few levels; check for runaway brackets",
                        )
                    ]
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _scalar_problem(node: yaml.ScalarNode) -> str | None:
    """Why a scalar must not be accepted as YAML typed it, or None."""
    tag, value = node.tag, node.value
    if tag in (_YAML + "int", _YAML + "float") and ":" in value:
        return f'{value} is read by YAML 1.1 as a base-60 number, not text; quote it: "{value}"'
    if tag == _YAML + "int" and re.fullmatch(r"[-+]?(0[0-7_]+|0[xX][0-9a-fA-F_]+|0b[01_]+)", value):
        return (
            f"{value} is read by YAML as a number in another base; write it in decimal, or quote it"
        )
    if tag == _YAML + "float":
        plain = value.lower().lstrip("+-").replace("_", "")
        try:
            finite = plain not in (".nan", ".inf") and math.isfinite(float(plain))
        except ValueError:
            finite = True  # a float spelling Python does not read is constructed by YAML, finitely
        if not finite:
            return f"{value} is not a finite number"
    if tag == _YAML + "str":
        if "\0" in value:
            return "text contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "text contains an unpaired surrogate escape, which is not valid Unicode"
    if tag in _TAG_HINTS:
        return _TAG_HINTS[tag]
    if tag not in _PLAIN_TAGS:
        return (
            f"the YAML tag {tag.replace(_YAML, '!!')} is not accepted "
            "(a manifest is plain data: tags that build objects or include files are refused)"
        )
    return None


def _check_nodes(root: yaml.Node, file: str) -> None:
    """Tags, keys, numbers and alias expansion, checked on the composed graph before construction."""
    problems: list[Problem] = []
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def visit(node: yaml.Node, path: Path_) -> int:
        ident = id(node)
        if ident in sizes:
            return sizes[ident]
        if ident in active:
            line, col = _mark(node)
            raise ManifestError(
                [Problem(file, line, col, "an alias refers to the value that contains it")]
            )
        active.add(ident)
        size = 1
        if isinstance(node, yaml.ScalarNode):
            reason = _scalar_problem(node)
            if reason:
                problems.append(Problem(file, *_mark(node), reason, json_path(path)))
        elif isinstance(node, yaml.SequenceNode):
            if node.tag not in _PLAIN_TAGS:
                problems.append(
                    Problem(
                        file,
                        *_mark(node),
                        _TAG_HINTS.get(node.tag)
                        or f"the YAML tag {node.tag.replace(_YAML, '!!')} is not accepted",
                        json_path(path),
                    )
                )
            for i, item in enumerate(node.value):
                size += visit(item, (*path, i))
        elif isinstance(node, yaml.MappingNode):
            if node.tag not in _PLAIN_TAGS:
                problems.append(
                    Problem(
                        file,
                        *_mark(node),
                        _TAG_HINTS.get(node.tag)
                        or f"the YAML tag {node.tag.replace(_YAML, '!!')} is not accepted",
                        json_path(path),
                    )
                )
            for key, value in node.value:
                if key.tag == _YAML + "merge":
                    size += visit(value, path)
                    continue
                if not isinstance(key, yaml.ScalarNode) or key.tag != _YAML + "str":
                    shown = key.value if isinstance(key, yaml.ScalarNode) else "a list or mapping"
                    problems.append(
                        Problem(
                            file,
                            *_mark(key),
                            f"the key {shown} is not text; quote it",
                            json_path(path),
                        )
                    )
                    continue
                size += visit(key, path) + visit(value, (*path, key.value))
        active.discard(ident)
        sizes[ident] = size
        if size > MAX_VALUES:
            raise ManifestError(
                [
                    Problem(
                        file,
                        *_mark(node),
                        f"aliases here expand to more than {MAX_VALUES:,} values",
                        json_path(path),
                        allowed=_TOO_MANY,
                    )
                ]
            )
        return size

    visit(root, ())
    if problems:
        raise ManifestError(problems)


def load_yaml(text: str, file: str) -> Located:
    """Safe-load one YAML document with the location of every key and value.

    Total: any text either loads as plain data (mappings, lists, text, finite numbers,
    booleans, null) or raises ManifestError located at file:line:col.
    """
    nul = text.find("\0")
    if nul >= 0:
        line, col = _line_col(text, nul)
        raise ManifestError(
            [Problem(file, line, col, "the file contains a NUL byte; a manifest is text")]
        )
    loader = _Loader(text)
    try:
        _check_depth(text, file)
        node = loader.get_single_node()
        if node is not None:
            _check_nodes(node, file)
    except yaml.YAMLError as exc:
        loader.dispose()
        raise _yaml_error(text, file, exc) from None
    located = Located(file, None)
    problems: list[Problem] = []

    def walk(n: yaml.Node, path: Path_) -> None:
        located.values[path] = _mark(n)
        if isinstance(n, yaml.MappingNode):
            # Merge keys (`<<: *base`) first: a key written in this mapping overrides a merged one,
            # which is legal and not a duplicate.
            for key_node, value_node in n.value:
                if key_node.tag == _YAML + "merge":
                    merged = (
                        value_node.value
                        if isinstance(value_node, yaml.SequenceNode)
                        else [value_node]
                    )
                    for source in merged:
                        if isinstance(source, yaml.MappingNode):
                            for k, v in source.value:
                                if k.tag != _YAML + "merge":
                                    at = path + (k.value,)  # noqa: RUF005 (see walk's note)
                                    located.keys[at] = _mark(k)
                                    walk(v, at)
            seen: dict[Any, yaml.Node] = {}
            for key_node, value_node in n.value:
                if key_node.tag == _YAML + "merge":
                    continue
                key = key_node.value
                if key in seen:
                    line, col = _mark(key_node)
                    first = _mark(seen[key])[0]
                    problems.append(
                        Problem(
                            file,
                            line,
                            col,
                            f"duplicate key {key!r} (first at line {first})",
                            json_path(path),
                        )
                    )
                seen[key] = key_node
                # Not (*path, key): mypy reads a starred tuple in a subscript as 3.11-only syntax.
                at = path + (key,)  # noqa: RUF005
                located.keys[at] = _mark(key_node)
                walk(value_node, at)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    try:
        if node is not None:
            walk(node, ())
        if problems:
            raise ManifestError(problems)
        located.data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise _yaml_error(text, file, exc) from None
    finally:
        loader.dispose()
    return located
