"""YAML manifest → a typed, structurally valid `Manifest`. Nothing here touches the network.

Every problem is located: YAML is composed into nodes first so each value keeps its
`line:col`, and a JSON path into the data. Structural problems (unknown keys, wrong types)
come from `schemas/manifest.schema.json`, the same schema editors use. All problems are
collected and raised together as one ManifestError.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from renderer import settings
from renderer.errors import ManifestError, Problem, UsageError, closest
from renderer.layout import _WINDOWS_RESERVED as WINDOWS_DEVICES
from renderer.models.schemas import default_schema_dir
from renderer.settings import RetryPolicy, is_remote, parse_s3

Path_ = tuple[str | int, ...]
SECRET_KEYS = {"key", "api_key", "apikey", "fal_key", "token", "secret", "authorization"}
PROVIDERS = {"fal": "https://queue.fal.run", "emulator": None}


# ---------------------------------------------------------------- YAML with locations


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
                line, col = event.start_mark.line + 1, event.start_mark.column + 1
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
                line, col = event.start_mark.line + 1, event.start_mark.column + 1
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
                                    located.keys[(*path, k.value)] = _mark(k)
                                    walk(v, (*path, k.value))
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
                located.keys[(*path, key)] = _mark(key_node)
                walk(value_node, (*path, key))
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


# ---------------------------------------------------------------- structure


def _manifest_validator() -> Draft202012Validator:
    schema = json.loads((default_schema_dir() / "manifest.schema.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


def _structure_problems(doc: Located, error: ValidationError) -> list[Problem]:
    path = tuple(error.absolute_path)
    if _setting_for(path):
        return []  # numeric settings are judged by settings.parse (see numeric_settings)
    if error.validator in ("oneOf", "anyOf") and error.context:
        # Report the alternative written for this kind of value (a mapping, a list, a
        # string…) rather than "is not valid under any of the given schemas".
        branches: dict[int, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.schema_path[0], []).append(sub)
        kind = _json_kind(error.instance)
        fitting = [
            errs
            for i, errs in branches.items()
            if error.validator_value[i].get("type") == kind
            or (kind == "string" and "enum" in error.validator_value[i])
            or (kind == "integer" and error.validator_value[i].get("type") == "number")
        ]
        if len(fitting) > 1 and isinstance(error.instance, dict):
            # Several mapping forms (e.g. seeds: {start, count} or {random}): pick the one
            # whose required keys the value has.
            fitting = [
                errs
                for i, errs in branches.items()
                if set(error.validator_value[i].get("required", [])) <= set(error.instance)
                and error.validator_value[i].get("type") == kind
            ] or fitting
        if len(fitting) == 1:
            return [p for sub in fitting[0] for p in _structure_problems(doc, sub)]
        if not fitting:
            kinds = sorted(
                {
                    b.get("type", "one of " + ", ".join(map(str, b.get("enum", []))))
                    for b in error.validator_value
                }
            )
            return [doc.problem(path, f"expected {' or '.join(kinds)}, not {kind}")]
        best = best_match(error.context)
        return _structure_problems(doc, best)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        found = []
        for key in error.instance:
            if key in known:
                continue
            if key.lower() in SECRET_KEYS:
                found.append(
                    doc.problem(
                        (*path, key),
                        "an API key is never accepted in a manifest",
                        key=True,
                        allowed="set the key in the environment: export FAL_KEY=… "
                        "(or name another variable with provider.key_env)",
                    )
                )
                continue
            found.append(
                doc.problem(
                    (*path, key),
                    f"unknown key {key!r}",
                    key=True,
                    allowed=", ".join(known),
                    suggestion=closest(key, known),
                )
            )
        return found
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [doc.problem(path, f"missing required key {k!r}") for k in missing]
    if error.validator == "enum":
        return [
            doc.problem(
                path,
                f"{error.instance!r} is not allowed",
                allowed=", ".join(map(str, error.validator_value)),
                suggestion=closest(error.instance, error.validator_value),
            )
        ]
    if error.validator == "pattern" and path and path[-1] in ("id", "name", "label"):
        return [
            doc.problem(
                path,
                f"{error.instance!r} is not a safe name",
                allowed="1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(it becomes a directory name)",
            )
        ]
    if error.validator == "pattern":
        return [
            doc.problem(
                path,
                f"{error.instance!r} is not in the expected form",
                allowed=error.schema.get("x-hint"),
            )
        ]
    if error.validator == "const":
        return [
            doc.problem(
                path,
                f"must be {json.dumps(error.validator_value)}, not {json.dumps(error.instance)}",
            )
        ]
    return [doc.problem(path, error.message)]


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


# ---------------------------------------------------------------- values the schema cannot judge

# Where each numeric setting lives in a manifest; `settings.parse` owns these paths (range,
# finiteness, "5/s"), so the schema's own verdict on them is not repeated.
_SETTING_AT = {
    ("limits", "concurrency"): "concurrency",
    ("limits", "rate"): "rate",
    ("limits", "timeout"): "timeout",
    ("retries", "attempts"): "attempts",
    ("retries", "backoff"): "backoff",
    ("retries", "max_backoff"): "max_backoff",
    ("budget",): "budget",
    ("provider", "emulator", "workers"): "workers",
    ("provider", "emulator", "latency"): "latency",
    ("provider", "emulator", "max_side"): "emulator_max_side",
}


def _setting_for(path: Path_) -> str | None:
    if path in _SETTING_AT:
        return _SETTING_AT[path]
    if len(path) == 3 and path[:2] == ("limits", "per_endpoint"):
        return "per_endpoint"
    if len(path) == 3 and path[0] == "prices" and path[2] in ("per_image", "per_megapixel"):
        return "price"
    if (
        len(path) == 4
        and path[:2] == ("provider", "accounts")
        and path[3] in ("concurrency", "rate")
    ):
        return str(path[3])
    return None


def _get(data: Any, path: Path_) -> Any:
    for part in path:
        if (isinstance(part, str) and isinstance(data, dict) and part in data) or (
            isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data)
        ):
            data = data[part]
        else:
            return _MISSING
    return data


_MISSING = object()
RESERVED_PARAMS = {
    "seed": "seeds come from `seeds:` (or `seed:` in an `extra` entry), never from parameters",
    "prompt": "prompt text comes from `prompts:` (or a prompt file), never from parameters",
    "model": "models are listed under `models:`",
}
# Caps where the endpoint schemas give only a minimum (the documents state no maximum). They
# refuse typos, not real requests: no documented model needs over a few hundred steps or
# renders beyond a few megapixels, and downloads are capped at 64 MB an image.
PARAM_CAPS = {"num_inference_steps": 1_000, "num_images": 100}
MAX_SIDE = 16_384
MAX_PIXELS = 64 * 1024 * 1024


def numeric_settings(doc: Located) -> tuple[dict[Path_, int | float], list[Problem]]:
    """Every numeric setting present, parsed by `settings.parse`, or a located problem."""
    values: dict[Path_, int | float] = {}
    problems: list[Problem] = []
    paths = list(_SETTING_AT)
    raw = doc.data
    for key in ("limits",):
        per = _get(raw, (key, "per_endpoint"))
        if isinstance(per, dict):
            paths += [(key, "per_endpoint", e) for e in per]
    accounts = _get(raw, ("provider", "accounts"))
    if isinstance(accounts, list):
        paths += [
            ("provider", "accounts", i, name)
            for i, a in enumerate(accounts)
            if isinstance(a, dict)
            for name in ("concurrency", "rate")
            if name in a
        ]
    prices = raw.get("prices")
    if isinstance(prices, dict):
        paths += [
            ("prices", e, unit)
            for e, p in prices.items()
            if isinstance(p, dict)
            for unit in ("per_image", "per_megapixel")
            if unit in p
        ]
    for path in paths:
        value = _get(raw, path)
        if value is _MISSING or (path == ("budget",) and value is None):
            continue
        name = _setting_for(path)
        assert name is not None
        try:
            values[path] = settings.parse(name, value)
        except settings.SettingError as exc:
            problems.append(doc.problem(path, exc.message, allowed=exc.allowed))
    return values, problems


def _param_layers(raw: dict[str, Any]) -> list[tuple[Path_, dict[str, Any], bool]]:
    """(path, parameters, is_axes) for every place a manifest gives model input parameters."""
    layers: list[tuple[Path_, dict[str, Any], bool]] = []
    if isinstance(raw.get("defaults"), dict):
        layers.append((("defaults",), raw["defaults"], False))
    if isinstance(raw.get("axes"), dict):
        layers.append((("axes",), raw["axes"], True))
    for section in ("models", "prompts"):
        for i, item in enumerate(raw.get(section) or []):
            if isinstance(item, dict):
                if isinstance(item.get("params"), dict):
                    layers.append(((section, i, "params"), item["params"], False))
                if isinstance(item.get("axes"), dict):
                    layers.append(((section, i, "axes"), item["axes"], True))
    for section in ("include", "extra"):
        for i, item in enumerate(raw.get(section) or []):
            if isinstance(item, dict):
                params = {k: v for k, v in item.items() if k not in RESERVED_PARAMS}
                layers.append(((section, i), params, False))
    return layers


def _value_caps(doc: Located, path: Path_, key: str, value: Any) -> list[Problem]:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if key in PARAM_CAPS and number(value) and value > PARAM_CAPS[key]:
        return [
            doc.problem(
                path,
                f"{key} {value:g} is beyond any documented model",
                allowed=f"at most {PARAM_CAPS[key]:,} (renderer's cap: the schemas give no maximum)",
            )
        ]
    if key == "image_size" and isinstance(value, dict):
        w, h = value.get("width"), value.get("height")
        sides = [s for s in (w, h) if number(s)]
        if any(s > MAX_SIDE for s in sides) or (len(sides) == 2 and w * h > MAX_PIXELS):
            return [
                doc.problem(
                    path,
                    f"image_size {w}x{h} is beyond any documented model",
                    allowed=f"sides up to {MAX_SIDE:,} px and at most {MAX_PIXELS // 2**20} megapixels "
                    "(renderer's cap: the schemas give no maximum; downloads stop at 64 MB)",
                )
            ]
    return []


def semantic_problems(doc: Located, *, file: Path) -> list[Problem]:
    """What structure alone cannot catch: names that must resolve, reserved keys, sizes."""
    raw = doc.data
    problems: list[Problem] = []
    name = raw.get("name")
    if isinstance(name, str) and name.split(".")[0].lower() in WINDOWS_DEVICES:
        problems.append(
            doc.problem(
                ("name",),
                f"{name!r} is a Windows device name and cannot be a directory",
                allowed="any other name, e.g. " + f"{name}-run",
            )
        )
    output = raw.get("output")
    if isinstance(output, str) and "\0" in output:
        problems.append(doc.problem(("output",), "the output path contains a NUL character"))
    elif isinstance(output, str) and is_remote(output):
        try:
            parse_s3(output)
        except UsageError as exc:
            problems.append(
                doc.problem(("output",), exc.message, allowed="a directory, or s3://bucket/prefix")
            )
    state = raw.get("state")
    if isinstance(state, str) and urlsplit(state).password:
        problems.append(
            doc.problem(
                ("state",),
                "the state URL carries a password, and a manifest is no place for one",
                allowed="postgresql://USER@HOST/DB with the password in PGPASSWORD or ~/.pgpass",
            )
        )
    provider = raw.get("provider")
    if isinstance(provider, dict) and isinstance(provider.get("url"), str):
        try:
            settings.check_url(provider["url"])
        except settings.SettingError as exc:
            problems.append(doc.problem(("provider", "url"), exc.message, allowed=exc.allowed))
    for path, params, is_axes in _param_layers(raw):
        for key, value in params.items():
            if key in RESERVED_PARAMS and path[0] not in ("include", "extra"):
                what = "an axis" if is_axes else "a parameter"
                problems.append(
                    doc.problem(
                        (*path, key),
                        f"{key!r} cannot be {what}",
                        key=True,
                        allowed=RESERVED_PARAMS[key],
                    )
                )
                continue
            values = value if is_axes and isinstance(value, list) else [value]
            for i, v in enumerate(values):
                problems += _value_caps(doc, (*path, key, i) if is_axes else (*path, key), key, v)
    problems += _name_references(doc)
    problems += _account_problems(doc)
    return problems


def _account_problems(doc: Located) -> list[Problem]:
    """provider.accounts: names and keys listed once, and no setting that the accounts replace."""
    raw = doc.data
    accounts = _get(raw, ("provider", "accounts"))
    if not isinstance(accounts, list):
        return []
    problems: list[Problem] = []
    if "key_env" in raw["provider"]:
        # One source of keys: a plain key_env beside accounts would leave unclear which key follows which job.
        problems.append(
            doc.problem(
                ("provider", "key_env"),
                "provider.key_env and provider.accounts exclude each other",
                key=True,
                allowed="list that key as one more entry of accounts (key_env: …, concurrency: …)",
            )
        )
    if isinstance(raw.get("limits"), dict) and "concurrency" in raw["limits"]:
        problems.append(
            doc.problem(
                ("limits", "concurrency"),
                "limits.concurrency does not apply with "
                "provider.accounts: each account has its own",
                key=True,
                allowed="concurrency: N on each account (--concurrency still caps a run's total)",
            )
        )
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    for i, account in enumerate(accounts):
        name = account.get("name", account["key_env"])
        if name in names:
            problems.append(
                doc.problem(
                    ("provider", "accounts", i, "name" if "name" in account else "key_env"),
                    f"account name {name!r} is used twice (also accounts[{names[name]}])",
                    allowed="a distinct name for each account (the name defaults to key_env)",
                )
            )
        names.setdefault(name, i)
        if account["key_env"] in keys:
            problems.append(
                doc.problem(
                    ("provider", "accounts", i, "key_env"),
                    f"key variable {account['key_env']!r} is listed twice (also "
                    f"accounts[{keys[account['key_env']]}]); one key is one account",
                    allowed="each account's own key variable",
                )
            )
        keys.setdefault(account["key_env"], i)
    return problems


def _model_names(raw: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(endpoints, names) of the listed models; a model's name is its label, or its endpoint."""
    endpoints, names = [], []
    for item in raw.get("models") or []:
        if isinstance(item, str):
            endpoints.append(item)
            names.append(item)
        elif isinstance(item, dict) and isinstance(item.get("endpoint"), str):
            endpoints.append(item["endpoint"])
            names.append(
                item.get("label", item["endpoint"])
                if isinstance(item.get("label"), str)
                else item["endpoint"]
            )
    return endpoints, names


