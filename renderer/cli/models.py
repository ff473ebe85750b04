"""Commands about the endpoints: `schemas build` (model documents → JSON Schemas) and `models`
(list the endpoints, show one, add a model from its document or fal's OpenAPI URL, refresh the
fetched ones, write the editors' manifest schema).

Every document is reported on its own (what it gave, its warnings, or why it was refused): one bad
document never hides the others, and the exit code says whether something was refused (2).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.cli.context import Context, table
from renderer.errors import DocumentError, UsageError, closest
from renderer.models import schemas

if TYPE_CHECKING:  # the generator and the models folder load only for the commands using them
    from renderer.models import generate

ACTIONS = ("list", "show", "add", "update", "schema")
# An endpoint id (owner/app[/path…]) that is not a file name someone meant: fetched from fal.
ENDPOINT_ID = re.compile(r"[a-z0-9][a-z0-9-]*(/[A-Za-z0-9._-]+)+(?<!\.json)(?<!\.txt)(?<!\.md)")
CLIP = 60


def _print_reports(
    ctx: Context, result: generate.BuildResult, only: set[str] | None = None
) -> None:
    from renderer.models import read

    for report in result.reports:
        if only is not None and report.source not in only:
            continue
        if report.refused:
            ctx.note(f"refused: {report.refused}")
            ctx.note(f"  hint: {report.hint or 'understood layouts: ' + '; '.join(read.LAYOUTS)}")
            continue
        for warning in report.warnings:
            ctx.note(f"warning: {warning}")


def cmd_schemas_build(ctx: Context) -> int:
    from renderer.models import generate, read

    out_dir = Path(ctx.args.dir)
    if not (out_dir / "docs").is_dir():
        raise UsageError(
            f"{out_dir / 'docs'}: no model documents here",
            hint="run in the repository root, or give --dir SCHEMA_DIR (it needs a docs/ folder); "
            "to add a model to an installed renderer use `renderer models add FILE|ENDPOINT`",
        )
    result = generate.build(out_dir / "docs")
    _print_reports(ctx, result)
    refused = 2 if result.refused else 0
    if len(result.files) == 1:  # the index alone: every document was refused
        raise UsageError(
            f"{out_dir / 'docs'}: no document could be read; nothing written",
            hint="understood layouts: " + "; ".join(read.LAYOUTS),
        )
    if refused:
        ctx.note(f"{len(result.refused)} document(s) refused (above); the others were built")
    if ctx.args.check:
        stale = generate.stale_files(result, out_dir)
        if stale:
            for rel in stale:
                ctx.print(f"stale: {out_dir / rel}")
            ctx.note("hint: run `renderer schemas build` and commit the result")
            return 1
        ctx.print(f"schemas up to date: {len(result.files) - 1} endpoints in {out_dir}")
        return refused
    changed = generate.write(result, out_dir)
    ctx.print(
        f"wrote {len(changed)} changed file(s); {len(result.files) - 1} endpoints in {out_dir}"
    )
    return refused


def _allowed_values(values: list[Any]) -> str:
    shown = ", ".join(map(str, values))
    if len(shown) <= CLIP:
        return shown
    return f"{len(values)} values: " + shown


def _describe(prop: dict[str, Any]) -> tuple[str, str]:
    """(type, allowed) for a property, as a person reads them."""
    if "anyOf" in prop:
        presets: list[str] = next((b["enum"] for b in prop["anyOf"] if "enum" in b), [])
        if presets:
            return "size", "{width, height} or " + ", ".join(presets)
        kinds = [b.get("type", b.get("$ref", "any").rsplit("/", 1)[-1]) for b in prop["anyOf"]]
        return " | ".join(map(str, kinds)), ""
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1], "object"
    kind = prop.get("type", "any")
    if isinstance(kind, list):
        kind = " | ".join(kind)
    if kind == "array":
        items = prop.get("items", {})
        inner = items.get("type") or items.get("$ref", "any").rsplit("/", 1)[-1]
        return f"list<{inner}>", ""
    if "enum" in prop:
        return kind, _allowed_values(prop["enum"])
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    if low is not None and "maximum" in prop:
        return kind, f"{low} to {prop['maximum']}"
    if "minimum" in prop:
        return kind, f">= {prop['minimum']}"
    if "maxLength" in prop:
        return kind, f"at most {prop['maxLength']} characters"
    return kind, ""


def _notes(registry: schemas.SchemaRegistry, endpoint: str) -> str:
    entry = registry.index["endpoints"][endpoint]
    notes = []
    if registry.layer(endpoint) != registry.root:
        notes.append("added")
    if entry.get("seed") is False:
        notes.append("no seed")
    if entry.get("documented_by") == "third-party":
        notes.append("third-party docs only")
    return ", ".join(notes)


def _list_endpoints(ctx: Context, registry: schemas.SchemaRegistry) -> int:
    """`renderer models`: every endpoint with its required parameters."""
    endpoints = registry.index["endpoints"]
    if ctx.args.json:
        listing = [
            {
                "endpoint": e,
                "required": endpoints[e]["required"],
                "added": registry.layer(e) != registry.root,
                "seed": endpoints[e].get("seed", True),
                "documented_by": endpoints[e].get("documented_by", "fal"),
            }
            for e in registry.endpoints
        ]
        ctx.print(json.dumps(listing, indent=2))
        return 0
    rows = [
        (e, ", ".join(endpoints[e]["required"]), _notes(registry, e)) for e in registry.endpoints
    ]
    for line in table(("ENDPOINT", "REQUIRED", "NOTE"), rows):
        ctx.print(line)
    return 0


def _known(registry: schemas.SchemaRegistry, endpoint: str) -> None:
    if endpoint not in registry:
        guess = closest(endpoint, registry.endpoints)
        raise UsageError(
            f"unknown endpoint {endpoint!r}",
            hint=f"did you mean {guess}?"
            if guess
            else "run `renderer models` to list endpoints, or `renderer models add` to add one",
        )


def _show(ctx: Context, registry: schemas.SchemaRegistry, endpoint: str) -> int:
    from renderer.models import library

    _known(registry, endpoint)
    schema = registry.schema(endpoint)
    added = registry.layer(endpoint) != registry.root
    if ctx.args.json:
        lib = library.Library(registry.layer(endpoint)) if added else None
        sources = (
            lib.provenance(schema["x-sources"])
            if lib
            else [{"document": s, "origin": "bundled"} for s in schema["x-sources"]]
        )
        prefix = {s.rsplit(":", 1)[0] + ":" for s in schema["x-sources"]}
        warnings = [
            w
            for w in registry.index.get("warnings", [])
            if f": {endpoint}: " in w and any(w.startswith(p) for p in prefix)
        ]
        defs = schema.get("$defs", {})
        output = {"$ref": "#/$defs/Output", "$defs": defs} if "Output" in defs else None
        body = {
            "endpoint": endpoint,
            "input": schema,
            "output": output,
            "sources": sources,
            "warnings": warnings,
        }
        ctx.print(json.dumps(body, indent=2, ensure_ascii=False))
        return 0
    required = set(schema.get("required", []))
    origin = "added" if added else "bundled"
    ctx.print(f"{endpoint}  ({origin}; documented in {', '.join(schema['x-sources'])})")
    note = _notes(registry, endpoint)
    if note:
        ctx.print(f"note: {note}")
    rows = []
    for name, prop in schema["properties"].items():
        kind, allowed = _describe(prop)
        default = json.dumps(prop["default"], ensure_ascii=False) if "default" in prop else ""
        mark = "required" if name in required else ""
        rows.append((name, kind, mark, default, allowed, ", ".join(prop.get("x-source", []))))
    for line in table(("PARAMETER", "TYPE", "", "DEFAULT", "ALLOWED", "SOURCE"), rows, clip=CLIP):
        ctx.print(line)
    return 0


def _read_source(ctx: Context, source: str) -> tuple[bytes, str, str | None]:
    """(bytes, origin, fetched endpoint) for a file path or an endpoint id."""
    from renderer.models import library

    path = Path(source)
    if path.is_file():
        return path.read_bytes(), str(path.resolve()), None
    if path.exists() or not ENDPOINT_ID.fullmatch(source):
        raise UsageError(
            f"{source}: no such document file, and not an endpoint id",
            hint="give a model document (OpenAPI JSON, llms.txt, a copied page) or an id like "
            "fal-ai/flux/dev",
        )
    from renderer.provider.documents import fetch_openapi  # the network: only when asked for

    url = library.openapi_url(source, _openapi_base(ctx))
    ctx.note(f"fetching {url}")
    return fetch_openapi(url, source, ctx.env.get("FAL_KEY")), url, source


def _openapi_base(ctx: Context) -> str:
    return ctx.args.openapi_url or ctx.env.get("RENDERER_OPENAPI_URL") or "https://fal.ai"


def _add(ctx: Context, sources: list[str]) -> int:
    from renderer.models import library, read

    if not sources:
        raise UsageError("models add: nothing to add", hint="renderer models add FILE|ENDPOINT …")
    lib = library.Library(ctx.models_dir())
    refused = 0
    added: list[library.Added] = []
    for source in sources:
        try:
            data, origin, fetched = _read_source(ctx, source)
            added.append(lib.add(data, origin, label=Path(source).name or source, fetched=fetched))
        except DocumentError as exc:
            refused += 1
            ctx.note(f"refused: {exc.message}")
            ctx.note(f"  hint: {exc.hint or 'understood layouts: ' + '; '.join(read.LAYOUTS)}")
        except UsageError as exc:
            refused += 1
            ctx.note(f"error: {exc.message}")
            if exc.hint:
                ctx.note(f"hint: {exc.hint}")
    result = lib.build()
    if result is not None:
        _print_reports(ctx, result, {a.name for a in added})
    for item in added:
        verb = "unchanged" if item.unchanged else "replaced" if item.replaced else "added"
        ctx.print(f"{verb}: {', '.join(item.endpoints)}  ({item.name} in {lib.root})")
    return 2 if refused else 0


def _update(ctx: Context, only: list[str]) -> int:
    from renderer.models import library

    lib = library.Library(ctx.models_dir())
    fetched = [f for f in lib.fetched() if not only or f[1] in only]
    if not fetched:
        ctx.print("nothing to update: no model was added from fal's OpenAPI URL")
        return 0
    return _add(ctx, [endpoint for _, endpoint, _ in fetched])


def _schema(ctx: Context, registry: schemas.SchemaRegistry) -> int:
    from renderer.models import editor

    target = Path(ctx.args.out) if ctx.args.out else ctx.models_dir() / "manifest.schema.json"
    editor.write(registry, target)
    ctx.print(f"wrote {target} ({len(registry.endpoints)} endpoints)")
    ctx.print(f"editors: put `# yaml-language-server: $schema={target}` on a manifest's first line")
    return 0


def cmd_models(ctx: Context) -> int:
    words: list[str] = list(ctx.args.words)
    action = words[0] if words and words[0] in ACTIONS else ("show" if words else "list")
    rest = words[1:] if words and words[0] in ACTIONS else words
    if action == "add":
        return _add(ctx, rest)
    if action == "update":
        return _update(ctx, rest)
    registry = ctx.registry()
    if action == "list":
        return _list_endpoints(ctx, registry)
    if action == "schema":
        return _schema(ctx, registry)
    if len(rest) != 1:
        raise UsageError("models show: give one endpoint", hint="renderer models show ENDPOINT")
    return _show(ctx, registry, rest[0])
