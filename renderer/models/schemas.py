"""The run-time schema registry: loads the generated endpoint schemas and checks inputs against them.

Owns SchemaRegistry (endpoint → JSON Schema, lazily compiled validators), Violation (one way an input
breaks its endpoint's contract, with the allowed values and a did-you-mean) and default_schema_dir.
The schemas themselves are produced at build time by renderer.models.generate; this module never
reads model documents.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.errors import UserError, closest
from renderer.models.quickcheck import QuickCheck

if TYPE_CHECKING:  # imported where a check needs it (SchemaRegistry._validator): ~55 ms
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError


@dataclass(frozen=True)
class Violation:
    """One way an input breaks its endpoint's contract."""

    json_path: str
    message: str
    allowed: str | None = None
    suggestion: str | None = None


def _allowed(schema: dict[str, Any]) -> str | None:
    if "enum" in schema:
        return ", ".join(map(str, schema["enum"]))
    if "minimum" in schema and "maximum" in schema:
        return f"{schema['minimum']} to {schema['maximum']}"
    if "minimum" in schema:
        return f"at least {schema['minimum']}"
    if "type" in schema:
        return str(schema["type"])
    return None


def _violations(error: ValidationError) -> list[Violation]:
    path = error.json_path
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        return [
            Violation(
                f"{path}.{key}",
                f"unknown property {key!r}",
                "properties: " + ", ".join(known),
                closest(key, known),
            )
            for key in error.instance
            if key not in known
        ]
    if kind == "required" and isinstance(error.instance, dict):
        return [
            Violation(f"{path}.{key}", f"required property {key!r} is missing")
            for key in error.validator_value
            if key not in error.instance
        ]
    if kind == "enum":
        return [
            Violation(
                path,
                f"{error.instance!r} is not an allowed value",
                _allowed(error.schema),
                closest(error.instance, error.validator_value),
            )
        ]
    if kind == "anyOf" and error.context:
        # Report the branch that matches the value's shape: a preset name or an object.
        want = "string" if isinstance(error.instance, str) else "object"
        branch = [e for e in error.context if e.schema.get("type") == want or e.validator == "enum"]
        inner = [e for e in error.context if len(e.absolute_path) > len(error.absolute_path)]
        chosen = inner or branch
        if isinstance(error.instance, str):
            chosen = [e for e in error.context if e.validator == "enum"] or chosen
        if chosen:
            return _violations(chosen[0])
        options = [b for b in error.validator_value if "enum" in b]
        objects = [b for b in error.validator_value if "$ref" in b or b.get("type") == "object"]
        if options and objects:  # a size: a preset name or a {width, height} object
            allowed = "an object {width, height} or one of: " + ", ".join(
                map(str, options[0]["enum"])
            )
            return [
                Violation(
                    path, f"{error.instance!r} is neither a size object nor a preset", allowed
                )
            ]
        kinds = [str(b["type"]) for b in error.validator_value if "type" in b]
        return [
            Violation(
                path,
                f"{error.instance!r} is not of type {' or '.join(kinds) or 'any allowed form'}",
                " or ".join(kinds) or None,
            )
        ]
    return [Violation(path, error.message, _allowed(error.schema))]


