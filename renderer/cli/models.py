"""Commands about the endpoints: `schemas build` (model documents → JSON Schemas) and `models`
(list the endpoints, or show one endpoint's parameters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from renderer.cli.context import Context, table
from renderer.errors import UsageError, closest
from renderer.models import generate, schemas


def cmd_schemas_build(ctx: Context) -> int:
    out_dir = Path(ctx.args.dir)
    if not (out_dir / "docs").is_dir():
        raise UsageError(
            f"{out_dir / 'docs'}: no model documents here",
            hint="run in the repository root, or give --dir SCHEMA_DIR (it needs a docs/ folder)",
        )
    result = generate.build(out_dir / "docs")
    for warning in result.warnings:
        ctx.note(f"warning: {warning}")
    if ctx.args.check:
        stale = generate.stale_files(result, out_dir)
        if stale:
            for rel in stale:
                ctx.print(f"stale: {out_dir / rel}")
            ctx.note("hint: run `renderer schemas build` and commit the result")
            return 1
        ctx.print(f"schemas up to date: {len(result.files) - 1} endpoints in {out_dir}")
        return 0
    changed = generate.write(result, out_dir)
    ctx.print(
        f"wrote {len(changed)} changed file(s); {len(result.files) - 1} endpoints in {out_dir}"
    )
    return 0


def _describe(prop: dict[str, Any]) -> tuple[str, str]:
    """(type, allowed) for a property, as a person reads them."""
    if "anyOf" in prop:
        presets: list[str] = next((b["enum"] for b in prop["anyOf"] if "enum" in b), [])
        return "size", "{width, height} or " + ", ".join(presets)
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1], "object"
    kind = prop.get("type", "any")
    if kind == "array":
        items = prop.get("items", {})
        inner = items.get("type") or items.get("$ref", "any").rsplit("/", 1)[-1]
        return f"list<{inner}>", ""
    if "enum" in prop:
        return kind, ", ".join(map(str, prop["enum"]))
    if "minimum" in prop and "maximum" in prop:
        return kind, f"{prop['minimum']} to {prop['maximum']}"
    if "minimum" in prop:
        return kind, f">= {prop['minimum']}"
    return kind, ""


def _list_endpoints(ctx: Context, registry: schemas.SchemaRegistry) -> int:
    """`renderer models`: every endpoint with its required parameters."""
    rows = [(e, ", ".join(registry.index["endpoints"][e]["required"])) for e in registry.endpoints]
    if ctx.args.json:
        ctx.print(
            json.dumps([{"endpoint": e, "required": r.split(", ")} for e, r in rows], indent=2)
        )
        return 0
    width = max(len(e) for e, _ in rows)
    ctx.print(f"{'ENDPOINT':<{width}}  REQUIRED")
    for endpoint, required in rows:
        ctx.print(f"{endpoint:<{width}}  {required}")
    return 0


def cmd_models(ctx: Context) -> int:
    registry = ctx.registry()
    if ctx.args.endpoint is None:
        return _list_endpoints(ctx, registry)
    endpoint = ctx.args.endpoint
    if endpoint not in registry:
        guess = closest(endpoint, registry.endpoints)
        raise UsageError(
            f"unknown endpoint {endpoint!r}",
            hint=f"did you mean {guess}?" if guess else "run `renderer models` to list endpoints",
        )
    schema = registry.schema(endpoint)
    if ctx.args.json:
        ctx.print(json.dumps(schema, indent=2, ensure_ascii=False))
        return 0
    required = set(schema.get("required", []))
    ctx.print(f"{endpoint}  (documented in {', '.join(schema['x-sources'])})")
    rows = []
    for name, prop in schema["properties"].items():
        kind, allowed = _describe(prop)
        default = json.dumps(prop["default"], ensure_ascii=False) if "default" in prop else ""
        mark = "required" if name in required else ""
        rows.append((name, kind, mark, default[:30], allowed, ", ".join(prop.get("x-source", []))))
    for line in table(("PARAMETER", "TYPE", "", "DEFAULT", "ALLOWED", "SOURCE"), rows, clip=60):
        ctx.print(line)
    return 0
