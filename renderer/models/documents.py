"""fal's text layouts → typed field lists (the generator's first stage; read.py picks the layout).

Four text layouts are understood (see schemas/docs/):
  * fal model page copied from the web: a `5. Schema` section with `Input`, `Output` and
    `Other types` headings; field lines like `image_size ImageSize | Enum` (000, 004);
  * several such pages in one file, each opened by a line `N)owner/app/path` (002);
  * fal's markdown page: `- **`name`** (`type`, _required_)` bullets (003);
  * a third-party proxy's parameter table: `nametypeRequiredDescription` rows (001).

Parsing never guesses silently: anything it cannot place is either kept in a field's
description or reported as a DocumentError naming the file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from renderer.errors import DocumentError
from renderer.models import prose
from renderer.models.prose import number

NO_DEFAULT: Any = object()  # sentinel: the document gives no default

PRIMITIVES = ("string", "integer", "float", "number", "boolean")


@dataclass
class Field:
    name: str
    type: str  # as written: "string", "list<LoraWeight>", "ImageSize | Enum", "AspectRatioEnum"
    line: int
    description: str = ""
    required: bool | None = None  # None: the document does not say
    default: Any = NO_DEFAULT
    enum: list[str] | None = None
    range: tuple[float, float] | None = None  # stated explicitly ("Range: 1 to 1")
    prose_range: tuple[float, float] | None = None  # only in prose ("(1-4)")


@dataclass
class TypeDef:
    name: str
    line: int
    fields: list[Field] = field(default_factory=list)


@dataclass
class Example:
    kind: str  # "input" or "output"
    label: str
    line: int
    body: dict[str, Any]
    repaired: bool = False  # the block was not valid JSON as printed (unescaped inner quotes)


@dataclass
class EndpointDoc:
    endpoint: str
    source: str  # file name under schemas/docs/
    line: int  # where this endpoint's text starts
    style: str  # "openapi" | "proxy-openapi" | "fal-page" | "fal-markdown" | "proxy-table"
    auth: str = "Key"
    summary: str = ""
    inputs: list[Field] = field(default_factory=list)
    outputs: list[Field] = field(default_factory=list)
    types: dict[str, TypeDef] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)
    # An OpenAPI document arrives as JSON Schema already: {"input", "defs", "output"} (openapi.py).
    schema: dict[str, Any] | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


# ---------------------------------------------------------------- text repair

_MOJIBAKE = re.compile(
    r"[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u2122]{1,3}"
)


def repair_mojibake(text: str) -> str:
    """Undo UTF-8 bytes that were decoded as Windows-1252 ("Googleâ€™s" → "Google’s")."""

    def fix(match: re.Match[str]) -> str:
        chunk = match.group(0)
        try:
            return chunk.encode("cp1252").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return chunk

    return _MOJIBAKE.sub(fix, text)


# ---------------------------------------------------------------- shared helpers

_DEFAULT_RE = re.compile(r"Default value:\s*(.+?)\s*$")
_PROSE_RANGE_RE = re.compile(r"\((-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\)")
_NUM = r"-?\d+(?:\.\d+)?"


def _option(text: str) -> Any:
    """One value of an `- Options:` line: JSON as written (`"jpeg"`, `2`), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_default(raw: str, type_: str) -> Any:
    """A default as written in a document, typed by the field's type.

    `""` is the empty string, `"1:1"` is 1:1, `5` on a float is 5.0, `true` is True.
    """
    raw = raw.strip().strip("`").strip()
    if raw.startswith(('"', "{", "[")):
        value, _ = json.JSONDecoder().raw_decode(raw)
        return value
    kind = type_.strip()
    if kind == "integer":
        return int(float(raw))
    if kind in ("float", "number"):
        return float(raw)
    if kind == "boolean":
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"not a boolean: {raw}")
        return raw.lower() == "true"
    return raw


def finish_field(f: Field) -> Field:
    """Derive default and prose range from the collected description."""
    f.description = repair_mojibake(" ".join(f.description.split()))
    match = _DEFAULT_RE.search(f.description)
    if match and match.group(1).strip("` ") == "[object Object]":
        # A web page that printed an object default through JavaScript's toString: the value is
        # lost, so there is no default to state (the model's own default applies).
        f.description = f.description[: match.start()].rstrip()
        match = None
    if match and f.default is NO_DEFAULT:
        raw = match.group(1)
        try:
            f.default = parse_default(raw, f.type)
        except ValueError:
            f.default = _leading_default(raw, f)
        f.description = f.description[: match.start()].rstrip()
    prose = _PROSE_RANGE_RE.search(f.description)
    if prose:
        f.prose_range = (number(prose.group(1)), number(prose.group(2)))
    return f