def _name_references(doc: Located) -> list[Problem]:
    """Every key that names a model, endpoint or axis must name one that exists."""
    raw = doc.data
    problems: list[Problem] = []
    endpoints, names = _model_names(raw)
    known_models = list(dict.fromkeys(endpoints + names))
    prices = raw.get("prices")
    if isinstance(prices, dict):
        for key in prices:
            if key not in known_models:
                problems.append(
                    doc.problem(
                        ("prices", key),
                        f"prices names {key!r}, which is not a listed model",
                        key=True,
                        allowed=", ".join(known_models),
                        suggestion=closest(key, known_models),
                    )
                )
    per = _get(raw, ("limits", "per_endpoint"))
    if isinstance(per, dict):
        for key in per:
            if key not in endpoints:
                problems.append(
                    doc.problem(
                        ("limits", "per_endpoint", key),
                        f"per_endpoint names {key!r}, which is not a listed endpoint",
                        key=True,
                        allowed=", ".join(dict.fromkeys(endpoints)),
                        suggestion=closest(key, endpoints),
                    )
                )
    axes = set(raw.get("axes") or {}) if isinstance(raw.get("axes"), dict) else set()
    for item in raw.get("models") or []:
        if isinstance(item, dict) and isinstance(item.get("axes"), dict):
            axes |= set(item["axes"])
    keys = ["prompt", "model", "seed", *sorted(axes)]
    for i, entry in enumerate(raw.get("exclude") or []):
        if isinstance(entry, dict):
            for key in entry:
                if key not in keys:
                    problems.append(
                        doc.problem(
                            ("exclude", i, key),
                            f"exclude entry key {key!r} is not prompt, model, seed or an axis",
                            key=True,
                            allowed=", ".join(keys),
                            suggestion=closest(key, keys),
                        )
                    )
    budget = raw.get("budget")
    if (
        isinstance(budget, (int, float))
        and not isinstance(budget, bool)
        and raw.get("allow_unpriced") is not True
    ):
        priced = set(prices) if isinstance(prices, dict) else set()
        unpriced = [
            n for e, n in zip(endpoints, names, strict=True) if e not in priced and n not in priced
        ]
        if unpriced:
            problems.append(
                doc.problem(
                    ("budget",),
                    "a budget is set but these models have no price, so it cannot "
                    "bound them: " + ", ".join(dict.fromkeys(unpriced)),
                    allowed="add them to `prices:`, or set `allow_unpriced: true` to count "
                    "them as free",
                )
            )
    return problems