class SchemaRegistry:
    """The generated schemas, loaded lazily; validators are built once per endpoint.

    Several schema directories may be layered: the bundled one first, then the user's added
    models (renderer.models.library); an endpoint in a later layer replaces the same endpoint in an
    earlier one. Only the first directory must exist: an added-models directory that has never
    been written to is simply empty.
    """

    def __init__(self, root: Path, *added: Path) -> None:
        self.root = root
        self.roots = (root, *added)
        index_path = root / "index.json"
        try:
            self.index = json.loads(index_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise UserError(
                f"{index_path}: no schema index", hint="run `renderer schemas build`"
            ) from exc
        self._where: dict[str, Path] = dict.fromkeys(self.index["endpoints"], root)
        for layer in added:
            # os.path, not Path.is_file: a folder we may not even look into (EACCES) is absent too
            if not os.path.isfile(layer / "index.json"):  # never written to, or not ours to read
                continue
            try:
                extra = json.loads((layer / "index.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UserError(
                    f"{layer / 'index.json'}: unreadable schema index ({exc})",
                    hint="rebuild it with `renderer models update`, or remove the folder",
                ) from exc
            self.index["endpoints"].update(extra["endpoints"])
            self.index.setdefault("warnings", []).extend(extra.get("warnings", []))
            self._where.update(dict.fromkeys(extra["endpoints"], layer))
        self._schemas: dict[str, dict[str, Any]] = {}
        self._validators: dict[tuple[str, str], Draft202012Validator] = {}
        self._quick: dict[tuple[str, str], QuickCheck | None] = {}

    def layer(self, endpoint: str) -> Path:
        """The schema directory the endpoint's schema comes from."""
        return self._where[endpoint]

    @cached_property
    def endpoints(self) -> list[str]:
        return sorted(self.index["endpoints"])

    def __contains__(self, endpoint: str) -> bool:
        return endpoint in self.index["endpoints"]

    def schema(self, endpoint: str) -> dict[str, Any]:
        if endpoint not in self._schemas:
            rel = self.index["endpoints"][endpoint]["file"]
            path = self._where[endpoint] / rel
            self._schemas[endpoint] = json.loads(path.read_text(encoding="utf-8"))
        return self._schemas[endpoint]

    def _part(self, endpoint: str, part: str) -> dict[str, Any] | None:
        """The schema of an endpoint's input (the whole schema) or output (None: it has none)."""
        schema = self.schema(endpoint)
        if part == "output":
            if "Output" not in schema.get("$defs", {}):
                return None
            schema = {"$ref": "#/$defs/Output", "$defs": schema["$defs"]}
        return schema

    def _validator(self, endpoint: str, part: str) -> Draft202012Validator | None:
        key = (endpoint, part)
        if key not in self._validators:
            schema = self._part(endpoint, part)
            if schema is None:
                return None
            from jsonschema import Draft202012Validator

            self._validators[key] = Draft202012Validator(schema)
        return self._validators[key]

    def check(self, endpoint: str, payload: Any, part: str = "input") -> list[Violation]:
        key = (endpoint, part)
        if key not in self._quick:
            schema = self._part(endpoint, part)
            self._quick[key] = None if schema is None else QuickCheck.of(schema)
        quick = self._quick[key]
        if quick is not None and quick.valid(payload):
            return []  # valid (the common case), decided as jsonschema would (quickcheck.py)
        validator = self._validator(endpoint, part)
        if validator is None:
            return []
        found: list[Violation] = []
        for error in validator.iter_errors(payload):
            found.extend(_violations(error))
        return sorted(set(found), key=lambda v: (v.json_path, v.message))

    def has_output_schema(self, endpoint: str) -> bool:
        return self._validator(endpoint, "output") is not None

    def properties(self, endpoint: str) -> dict[str, dict[str, Any]]:
        return dict(self.schema(endpoint).get("properties", {}))


def default_schema_dir() -> Path:
    """The installed copy (inside the wheel) or, in a source checkout, the top-level schemas/."""
    here = Path(__file__).resolve().parent.parent  # the package folder
    for candidate in (here / "_schemas", here.parent / "schemas"):
        if (candidate / "index.json").is_file():
            return candidate
    return here.parent / "schemas"


def default_models_dir(env: Mapping[str, str]) -> Path:
    """The per-user models folder: $XDG_DATA_HOME/renderer/models, ~/.local/share/renderer/models,
    or %LOCALAPPDATA%\\renderer\\models on Windows."""
    if os.name == "nt" and env.get("LOCALAPPDATA"):
        return Path(env["LOCALAPPDATA"]) / "renderer" / "models"
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / "renderer" / "models"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "share" / "renderer" / "models"


# What the generator adds to a schema for people (where each part was documented, its merge
# notes): dropped when a schema is handed to another tool.
PROVENANCE = frozenset({"x-source", "x-sources", "x-endpoint", "x-auth", "x-presets", "$schema"})
_VERBATIM = frozenset({"enum", "const", "default", "required", "examples"})


def relocated(node: Any, ref: Callable[[str], str], drop: frozenset[str] = PROVENANCE) -> Any:
    """A copy of a schema node without the keys in `drop`, each local `$ref` to `#/$defs/NAME`
    replaced by `ref(NAME)`; values (enum, const, default, required) kept as written."""
    if isinstance(node, list):
        return [relocated(item, ref, drop) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in drop:
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            out[key] = ref(value.rsplit("/", 1)[-1])
        elif key in _VERBATIM:
            out[key] = value
        else:
            out[key] = relocated(value, ref, drop)
    return out
