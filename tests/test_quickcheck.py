"""QuickCheck (renderer/models/quickcheck.py): the yes/no output check agrees with jsonschema."""

from __future__ import annotations

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
    st.sampled_from(["", "x", "image/png", "http://h/a.png"]),
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
            "$ref": st.just("#/$defs/D"),
        },
    ),
    max_leaves=8,
)


def agree(schema: dict[str, Any], instance: Any) -> None:
    quick = QuickCheck.of(schema)
    if quick is None:  # a ref cycle that never descends: left to jsonschema
        assert schema.get("$ref") or schema["$defs"]["D"].get("$ref")
        return
    assert quick.valid(instance) == Draft202012Validator(schema).is_valid(instance)


def test_every_output_schema_of_the_registry_is_decided_quickly() -> None:
    """The shipped models' results take the fast path (else the runner would pay the full check)."""
    assert OUTPUTS
    assert all(QuickCheck.of(schema) is not None for schema in OUTPUTS)


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
        {"enum": [1, 2]},
        {"properties": {"a": {"pattern": "^x"}}},
        {"$ref": "#/$defs/Missing", "$defs": {}},
        {"$ref": "http://elsewhere/schema.json"},
        {"type": "decimal"},
        {"items": [{"type": "string"}]},
        {"anyOf": [{"type": "string"}]},
        {"$ref": "#/$defs/D", "$defs": {"D": {"$ref": "#/$defs/D"}}},
    ):
        assert QuickCheck.of(schema) is None, schema