# ---------------------------------------------------------------- the typed manifest


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    params: dict[str, Any]
    tags: tuple[str, ...]
    where: tuple[str, int, int]  # file, line, col
    path: Path_  # JSON path in the manifest (or ("prompts", i) for a prompt file's row)


@dataclass(frozen=True)
class Model:
    endpoint: str
    name: str  # label, or the endpoint id
    params: dict[str, Any]
    axes: dict[str, list[Any]]
    unchecked: bool
    path: Path_


@dataclass(frozen=True)
class AccountConfig:
    """One entry of provider.accounts: a key variable and that account's own limits."""

    name: str  # recorded with each job it submits (default: key_env); never the key itself
    key_env: str
    concurrency: int = 2  # a new fal account runs 2 requests at once
    rate: float | None = None  # submissions per second for this account; None: only limits.rate


@dataclass(frozen=True)
class ProviderConfig:
    kind: str = "fal"  # fal | emulator | custom
    url: str | None = "https://queue.fal.run"
    auth: str = "Key"
    key_env: str = "FAL_KEY"
    emulator: dict[str, Any] = field(default_factory=dict)
    accounts: tuple[AccountConfig, ...] = ()  # empty: the single key in key_env


@dataclass(frozen=True)
class Limits:
    concurrency: int = 2  # a new fal account runs 2 requests at once
    per_endpoint: dict[str, int] = field(default_factory=dict)
    rate: float = 10.0  # submissions per second
    timeout: float = 900.0  # seconds per job, from submit to downloaded


