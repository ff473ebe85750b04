"""QuickCheck (renderer/models/quickcheck.py): the yes/no check agrees with jsonschema."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from renderer.models.quickcheck import QuickCheck
from renderer.models.schemas import SchemaRegistry, default_schema_dir

REGISTRY = SchemaRegistry(default_schema_dir())
OUTPUTS = [
    {"$ref": "#/$defs/Output", "$defs": REGISTRY.schema(e)["$defs"]}
    for e in REGISTRY.endpoints
    if "Output" in REGISTRY.schema(e).get("$defs", {})
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from([1.0, 2.5, -0.5, 0.0, 1e300]),
    st.sampled_from(["", "x", "image/png", "http://h/a.png", "xy", "a"]),
)
KEYS = ["images", "url", "width", "height", "seed", "timings", "content_type", "other", "a", "b"]
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
TYPES = ["object", "array", "string", "integer", "number", "boolean", "null"]
schemas = st.recursive(
    st.one_of(
        st.booleans(),
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.one_of(
                    st.sampled_from(TYPES), st.lists(st.sampled_from(TYPES), min_size=1, max_size=3)
                ),
                "minimum": st.integers(-3, 3),
                "maximum": st.sampled_from([0, 2, 2.5]),
                "exclusiveMinimum": st.sampled_from([-1, 0, 0.5]),
                "exclusiveMaximum": st.sampled_from([1, 2.5]),
                "minLength": st.integers(0, 2),
                "maxLength": st.integers(0, 3),
                "pattern": st.sampled_from(["^x", "png$", "[0-9]", ""]),
                "enum": st.lists(scalars, max_size=3),
                "const": scalars,
                "uniqueItems": st.booleans(),
                "minItems": st.integers(0, 2),
                "maxItems": st.integers(0, 3),
                "minProperties": st.integers(0, 2),
                "maxProperties": st.integers(0, 3),
                "description": st.just("annotation"),
                "format": st.just("uri"),
            },
        ),
    ),
    lambda inner: st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(TYPES),
            "properties": st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
            "required": st.lists(st.sampled_from(KEYS), max_size=2),
            "items": inner,
            "additionalProperties": inner,
            "propertyNames": inner,
            "anyOf": st.lists(inner, min_size=1, max_size=3),
            "oneOf": st.lists(inner, min_size=1, max_size=3),
            "enum": st.lists(json_values, max_size=3),
            "uniqueItems": st.just(True),
            "$ref": st.just("#/$defs/D"),
        },
    ),
    max_leaves=8,
)


INPUTS = [REGISTRY.schema(e) for e in REGISTRY.endpoints]
MANIFEST = json.loads((default_schema_dir() / "manifest.schema.json").read_text(encoding="utf-8"))


def agree(schema: dict[str, Any], instance: Any) -> None:
    quick = QuickCheck.of(schema)
    if quick is None:  # a ref loop that never descends (via $ref, anyOf, oneOf): left to jsonschema
        assert "$ref" in json.dumps(schema)
        return
    assert quick.valid(instance) == Draft202012Validator(schema).is_valid(instance)


def test_every_output_schema_of_the_registry_is_decided_quickly() -> None:
    """The shipped models' results take the fast path (else the runner would pay the full check)."""
    assert OUTPUTS
    assert all(QuickCheck.of(schema) is not None for schema in OUTPUTS)


def test_every_input_schema_and_the_manifest_schema_are_decided_quickly() -> None:
    """A valid manifest with valid inputs is checked without loading jsonschema at all (start-up)."""
    assert INPUTS
    assert all(QuickCheck.of(schema) is not None for schema in INPUTS)
    assert QuickCheck.of(MANIFEST) is not None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(INPUTS), json_values, json_values)
def test_registry_input_schemas_agree_with_jsonschema(
    schema: dict[str, Any], value: Any, other: Any
) -> None:
    """An input is called valid exactly when jsonschema calls it valid (no problem lost at plan time)."""
    agree(schema, value)
    agree(schema, {"prompt": "a cat", "seed": 1, "num_images": value})
    agree(schema, {"prompt": "a cat", "image_size": value, "output_format": other})
    agree(schema, {"prompt": value, "aspect_ratio": other})


MANIFESTS = [
    {"name": "n", "prompts": [{"id": "a", "text": "x"}], "models": ["m"], "seeds": [1]},
    {
        "name": "n",
        "prompts": [{"file": "p.csv", "text": "caption"}],
        "models": [{"endpoint": "e", "label": "l", "axes": {"style": ["a", "b"]}}],
        "seeds": {"start": 1, "count": 4},
        "limits": {"concurrency": 4, "rate": 2.5},
        "axes": {"aspect_ratio": ["1:1", "16:9"]},
    },
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(MANIFESTS),
    st.sampled_from(["name", "seeds", "limits", "models", "x"]),
    json_values,
)
def test_the_manifest_schema_agrees_with_jsonschema(
    base: dict[str, Any], key: str, value: Any
) -> None:
    """A manifest is called well-formed exactly when jsonschema calls it so (no problem unreported)."""
    agree(MANIFEST, base)
    agree(MANIFEST, {**base, key: value})
    agree(MANIFEST, {**base, "limits": {"concurrency": value}})
    agree(MANIFEST, {**base, "prompts": [{"id": value, "text": "x"}]})


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(OUTPUTS), json_values)
def test_registry_output_schemas_agree_with_jsonschema(schema: dict[str, Any], value: Any) -> None:
    """A result is called valid exactly when jsonschema calls it valid (no warning lost or invented)."""
    agree(schema, value)
    agree(schema, {"images": [value], "seed": value})
    agree(schema, {"images": [{"url": "http://h/a.png", "width": value, "height": 1}]})


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(schemas, schemas, json_values)
def test_generated_schemas_agree_with_jsonschema(body: Any, definition: Any, value: Any) -> None:
    """For any schema of the supported keywords (refs included), the verdict is jsonschema's."""
    root: dict[str, Any] = {"$defs": {"D": definition}}
    if isinstance(body, dict):
        root.update(body)
    elif body is False:
        root["items"] = False
    agree(root, value)


def test_unsupported_keywords_fall_back_to_the_full_validator() -> None:
    """A schema with a keyword QuickCheck does not decide gets no quick verdict at all."""
    for schema in (
        {"not": {"type": "string"}},
        {"properties": {"a": {"pattern": "(unclosed"}}},
        {"properties": {"a": {"patternProperties": {"^x": {}}}}},
        {"allOf": [{"type": "string"}]},
        {"minLength": -1},
        {"anyOf": []},
        {"$ref": "#/$defs/Missing", "$defs": {}},
        {"$ref": "http://elsewhere/schema.json"},
        {"type": "decimal"},
        {"items": [{"type": "string"}]},
        {"$ref": "#/$defs/D", "$defs": {"D": {"$ref": "#/$defs/D"}}},
    ):
        assert QuickCheck.of(schema) is None, schema


def test_the_shipped_manifests_get_jsonschemas_verdict() -> None:
    """Every example manifest is judged as jsonschema judges it (and each is well-formed)."""
    import yaml

    for path in sorted((default_schema_dir().parent / "manifests").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        agree(MANIFEST, data)
        assert QuickCheck.of(MANIFEST).valid(data), path  # type: ignore[union-attr]
