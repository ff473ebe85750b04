"""Constraints stated in words: what third-party pages write instead of schema keywords.

Proxy pages and copied tables say "Range value: 1-50", "range: 1-4", "between 0 and 35",
"enumerated values: a, b", "Supported output image formats: jpeg, png", "Options: …",
"Default value: true", "Default: 28". Matched by meaning (several phrasings, any case, `:` or
`：`), never by one exact sentence; each finding is typed by the field's type, and a value that
does not fit the type is an error for the caller to report, never a string default like
"28 Range: 0-50".
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

_NUM = r"-?\d+(?:\.\d+)?"
# English and Chinese wordings (proxy pages are often written for both markets); text is NFKC-
# normalised first, so full-width `：` and `，` read as `:` and `,`.
_RANGE = re.compile(
    rf"(?:\b(?:range(?:\s+values?)?|ranges?\s+from|valid\s+range|between|from)|取值范围|范围值|范围)"
    rf"\s*(?:is|of)?\s*:?\s*\(?\s*(?P<low>{_NUM})\s*(?:-|–|~|to|and|\.\.|至|到)\s*(?P<high>{_NUM})\s*\)?",
    re.IGNORECASE,
)
_ENUM = re.compile(
    r"(?:\b(?:enumerated\s+values?|enum(?:eration)?\s+values?|possible\s+values?|allowed\s+values?|"
    r"supported(?:\s+[\w -]{0,40}?)?|options|one\s+of|choices|values?)\s*:|(?:可选值|枚举值|可选|支持)\s*:?)"
    r"\s*(?P<list>[^.;\n]+)",
    re.IGNORECASE,
)
_DEFAULT = re.compile(
    r"(?:\bdefault(?:\s+values?)?\s*(?:is|[:=])|默认值\s*(?:为|是|:)?|默认\s*(?:为|是|:))"
    r"\s*(?P<value>\"[^\"]*\"|'[^']*'|`[^`]*`|[^\s,;)]+)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Hints:
    """What a description states; None where it says nothing."""

    range: tuple[float, float] | None = None
    enum: tuple[str, ...] | None = None
    default: Any = None
    has_default: bool = False


def number(text: str) -> float | int:
    """`5` → 5, `5.0` → 5.0: an integer stays an integer only when written without a point."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def typed(raw: str, kind: str) -> Any:
    """`raw` read as a value of JSON type `kind`; ValueError when it is not one."""
    text = raw.strip().strip("`").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
        if kind == "string":
            return text
    if kind == "integer":
        value = float(text)
        if not value.is_integer():
            raise ValueError(f"{raw!r} is not an integer")
        return int(value)
    if kind == "number":
        return number(text)
    if kind == "boolean":
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{raw!r} is not true or false")
        return text.lower() == "true"
    if kind in ("object", "array"):
        value = json.loads(text)
        if not isinstance(value, dict if kind == "object" else list):
            raise ValueError(f"{raw!r} is not an {kind}")
        return value
    return text


def _values(listed: str) -> tuple[str, ...]:
    parts = re.split(r",|、|\bor\b|\||\s{2,}", listed)
    cleaned = [p.strip().strip("`'\"“”").strip() for p in parts]
    return tuple(v for v in cleaned if v and re.fullmatch(r"[\w:./+-]+(?: [\w:./+-]+)?", v))


def read(description: str, kind: str) -> Hints:
    """The range, allowed values and default a description states for a field of type `kind`.

    Raises ValueError when a stated default does not fit `kind` (the caller reports it with the
    document's line).
    """
    description = unicodedata.normalize("NFKC", description)
    found: dict[str, Any] = {}
    if kind in ("integer", "number"):
        match = _RANGE.search(description)
        if match:
            low, high = number(match.group("low")), number(match.group("high"))
            if low <= high:
                found["range"] = (low, high)
    if kind == "string":
        match = _ENUM.search(description)
        if match:
            values = _values(match.group("list"))
            if len(values) >= 2:
                found["enum"] = values
    match = _DEFAULT.search(description)
    if match:
        found["default"] = typed(match.group("value").rstrip("."), kind)
        found["has_default"] = True
    return Hints(**found)
