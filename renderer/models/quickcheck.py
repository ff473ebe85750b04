"""A fast yes/no check of an instance against a JSON Schema using only the common keywords.

The runner checks every result against its endpoint's output schema (a warning per problem). The
general validator (jsonschema, with `$ref` resolved through `referencing` at each use) took ~0.18
ms a result, close to a tenth of the client's whole CPU per job (bench/README.md, issue 23). An
instance that passes is by far the common case, so `QuickCheck` answers only "valid or not", for
schemas built from the keywords the shipped output, input and manifest schemas use; the caller
asks the full validator for the messages when the answer is "not valid". So a run whose manifest
and inputs are valid never imports jsonschema (~55 ms of CPU at start-up, before the first submit).

Invariant: `QuickCheck.of(schema)` is None unless every keyword reachable in the schema is one this
module decides exactly as jsonschema's Draft 2020-12 validator does (without a format checker);
then `valid(x)` equals `Draft202012Validator(schema).is_valid(x)` for every JSON value x
(tests/test_quickcheck.py checks it as a property against jsonschema itself).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

# Keywords that never make an instance invalid (annotations; `format` asserts nothing without a
# format checker, and the runner's validator has none).
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",
        "$schema",
        "$id",
        "$defs",
        "definitions",
    }
)
CHECKED = frozenset(
    {
        "type",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "pattern",
        "propertyNames",
        "uniqueItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "$ref",
    }
)
NUMBERS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
COUNTS = frozenset(
    {"minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"}
)


def _equal(one: Any, two: Any) -> bool:
    """JSON equality as jsonschema decides it (enum, const, uniqueItems): 1 equals 1.0, but a
    boolean equals only a boolean; arrays and objects compare element by element."""
    if type(one) is bool or type(two) is bool:
        return type(one) is type(two) and one == two
    if type(one) is dict:
        return (
            type(two) is dict
            and one.keys() == two.keys()
            and all(_equal(v, two[k]) for k, v in one.items())
        )
    if type(one) is list:
        return (
            type(two) is list
            and len(one) == len(two)
            and all(_equal(a, b) for a, b in zip(one, two, strict=True))
        )
    if type(two) in (dict, list):
        return False
    return bool(one == two)


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)  # bool is not a number to JSON Schema


def _is_type(x: Any, name: str) -> bool:
    kind = type(x)
    if name == "object":
        return kind is dict
    if name == "array":
        return kind is list
    if name == "string":
        return kind is str
    if name == "integer":  # Draft 2020-12: a number with a zero fractional part (1.0 is one)
        return kind is int or (kind is float and x.is_integer())
    if name == "number":
        return kind is int or kind is float
    if name == "boolean":
        return kind is bool
    if name == "null":
        return x is None
    raise ValueError(name)


_TRUE, _FALSE = object(), object()  # booleans as no number equals them (see _unique)


def _unbool(x: Any) -> Any:
    return _TRUE if x is True else _FALSE if x is False else x


def _unique(items: list[Any]) -> bool:
    """uniqueItems as jsonschema decides it: neighbours compared after a sort where the items
    sort (so, like it, only neighbours: a list that sorts is judged by those alone), else
    every pair."""
    try:
        ordered = sorted(_unbool(i) for i in items)
    except TypeError:
        seen: list[Any] = []
        for item in map(_unbool, items):
            if any(_equal(earlier, item) for earlier in seen):
                return False
            seen.append(item)
        return True
    return not any(_equal(a, b) for a, b in itertools.pairwise(ordered))


class QuickCheck:
    """`valid(instance)` for a schema whose keywords are all in CHECKED or ANNOTATIONS (see `of`)."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = root.get("$defs") or {}
        self.root = root
        self.patterns: dict[str, re.Pattern[str]] = {}  # compiled by _supported

    @classmethod
    def of(cls, schema: Any) -> QuickCheck | None:
        """A checker for `schema`, or None when it uses anything this module does not decide exactly."""
        if not isinstance(schema, dict):
            return None
        check = cls(schema)
        if not isinstance(check.defs, dict):
            return None
        nodes = [schema, *check.defs.values()]
        if not all(check._supported(node) for node in nodes):
            return None
        # Refs that come back to where they started without descending into the instance (through
        # $ref, anyOf, oneOf) never end (jsonschema recurses without end too): not decided here.
        # Every such loop passes through a definition: looked for from each.
        done: set[int] = set()
        if any(check._loops(node, set(), done) for node in nodes):
            return None
        return check

    def _loops(self, node: Any, path: set[int], done: set[int]) -> bool:
        """Does a chain of subschemas at the same instance ($ref, anyOf, oneOf) from `node` loop?"""
        if not isinstance(node, dict) or id(node) in done:
            return False
        if id(node) in path:
            return True
        path.add(id(node))
        same = [*node.get("anyOf", []), *node.get("oneOf", [])]
        if "$ref" in node:
            same.append(self._target(node["$ref"]))
        if any(self._loops(child, path, done) for child in same):
            return True
        path.discard(id(node))
        done.add(id(node))
        return False

    def _target(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
            return None
        name = ref[len("#/$defs/") :]
        if "/" in name or "~" in name or "%" in name:  # JSON Pointer escapes: not handled here
            return None
        return self.defs.get(name)

    def _supported(self, node: Any) -> bool:
        """Every keyword in `node` and its subschemas is decided here (refs: only that they resolve)."""
        if isinstance(node, bool):
            return True
        if not isinstance(node, dict):
            return False
        for key, value in node.items():
            if key in ANNOTATIONS or key.startswith("x-"):
                continue
            if key not in CHECKED:
                return False
            if key == "type":
                names = value if isinstance(value, list) else [value]
                if not names or not all(
                    n in ("object", "array", "string", "integer", "number", "boolean", "null")
                    for n in names
                ):
                    return False
            elif key == "properties":
                if not isinstance(value, dict) or not all(
                    self._supported(v) for v in value.values()
                ):
                    return False
            elif key == "required":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    return False
            elif key in ("items", "additionalProperties", "propertyNames"):
                if not self._supported(value):
                    return False
            elif key in NUMBERS:
                if not _is_number(value):
                    return False
            elif key in COUNTS:
                if type(value) is not int or value < 0:
                    return False
            elif key == "pattern":
                if not isinstance(value, str):
                    return False
                try:
                    self.patterns[value] = re.compile(value)
                except re.error:
                    return False
            elif key == "uniqueItems":
                if type(value) is not bool:
                    return False
            elif key == "enum":
                if not isinstance(value, list):
                    return False
            elif key in ("anyOf", "oneOf"):
                if (
                    not isinstance(value, list)
                    or not value
                    or not all(self._supported(v) for v in value)
                ):
                    return False
            elif key == "$ref" and self._target(value) is None:
                return False
        return True

    def valid(self, instance: Any) -> bool:
        return self._valid(self.root, instance)

    def _valid(self, node: Any, x: Any) -> bool:
        if node is True:
            return True
        if node is False:
            return False
        ref = node.get("$ref")
        if ref is not None and not self._valid(self.defs[ref[len("#/$defs/") :]], x):
            return False
        kind = node.get("type")
        if kind is not None:
            if isinstance(kind, list):
                if not any(_is_type(x, k) for k in kind):
                    return False
            elif not _is_type(x, kind):
                return False
        if "enum" in node and not any(_equal(x, each) for each in node["enum"]):
            return False
        if "const" in node and not _equal(x, node["const"]):
            return False
        if "anyOf" in node and not any(self._valid(sub, x) for sub in node["anyOf"]):
            return False
        if "oneOf" in node and sum(1 for sub in node["oneOf"] if self._valid(sub, x)) != 1:
            return False
        if type(x) is dict:
            required = node.get("required")
            if required and any(name not in x for name in required):
                return False
            if not self._count(node, "Properties", len(x)):
                return False
            names = node.get("propertyNames")
            if names is not None and not all(self._valid(names, name) for name in x):
                return False
            properties = node.get("properties") or {}
            extra = node.get("additionalProperties", True)
            for name, value in x.items():
                sub = properties.get(name)
                if sub is not None:
                    if not self._valid(sub, value):
                        return False
                elif extra is not True and not self._valid(extra, value):
                    return False
        elif type(x) is list:
            if not self._count(node, "Items", len(x)):
                return False
            if node.get("uniqueItems") is True and not _unique(x):
                return False
            items = node.get("items")
            if items is not None and not all(self._valid(items, v) for v in x):
                return False
        elif type(x) is str:
            if not self._count(node, "Length", len(x)):
                return False
            pattern = node.get("pattern")
            if pattern is not None and not self.patterns[pattern].search(x):
                return False
        elif _is_number(x):
            low, high = node.get("minimum"), node.get("maximum")
            if low is not None and x < low:
                return False
            if high is not None and x > high:
                return False
            low, high = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
            if low is not None and x <= low:
                return False
            if high is not None and x >= high:
                return False
        return True

    @staticmethod
    def _count(node: dict[str, Any], what: str, n: int) -> bool:
        """minLength/maxLength, minItems/maxItems, minProperties/maxProperties (`what`) allow `n`."""
        low, high = node.get("min" + what), node.get("max" + what)
        return (low is None or n >= low) and (high is None or n <= high)
