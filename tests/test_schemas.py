"""Generated schemas: determinism, document examples, and the invalid inputs they must reject."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from renderer.models.generate import build, stale_files, write
from renderer.models.read import parse_file
from renderer.models.schemas import SchemaRegistry

from .conftest import DOCS, SCHEMAS

FLOUR = "a vintage package of all-purpose flour"


def _examples():
    for path in sorted(DOCS.glob("*.txt")):
        for doc in parse_file(path):
            for ex in doc.examples:
                yield pytest.param(doc.endpoint, ex, id=f"{path.name[:3]}:{ex.line}:{ex.kind}")


def test_committed_schemas_are_fresh():
    """`renderer schemas build --check` would pass: the committed files equal a fresh build."""
    assert stale_files(build(DOCS), SCHEMAS) == []


def test_build_is_byte_identical(tmp_path: Path):
    """Two builds from copies of the same documents write the same bytes."""
    outs = []
    for name in ("a", "b"):
        shutil.copytree(DOCS, tmp_path / name / "docs")
        write(build(tmp_path / name / "docs"), tmp_path / name)
        outs.append(
            {
                p.relative_to(tmp_path / name): p.read_bytes()
                for p in (tmp_path / name).rglob("*.json")
            }
        )
    assert outs[0] == outs[1]
    assert len(outs[0]) == 13  # twelve endpoints and the index


def test_stale_and_extra_files_are_named(tmp_path: Path):
    """--check names a changed file and a file no document produces any more."""
    shutil.copytree(SCHEMAS, tmp_path / "schemas")
    root = tmp_path / "schemas"
    (root / "endpoints/fal-ai/omnigen-v2.json").write_text("{}\n")
    (root / "endpoints/fal-ai/gone.json").write_text("{}\n")
    assert stale_files(build(root / "docs"), root) == [
        "endpoints/fal-ai/gone.json",
        "endpoints/fal-ai/omnigen-v2.json",
    ]


@pytest.mark.parametrize(("endpoint", "example"), list(_examples()))
def test_every_document_example_validates(registry: SchemaRegistry, endpoint, example):
    """Each request and response example printed in the documents satisfies its schema."""
    assert registry.check(endpoint, example.body, example.kind) == []


def test_examples_were_found_for_every_endpoint():
    """Example extraction is not silently empty: every endpoint has at least one input example."""
    have = {p.values[0] for p in _examples() if p.values[1].kind == "input"}
    assert len(have) == 12


INVALID = [
    # (endpoint, input, JSON path, words in the message)
    ("fal-ai/imagen4/preview/ultra", {"num_images": 2}, "$.num_images", "maximum"),
    ("fal-ai/imagen4/preview/ultra", {"resolution": "4K"}, "$.resolution", "not an allowed value"),
    ("fal-ai/imagen4/preview", {"aspect_ratio": "21:9"}, "$.aspect_ratio", "not an allowed value"),
    ("fal-ai/imagen4/preview", {"num_images": 5}, "$.num_images", "maximum"),
    ("fal-ai/imagen4/preview", {"num_images": 0}, "$.num_images", "minimum"),
    ("fal-ai/imagen4/preview", {"aspect_ratoi": "1:1"}, "$.aspect_ratoi", "unknown property"),
    ("fal-ai/imagen4/preview", {"num_images": "2"}, "$.num_images", "not of type 'integer'"),
    ("fal-ai/imagen4/preview", {"seed": 1.5}, "$.seed", "not of type 'integer'"),
    (
        "fal-ai/imagen4/preview/fast",
        {"negative_prompt": 3},
        "$.negative_prompt",
        "not of type 'string'",
    ),
    (
        "fal-ai/hidream-i1-full",
        {"image_size": {"width": -1, "height": 10}},
        "$.image_size.width",
        "minimum",
    ),
    ("fal-ai/hidream-i1-full", {"image_size": "square_xl"}, "$.image_size", "not an allowed value"),
    (
        "fal-ai/hidream-i1-full",
        {"image_size": {"width": 512, "depth": 3}},
        "$.image_size.depth",
        "unknown property",
    ),
    ("fal-ai/hidream-i1-full", {"output_format": "gif"}, "$.output_format", "not an allowed value"),
    (
        "fal-ai/hidream-i1-full",
        {"loras": [{"path": "x", "scale": "big"}]},
        "$.loras[0].scale",
        "not of type 'number'",
    ),
    ("fal-ai/hidream-i1-full", {"loras": {"path": "x"}}, "$.loras", "not of type 'array'"),
    (
        "fal-ai/hidream-i1-full",
        {"guidance_scale": "high"},
        "$.guidance_scale",
        "not of type 'number'",
    ),
    ("fal-ai/hidream-i1-full", {"num_inference_steps": 0}, "$.num_inference_steps", "minimum"),
    ("fal-ai/hidream-i1-fast", {"sync_mode": "yes"}, "$.sync_mode", "not of type 'boolean'"),
    ("fal-ai/hidream-i1-fast", {"num_images": -1}, "$.num_images", "minimum"),
    ("fal-ai/flux-1/schnell", {"acceleration": "turbo"}, "$.acceleration", "not an allowed value"),
    ("fal-ai/flux-1/schnell", {"output_format": "webp"}, "$.output_format", "not an allowed value"),
    ("fal-ai/flux-1/schnell", {"image_size": 1024}, "$.image_size", ""),
    ("fal-ai/ideogram/v2", {"style": "photo"}, "$.style", "not an allowed value"),
    ("fal-ai/ideogram/v2", {"aspect_ratio": "5:4"}, "$.aspect_ratio", "not an allowed value"),
    ("fal-ai/ideogram/v2", {"rendering_speed": "TURBO"}, "$.rendering_speed", "unknown property"),
    (
        "fal-ai/recraft/v2/text-to-image",
        {"style": "oil_painting"},
        "$.style",
        "not an allowed value",
    ),
    (
        "fal-ai/recraft/v2/text-to-image",
        {"colors": [{"r": 255, "g": "0", "b": 0}]},
        "$.colors[0].g",
        "not of type 'integer'",
    ),
    (
        "fal-ai/recraft/v2/text-to-image",
        {"colors": [{"r": 1, "alpha": 1}]},
        "$.colors[0].alpha",
        "unknown property",
    ),
    (
        "fal-ai/stable-diffusion-v35-large",
        {"controlnet": "canny"},
        "$.controlnet",
        "not of type 'object'",
    ),
    (
        "fal-ai/stable-diffusion-v35-large",
        {"ip_adapter": {"path": "x", "mask_threshold": "a"}},
        "$.ip_adapter.mask_threshold",
        "not of type 'number'",
    ),
    ("fal-ai/omnigen-v2", {"scheduler": "ddim"}, "$.scheduler", "not an allowed value"),
    (
        "fal-ai/omnigen-v2",
        {"input_image_urls": "https://x/y.png"},
        "$.input_image_urls",
        "not of type 'array'",
    ),
    ("fal-ai/f-lite/standard", {"output_format": "png"}, "$.output_format", "unknown property"),
    (
        "imagineart/imagineart-2.0-preview/text-to-image",
        {"reasoning": "medium"},
        "$.reasoning",
        "not an allowed value",
    ),
    (
        "imagineart/imagineart-2.0-preview/text-to-image",
        {"resolution": "1k"},
        "$.resolution",
        "not an allowed value",
    ),
    (
        "imagineart/imagineart-2.0-preview/text-to-image",
        {"num_images": 2},
        "$.num_images",
        "unknown property",
    ),
]


@pytest.mark.parametrize(
    ("endpoint", "patch", "path", "words"), INVALID, ids=[f"{e}:{p}" for e, _, p, _ in INVALID]
)
def test_invalid_inputs_are_rejected_at_their_path(
    registry: SchemaRegistry, endpoint, patch, path, words
):
    """A bad field is reported with the JSON path of that field and a reason."""
    found = registry.check(endpoint, {"prompt": FLOUR, **patch})
    assert [v.json_path for v in found] == [path], found
    assert words in found[0].message


def test_missing_prompt_is_rejected_everywhere(registry: SchemaRegistry):
    """`prompt` is required on every endpoint, whatever its document says."""
    for endpoint in registry.endpoints:
        found = registry.check(endpoint, {})
        assert [v.json_path for v in found] == ["$.prompt"], endpoint
        assert "required" in found[0].message


def test_same_value_allowed_on_one_model_not_another(registry: SchemaRegistry):
    """21:9 is an imagineart ratio, not an imagen4 one."""
    assert (
        registry.check(
            "imagineart/imagineart-2.0-preview/text-to-image",
            {"prompt": FLOUR, "aspect_ratio": "21:9"},
        )
        == []
    )
    assert registry.check("fal-ai/imagen4/preview", {"prompt": FLOUR, "aspect_ratio": "21:9"})


def test_violations_suggest_and_list_what_is_allowed(registry: SchemaRegistry):
    """A misspelt key or enum value gets a 'did you mean' and the allowed values."""
    (typo,) = registry.check("fal-ai/imagen4/preview", {"prompt": FLOUR, "aspect_ratoi": "1:1"})
    assert typo.suggestion == "aspect_ratio"
    assert "negative_prompt" in typo.allowed
    (style,) = registry.check(
        "fal-ai/recraft/v2/text-to-image", {"prompt": FLOUR, "style": "realistic_imag"}
    )
    assert style.suggestion == "realistic_image"
    assert "vector_illustration/line_art" in style.allowed


def test_several_errors_are_all_reported(registry: SchemaRegistry):
    """Validation collects every problem in one input, not just the first."""
    found = registry.check(
        "fal-ai/imagen4/preview", {"aspect_ratio": "2:1", "num_images": 9, "colour": 1}
    )
    assert [v.json_path for v in found] == [
        "$.aspect_ratio",
        "$.colour",
        "$.num_images",
        "$.prompt",
    ]


def test_only_reachable_types_are_defined(registry: SchemaRegistry):
    """Ideogram's page lists V3 types of other endpoints; only File (its output) is kept."""
    schema = registry.schema("fal-ai/ideogram/v2")
    assert set(schema["$defs"]) == {"File", "Output"}
    sd = registry.schema("fal-ai/stable-diffusion-v35-large")
    assert {"ControlNet", "IPAdapter", "LoraWeight", "ImageSize", "Image"} <= set(sd["$defs"])


