"""renderer.models.openapi: fal's OpenAPI documents read as endpoint schemas."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from renderer.errors import DocumentError
from renderer.models.generate import merge
from renderer.models.openapi import is_openapi, parse_openapi
from renderer.models.read import parse_text
from renderer.models.schemas import SchemaRegistry
from renderer.provider.emulator.openapi import document

from .conftest import SCHEMAS

REGISTRY = SchemaRegistry(SCHEMAS)


def _strip(node: Any) -> Any:
    """A schema without provenance and titles: what validation depends on."""
    if isinstance(node, list):
        return [_strip(n) for n in node]
    if not isinstance(node, dict):
        return node
    skip = {"x-source", "x-sources", "x-endpoint", "x-auth", "x-presets", "$schema", "title"}
    skip.add("x-undefined-type")  # the generator's note on a type a page never defined
    return {k: _strip(v) for k, v in node.items() if k not in skip}


def _spec(props: dict[str, Any], *, version: str = "3.0.4", **extra: Any) -> str:
    body = {
        "openapi": version,
        "components": {
            "schemas": {
                "In": {"type": "object", "properties": props, "required": ["prompt"], **extra},
                "Out": {"type": "object", "properties": {"images": {"type": "array"}}},
            }
        },
        "paths": {
            "/owner/app": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/In"}}
                        }
                    }
                }
            },
            "/owner/app/requests/{request_id}": {
                "get": {
                    "responses": {
                        "200": {
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Out"}}
                            }
                        }
                    }
                }
            },
        },
    }
    return json.dumps(body, indent=2)


@pytest.mark.parametrize("endpoint", REGISTRY.endpoints)
def test_round_trip_through_the_emulators_openapi_document(endpoint: str):
    """Every bundled endpoint, written as fal's OpenAPI and read back, keeps its input and output contract."""
    text = json.dumps(document(REGISTRY, endpoint), indent=2)
    (found,) = parse_openapi(text, "doc.json")
    assert found["endpoint"] == endpoint
    original = REGISTRY.schema(endpoint)
    root = {k: v for k, v in original.items() if k not in ("$defs", "description")}
    read = {k: v for k, v in found["input"].items() if k != "description"}
    assert _strip(read) == _strip(root)
    defs = original.get("$defs", {})
    assert _strip(found["output"]) == _strip(defs.get("Output"))
    for name, body in found["defs"].items():
        assert _strip(body) == _strip(defs[name])


def test_openapi_30_dialect_becomes_2020_12():
    """nullable and boolean exclusive bounds of OpenAPI 3.0 validate as fal means them."""
    text = _spec(
        {
            "prompt": {"type": "string"},
            "seed": {"type": "integer", "nullable": True},
            "strength": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
            "mode": {"type": "string", "enum": ["a", "b"], "nullable": True},
        }
    )
    (found,) = parse_openapi(text, "d.json")
    check = Draft202012Validator({**found["input"], "$defs": found["defs"]})
    assert check.is_valid({"prompt": "x", "seed": None, "strength": 1, "mode": None})
    assert not check.is_valid({"prompt": "x", "strength": 0})
    assert not check.is_valid({"prompt": "x", "mode": "c"})
    assert not check.is_valid({"prompt": "x", "sneed": 1})  # unknown fields are refused


def test_property_order_follows_fals_order_list():
    """x-fal-order-properties decides the order parameters are listed in."""
    props = {"seed": {"type": "integer"}, "prompt": {"type": "string"}}
    text = _spec(props, **{"x-fal-order-properties": ["prompt", "seed"]})
    (found,) = parse_openapi(text, "d.json")
    assert list(found["input"]["properties"]) == ["prompt", "seed"]
    line = 1 + next(n for n, ln in enumerate(text.splitlines()) if ln.strip().startswith('"seed"'))
    assert found["input"]["properties"]["seed"]["x-source"] == [f"d.json:{line}"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"swagger": "2.0", "paths": {}}', "OpenAPI 3.x expected, found swagger 2.0"),
        ('{"openapi": "3.0.0", "paths": {}}', "without a submit operation"),
        ('{"openapi": "3.0.0", "paths": {', "not valid JSON"),
        (
            _spec({"prompt": {"$ref": "https://elsewhere/x.json"}}),
            "only local component references",
        ),
        (_spec({"prompt": {"$ref": "#/components/schemas/Nope"}}), "names no schema"),
    ],
)
def test_unreadable_openapi_is_refused_with_the_reason(text: str, message: str):
    """A document that is not usable OpenAPI 3.x is refused, naming the file and why."""
    with pytest.raises(DocumentError) as caught:
        parse_text(text, "bad.json")
    assert caught.value.path == "bad.json"
    assert message in caught.value.message