class BadDefault(ValueError):
    """A field's stated default does not fit its type (parse_text reports it with the file)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _leading_default(raw: str, f: Field) -> Any:
    """A default followed by more prose (`28 Range: 0-50`): its first word, if that fits the type.

    A default that does not fit its field's type is an error (a string default on an integer
    field would be sent to the model as written).
    """
    first = raw.strip().strip("`").split()[0] if raw.strip() else raw
    try:
        return parse_default(first.rstrip(".,;"), f.type)
    except ValueError:
        if f.type.strip() in ("integer", "float", "number", "boolean"):
            raise BadDefault(
                f.line, f"{f.name}: default {raw.strip()!r} is not of type {f.type.strip()}"
            ) from None
        return raw.strip("`")


_STRING_MEMBER_RE = re.compile(r'^(\s*"[^"]+":\s*")(.*)("\s*,?\s*)$')


def _escape_inner_quotes(line: str) -> str:
    """`"k": "say "hi"",` → `"k": "say \\"hi\\"",`: a defect seen in copied example blocks."""
    match = _STRING_MEMBER_RE.match(line)
    if not match:
        return line
    inner = re.sub(r'(?<!\\)"', r'\\"', match.group(2))
    return match.group(1) + inner + match.group(3)


def _json_at(lines: list[str], index: int) -> tuple[dict[str, Any], int, bool] | None:
    """Decode the JSON object starting at lines[index].

    Returns the object, the number of lines it spans, and whether unescaped inner quotes
    had to be repaired to read it.
    """
    text = "\n".join(lines[index:])
    start = text.find("{")
    try:
        value, end = json.JSONDecoder().raw_decode(text, start)
        repaired = False
    except json.JSONDecodeError:
        # Retry with inner quotes escaped, up to the first line that closes the object.
        close = next((n for n in range(index, len(lines)) if lines[n].startswith("}")), None)
        if close is None:
            return None
        block = "\n".join(_escape_inner_quotes(ln) for ln in lines[index : close + 1])
        try:
            value, _ = json.JSONDecoder().raw_decode(block, block.find("{"))
        except json.JSONDecodeError:
            return None
        end = len("\n".join(lines[index : close + 1])) - 1
        text = "\n".join(lines[index:])
        repaired = True
    if not isinstance(value, dict):
        return None
    return value, text.count("\n", 0, end) + 1, repaired


# ---------------------------------------------------------------- fal web page

_FIELD_RE = re.compile(
    r"^(?P<name>[a-z_][a-z0-9_]*) "
    r"(?P<type>list<[A-Za-z0-9_]+>|[A-Z][A-Za-z0-9_]* \| Enum|string|integer|float|boolean"
    r"|[A-Z][A-Za-z0-9]*?Enum|Enum|[A-Z][A-Za-z0-9_]*)"
    r"(?P<rest>.*)$"
)
# 004 glues headings to the end of the preceding JSON block: `}Output#`.
_HEADING_RE = re.compile(r"^\}?(?P<title>[A-Za-z][A-Za-z0-9 ]*?)#$")


def _headings(lines: list[str], start: int) -> list[tuple[int, str]]:
    """Headings in a fal page: a title line followed by a `#` line, or `Title#`."""
    found = []
    for i in range(start, len(lines)):
        line = lines[i].strip()
        match = _HEADING_RE.match(line)
        if match:
            found.append((i, match.group("title")))
        elif line and line != "#" and i + 1 < len(lines) and lines[i + 1].strip() == "#":
            found.append((i, line))
    return found


def _page_fields(
    lines: list[str], begin: int, end: int, base: int, doc: EndpointDoc, kind: str
) -> list[Field]:
    fields: list[Field] = []
    current: Field | None = None
    i = begin
    while i < end:
        raw = lines[i]
        line = raw.strip()
        if line == "{" or (line.startswith("{") and not raw.startswith(" ")):
            decoded = _json_at(lines, i)
            if decoded:
                body, used, repaired = decoded
                doc.examples.append(
                    Example(kind, f"{kind.title()} block", base + i + 1, body, repaired)
                )
                i += used
                continue
        match = _FIELD_RE.match(line)
        if match and not raw.startswith((" ", "\t")):
            if current:
                fields.append(finish_field(current))
            rest = match.group("rest")
            required: bool | None = None
            if rest.startswith("* required"):
                required, rest = True, rest[len("* required") :]
            current = Field(match.group("name"), match.group("type"), base + i + 1, rest, required)
        elif current and line.startswith("Possible enum values:"):
            values = line.split(":", 1)[1]
            current.enum = [v.strip() for v in values.split(",") if v.strip()]
        elif (
            current
            and line
            and line != "#"
            # indented or quoted lines are code snippets (the `"image_size": {…}` note)
            and not raw.startswith((" ", "\t", '"', "}", "Note: For custom image sizes"))
        ):
            current.description += " " + line
        i += 1
    if current:
        fields.append(finish_field(current))
    return fields


def parse_fal_page(text: str, source: str, endpoint: str, base: int = 0) -> EndpointDoc:
    lines = text.split("\n")
    doc = EndpointDoc(endpoint, source, base + 1, "fal-page")
    first = lines[0].strip()
    if first.endswith(".") and " " in first:
        doc.summary = repair_mojibake(first)
    schema_at = next(
        (i for i, ln in enumerate(lines) if re.match(r"^5\. Schema#?$", ln.strip())), None
    )
    if schema_at is None:
        raise DocumentError(source, base + 1, f"{endpoint}: no '5. Schema' section")
    heads = _headings(lines, schema_at + 1)
    index = {title: i for i, title in heads}
    if "Input" not in index:
        raise DocumentError(
            source, base + schema_at + 1, f"{endpoint}: schema has no 'Input' heading"
        )
    positions = [i for i, _ in heads] + [len(lines)]

    def section_end(start: int) -> int:
        return min(p for p in positions if p > start)

    doc.inputs = _page_fields(
        lines, index["Input"] + 1, section_end(index["Input"]), base, doc, "input"
    )
    if "Output" in index:
        doc.outputs = _page_fields(
            lines, index["Output"] + 1, section_end(index["Output"]), base, doc, "output"
        )
    if "Other types" in index:
        for i, title in heads:
            if i <= index["Other types"] or title in ("Input", "Output"):
                continue
            if not re.fullmatch(r"[A-Z][A-Za-z0-9_]*", title):
                continue
            tdef = TypeDef(title, base + i + 1)
            tdef.fields = _page_fields(lines, i + 1, section_end(i), base, doc, "type")
            doc.types[title] = tdef
    # Example blocks inside a type definition are not request examples.
    doc.examples = [e for e in doc.examples if e.kind in ("input", "output")]
    if not doc.inputs:
        raise DocumentError(
            source, base + index["Input"] + 1, f"{endpoint}: the Input section lists no fields"
        )
    return doc


def page_endpoint(text: str) -> str | None:
    first = text.lstrip().split("\n", 1)[0].strip()
    if re.fullmatch(r"[a-z0-9-]+(/[A-Za-z0-9._-]+)+", first):
        return first
    match = re.search(r'fal\.(?:subscribe|queue\.submit|run)\(\s*["\']([^"\']+)["\']', text)
    if match:
        return match.group(1)
    # A page copied with its cURL tab: the submit URL `https://queue.fal.run/<id>` (status and
    # result URLs add `/requests/…`, which is not part of the id).
    for url in re.finditer(r"\b(?:queue\.)?fal\.run/([a-z0-9-]+(?:/[A-Za-z0-9._-]+)+)", text):
        endpoint = url.group(1).split("/requests/", 1)[0]
        if not endpoint.endswith("/requests"):
            return endpoint
    return None


# ---------------------------------------------------------------- fal markdown page

_MD_FIELD_RE = re.compile(
    r"^- \*\*`(?P<name>\w+)`\*\* \(`(?P<type>[^`]+)`, _(?P<req>required|optional)_\):?\s*$"
)
_MD_EXAMPLES = {
    "**Required Parameters Example**:": "input",
    "**Full Example**:": "input",
    "**Example Response**:": "output",
}


def parse_fal_markdown(text: str, source: str) -> EndpointDoc:
    lines = text.split("\n")
    match = re.search(r"^- \*\*Model ID\*\*: `([^`]+)`", text, re.M)
    if not match:
        raise DocumentError(source, 1, "markdown page without a '- **Model ID**:' line")
    doc = EndpointDoc(match.group(1), source, 1, "fal-markdown")
    tagline = re.search(r"^> (.+)$", text, re.M)
    if tagline:
        doc.summary = repair_mojibake(tagline.group(1).strip())
    section: list[Field] | None = None
    current: Field | None = None
    for i, raw in enumerate(lines):
        line = raw.rstrip()
        if line.startswith("### "):
            if current:
                finish_field(current)
                current = None
            section = {"### Input Schema": doc.inputs, "### Output Schema": doc.outputs}.get(line)
            continue
        if line in _MD_EXAMPLES:
            decoded = _json_at(lines, i + 1)
            if decoded:
                label = line.strip("*:").strip()
                doc.examples.append(
                    Example(_MD_EXAMPLES[line], label, i + 2, decoded[0], decoded[2])
                )
            continue
        if section is None:
            continue
        fm = _MD_FIELD_RE.match(line)
        if fm:
            if current:
                finish_field(current)
            current = Field(
                fm.group("name"), fm.group("type"), i + 1, "", fm.group("req") == "required"
            )
            section.append(current)
            continue
        if current is None or not line.startswith("  "):
            if line and not line.startswith("  ") and current:
                finish_field(current)
                current = None
            continue
        item = line.strip()
        if item.startswith("- Default:"):
            current.default = parse_default(item.split(":", 1)[1], current.type)
        elif item.startswith("- Options:"):
            current.enum = [_option(v) for v in re.findall(r"`([^`]+)`", item)]
        elif item.startswith("Possible enum values:") and current.enum is None:
            # Some llms.txt pages print the web page's line in the description instead.
            current.enum = [v.strip() for v in item.split(":", 1)[1].split(",") if v.strip()]
        elif item.startswith("- Range:"):
            bounds = re.findall(r"`(" + _NUM + r")`", item)
            if len(bounds) == 2:
                current.range = (number(bounds[0]), number(bounds[1]))
        elif item.startswith(("- Examples:", "- Array of")):
            pass
        else:
            current.description += " " + item.replace("`", "")
    if current:
        finish_field(current)
    for f in doc.inputs + doc.outputs:
        if f.description and f.default is NO_DEFAULT:
            finish_field(f)
    if not doc.inputs:
        raise DocumentError(source, 1, f"{doc.endpoint}: no '### Input Schema' fields")
    return doc


# ---------------------------------------------------------------- proxy parameter table

_ROW_RE = re.compile(
    r"^(?P<name>[a-z_][a-z0-9_]*?)(?P<type>string|integer|number|float|boolean)"
    r"(?P<req>Required|Optional)(?P<desc>.*)$"
)


def parse_proxy_table(text: str, source: str) -> EndpointDoc:
    lines = text.split("\n")
    match = re.search(r"^/([a-z0-9-]+(?:/[A-Za-z0-9._-]+)+)\s*$", text, re.M) or re.search(
        r"fal\.ai/models/(\S+)", text
    )
    if not match:
        raise DocumentError(
            source, 1, "parameter table without an endpoint path line ('/owner/app/…')"
        )
    auth = "Bearer" if "Bearer" in text else "Key"
    doc = EndpointDoc(match.group(1), source, 1, "proxy-table", auth=auth)
    header = next(
        i for i, ln in enumerate(lines) if ln.strip() == "ParameterTypeRequiredDescription"
    )
    for i in range(header + 1, len(lines)):
        row = _ROW_RE.match(lines[i].strip())
        if not row:
            break
        desc = row.group("desc")
        f = Field(row.group("name"), row.group("type"), i + 1, desc, row.group("req") == "Required")
        enum = re.search(r"enum values:\s*(.+)$", desc)
        if enum:
            f.enum = [v.strip().strip('"') for v in enum.group(1).split(",") if v.strip()]
        rng = re.search(r"range:\s*(" + _NUM + r")\s*-\s*(" + _NUM + r")", desc)
        if rng:
            f.range = (number(rng.group(1)), number(rng.group(2)))
        finish_field(f)
        # Other proxies' wording ("Range: 1-20", "Supported: a, b", "Default: 28"): by meaning.
        try:
            hints = prose.read(desc, {"float": "number"}.get(f.type, f.type))
        except ValueError as exc:
            raise BadDefault(
                i + 1, f"{f.name}: the stated default does not fit {f.type}: {exc}"
            ) from exc
        if f.enum is None and hints.enum:
            f.enum = list(hints.enum)
        if f.range is None and hints.range:
            f.range = hints.range
        if f.default is NO_DEFAULT and hints.has_default:
            f.default = hints.default
        doc.inputs.append(f)
    for i, ln in enumerate(lines):
        if ln.strip() == "Request Example":
            decoded = _json_at(lines, i + 1)
            if decoded:
                doc.examples.append(
                    Example("input", "Request Example", i + 2, decoded[0], decoded[2])
                )
    if not doc.inputs:
        raise DocumentError(source, header + 2, "the parameter table has no rows")
    return doc
