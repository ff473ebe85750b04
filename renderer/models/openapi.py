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

import yaml

from renderer.errors import DocumentError
from renderer.models import prose

# Keys that describe how fal's playground renders a field, not what the model accepts.
_DROPPED = {"examples", "example", "x-fal-order-properties", "ui", "xml", "externalDocs"}
_REF = "#/components/schemas/"


def is_openapi(text: str) -> bool:
    """Whether the text is a JSON object that declares itself OpenAPI or Swagger."""
    head = text.lstrip()[:4096]
    return head.startswith("{") and re.search(r'"(openapi|swagger)"\s*:', head) is not None


# A page that carries an OpenAPI description in a fenced block (API catalogues and proxies export
# them so: "```yaml\nopenapi: 3.0.1\n…```").
_FENCED = re.compile(
    r"^```(?:ya?ml|json)?[ \t]*\n(?P<body>(?:openapi|swagger)\s*:.*?|\{\s*\n\s*\"openapi\".*?)^```",
    re.M | re.S,
)


def embedded_openapi(text: str) -> tuple[str, int] | None:
    """(the fenced OpenAPI text, its first line's number) when a page carries one."""
    match = _FENCED.search(text)
    if match is None:
        return None
    return match.group("body"), text.count("\n", 0, match.start("body"))


def _line_of(text: str, pattern: str, start: int = 0) -> tuple[int, int]:
    """(1-based line, offset) of the first match of `pattern` at or after `start`; line 1 if none."""
    match = re.compile(pattern, re.M).search(text, start)
    if match is None:
        return 1, start
    return text.count("\n", 0, match.start()) + 1, match.start()


def _key(name: str) -> str:
    """A pattern for `name` as a mapping key, in JSON (`"name":`) or YAML (`name:` on its line)."""
    quoted = re.escape(json.dumps(name))
    return rf"(?:{quoted}\s*:|^[ \t]*(?:{re.escape(name)}|'{re.escape(name)}')\s*:)"


class _Converter:
    """One OpenAPI document's component schemas, converted on demand."""

    def __init__(self, spec: dict[str, Any], text: str, source: str, base: int) -> None:
        self.spec = spec
        self.text = text
        self.source = source
        self.base = base  # lines before the document, when a page embeds it
        self.third_party = _third_party(spec)
        self.warnings: list[tuple[int, str]] = []
        components = spec.get("components") or {}
        self.components: dict[str, Any] = components.get("schemas") or {}
        version = str(spec.get("openapi", ""))
        self.dialect_30 = version.startswith("3.0")

    def fail(self, message: str, hint: str | None = None) -> DocumentError:
        return DocumentError(self.source, self.base + 1, message, hint=hint)

    def line(self, pattern: str, start: int = 0) -> tuple[int, int]:
        line, offset = _line_of(self.text, pattern, start)
        return self.base + line, offset

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

    def mark_sources(self, schema: dict[str, Any], component: str | None, start: int = 0) -> None:
        """`x-source` on each property: the line where the document defines it. A third party's
        description also yields the constraints its prose states (prose.read)."""
        if component is not None:
            _, start = self.line(_key(component), start)
        for name, prop in (schema.get("properties") or {}).items():
            if isinstance(prop, dict):
                line, _ = self.line(_key(name), start)
                prop["x-source"] = [f"{self.source}:{line}"]
                if self.third_party:
                    self.read_prose(name, prop, line)

    def read_prose(self, name: str, prop: dict[str, Any], line: int) -> None:
        """Range, allowed values and default stated only in a description (proxy pages)."""
        kind = prop.get("type")
        if not isinstance(kind, str) or not prop.get("description"):
            return
        try:
            hints = prose.read(str(prop["description"]), kind)
        except ValueError as exc:
            raise DocumentError(
                self.source, line, f"{name}: the stated default does not fit type {kind}: {exc}"
            ) from exc
        if hints.range and "minimum" not in prop and "maximum" not in prop:
            prop["minimum"], prop["maximum"] = hints.range
        if hints.enum and "enum" not in prop:
            prop["enum"] = list(hints.enum)
        if hints.has_default and "default" not in prop:
            prop["default"] = hints.default


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


