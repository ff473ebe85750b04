"""The manifest's JSON Schema for editors, specialised to the models a user has.

`schemas/manifest.schema.json` describes a manifest's structure; it cannot know which endpoints
exist. This module adds them, for yaml-language-server and any editor that reads JSON Schema:
a model's `endpoint` completes to every endpoint the registry knows (bundled and added), and a
model entry's `params` and `axes` complete to, and are checked against, that endpoint's own
parameters and their enum values. `renderer models schema` writes the result.

Invariants: the structural rules are the base schema's, untouched (the manifest loader, not the
editor, is the authority: an editor's view can only be stricter where an endpoint is known);
every endpoint's types live under `$defs` with a per-endpoint prefix so two endpoints' `ImageSize`
never collide.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from renderer.models.generate import write_atomic
from renderer.models.schemas import SchemaRegistry, default_schema_dir, relocated


def _prefix(endpoint: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", endpoint).strip("_")


def _clean(node: Any, prefix: str) -> Any:
    """A copy without provenance keys, its local `$ref`s pointing at the prefixed definitions."""
    return relocated(node, lambda name: f"#/$defs/{prefix}__{name}")


def _endpoint_rule(endpoint: str, schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    prefix = _prefix(endpoint)
    for name, definition in schema.get("$defs", {}).items():
        if name != "Output":
            defs[f"{prefix}__{name}"] = _clean(definition, prefix)
    props = {k: _clean(v, prefix) for k, v in schema.get("properties", {}).items()}
    # `prompt` comes from the manifest's prompts, `seed` from its seeds: not written in params.
    params = {k: v for k, v in props.items() if k not in ("prompt", "seed")}
    axes = {k: {"type": "array", "minItems": 1, "items": v} for k, v in params.items()}
    return {
        "if": {"properties": {"endpoint": {"const": endpoint}}, "required": ["endpoint"]},
        "then": {
            "properties": {
                "params": {"type": "object", "properties": params, "additionalProperties": False},
                "axes": {"type": "object", "properties": axes, "additionalProperties": False},
            }
        },
    }


def manifest_schema(base: dict[str, Any], registry: SchemaRegistry) -> dict[str, Any]:
    """`base` (the manifest schema) with every endpoint of `registry` spelled out."""
    schema = copy.deepcopy(base)
    defs: dict[str, Any] = dict(schema.get("$defs", {}))
    rules = [_endpoint_rule(e, registry.schema(e), defs) for e in registry.endpoints]
    names = {"anyOf": [{"enum": list(registry.endpoints)}, {"type": "string", "minLength": 1}]}
    models = schema["properties"]["models"]["items"]
    for branch in models["oneOf"]:
        if branch.get("type") == "string":
            branch.clear()
            branch.update(names)
        elif branch.get("type") == "object":
            branch["properties"]["endpoint"] = copy.deepcopy(names)
            branch["allOf"] = rules
    if defs:
        schema["$defs"] = dict(sorted(defs.items()))
    schema["description"] = (
        schema.get("description", "") + f" Specialised to {len(registry.endpoints)} endpoints."
    ).strip()
    return schema


def base_schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (default_schema_dir() / "manifest.schema.json").read_text(encoding="utf-8")
    )
    return data


def write(registry: SchemaRegistry, target: Path) -> None:
    """Write the specialised schema atomically."""
    text = json.dumps(manifest_schema(base_schema(), registry), indent=2, ensure_ascii=False)
    write_atomic(target, (text + "\n").encode("utf-8"))
