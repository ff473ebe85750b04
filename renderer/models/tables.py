"""Parameter tables of third-party pages: markdown (`| Parameter | Type | … |`) or tab-separated.

Catalogues and proxies that resell fal document a model with a table: a header naming at least
the parameter and its type (in any order, with optional Required, Default and Description
columns, headed in any of the usual words), then one row per parameter. Values are read as
they are written on such pages: a name in backticks, a type such as `integer`, `float`,
`boolean`, `string`, `enum(a, b)`, `list<string>`, a required mark (`✅`, `yes`, `true`,
`required`, `*`), a default, and a description whose prose states what the cells do not
(ranges, allowed values: models/prose.py). The endpoint id is taken from the page (a
`Model ID`/`Slug` line, a queue.fal.run URL, a fal.ai/models link, a `/owner/app` line).

Only the input table is read (the first table after an "input"/"parameters" heading, else the
first parameter table): output tables describe responses the renderer checks otherwise.
"""

from __future__ import annotations

import re

from renderer.errors import DocumentError
from renderer.models import prose
from renderer.models.documents import NO_DEFAULT, BadDefault, EndpointDoc, Field, parse_default

_NAME = ("parameter", "param", "name", "field", "key", "argument", "参数", "参数名")
_TYPE = ("type", "类型")
_REQUIRED = ("required", "req", "mandatory", "必填", "是否必填")
_DEFAULT = ("default", "默认值", "默认")
_DESCRIPTION = ("description", "desc", "notes", "说明", "描述")
_YES = {"✅", "✔", "✓", "yes", "y", "true", "required", "*", "是", "必填"}
_TYPES = {
    "integer": "integer",
    "int": "integer",
    "number": "float",
    "float": "float",
    "double": "float",
    "boolean": "boolean",
    "bool": "boolean",
    "string": "string",
    "str": "string",
    "text": "string",
}
_ENDPOINT_PATTERNS = (
    r"\*\*(?:Model ID|Slug|Endpoint ID)\*?\*?:?\*?\*?\s*`([a-z0-9-]+(?:/[A-Za-z0-9._-]+)+)`",
    r"\bqueue\.fal\.run/([a-z0-9-]+(?:/[A-Za-z0-9._-]+)+)",
    r"\bfal\.ai/models/([a-z0-9-]+(?:/[A-Za-z0-9._-]+)+)",
    r"^#*\s*/([a-z0-9-]+(?:/[A-Za-z0-9._-]+)+)\s*$",
)


def _cells(line: str) -> list[str] | None:
    """The cells of a table row (markdown pipes or tabs); None for a line that is not one."""
    text = line.strip()
    if text.startswith("|") and text.count("|") >= 3:
        return [c.strip() for c in text.strip("|").split("|")]
    if "\t" in text and text.count("\t") >= 1:
        return [c.strip() for c in text.split("\t")]
    return None


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    for i, cell in enumerate(header):
        word = re.sub(r"[`*_]", "", cell).strip().lower()
        if word in names:
            return i
    return None


def _header(lines: list[str]) -> tuple[int, dict[str, int]] | None:
    """(line index, column of each role) of the input parameter table's header."""
    found = []
    for i, line in enumerate(lines):
        cells = _cells(line)
        if not cells:
            continue
        name, kind = _column(cells, _NAME), _column(cells, _TYPE)
        if name is None or kind is None:
            continue
        roles = {"name": name, "type": kind}
        for role, words in (
            ("required", _REQUIRED),
            ("default", _DEFAULT),
            ("description", _DESCRIPTION),
        ):
            at = _column(cells, words)
            if at is not None:
                roles[role] = at
        heading = next(
            (
                ln.lower()
                for ln in reversed(lines[max(0, i - 6) : i])
                if ln.lstrip().startswith("#")
            ),
            "",
        )
        found.append((i, roles, "output" in heading or "response" in heading))
    inputs = [(i, roles) for i, roles, is_output in found if not is_output]
    return inputs[0] if inputs else None


def looks_like_table(text: str) -> bool:
    return _header(text.split("\n")) is not None and endpoint_of(text) is not None