def test_undefined_types_are_permissive_with_a_warning():
    """A referenced but undefined type (Timings) becomes an open object and a build warning."""
    result = build(DOCS)
    assert any("type Timings is referenced but never defined" in w for w in result.warnings)
    registry_out = SchemaRegistry(SCHEMAS)
    assert (
        registry_out.check("fal-ai/flux-1/schnell", {"images": [], "timings": {"any": 1}}, "output")
        == []
    )


def test_explicit_range_wins_over_prose_with_warning():
    """imagen4 ultra says (1-4) in prose and 1 to 1 explicitly: 1 to 1 is used, and both are named."""
    result = build(DOCS)
    (warning,) = [w for w in result.warnings if "disagrees with the prose" in w]
    assert warning.startswith("003_") and "1 to 1" in warning and "(1-4)" in warning


def test_two_documents_for_one_endpoint_are_merged_with_sources(registry: SchemaRegistry):
    """000 and 001 both describe imagen4/preview: properties are merged and each names its source."""
    props = registry.properties("fal-ai/imagen4/preview")
    assert props["resolution"]["enum"] == ["1K", "2K"]
    assert props["resolution"]["x-source"] == ["001_bab90909033390ea.txt:23"]
    assert props["aspect_ratio"]["x-source"][0].startswith("000_")
    assert any(s.startswith("001_") for s in props["aspect_ratio"]["x-source"])


def test_conflicting_documents_warn(tmp_path: Path):
    """Two documents disagreeing on a value for one endpoint produce a warning naming both."""
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(next(DOCS.glob("000_*.txt")), docs / "a.txt")
    table = (
        "/fal-ai/imagen4/preview\n\nParameterTypeRequiredDescription\n"
        "promptstringRequired\naspect_ratiostringOptionalRatio, enum values: 1:1, 2:1\n"
    )
    (docs / "b.txt").write_text(table)
    result = build(docs)
    conflict = [w for w in result.warnings if "conflicts" in w]
    assert len(conflict) == 1
    assert conflict[0].startswith("b.txt:5:") and "a.txt:140" in conflict[0]


def test_output_examples_and_mojibake_in_descriptions(registry: SchemaRegistry):
    """The ultra page's tagline is stored repaired; output schemas check image entries."""
    assert (
        registry.schema("fal-ai/imagen4/preview/ultra")["description"]
        == "Google’s highest quality image generation model"
    )
    bad = registry.check(
        "imagineart/imagineart-2.0-preview/text-to-image", {"images": [{"width": 2}]}, "output"
    )
    assert [v.json_path for v in bad] == ["$.images[0].url"]
