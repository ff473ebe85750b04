"""A prompt file's kept columns (`keep: [col, …]`): their values held compactly per row, the kinds
seen per column (what the dataset types them from), and the JSON object text a prompt carries.

A row's kept values are stored as one text: each value's JSON, joined by U+001F. JSON escapes
every control character inside its strings, so U+001F never occurs in a value's JSON and the
text splits back exactly; the names are held once per file, not once per row.

Values: JSON scalars (string, integer, float, bool, null) are kept as they are; a nested value
(a list or an object) is kept as its canonical JSON text, a string; so is an integer outside
64 bits, as its decimal text; a float that is not finite (NaN, as pandas writes for a missing
value) is kept as null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring  # the encoder json.dumps uses (ensure_ascii=False)
from typing import TYPE_CHECKING, Any

from renderer.errors import Problem
from renderer.layout import AXIS_PREFIX, DATASET_COLUMNS

if TYPE_CHECKING:
    from renderer.manifest.located import Located, Path_
    from renderer.manifest.types import Prompt

_INT64 = -(
    2**63
)  # an integer outside int64 is kept as its decimal text (Arrow's int64 cannot hold it)
SEPARATOR = "\x1f"  # never in a value's JSON: JSON escapes control characters


def value_json(value: Any) -> str:
    """One kept value as JSON text (see the module's docstring for what becomes what)."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return str(value) if _INT64 <= value < -_INT64 else f'"{value}"'
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is float:
        return repr(value) if math.isfinite(value) else "null"
    if isinstance(value, (list, tuple, dict)):
        return encode_basestring(
            json.dumps(
                value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
            )
        )
    # A Parquet timestamp, date, time or decimal: its ISO 8601 (or decimal) text.
    return encode_basestring(value.isoformat() if hasattr(value, "isoformat") else str(value))


def _column_json(values: list[Any]) -> Iterable[str]:
    """value_json of each of a column's values; a column of one plain kind (strings, integers
    within 64 bits, finite floats) through that kind's own encoder, without a call of
    value_json a value (the same texts)."""
    kinds = set(map(type, values))
    if kinds == {str}:
        return map(encode_basestring, values)
    if kinds == {int} and min(values) >= _INT64 and max(values) < -_INT64:
        return map(str, values)
    if kinds == {float} and all(map(math.isfinite, values)):
        return map(repr, values)
    return map(value_json, values)


def kind_of(value: Any) -> str | None:
    """The dataset kind a kept value gives its column (None: a null, which gives none)."""
    kind = type(value)
    if kind is str or isinstance(value, (list, tuple, dict)):
        return "string"
    if kind is bool:
        return "bool"
    if kind is int:
        return "int64" if _INT64 <= value < -_INT64 else "string"
    if kind is float:
        return "float64" if math.isfinite(value) else None
    if value is None:
        return None
    return "string"


def _kinds(values: list[Any]) -> set[str]:
    """{kind_of(v) for v in values} but None, by type first (a Parquet column has one or two)."""
    found: set[str | None] = set()
    for kind in set(map(type, values)):
        if kind is int or kind is float:  # a range or a finiteness to look at
            some = [v for v in values if type(v) is kind]
            if kind is int and min(some) >= _INT64 and max(some) < -_INT64:
                found.add("int64")
            else:
                found.update(map(kind_of, some))
        else:
            found.add(kind_of(next(v for v in values if type(v) is kind)))
    found.discard(None)
    return found  # type: ignore[return-value]  # None discarded


class Kept:
    """The kept columns of one prompt file: names in `keep:` order, and the kinds their values had."""

    __slots__ = ("_keys", "kinds", "names")

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._keys = tuple(encode_basestring(n) + ":" for n in self.names)
        self.kinds: dict[str, set[str]] = {n: set() for n in self.names}

    def row(self, values: Sequence[Any]) -> str:
        """The stored text of one row's values (in `names` order); their kinds noted."""
        for name, value in zip(self.names, values, strict=True):
            kind = kind_of(value)
            if kind is not None:
                self.kinds[name].add(kind)
        return SEPARATOR.join(map(value_json, values))

    def rows(self, columns: Sequence[list[Any]]) -> list[str]:
        """The stored texts of a batch of rows given column by column (a Parquet batch)."""
        self.note(columns)
        return self.encode(columns)

    def note(self, columns: Sequence[list[Any]]) -> None:
        """The kinds of a batch of rows' values noted, given column by column (`rows` without
        the texts: a large file's values are read again when its rows are, backed.py)."""
        for name, values in zip(self.names, columns, strict=True):
            self.kinds[name].update(_kinds(values))

    def encode(self, columns: Sequence[list[Any]]) -> list[str]:
        """The stored texts of a batch of rows given column by column; no kinds noted."""
        encoded = [_column_json(values) for values in columns]
        return list(map(SEPARATOR.join, zip(*encoded, strict=True)))

    def text(self, stored: str) -> str:
        """A stored row as the JSON object a prompt carries (`Prompt.extra`)."""
        return "{" + ",".join(map(str.__add__, self._keys, stored.split(SEPARATOR))) + "}"


def kept_kinds(prompts: Iterable[Any]) -> dict[str, set[str]]:
    """Every kept column of the manifest's prompt files (first named first) → the kinds of its values.

    `prompts`: a manifest's prompts (a table.Prompts holds the prompt files' tables; anything
    else has no prompt file, so nothing kept).
    """
    found: dict[str, set[str]] = {}
    for part in getattr(prompts, "parts", ()):
        kept = getattr(part, "kept", None)
        if isinstance(kept, Kept):
            for name in kept.names:
                found.setdefault(name, set()).update(kept.kinds[name])
    return found


def keep_problems(
    doc: Located, index: int, item: dict[str, Any], axes: dict[str, Path_]
) -> tuple[list[Problem], tuple[str, ...]]:
    """What is wrong with a prompt-file entry's `keep:` before its file is read, and the names
    to read the file with (all but those it reads already: the file's problems are still found).

    Refused: keep on a .txt file (a line has no columns); a name the entry already reads as
    the prompt's text, id, tags or params; a dataset column's name (layout.DATASET_COLUMNS,
    `image`); an axis column's name (`axes`: axis, variable or zip key → where it is set).
    """
    keep = item.get("keep") or []
    if not keep:
        return [], ()
    if str(item.get("file", "")).endswith(".txt"):
        return [
            doc.problem(
                ("prompts", index, "keep"),
                "a .txt prompt file has no columns to keep: each line is only a prompt's text",
                allowed="keep: on a .jsonl, .csv or .parquet prompt file",
            )
        ], ()
    mapped = any(k in item for k in ("text", "id", "tags"))
    read = {item.get(k, k): k for k in ("text", "id", "tags")}
    if not mapped and not str(item.get("file", "")).endswith(".csv"):
        read.setdefault("params", "params")  # a JSONL or Parquet row's own params
    shown = {"text": "prompt", "id": "prompt_id", "tags": "tags", "params": "input"}
    problems = []
    for j, name in enumerate(keep):
        at = ("prompts", index, "keep", j)
        if name in read:
            problems.append(
                doc.problem(
                    at,
                    f"column {name!r} is already read as the prompts' {read[name]}: the dataset "
                    f"has it as `{shown[read[name]]}`",
                    allowed="keep the file's other columns",
                )
            )
        elif name in DATASET_COLUMNS or name == "image":
            problems.append(
                doc.problem(
                    at,
                    f"kept column {name!r} clashes with the dataset's own column {name!r}",
                    allowed="rename that column in the file; the dataset's own columns: image, "
                    + ", ".join(c for c in DATASET_COLUMNS if c != "file_name"),
                )
            )
        elif name in axes:
            line, col = doc.where(axes[name], key=True)
            problems.append(
                doc.problem(
                    at,
                    f"kept column {name!r} clashes with the axis column {name!r} set at "
                    f"{doc.file}:{line}:{col}",
                    allowed="rename the axis or variable, or that column in the file",
                )
            )
    return problems, tuple(name for name in keep if name not in read)


def axis_columns(raw: dict[str, Any], inline: Iterable[Prompt]) -> dict[str, Path_]:
    """The dataset's axis columns a manifest may make → where each is set: axes, models' axes,
    variables, zip keys and inline alternations (a name of DATASET_COLUMNS gets AXIS_PREFIX)."""
    found: dict[str, Path_] = {}
    named: list[tuple[str, Path_]] = [(a, ("axes", a)) for a in raw.get("axes") or {}]
    for i, model in enumerate(raw.get("models") or []):
        if isinstance(model, dict):
            named += [(a, ("models", i, "axes", a)) for a in model.get("axes") or {}]
    named += [(v, ("vars", v)) for v in raw.get("vars") or {}]
    for g, group in enumerate(raw.get("zip") or []):
        named += [(k, ("zip", g)) for k in group if isinstance(group, dict)]
    for prompt in inline:
        if prompt.template is not None:
            named += [(a, (*prompt.path, "text")) for a in prompt.template.alternations]
    for name, path in named:
        found.setdefault(AXIS_PREFIX + name if name in DATASET_COLUMNS else name, path)
    return found


def binary_columns(schema: Any, names: Sequence[str], shown: str) -> list[Problem]:
    """A problem for each kept Parquet column of bytes: a dataset column of text cannot hold them."""
    import pyarrow as pa

    return [
        Problem(
            shown,
            1,
            1,
            f"column {name!r} holds binary data ({schema.field(name).type}); it cannot be kept",
            allowed="keep columns of text, numbers, booleans, dates or nested values of those",
        )
        for name in names
        if pa.types.is_binary(schema.field(name).type)
        or pa.types.is_large_binary(schema.field(name).type)
        or pa.types.is_fixed_size_binary(schema.field(name).type)
    ]