def test_openapi_wins_a_merge_and_page_conflicts_are_reported():
    """Where a page and the OpenAPI disagree, the OpenAPI is kept and the disagreement is a warning."""
    api = parse_text(
        _spec({"prompt": {"type": "string"}, "steps": {"type": "integer", "maximum": 50}}), "a.json"
    )
    page = parse_text(
        "- **Model ID**: `owner/app`\n\n### Input Schema\n\n"
        "- **`prompt`** (`string`, _required_):\n  The prompt\n\n"
        "- **`steps`** (`integer`, _optional_):\n  Steps\n  - Range: `1` to `30`\n\n"
        "- **`extra`** (`string`, _optional_):\n  Not in the API\n",
        "b.md",
    )
    warnings: list[str] = []
    schema = merge("owner/app", page + api, warnings)
    assert schema["properties"]["steps"]["maximum"] == 50
    assert "extra" not in schema["properties"]
    assert any("steps: maximum 30 conflicts with 50" in w for w in warnings)
    assert any("extra: not in the endpoint's OpenAPI document; ignored" in w for w in warnings)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_parsed_or_refused_never_crashes(text: str):
    """Arbitrary text given as a document yields endpoints or a DocumentError, nothing else."""
    for candidate in (text, '{"openapi": "3.0.0", ' + text):
        with contextlib.suppress(DocumentError):
            parse_text(candidate, "fuzz.json")
    assert is_openapi('{"openapi": "3.1.0"}') and not is_openapi("openapi: 3.1.0")


_PRIMITIVE = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer", "minimum": 0, "maximum": 10},
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "boolean"},
        {"type": "string", "enum": ["a", "b"]},
        {"type": "string", "minLength": 1, "maxLength": 3},
        {"$ref": "#/components/schemas/Size"},
    ]
)


def _nullable(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(
        [schema, {"anyOf": [schema, {"type": "null"}]}, {"type": "array", "items": schema}]
    )


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True),
        _PRIMITIVE.flatmap(_nullable),
        min_size=1,
        max_size=5,
    ),
    st.lists(
        st.one_of(
            st.none(), st.integers(-3, 12), st.text(max_size=4), st.booleans(), st.just({"w": 1})
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_any_openapi_31_request_schema_validates_as_written(
    props: dict[str, Any], values: list[Any]
):
    """For generated 3.1 request schemas, the converted schema accepts exactly what the document's does."""
    size = {"type": "object", "properties": {"w": {"type": "integer"}}}
    body = {"type": "object", "properties": {"prompt": {"type": "string"}, **props}}
    spec = json.loads(_spec({}, version="3.1.0"))
    spec["components"]["schemas"]["In"] = body
    spec["components"]["schemas"]["Size"] = size
    (found,) = parse_openapi(json.dumps(spec), "p.json")
    ours = Draft202012Validator({**found["input"], "$defs": found["defs"]})
    Draft202012Validator.check_schema({**found["input"], "$defs": found["defs"]})
    theirs = Draft202012Validator(
        json.loads(json.dumps(body).replace("#/components/schemas/", "#/$defs/"))
        | {"$defs": {"Size": size}}
    )
    for name, value in zip(props, values, strict=False):
        instance = {"prompt": "x", name: value}
        assert ours.is_valid(instance) == theirs.is_valid(instance), (name, value)


def test_a_document_saved_with_a_bom_is_read(tmp_path: Path):
    """An OpenAPI file saved by a Windows editor (UTF-8 with BOM, CRLF) is read like any other."""
    from renderer.models.read import parse_file

    path = tmp_path / "api.json"
    path.write_bytes(
        b"\xef\xbb\xbf" + _spec({"prompt": {"type": "string"}}).replace("\n", "\r\n").encode()
    )
    (doc,) = parse_file(path)
    assert doc.endpoint == "owner/app" and doc.style == "openapi"


@pytest.mark.parametrize("path", ["/../../../tmp/evil", "/owner/../../x", "/owner app/x", "/solo"])
def test_a_hostile_endpoint_id_is_refused(path: str):
    """An OpenAPI path that is not an endpoint id (traversal, spaces, one segment) refuses the document."""
    text = _spec({"prompt": {"type": "string"}}).replace('"/owner/app', f'"{path}')
    with pytest.raises(DocumentError, match="is not an endpoint id"):
        parse_text(text, "evil.json")


def test_hostile_nesting_and_aliases_are_refused_quickly():
    """Deeply nested JSON and YAML alias bombs in a document are refused with a reason, not a crash or a hang."""
    deep = '{"openapi": "3.0.0", "paths": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(DocumentError, match="nested too deeply"):
        parse_text(deep, "deep.json")
    bomb = "```yaml\nopenapi: 3.0.0\na: &a [x, x, x, x, x, x, x, x, x]\n"
    bomb += "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    bomb += "paths: *i\n```\n"
    with pytest.raises(DocumentError, match="aliases"):
        parse_text(bomb, "bomb.md")
