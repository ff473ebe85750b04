"""fal's OpenAPI documents → endpoint JSON Schemas (draft 2020-12).

fal serves one OpenAPI 3.x document per endpoint (`/api/openapi/queue/openapi.json?endpoint_id=…`):
the submit operation `POST /<endpoint>` carries the input schema as its request body, and
`GET /<endpoint>/requests/{request_id}` answers with the output schema; both name types in
`components.schemas`. It is the model's own machine-readable contract, so when several documents
describe one endpoint the generator prefers it (generate.merge).

What is converted, and why:
  * `$ref: #/components/schemas/X` → `#/$defs/X`, keeping only the types the endpoint reaches.
  * OpenAPI 3.0 dialect: `nullable: true` → `"null"` added to the type; boolean
    `exclusiveMinimum`/`exclusiveMaximum` → the numeric 2020-12 form. 3.1 documents already are
    2020-12 and pass through.
  * Input objects reject unknown properties unless the document says otherwise (the same rule
    as for every other layout: fal ignores a misspelt field silently, the renderer must not).
  * Presentation keys (`examples`, `x-fal-order-properties`, `ui`, …) are dropped; property order
    follows `x-fal-order-properties` when present, so listings read as fal's pages do.
  * Every property records where it was documented (`x-source`: "file:line").

A document that is not OpenAPI 3.x, or that has no submit operation with a JSON body, is refused
with a DocumentError naming the file and line: never a partial schema.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from renderer.errors import DocumentError

# Keys that describe how fal's playground renders a field, not what the model accepts.
_DROPPED = {"examples", "example", "x-fal-order-properties", "ui", "xml", "externalDocs"}
_REF = "#/components/schemas/"


def is_openapi(text: str) -> bool:
    """Whether the text is a JSON object that declares itself OpenAPI or Swagger."""
    head = text.lstrip()[:4096]
    return head.startswith("{") and re.search(r'"(openapi|swagger)"\s*:', head) is not None


def _line_of(text: str, pattern: str, start: int = 0) -> tuple[int, int]:
    """(1-based line, offset) of the first match of `pattern` at or after `start`; line 1 if none."""
    match = re.compile(pattern).search(text, start)
    if match is None:
        return 1, start
    return text.count("\n", 0, match.start()) + 1, match.start()


class _Converter:
    """One OpenAPI document's component schemas, converted on demand."""

    def __init__(self, spec: dict[str, Any], text: str, source: str) -> None:
        self.spec = spec
        self.text = text
        self.source = source
        components = spec.get("components") or {}
        self.components: dict[str, Any] = components.get("schemas") or {}
        version = str(spec.get("openapi", ""))
        self.dialect_30 = version.startswith("3.0")

    def fail(self, message: str, hint: str | None = None) -> DocumentError:
        return DocumentError(self.source, 1, message, hint=hint)

    def ref_name(self, ref: str) -> str:
        if not ref.startswith(_REF):
            raise self.fail(
                f"unsupported $ref {ref!r}: only local component references are understood",
                hint="download the endpoint's document from fal's OpenAPI URL, which has only local ones",
            )
        name = ref[len(_REF) :]
        if name not in self.components:
            raise self.fail(f"$ref {ref!r} names no schema under components.schemas")
        return name

    def convert(self, node: Any, reached: set[str]) -> Any:
        """A 2020-12 copy of an OpenAPI schema node; component names it uses go into `reached`."""
        if isinstance(node, list):
            return [self.convert(item, reached) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROPPED or (key.startswith("x-") and key != "x-source"):
                continue
            if key == "$ref" and isinstance(value, str):
                name = self.ref_name(value)
                reached.add(name)
                out["$ref"] = f"#/$defs/{name}"
            elif key in ("properties", "patternProperties", "$defs", "definitions"):
                out[key] = {k: self.convert(v, reached) for k, v in (value or {}).items()}
            elif key in ("enum", "const", "default", "required"):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = self.convert(value, reached)
        if self.dialect_30:
            self._from_30(out)
        order = node.get("x-fal-order-properties")
        if isinstance(order, list) and isinstance(out.get("properties"), dict):
            props = out["properties"]
            ranked = [k for k in order if k in props] + [k for k in props if k not in order]
            out["properties"] = {k: props[k] for k in ranked}
        return out

    @staticmethod
    def _from_30(out: dict[str, Any]) -> None:
        """OpenAPI 3.0's schema dialect → 2020-12, in place."""
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            flag = out.get(exclusive)
            if isinstance(flag, bool):
                del out[exclusive]
                if flag and bound in out:
                    out[exclusive] = out.pop(bound)
        if out.pop("nullable", False) is True:
            kind = out.get("type")
            if isinstance(kind, str):
                out["type"] = [kind, "null"]
                if "enum" in out and None not in out["enum"]:
                    out["enum"] = [*out["enum"], None]
            elif isinstance(kind, list) and "null" not in kind:
                out["type"] = [*kind, "null"]
            elif "type" not in out:
                inner = {
                    k: out.pop(k) for k in list(out) if k not in ("description", "title", "default")
                }
                out["anyOf"] = [inner, {"type": "null"}]

    def defs(self, names: set[str], strict: bool, into: dict[str, Any]) -> None:
        """Definitions for every component reachable from `names` (added to `into`)."""
        todo = sorted(names)
        while todo:
            name = todo.pop(0)
            if name in into:
                continue
            found: set[str] = set()
            schema = self.convert(self.components[name], found)
            if strict:
                _close_objects(schema)
            self.mark_sources(schema, name)
            into[name] = schema
            todo.extend(sorted(found - set(into)))

    def mark_sources(self, schema: dict[str, Any], component: str | None) -> None:
        """`x-source` on each property: the line where the document defines it."""
        start = 0
        if component is not None:
            _, start = _line_of(self.text, rf'"{re.escape(component)}"\s*:\s*\{{')
        for name, prop in (schema.get("properties") or {}).items():
            if isinstance(prop, dict):
                line, _ = _line_of(self.text, rf'"{re.escape(name)}"\s*:', start)
                prop["x-source"] = [f"{self.source}:{line}"]


def _close_objects(schema: Any) -> None:
    """additionalProperties: false on every object with declared properties that leaves it unsaid."""
    if isinstance(schema, list):
        for item in schema:
            _close_objects(item)
        return
    if not isinstance(schema, dict):
        return
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            for sub in value.values():
                _close_objects(sub)
        elif key in ("items", "anyOf", "oneOf", "allOf", "not", "prefixItems"):
            _close_objects(value)


def _json_body(operation: dict[str, Any]) -> Any:
    content = ((operation.get("requestBody") or {}).get("content")) or {}
    body = content.get("application/json") or next(
        (v for k, v in content.items() if k.endswith("json")), None
    )
    return (body or {}).get("schema")


def _ok_body(operation: dict[str, Any]) -> Any:
    responses = operation.get("responses") or {}
    ok = responses.get("200") or responses.get(200) or {}
    content = ok.get("content") or {}
    body = content.get("application/json") or {}
    return body.get("schema")


def parse_openapi(text: str, source: str) -> list[dict[str, Any]]:
    """Every endpoint an OpenAPI document describes, each as
    {"endpoint", "line", "auth", "input" (the root schema), "defs" (the types it and the output
    use), "output" (or None)}.
    """
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(source, exc.lineno, f"not valid JSON: {exc.msg}") from exc
    if not isinstance(spec, dict):
        raise DocumentError(source, 1, "not an OpenAPI document (the JSON is not an object)")
    version = str(spec.get("openapi", ""))
    if not version.startswith("3."):
        found = f"swagger {spec['swagger']}" if "swagger" in spec else f"openapi {version or '?'}"
        raise DocumentError(
            source,
            1,
            f"OpenAPI 3.x expected, found {found}",
            hint="fal serves 3.x: https://fal.ai/api/openapi/queue/openapi.json?endpoint_id=<id>",
        )
    conv = _Converter(spec, text, source)
    paths = spec.get("paths") or {}
    found_endpoints: list[dict[str, Any]] = []
    for path, item in paths.items():
        post = (item or {}).get("post") if isinstance(item, dict) else None
        if not isinstance(post, dict) or "/requests/" in path:
            continue
        body = _json_body(post)
        if body is None:
            continue
        endpoint = path.strip("/")
        line, _ = _line_of(text, rf'"{re.escape(path)}"\s*:')
        reached: set[str] = set()
        root = conv.convert(body, reached)
        # The body is usually a bare $ref to `<Name>Input`: inline it, so the file's root is the input.
        while set(root) == {"$ref"}:
            name = root["$ref"].rsplit("/", 1)[-1]
            reached.discard(name)
            root = conv.convert(conv.components[name], reached)
            conv.mark_sources(root, name)
        if root.get("type") != "object" or not isinstance(root.get("properties"), dict):
            raise DocumentError(
                source, line, f"{endpoint}: the request body is not an object schema"
            )
        _close_objects(root)
        defs: dict[str, Any] = {}
        conv.defs(reached, strict=True, into=defs)
        output = None
        result = (paths.get(f"{path.rstrip('/')}/requests/{{request_id}}") or {}).get("get")
        out_schema = _ok_body(result) if isinstance(result, dict) else None
        if out_schema is not None:
            out_reached: set[str] = set()
            output = conv.convert(out_schema, out_reached)
            while set(output) == {"$ref"}:
                name = output["$ref"].rsplit("/", 1)[-1]
                out_reached.discard(name)
                output = conv.convert(conv.components[name], out_reached)
                conv.mark_sources(output, name)
            out_defs: dict[str, Any] = {}
            conv.defs(out_reached - set(defs), strict=False, into=out_defs)
            for name, schema in out_defs.items():
                defs.setdefault(name, schema)
        schemes = (spec.get("components") or {}).get("securitySchemes") or {}
        auth = "Bearer" if any(s.get("scheme") == "bearer" for s in schemes.values()) else "Key"
        found_endpoints.append(
            {
                "endpoint": endpoint,
                "line": line,
                "auth": auth,
                "input": root,
                "defs": defs,
                "output": output,
            }
        )
    if not found_endpoints:
        raise DocumentError(
            source,
            1,
            "OpenAPI document without a submit operation (a POST with a JSON request body)",
            hint="use the endpoint's queue document: https://fal.ai/api/openapi/queue/openapi.json?endpoint_id=<id>",
        )
    return found_endpoints