@dataclass(frozen=True)
class Manifest:
    file: Path
    name: str
    output: Path
    provider: ProviderConfig
    limits: Limits
    retries: RetryPolicy
    budget: float | None
    license: str | None
    prices: dict[str, dict[str, float]]
    defaults: dict[str, Any]
    prompts: tuple[Prompt, ...]
    models: tuple[Model, ...]
    seeds: Any  # list[int] | {"start","count"} | {"random": n}
    axes: dict[str, list[Any]]
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]]
    extra: list[dict[str, Any]]
    doc: Located = field(repr=False, compare=False)
    # `output: s3://bucket/prefix`: the outputs go to the bucket (storage.py); the run's own
    # state and lock stay in `output` (then the default outputs/) on this machine.
    output_url: str | None = None
    # `state: postgresql://…`: the run's state is shared by every worker that names it (pgstore.py).
    state: str | None = None

    @property
    def run_dir(self) -> Path:
        return self.output / self.name


# Loading costs about 12x the file in memory (a 16.6 MB CSV of 200,000 prompts grew the process
# by 199 MB), so 64 MB (~800,000 prompts) keeps a load under a gigabyte; larger is refused, named.
MAX_PROMPT_FILE_BYTES = 64 * 1024 * 1024
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CSV_COLUMNS = ("id", "text", "tags")


