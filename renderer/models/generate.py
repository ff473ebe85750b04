"""Build time: parsed model documents → one JSON Schema (draft 2020-12) per endpoint, plus an index.

Invariants:
  * The build is a pure function of the files under schemas/docs/: same bytes in, same bytes
    out (documents are read in file-name order, properties keep document order).
  * Input objects reject unknown properties (`additionalProperties: false`): fal ignores
    unknown fields silently, so a typo would cost money and render the wrong image.
    Output objects stay open: a response with an extra field is still a good response.
  * Each endpoint file's root validates the model input; `$defs.Output` validates its output.
  * Every property records where it was documented (`x-source`: "file:line" list).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from renderer.errors import DocumentError, UserError
from renderer.models.documents import (
    NO_DEFAULT,
    PRIMITIVES,
    EndpointDoc,
    Field,
    TypeDef,
)
from renderer.models.read import parse_file

FORMAT = 1
DIALECT = "https://json-schema.org/draft/2020-12/schema"
# Counts and pixel sizes below 1 are meaningless; the documents leave this unsaid.
IMPLIED_MINIMUM = {"width": 1, "height": 1, "num_images": 1, "num_inference_steps": 1}
# Which document wins a merge: fal's OpenAPI (its machine-readable contract), then fal's pages, then
# third-party tables.
_STYLE_RANK = {
    "openapi": -1,
    "fal-page": 0,
    "fal-markdown": 0,
    "fal-docs": 0,
    "proxy-table": 1,
    "proxy-openapi": 1,
}
THIRD_PARTY = ("proxy-table", "proxy-openapi")
# fal's shared types, as its OpenAPI documents define them: pages (llms.txt above all) name them
# without defining them. Only the constraints every endpoint's definition shares are kept.
STANDARD_TYPES: dict[str, dict[str, Any]] = {
    "ImageSize": {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "exclusiveMinimum": 0, "maximum": 14142, "default": 512},
            "height": {"type": "integer", "exclusiveMinimum": 0, "maximum": 14142, "default": 512},
        },
    },
    "File": {
        "type": "object",
        "properties": {
            "url": {"type": "string"},
            "content_type": {"type": "string"},
            "file_name": {"type": "string"},
            "file_size": {"type": "integer"},
        },
        "required": ["url"],
    },
    "LoraWeight": {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "scale": {"type": "number", "minimum": 0, "maximum": 4, "default": 1},
        },
        "required": ["path"],
    },
}
# An Image is a File with its pixel size.
STANDARD_TYPES["Image"] = {
    **STANDARD_TYPES["File"],
    "properties": {
        **STANDARD_TYPES["File"]["properties"],
        "width": {"type": "integer"},
        "height": {"type": "integer"},
    },
}
# fal's standard `image_size` presets (fal-protocol.md; every fal page that lists them lists these).
STANDARD_PRESETS = (
    "square_hd",
    "square",
    "portrait_4_3",
    "portrait_16_9",
    "landscape_4_3",
    "landscape_16_9",
)
_COMPARED = ("type", "enum", "default", "minimum", "maximum", "$ref")


def endpoint_file(endpoint: str) -> str:
    return f"endpoints/{endpoint}.json"


# ---------------------------------------------------------------- building one document


@dataclass
class _Builder:
    doc: EndpointDoc
    warnings: list[str]
    input_types: set[str] = field(default_factory=set)
    output_types: set[str] = field(default_factory=set)
    standard: set[str] = field(default_factory=set)  # fal's shared types used, never defined here

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(f"{self.doc.source}:{line}: {self.doc.endpoint}: {message}")

    def type_schema(self, type_: str, f: Field, reached: set[str]) -> dict[str, Any]:
        type_ = type_.strip()
        if type_ == "any":  # a third party's table leaves the type unsaid
            self.warn(f.line, f"{f.name}: the document gives no type; accepting any value")
            return {}
        if type_.startswith("list<") and type_.endswith(">"):
            return {"type": "array", "items": self.type_schema(type_[5:-1], f, reached)}
        if type_ in PRIMITIVES:
            kind = {"float": "number"}.get(type_, type_)
            schema: dict[str, Any] = {"type": kind}
            if f.enum and kind == "string":
                schema["enum"] = list(f.enum)
            return schema
        if type_.endswith("| Enum"):  # a preset name or an object: `ImageSize | Enum`
            name = type_.split("|")[0].strip()
            presets: dict[str, Any] = {"type": "string", "enum": list(f.enum or [])}
            if not f.enum:
                # fal's llms.txt pages print the type without its values: an empty enum would refuse
                # every preset, the page's own default among them.
                presets = {"type": "string", "enum": list(STANDARD_PRESETS), "x-presets": "assumed"}
                self.warn(
                    f.line,
                    f"{f.name}: {type_} lists no preset names; assuming fal's standard presets "
                    f"({', '.join(STANDARD_PRESETS)}); add the endpoint's OpenAPI document to be sure",
                )
            return {"anyOf": [self.type_schema(name, f, reached), presets]}
        if type_ == "Enum" or type_.endswith("Enum"):
            if not f.enum:
                self.warn(
                    f.line, f"{f.name}: enum type {type_} lists no values; accepting any string"
                )
                return {"type": "string"}
            return {"type": "string", "enum": list(f.enum)}
        if type_ in self.doc.types:
            reached.add(type_)
            return {"$ref": f"#/$defs/{type_}"}
        if type_ in STANDARD_TYPES:
            self.standard.add(type_)
            self.warn(
                f.line,
                f"{f.name}: type {type_} is not defined in the document; using fal's standard "
                f"{type_} ({', '.join(STANDARD_TYPES[type_]['properties'])})",
            )
            return {"$ref": f"#/$defs/{type_}"}
        self.warn(
            f.line, f"{f.name}: type {type_} is referenced but never defined; accepting any object"
        )
        return {"type": "object", "x-undefined-type": type_}

    def property(self, f: Field, reached: set[str]) -> dict[str, Any]:
        schema = self.type_schema(f.type, f, reached)
        if f.description:
            schema = {"description": f.description, **schema}
        bounds = f.range or f.prose_range
        if f.range and f.prose_range and f.range != f.prose_range:
            self.warn(
                f.line,
                f"{f.name}: explicit range {_span(f.range)} disagrees with the prose "
                f"({f.prose_range[0]}-{f.prose_range[1]}); using {_span(f.range)}",
            )
        if bounds and schema.get("type") in ("integer", "number"):
            schema["minimum"], schema["maximum"] = bounds
        elif schema.get("type") == "integer" and f.name in IMPLIED_MINIMUM:
            schema["minimum"] = IMPLIED_MINIMUM[f.name]
        if f.default is not NO_DEFAULT:
            schema["default"] = f.default
        schema["x-source"] = [f"{self.doc.source}:{f.line}"]
        return schema

    def object_schema(self, fields: list[Field], reached: set[str], strict: bool) -> dict[str, Any]:
        props = {f.name: self.property(f, reached) for f in fields}
        required = [f.name for f in fields if f.required]
        schema: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            schema["required"] = required
        if strict:
            schema["additionalProperties"] = False
        return schema

    def close_types(self, start: set[str], strict: bool) -> dict[str, dict[str, Any]]:
        """Definitions for every type reachable from `start` (types of other endpoints stay out)."""
        defs: dict[str, dict[str, Any]] = {}
        todo = sorted(start)
        while todo:
            name = todo.pop(0)
            if name in defs:
                continue
            tdef: TypeDef = self.doc.types[name]
            found: set[str] = set()
            defs[name] = self.object_schema(tdef.fields, found, strict)
            todo.extend(sorted(found - set(defs)))
        return defs

    def infer_output(self) -> list[Field]:
        """Output fields read off the example response, when the page lists none."""
        example = next((e for e in self.doc.examples if e.kind == "output"), None)
        if example is None:
            return []
        fields = []
        for key, value in example.body.items():
            type_ = _json_type(value)
            if isinstance(value, list) and value and isinstance(value[0], dict):
                keys = set(value[0])
                match = sorted(
                    n for n, t in self.doc.types.items() if keys <= {f.name for f in t.fields}
                )
                type_ = f"list<{match[0]}>" if match else "list<object>"
            fields.append(Field(key, type_, example.line, required=True))
        self.warn(
            example.line,
            "the Output section lists no fields; output schema inferred from the example response "
            f"({', '.join(f'{f.name}: {f.type}' for f in fields)})",
        )
        return fields

    def build(self) -> dict[str, Any]:
        doc = self.doc
        if doc.schema is not None:  # OpenAPI: already JSON Schema, taken as the document says
            for line, message in doc.schema.get("warnings", []):
                self.warnings.append(f"{doc.source}:{line}: {message}")
            return {
                "input": doc.schema["input"],
                "output": doc.schema["output"],
                "defs": dict(doc.schema["defs"]),
            }
        names = [f.name for f in doc.inputs]
        if "prompt" not in names:
            self.warn(doc.line, "no prompt field in the Input section")
        for f in doc.inputs:
            if f.name == "prompt":
                f.required = True  # the one parameter every text-to-image endpoint needs
        root = self.object_schema(doc.inputs, self.input_types, strict=True)
        defs = self.close_types(self.input_types, strict=True)
        for name in sorted(self.standard):  # an input's: closed like every input object
            defs[name] = {**STANDARD_TYPES[name], "additionalProperties": False}
        self.standard.clear()
        outputs = doc.outputs or self.infer_output()
        output = None
        if outputs:
            output = self.object_schema(outputs, self.output_types, strict=False)
            for name, schema in self.close_types(
                self.output_types - set(defs), strict=False
            ).items():
                defs.setdefault(name, schema)
            for name in sorted(self.standard):
                defs.setdefault(name, dict(STANDARD_TYPES[name]))
        elif doc.style not in THIRD_PARTY:
            self.warn(doc.line, "no output fields and no example response; no output schema")
        return {"input": root, "output": output, "defs": defs}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return f"list<{_json_type(value[0]) if value else 'string'}>"
    return "object"


def _span(bounds: tuple[float, float]) -> str:
    return f"{bounds[0]} to {bounds[1]}"


# ---------------------------------------------------------------- merging documents


def _presets(prop: dict[str, Any]) -> dict[str, Any] | None:
    """The preset branch of a size-like `anyOf` (a string enum), if the property has one."""
    return next((b for b in prop.get("anyOf", []) if isinstance(b, dict) and "enum" in b), None)


def _merge_presets(
    mine: dict[str, Any], prop: dict[str, Any], where: str, warnings: list[str]
) -> None:
    """Listed presets replace assumed ones; two different lists are a conflict (the first is kept)."""
    ours, theirs = _presets(mine), _presets(prop)
    if ours is None or theirs is None or ours["enum"] == theirs["enum"]:
        return
    if ours.get("x-presets") == "assumed" and theirs.get("x-presets") != "assumed":
        ours["enum"] = list(theirs["enum"])
        del ours["x-presets"]
    elif theirs.get("x-presets") != "assumed":
        warnings.append(
            f"{prop['x-source'][0]}: {where}: presets {json.dumps(theirs['enum'])} conflict with "
            f"{json.dumps(ours['enum'])} from {mine['x-source'][0]}; keeping the latter"
        )


def _merge_props(
    into: dict[str, Any],
    other: dict[str, Any],
    endpoint: str,
    warnings: list[str],
    *,
    authoritative: bool = False,
) -> None:
    """Fold another document's properties into `into`, reporting every disagreement.

    `authoritative`: `into` comes from the endpoint's OpenAPI document, which nothing overrides or
    extends (a field only a page mentions is reported, not added).
    """
    for name, prop in other.items():
        mine = into.get(name)
        if mine is None:
            if authoritative:
                warnings.append(
                    f"{prop['x-source'][0]}: {endpoint}: {name}: not in the endpoint's OpenAPI "
                    "document; ignored"
                )
            else:
                into[name] = prop
            continue
        _merge_presets(mine, prop, f"{endpoint}: {name}", warnings)
        for key in _COMPARED:
            if key in prop and key in mine and prop[key] != mine[key]:
                warnings.append(
                    f"{prop['x-source'][0]}: {endpoint}: {name}: {key} {json.dumps(prop[key])} conflicts "
                    f"with {json.dumps(mine[key])} from {mine['x-source'][0]}; keeping the latter"
                )
            elif (
                key in prop
                and key not in mine
                and "$ref" not in mine
                and "anyOf" not in mine
                and not authoritative
            ):
                mine[key] = prop[key]
        mine["x-source"] = mine["x-source"] + [
            s for s in prop["x-source"] if s not in mine["x-source"]
        ]
        if "description" not in mine and "description" in prop:
            mine["description"] = prop["description"]


def merge(endpoint: str, docs: list[EndpointDoc], warnings: list[str]) -> dict[str, Any]:
    """One endpoint schema from every document describing it (fal's pages first)."""
    docs = sorted(docs, key=lambda d: (_STYLE_RANK[d.style], d.source, d.line))
    built = [_Builder(d, warnings).build() for d in docs]
    first = built[0]
    authoritative = docs[0].style == "openapi"
    root, output, defs = first["input"], first["output"], dict(first["defs"])
    for part in built[1:]:
        _merge_props(
            root["properties"],
            part["input"]["properties"],
            endpoint,
            warnings,
            authoritative=authoritative,
        )
        if not authoritative:
            root["required"] = list(
                dict.fromkeys(root.get("required", []) + part["input"].get("required", []))
            )
        if part["output"]:
            if output is None:
                output = part["output"]
            elif "properties" in output and "properties" in part["output"]:
                _merge_props(
                    output["properties"],
                    part["output"]["properties"],
                    endpoint,
                    warnings,
                    authoritative=authoritative,
                )
        for name, definition in part["defs"].items():
            defs.setdefault(name, definition)
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "title": f"{endpoint} input",
        **(
            {"description": summary}
            if (summary := next((d.summary for d in docs if d.summary), ""))
            else {}
        ),
        "x-endpoint": endpoint,
        "x-sources": [d.where for d in docs],
        "x-auth": sorted({d.auth for d in docs}),
        **root,
    }
    proxies = {f"{d.source}:" for d in docs if d.style in THIRD_PARTY}
    if proxies and len(docs) > len(proxies):
        for name, prop in root["properties"].items():
            if all(any(src.startswith(p) for p in proxies) for src in prop["x-source"]):
                warnings.append(
                    f"{prop['x-source'][0]}: {endpoint}: {name}: documented only by a third-party "
                    "proxy page, not by fal; fal may ignore it"
                )
    if output is not None:
        defs["Output"] = {"title": f"{endpoint} output", **output}
    if defs:
        schema["$defs"] = dict(sorted(defs.items()))
    return schema