def endpoint_of(text: str) -> str | None:
    for pattern in _ENDPOINT_PATTERNS:
        match = re.search(pattern, text, re.M)
        if match:
            return match.group(1).split("/requests/", 1)[0].rstrip(".,)")
    return None


def _field(cells: list[str], roles: dict[str, int], line: int) -> Field | None:
    def cell(role: str) -> str:
        at = roles.get(role)
        return cells[at] if at is not None and at < len(cells) else ""

    name = re.sub(r"[`*\\]", "", cell("name")).strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return None
    raw_type = re.sub(r"[`*]", "", cell("type")).strip()
    enum: list[str] | None = None
    listed = re.fullmatch(r"(?i)enum\s*[\(\[](.*)[\)\]]", raw_type)
    if listed:
        kind = "string"
        enum = [v.strip().strip("'\"") for v in listed.group(1).split(",") if v.strip()]
    elif re.fullmatch(r"(?i)(list|array)\s*<\s*(\w+)\s*>", raw_type):
        inner = re.fullmatch(r"(?i)(?:list|array)\s*<\s*(\w+)\s*>", raw_type)
        kind = f"list<{_TYPES.get(inner.group(1).lower(), inner.group(1)) if inner else 'string'}>"
    elif raw_type.lower() in ("", "?", "any", "mixed", "unknown"):
        kind = "any"  # the page does not say: the generator accepts any value, with a warning
    else:
        kind = _TYPES.get(raw_type.lower(), raw_type)
    description = cell("description")
    required = cell("required").strip().lower() in _YES if "required" in roles else None
    f = Field(name, kind, line, description, required)
    f.enum = enum
    written = cell("default").strip().strip("`")
    listed_value = enum is not None and written in enum  # `none` is a value of acceleration
    if written and (listed_value or written not in ("-", "—", "?", "none", "None", "null")):
        try:
            f.default = parse_default(written, kind)
        except ValueError:
            if kind in ("integer", "float", "boolean"):
                raise BadDefault(
                    line, f"{name}: default {written!r} is not of type {kind}"
                ) from None
            else:
                f.default = written
    base = {"float": "number"}.get(kind, kind)
    if base in ("string", "integer", "number", "boolean"):
        try:
            hints = prose.read(description, base)
        except ValueError as exc:
            raise BadDefault(
                line, f"{name}: the stated default does not fit {kind}: {exc}"
            ) from exc
        if f.enum is None and hints.enum and base == "string":
            f.enum = list(hints.enum)
        if hints.range:
            f.range = hints.range
        if f.default is NO_DEFAULT and hints.has_default:
            f.default = hints.default
    return f


def parse_table(text: str, source: str) -> EndpointDoc:
    """The endpoint and its input parameters from the page's parameter table."""
    lines = text.split("\n")
    found = _header(lines)
    endpoint = endpoint_of(text)
    if found is None or endpoint is None:
        raise DocumentError(
            source,
            1,
            "a parameter table needs a header (Parameter, Type, …) and the endpoint id on the page",
        )
    at, roles = found
    auth = "Bearer" if re.search(r"\bBearer\b", text) else "Key"
    doc = EndpointDoc(endpoint, source, at + 1, "proxy-table", auth=auth)
    pipes = lines[at].count("|")
    pending: tuple[int, str] | None = None  # a markdown row whose cells hold line breaks
    for i in range(at + 1, len(lines)):
        if pending is not None:
            pending = (pending[0], pending[1] + " " + lines[i].strip())
            if pending[1].count("|") < pipes and i - pending[0] < 50:
                continue
            row, pending = pending, None
        elif pipes and lines[i].lstrip().startswith("|") and lines[i].count("|") < pipes:
            pending = (i, lines[i].strip())
            continue
        else:
            row = (i, lines[i])
        cells = _cells(row[1])
        if cells is None:
            if row[1].strip():
                break
            continue
        if all(re.fullmatch(r":?-{2,}:?", c) or not c for c in cells):
            continue  # the markdown separator row
        f = _field(cells, roles, row[0] + 1)
        if f is not None:
            doc.inputs.append(f)
    if not doc.inputs:
        raise DocumentError(source, at + 1, "the parameter table has no rows")
    return doc
