"""A fast yes/no check of an instance against a JSON Schema using only a few keywords.

The runner checks every result against its endpoint's output schema (a warning per problem). The
general validator (jsonschema, with `$ref` resolved through `referencing` at each use) took ~0.18
ms a result, close to a tenth of the client's whole CPU per job (bench/README.md, issue 23). A
result that passes is by far the common case, so `QuickCheck` answers only "valid or not", for
schemas built from the keywords fal's output schemas use; the caller asks the full validator for
the messages when the answer is "not valid".

Invariant: `QuickCheck.of(schema)` is None unless every keyword reachable in the schema is one this
module decides exactly as jsonschema's Draft 2020-12 validator does (without a format checker);
then `valid(x)` equals `Draft202012Validator(schema).is_valid(x)` for every JSON value x
(tests/test_quickcheck.py checks it as a property against jsonschema itself).
"""

from __future__ import annotations

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
        "$ref",
    }
)


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


class QuickCheck:
    """`valid(instance)` for a schema whose keywords are all in CHECKED or ANNOTATIONS (see `of`)."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = root.get("$defs") or {}
        self.root = root

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
        # A chain of refs that comes back to itself without descending into the instance never
        # ends (jsonschema recurses without end too): not decided here.
        for node in nodes:
            seen: set[int] = set()
            while isinstance(node, dict) and "$ref" in node:
                if id(node) in seen:
                    return None
                seen.add(id(node))
                node = check._target(node["$ref"])
        return check

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
            elif key in ("items", "additionalProperties"):
                if not self._supported(value):
                    return False
            elif key in ("minimum", "maximum"):
                if not _is_number(value):
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
        if type(x) is dict:
            required = node.get("required")
            if required and any(name not in x for name in required):
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
            items = node.get("items")
            if items is not None and not all(self._valid(items, v) for v in x):
                return False
        elif _is_number(x):
            low, high = node.get("minimum"), node.get("maximum")
            if low is not None and x < low:
                return False
            if high is not None and x > high:
                return False
        return True