# ---------------------------------------------------------------- the build


@dataclass
class DocumentReport:
    """What became of one document: the endpoints it described, its warnings, or why it was refused."""

    source: str
    endpoints: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refused: str | None = None  # "file:line: why", when nothing of it was used
    hint: str | None = None  # what would work instead


@dataclass
class BuildResult:
    files: dict[str, str]  # path relative to the schema directory → exact file content
    warnings: list[str]
    docs: list[EndpointDoc]
    reports: list[DocumentReport] = field(default_factory=list)

    @property
    def refused(self) -> list[DocumentReport]:
        return [r for r in self.reports if r.refused]


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def document_paths(docs_dir: Path) -> list[Path]:
    return sorted(p for p in docs_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def build(docs_dir: Path) -> BuildResult:
    """Every readable document in `docs_dir`, built; an unreadable one is reported, never fatal.

    One refused document must not hide the others: each is parsed on its own, and the result says,
    per document, what it gave (reports).
    """
    paths = document_paths(docs_dir)
    if not paths:
        raise UserError(
            f"{docs_dir}: no model documents found", hint="put the model pages under schemas/docs/"
        )
    docs: list[EndpointDoc] = []
    reports: list[DocumentReport] = []
    for path in paths:
        report = DocumentReport(path.name)
        reports.append(report)
        try:
            found = parse_file(path)
        except DocumentError as exc:
            report.refused, report.hint = exc.message, exc.hint
            continue
        report.endpoints = list(dict.fromkeys(d.endpoint for d in found))
        docs.extend(found)
    warnings: list[str] = []
    for doc in docs:
        for ex in doc.examples:
            if ex.repaired:
                warnings.append(
                    f"{doc.source}:{ex.line}: {doc.endpoint}: example is not valid JSON as printed "
                    "(unescaped quotes inside a string); read with the quotes escaped"
                )
    by_endpoint: dict[str, list[EndpointDoc]] = {}
    for doc in docs:
        by_endpoint.setdefault(doc.endpoint, []).append(doc)
    files: dict[str, str] = {}
    index: dict[str, Any] = {}
    for endpoint in sorted(by_endpoint):
        group = by_endpoint[endpoint]
        schema = merge(endpoint, group, warnings)
        files[endpoint_file(endpoint)] = _dump(schema)
        used = set(schema.get("$defs", {}))
        third_party = all(d.style in THIRD_PARTY for d in group)
        seed = "seed" in schema.get("properties", {})
        first = min(group, key=lambda d: (d.source, d.line))
        if third_party:
            warnings.append(
                f"{first.where}: {endpoint}: documented only by a third-party page, not by fal; "
                "add fal's OpenAPI document for the endpoint's own contract"
            )
        if not seed:
            warnings.append(
                f"{first.where}: {endpoint}: no seed parameter documented; jobs are sent without a "
                "seed, so its images are not reproducible"
            )
        index[endpoint] = {
            "file": endpoint_file(endpoint),
            "sources": schema["x-sources"],
            "auth": schema["x-auth"],
            "required": schema.get("required", []),
            "output_schema": "Output" in used,
            "ignored_types": sorted({t for d in group for t in d.types} - used),
            "seed": seed,
            "documented_by": "third-party" if third_party else "fal",
        }
    warnings.sort(key=_warning_order)
    by_source = {r.source: r for r in reports}
    for warning in warnings:
        by_source[warning.split(":", 1)[0]].warnings.append(warning)
    files["index.json"] = _dump({"format": FORMAT, "endpoints": index, "warnings": warnings})
    return BuildResult(files, warnings, docs, reports)


def _warning_order(warning: str) -> tuple[str, int, str]:
    source, line, rest = warning.split(":", 2)
    return source, int(line), rest


def write_atomic(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all: a temporary file beside it, synced, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def write(result: BuildResult, out_dir: Path) -> list[str]:
    """Write the build; return the files that changed. Stale endpoint files are removed."""
    changed = stale_files(result, out_dir)
    for rel in changed:  # stale_files has compared every file already: no second read
        if rel in result.files:
            write_atomic(out_dir / rel, result.files[rel].encode("utf-8"))
        else:
            (out_dir / rel).unlink()
    return changed


def stale_files(result: BuildResult, out_dir: Path) -> list[str]:
    """Files that differ from a fresh build: changed, missing, or no longer generated."""
    differ = [
        rel
        for rel, content in result.files.items()
        if not (out_dir / rel).is_file() or (out_dir / rel).read_text(encoding="utf-8") != content
    ]
    endpoints = out_dir / "endpoints"
    if endpoints.is_dir():
        for path in sorted(endpoints.rglob("*.json")):
            rel = path.relative_to(out_dir).as_posix()
            if rel not in result.files:
                differ.append(rel)
    return sorted(differ)