def _bad_text(body: str) -> str | None:
    """Why prompt text cannot be sent, or None."""
    if not body.strip():
        return "is empty or only whitespace"
    if "\0" in body:
        return "contains a NUL character"
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate, which is not valid Unicode"
    return None


def _csv_rows(text: str, name: str) -> tuple[list[tuple[int, dict[str, Any]]], list[Problem]]:
    """Rows of a CSV read by the csv module from the undecoded-newline text (quoted line breaks kept)."""
    problems: list[Problem] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, dict[str, Any]]] = []
    header: list[str] | None = None
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record or all(not c.strip() for c in record):
                continue
            if header is None:
                header = [c.strip() for c in record]
                for col, column in enumerate(header, 1):
                    if column not in CSV_COLUMNS:
                        problems.append(
                            Problem(
                                name,
                                line,
                                col,
                                f"unknown column {column!r}",
                                allowed=", ".join(CSV_COLUMNS),
                                suggestion=closest(column, CSV_COLUMNS),
                            )
                        )
                for column in ("id", "text") if not problems else ():
                    if column not in header:
                        problems.append(
                            Problem(
                                name,
                                line,
                                1,
                                f"the header has no {column!r} column",
                                allowed="a first row naming the columns: id,text[,tags]",
                            )
                        )
                if problems:
                    return [], problems
                continue
            if len(record) != len(header):
                problems.append(
                    Problem(
                        name,
                        line,
                        1,
                        f"row has {len(record)} fields; the header has {len(header)}",
                        allowed='quote fields that contain commas: "a, b"',
                    )
                )
                continue
            rows.append((line, dict(zip(header, record, strict=True))))
    except csv.Error as exc:
        # strict=True: a quote left open runs to the end of the file instead of silently
        # swallowing the rows after it; report where that row started.
        reason = (
            "a quote opened in this row is never closed (it would swallow every row after it)"
            if "end of data" in str(exc)
            else f"CSV error in the row starting here: {exc}"
        )
        problems.append(
            Problem(
                name,
                start,
                1,
                reason,
                allowed='close every opening quote; double a quote inside a quoted field ("")',
            )
        )
    if header is None and not problems:
        problems.append(Problem(name, 1, 1, "the CSV has no header row", allowed="id,text[,tags]"))
    return rows, problems