class _NoAliases(yaml.SafeLoader):
    """YAML without anchors and aliases: an OpenAPI export needs none, and a document of nested
    aliases (a "billion laughs") would otherwise expand into an exponential walk."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted in a model document", event.start_mark
            )
        return super().compose_node(parent, index)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_NoAliases)


def _load(text: str, source: str, base: int) -> Any:
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocumentError(source, base + exc.lineno, f"not valid JSON: {exc.msg}") from exc
        except RecursionError as exc:
            raise DocumentError(source, base + 1, "not valid JSON: nested too deeply") from exc
    try:
        return _yaml(text)
    except RecursionError as exc:
        raise DocumentError(source, base + 1, "not valid YAML: nested too deeply") from exc
    except yaml.YAMLError as exc:
        try:
            # Exported pages often leave `description: Range value: 1-50` unquoted: invalid YAML
            # that every reader understands. Read it with such values quoted (the build says so).
            repaired = _yaml(_quote_plain_values(text))
        except (yaml.YAMLError, RecursionError):
            mark = getattr(exc, "problem_mark", None)
            line = base + (mark.line + 1 if mark is not None else 1)
            problem = getattr(exc, "problem", exc)
            raise DocumentError(source, line, f"not valid YAML: {problem}") from exc
        if isinstance(repaired, dict):
            repaired["x-repaired"] = True
        return repaired


_PLAIN_WITH_COLON = re.compile(
    r"^(?P<key>[ \t]*(?:- )?[\w$.-]+:[ \t]+)(?P<value>[^'\"|>{\[&*!#\s][^#]*?: .*)$"
)


def _quote_plain_values(text: str) -> str:
    """`key: a: b` → `key: 'a: b'` on every line where a plain value holds `: `."""

    def quote(match: re.Match[str]) -> str:
        value = match.group("value").rstrip()
        return match.group("key") + "'" + value.replace("'", "''") + "'"

    return "\n".join(_PLAIN_WITH_COLON.sub(quote, line) for line in text.split("\n"))


def _third_party(spec: dict[str, Any]) -> bool:
    """A description served by someone else than fal: its servers are not fal's."""
    servers = [str(s.get("url", "")) for s in spec.get("servers") or [] if isinstance(s, dict)]
    return bool(servers) and not any(re.search(r"(^|[/.])fal\.(run|ai)\b", u) for u in servers)


def parse_openapi(text: str, source: str, base: int = 0) -> list[dict[str, Any]]:
    """Every endpoint an OpenAPI document describes, each as
    {"endpoint", "line", "auth", "input" (the root schema), "defs" (the types it and the output
    use), "output" (or None), "third_party", "warnings" [(line, message)]}.

    `base`: lines before the document when it is embedded in a page.
    """
    spec = _load(text, source, base)
    if not isinstance(spec, dict):
        raise DocumentError(source, base + 1, "not an OpenAPI document (not a mapping)")
    version = str(spec.get("openapi", ""))
    if not version.startswith("3."):
        found = f"swagger {spec['swagger']}" if "swagger" in spec else f"openapi {version or '?'}"
        raise DocumentError(
            source,
            base + 1,
            f"OpenAPI 3.x expected, found {found}",
            hint="fal serves 3.x: https://fal.ai/api/openapi/queue/openapi.json?endpoint_id=<id>",
        )
    conv = _Converter(spec, text, source, base)
    if spec.pop("x-repaired", False):
        conv.warnings.append(
            (
                base + 1,
                "not valid YAML as printed (unquoted values containing ': '); read with them quoted",
            )
        )
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
        line, at = conv.line(_key(path))
        reached: set[str] = set()
        root = conv.convert(body, reached)
        if set(root) != {"$ref"}:
            conv.mark_sources(root, None, at)  # written inline under the path
        # The body is usually a bare $ref to `<Name>Input`: inline it, so the file's root is the input.
        while set(root) == {"$ref"}:
            name = root["$ref"].rsplit("/", 1)[-1]
            reached.discard(name)
            root = conv.convert(conv.components[name], reached)
            conv.mark_sources(root, name)
        if root.get("type") == "object" and not root.get("properties"):
            root = _from_example(conv, post, endpoint, line) or root
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
            if output.get("type") == "object" and not output.get("properties"):
                output = None  # "an object": a third party's placeholder, no contract
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
                "third_party": conv.third_party,
                "warnings": conv.warnings,
            }
        )
    if not found_endpoints:
        raise DocumentError(
            source,
            base + 1,
            "OpenAPI document without a submit operation (a POST with a JSON request body)",
            hint="use the endpoint's queue document: https://fal.ai/api/openapi/queue/openapi.json?endpoint_id=<id>",
        )
    return found_endpoints


def _from_example(
    conv: _Converter, post: dict[str, Any], endpoint: str, line: int
) -> dict[str, Any] | None:
    """Parameters read off the request example, when the schema lists none (some proxy pages).

    Only names and JSON types can be known this way; the build says so in a warning.
    """
    content = ((post.get("requestBody") or {}).get("content")) or {}
    media = content.get("application/json") or {}
    example = media.get("example")
    if not isinstance(example, dict) or not example:
        return None
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    props: dict[str, Any] = {}
    for name, value in example.items():
        kind = next((k for t, k in kinds.items() if type(value) is t), "object")
        prop_line, _ = conv.line(_key(str(name)))
        props[str(name)] = {"type": kind, "x-source": [f"{conv.source}:{prop_line}"]}
    conv.warnings.append(
        (
            line,
            f"{endpoint}: the request schema lists no parameters; names and types read off the "
            f"request example ({', '.join(props)}), with no ranges or allowed values",
        )
    )
    return {
        "type": "object",
        "properties": props,
        "required": ["prompt"] if "prompt" in props else [],
    }