def _jsonl_rows(text: str, name: str) -> tuple[list[tuple[int, dict[str, Any]]], list[Problem]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[Problem] = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            col = exc.colno if isinstance(exc, json.JSONDecodeError) else 1
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            problems.append(Problem(name, n, col, f"invalid JSON: {msg}"))
            continue
        except RecursionError:
            problems.append(Problem(name, n, 1, "invalid JSON: nested too deeply"))
            continue
        if not isinstance(row, dict):
            problems.append(Problem(name, n, 1, "each line must be a JSON object with id and text"))
            continue
        rows.append((n, row))
    return rows, problems


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not a finite number")


def _prompt_file(
    doc: Located, base: Path, index: int, rel: str
) -> tuple[list[Prompt], list[Problem]]:
    where = ("prompts", index, "file")
    if "\0" in rel:
        return [], [doc.problem(where, "the prompt file path contains a NUL character")]
    path = (base / rel).resolve()
    if not path.exists():
        return [], [
            doc.problem(where, f"prompt file not found: {rel} (relative to the manifest's folder)")
        ]
    shown = str(
        base / rel
    )  # as the user wrote it, relative to where they are; `where` keeps the full path
    try:
        text, name = read_text_file(
            path,
            "prompt file",
            MAX_PROMPT_FILE_BYTES,
            too_large=f"at most {MAX_PROMPT_FILE_BYTES >> 20} MB a prompt file (~800,000 prompts): split a larger one "
            "into several `- file:` entries (prompts are held in memory, ~12 bytes for each byte of file)",
        )
    except ManifestError as exc:
        return [], [replace(p, file=shown) for p in exc.problems]
    prompts: list[Prompt] = []
    problems: list[Problem] = []
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        return [], [Problem(name, line, 1, "the prompt file contains a NUL byte; prompts are text")]
    if path.suffix == ".txt":
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                body = line.strip()
                words = re.sub(r"[^a-z0-9]+", "-", body.lower()).strip("-").split("-")[:4]
                # Content-derived ids: inserting a line never renames another prompt.
                pid = (
                    "-".join(w for w in words if w)[:40]
                    + "-"
                    + hashlib.sha256(body.encode()).hexdigest()[:6]
                )
                prompts.append(Prompt(pid.lstrip("-"), body, {}, (), (name, n, 1), where))
    else:
        rows, problems = _csv_rows(text, name) if path.suffix == ".csv" else _jsonl_rows(text, name)
        for n, row in rows:
            prompt = _row_prompt(row, name, n, where, problems)
            if prompt is not None:
                prompts.append(prompt)
    if not prompts and not problems:
        problems.append(doc.problem(where, f"the prompt file {rel} holds no prompts"))
    return prompts, [replace(p, file=shown) if p.file == name else p for p in problems]


def _row_prompt(
    row: dict[str, Any], name: str, n: int, where: Path_, problems: list[Problem]
) -> Prompt | None:
    unknown = [k for k in row if k not in ("id", "text", "tags", "params")]
    for key in unknown:
        problems.append(
            Problem(
                name,
                n,
                1,
                f"unknown field {key!r}",
                allowed="id, text, tags, params",
                suggestion=closest(key, ("id", "text", "tags", "params")),
            )
        )
    pid, body = row.get("id"), row.get("text")
    if not isinstance(pid, str) or not _SAFE_ID.fullmatch(pid):
        problems.append(
            Problem(
                name,
                n,
                1,
                f"prompt id {pid!r} is missing or not a safe name",
                allowed="1-64 letters, digits, '.', '_' or '-'",
            )
        )
        return None
    if not isinstance(body, str):
        problems.append(Problem(name, n, 1, f"prompt {pid!r} has no text"))
        return None
    reason = _bad_text(body)
    if reason:
        problems.append(Problem(name, n, 1, f"prompt {pid!r} text {reason}"))
        return None
    tags = row.get("tags")
    if tags is None or tags == "":
        tags = []
    elif isinstance(tags, str):
        tags = [t.strip() for t in re.split(r"[;,|]", tags) if t.strip()]
    elif not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        problems.append(
            Problem(
                name,
                n,
                1,
                f"prompt {pid!r}: tags must be a list of strings, not {tags!r}"[:200],
                allowed='["a", "b"] or "a;b"',
            )
        )
        return None
    params = row.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        problems.append(Problem(name, n, 1, f"prompt {pid!r}: params must be an object"))
        return None
    for key in params:
        if key in RESERVED_PARAMS:
            problems.append(
                Problem(
                    name,
                    n,
                    1,
                    f"prompt {pid!r}: {key!r} cannot be a parameter",
                    allowed=RESERVED_PARAMS[key],
                )
            )
            return None
    return Prompt(pid, body, params, tuple(t.strip() for t in tags), (name, n, 1), where)


def duplicate_texts(prompts: list[Prompt], shown: dict[str, str]) -> list[Problem]:
    """One problem per text listed more than once with the same parameters (it would be paid twice)."""
    groups: dict[tuple[str, str], list[Prompt]] = {}
    for p in prompts:
        groups.setdefault((p.text, json.dumps(p.params, sort_keys=True, default=str)), []).append(p)
    problems = []
    for same in groups.values():
        if len(same) < 2:
            continue
        first, second = same[0], same[1]
        rows = ", ".join(f"{shown.get(p.where[0], p.where[0])}:{p.where[1]}" for p in same[:10])
        rows += " …" if len(same) > 10 else ""
        problems.append(
            Problem(
                shown.get(second.where[0], second.where[0]),
                second.where[1],
                second.where[2],
                f"the text of prompt {first.id!r} is listed {len(same)} times (at {rows}); "
                "each copy would be rendered and paid again",
                json_path(second.path),
                allowed="keep one copy, or give the copies different params",
            )
        )
    return problems


def _provider(raw: Any, numbers: dict[Path_, int | float]) -> ProviderConfig:
    if raw is None:
        return ProviderConfig()
    if isinstance(raw, str):
        raw = {"kind": raw}
    kind = raw.get("kind", "custom" if "url" in raw else "fal")
    url = raw.get("url", PROVIDERS.get(kind))
    accounts = tuple(
        AccountConfig(
            a.get("name", a["key_env"]),
            a["key_env"],
            int(numbers.get(("provider", "accounts", i, "concurrency"), AccountConfig.concurrency)),
            float(numbers[("provider", "accounts", i, "rate")])
            if ("provider", "accounts", i, "rate") in numbers
            else None,
        )
        for i, a in enumerate(raw.get("accounts", ()))
    )
    return ProviderConfig(
        kind,
        url,
        raw.get("auth", "Key"),
        raw.get("key_env", "FAL_KEY"),
        dict(raw.get("emulator", {})),
        accounts,
    )


def parse(text: str, file: Path) -> Manifest:
    """Structure-check a manifest and return it typed; raise ManifestError with every problem."""
    doc = load_yaml(text, str(file))
    if not isinstance(doc.data, dict):
        raise ManifestError(
            [doc.problem((), "a manifest is a mapping with name, prompts, models and seeds")]
        )
    problems: list[Problem] = []
    for error in sorted(
        _manifest_validator().iter_errors(doc.data), key=lambda e: list(map(str, e.absolute_path))
    ):
        problems.extend(_structure_problems(doc, error))
    raw = doc.data
    numbers, found = numeric_settings(doc)
    problems += found
    provider = raw.get("provider")
    if (
        isinstance(provider, dict)
        and provider.get("kind", "custom" if "url" in provider else "fal") == "custom"
        and "url" not in provider
    ):
        problems.append(
            doc.problem(("provider",), "a custom provider needs a url", allowed="url: https://…")
        )
    if problems:
        raise ManifestError(problems)
    problems += semantic_problems(doc, file=file)
    if problems:
        raise ManifestError(problems)

    base = file.parent
    prompts: list[Prompt] = []
    for i, item in enumerate(raw["prompts"]):
        if "file" in item:
            found, errs = _prompt_file(doc, base, i, item["file"])
            prompts.extend(found)
            problems.extend(errs)
        else:
            line, col = doc.where(("prompts", i))
            if not item["text"].strip():
                problems.append(
                    doc.problem(("prompts", i, "text"), f"prompt {item['id']!r} is only whitespace")
                )
                continue
            prompts.append(
                Prompt(
                    item["id"],
                    item["text"],
                    dict(item.get("params", {})),
                    tuple(item.get("tags", [])),
                    (str(file), line, col),
                    ("prompts", i),
                )
            )
    models = []
    for i, item in enumerate(raw["models"]):
        item = {"endpoint": item} if isinstance(item, str) else item
        models.append(
            Model(
                item["endpoint"],
                item.get("label", item["endpoint"]),
                dict(item.get("params", {})),
                dict(item.get("axes", {})),
                bool(item.get("unchecked")),
                ("models", i),
            )
        )
    limits = raw.get("limits", {})
    manifest = Manifest(
        file=file,
        name=raw["name"],
        # Like the default outputs/, an explicit output is relative to the working directory.
        output=Path(
            "outputs" if is_remote(str(raw.get("output", ""))) else raw.get("output", "outputs")
        ),
        output_url=str(raw["output"]) if is_remote(str(raw.get("output", ""))) else None,
        state=raw.get("state"),
        provider=_provider(provider, numbers),
        limits=Limits(
            concurrency=int(numbers.get(("limits", "concurrency"), Limits.concurrency)),
            per_endpoint={
                e: int(numbers[("limits", "per_endpoint", e)])
                for e in limits.get("per_endpoint", {})
            },
            rate=float(numbers.get(("limits", "rate"), Limits.rate)),
            timeout=float(numbers.get(("limits", "timeout"), Limits.timeout)),
        ),
        retries=RetryPolicy(
            attempts=int(numbers.get(("retries", "attempts"), RetryPolicy.attempts)),
            backoff=float(numbers.get(("retries", "backoff"), RetryPolicy.backoff)),
            max_backoff=float(numbers.get(("retries", "max_backoff"), RetryPolicy.max_backoff)),
        ),
        budget=float(numbers[("budget",)]) if ("budget",) in numbers else None,
        license=raw.get("license"),
        prices=dict(raw.get("prices", {})),
        defaults=dict(raw.get("defaults", {})),
        prompts=tuple(prompts),
        models=tuple(models),
        seeds=raw["seeds"],
        axes=dict(raw.get("axes", {})),
        include=list(raw.get("include", [])),
        exclude=list(raw.get("exclude", [])),
        extra=list(raw.get("extra", [])),
        doc=doc,
    )
    shown = {
        str((base / item["file"]).resolve()): str(base / item["file"])
        for item in raw["prompts"]
        if "file" in item
    }
    problems += duplicate_texts(prompts, shown)  # duplicate ids are the planner's (check_names)
    if problems:
        raise ManifestError(problems)
    return manifest


MAX_MANIFEST_BYTES = (
    16 * 1024 * 1024
)  # a manifest is text; larger is a wrong file (lists belong in prompt files)


def read_text_file(
    path: Path, what: str, limit: int, too_large: str | None = None
) -> tuple[str, str]:
    """(text, shown name) of a regular UTF-8 file (BOM or not); ManifestError for every other case.

    Guards each OS-level problem: NUL in the path, missing, a directory, a device or pipe
    (`/dev/zero` would never end), unreadable, too large, not UTF-8 (with the byte offset).
    """
    shown = str(path)
    if "\0" in shown:
        raise ManifestError(
            [Problem(shown.replace("\0", "\\0"), 1, 1, f"the {what} path contains a NUL byte")]
        )
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ManifestError(
            [Problem(shown, 1, 1, f"no such {what} file")],
            hint="check the path; manifests/ has examples",
        ) from None
    except OSError as exc:
        raise ManifestError(
            [Problem(shown, 1, 1, f"cannot read the {what}: {exc.strerror or exc}")]
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise ManifestError([Problem(shown, 1, 1, f"is a directory, not a {what} file")])
    if not stat.S_ISREG(info.st_mode):
        raise ManifestError(
            [
                Problem(
                    shown,
                    1,
                    1,
                    f"is not a regular file (a device, pipe or socket); give a {what} file",
                )
            ]
        )
    if info.st_size > limit:
        raise ManifestError(
            [
                Problem(
                    shown,
                    1,
                    1,
                    f"the {what} is {info.st_size:,} bytes; the limit is {limit:,}",
                    allowed=too_large or f"a {what} of at most {limit:,} bytes",
                )
            ]
        )
    try:
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise ManifestError(
            [Problem(shown, 1, 1, f"cannot read the {what}: {exc.strerror or exc}")]
        ) from None
    return decode_utf8(raw, shown, what), shown


def decode_utf8(raw: bytes, shown: str, what: str) -> str:
    """UTF-8 with or without a BOM; anything else is located by line and byte offset."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ManifestError([Problem(shown, 1, 1, f"the {what} is UTF-16 text; save it as UTF-8")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ManifestError(
            [
                Problem(
                    shown,
                    line,
                    col,
                    f"the {what} is not UTF-8 text: byte 0x{raw[exc.start]:02x} "
                    f"at byte offset {exc.start} cannot be decoded",
                    allowed="UTF-8 (with or without BOM); re-save it as UTF-8",
                )
            ]
        ) from None


def load(path: Path) -> Manifest:
    text, _ = read_text_file(path, "manifest", MAX_MANIFEST_BYTES)
    return parse(text, path)


# ---------------------------------------------------------------- plan size, before expansion

MAX_PLAN_JOBS = 10_000_000  # above this, `--max-plan-jobs` must say the user means it


def plan_size(manifest: Manifest) -> int:
    """An upper bound on the plan's job count, by arithmetic alone: nothing is expanded.

    prompts × Σ over models (global axes × the model's axes × seeds), plus one per include
    entry (each extends combinations or adds exactly one) and one per extra entry; exclude
    only removes. Exact when there is no include or exclude.
    """
    spec = manifest.seeds
    if isinstance(spec, list):
        seeds = len(set(spec))
    elif "random" in spec:
        seeds = spec["random"]
    else:
        seeds = spec["count"]
    shared = math.prod(len(v) for v in manifest.axes.values())
    per_model = sum(math.prod(len(v) for v in m.axes.values()) for m in manifest.models)
    return (
        len(manifest.prompts) * shared * per_model * seeds
        + len(manifest.include)
        + len(manifest.extra)
    )


def check_plan_size(manifest: Manifest, limit: int = MAX_PLAN_JOBS) -> int:
    """The bound from `plan_size`, or ManifestError (located at `seeds`) when it exceeds `limit`."""
    size = plan_size(manifest)
    if size > limit:
        spec = manifest.seeds
        seeds = len(set(spec)) if isinstance(spec, list) else spec.get("random", spec.get("count"))
        axes = math.prod(len(v) for v in manifest.axes.values())
        raise ManifestError(
            [
                manifest.doc.problem(
                    ("seeds",),
                    f"this manifest expands to up to {size:,} jobs ({len(manifest.prompts):,} prompts × "
                    f"{len(manifest.models)} models × {seeds:,} seeds × {axes:,} axis combinations, "
                    "models' own axes aside); the limit is " + f"{limit:,}",
                    allowed="fewer prompts, seeds or axis values; or pass --max-plan-jobs N to go on",
                )
            ]
        )
    return size
