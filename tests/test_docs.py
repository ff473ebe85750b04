"""The document parser: every layout in schemas/docs/ and the defects the generator must survive."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderer.errors import DocumentError
from renderer.models.documents import NO_DEFAULT, parse_default, repair_mojibake
from renderer.models.read import parse_file, parse_text

from .conftest import DOCS

ALL_ENDPOINTS = {
    "fal-ai/imagen4/preview",
    "fal-ai/imagen4/preview/ultra",
    "fal-ai/imagen4/preview/fast",
    "fal-ai/hidream-i1-full",
    "fal-ai/hidream-i1-fast",
    "fal-ai/ideogram/v2",
    "fal-ai/stable-diffusion-v35-large",
    "fal-ai/omnigen-v2",
    "fal-ai/flux-1/schnell",
    "fal-ai/recraft/v2/text-to-image",
    "fal-ai/f-lite/standard",
    "imagineart/imagineart-2.0-preview/text-to-image",
}


def _docs(prefix: str):
    (path,) = DOCS.glob(f"{prefix}_*.txt")
    return parse_file(path)


def _field(doc, name):
    return next(f for f in doc.inputs if f.name == name)


def test_all_twelve_endpoints_come_out():
    """The five documents describe exactly the twelve endpoints the project promises."""
    found = {d.endpoint for p in sorted(DOCS.glob("*.txt")) for d in parse_file(p)}
    assert found == ALL_ENDPOINTS


def test_multi_endpoint_file_is_split_in_order():
    """002 holds ten pages; each is parsed on its own, with line numbers from the whole file."""
    docs = _docs("002")
    assert [d.endpoint for d in docs][:3] == [
        "fal-ai/hidream-i1-full",
        "fal-ai/ideogram/v2",
        "fal-ai/stable-diffusion-v35-large",
    ]
    assert len(docs) == 10
    ideogram = docs[1]
    assert ideogram.line == 240
    assert _field(ideogram, "style").line == 382


def test_web_page_types_and_defaults():
    """`float` defaults are numbers, `""` is the empty string, and quotes come off `"1:1"`."""
    hidream = _docs("002")[0]
    assert _field(hidream, "guidance_scale").default == 5.0
    assert isinstance(_field(hidream, "guidance_scale").default, float)
    assert _field(hidream, "negative_prompt").default == ""
    assert _field(hidream, "num_inference_steps").default == 50
    assert _field(hidream, "enable_safety_checker").default is True
    assert _field(hidream, "image_size").type == "ImageSize | Enum"
    assert _field(hidream, "image_size").enum[:2] == ["square_hd", "square"]
    assert _field(hidream, "loras").type == "list<LoraWeight>"
    assert _field(hidream, "seed").default is NO_DEFAULT
    (imagen,) = _docs("000")
    assert _field(imagen, "aspect_ratio").default == "1:1"


def test_glued_page_with_required_markers():
    """004 runs name, type, `* required` and description together and glues headings to JSON."""
    (doc,) = _docs("004")
    assert _field(doc, "prompt").required is True
    assert _field(doc, "aspect_ratio").type == "AspectRatioEnum"
    assert "21:9" in _field(doc, "aspect_ratio").enum
    assert _field(doc, "resolution").default == "2K"
    assert doc.types["Image"].fields[0].required is True
    assert [e.kind for e in doc.examples] == ["input", "output"]


def test_markdown_page_ranges_and_options():
    """003's explicit `Range: 1 to 1` is kept beside the prose `(1-4)`; options become the enum."""
    (doc,) = _docs("003")
    num = _field(doc, "num_images")
    assert num.range == (1, 1)
    assert num.prose_range == (1, 4)
    assert _field(doc, "resolution").enum == ["1K", "2K"]
    assert _field(doc, "prompt").required is True
    assert _field(doc, "seed").required is False
    assert [e.label for e in doc.examples] == [
        "Required Parameters Example",
        "Full Example",
        "Example Response",
    ]


def test_proxy_table():
    """001's run-together table rows give names, types, required flags, enums and ranges."""
    (doc,) = _docs("001")
    assert doc.endpoint == "fal-ai/imagen4/preview"
    assert doc.auth == "Bearer"
    assert [f.name for f in doc.inputs] == ["prompt", "aspect_ratio", "num_images", "resolution"]
    assert _field(doc, "prompt").required is True
    assert _field(doc, "resolution").enum == ["1K", "2K"]
    assert _field(doc, "num_images").range == (1, 4)


def test_invalid_json_example_is_repaired_and_flagged():
    """An example with unescaped inner quotes is read, and marked so the build can warn."""
    flux = next(d for d in _docs("002") if d.endpoint == "fal-ai/flux-1/schnell")
    (example,) = [e for e in flux.examples if e.kind == "input"]
    assert example.repaired
    assert '"FLUX"' in example.body["prompt"]


@pytest.mark.parametrize(
    ("raw", "type_", "expected"),
    [
        ('""', "string", ""),
        ('"1:1"', "AspectRatioEnum", "1:1"),
        ("5", "float", 5.0),
        ("5", "integer", 5),
        ("true", "boolean", True),
        ("square_hd", "ImageSize | Enum", "square_hd"),
        ('`"1K"`', "ResolutionEnum", "1K"),
    ],
)
def test_parse_default(raw, type_, expected):
    """A default is typed by its field's type."""
    value = parse_default(raw, type_)
    assert value == expected and type(value) is type(expected)


def test_mojibake_is_repaired():
    """UTF-8 read as Windows-1252 is undone; clean text is untouched."""
    assert repair_mojibake("Googleâ€™s model") == "Google’s model"
    assert repair_mojibake("naÃ¯ve café") == "naïve café"
    assert repair_mojibake("plain – text “quoted”") == "plain – text “quoted”"


def test_unknown_layout_names_file_and_line(tmp_path: Path):
    """A document in no known layout is a DocumentError at line 1 with the layouts listed."""
    with pytest.raises(DocumentError) as info:
        parse_text("just some notes\nabout a model\n", "notes.txt")
    assert info.value.path == "notes.txt" and info.value.line == 1
    assert "unknown document layout" in str(info.value)
    assert "5. Schema" in info.value.hint


def test_page_without_input_heading_is_an_error():
    """A fal page whose schema section lacks Input is reported at the schema line."""
    text = "fal-ai/x/y\nAbout\n5. Schema\n#\nOutput\n#\nimages list<File>\n"
    with pytest.raises(DocumentError) as info:
        parse_text(text, "broken.txt")
    assert info.value.line == 3


def test_markdown_page_enum_values_in_the_description():
    """An llms.txt page that prints `Possible enum values:` under a field (flux/krea) gets that enum, not assumed presets."""
    text = (
        "- **Model ID**: `fal-ai/flux/krea`\n\n### Input Schema\n\n"
        "- **`prompt`** (`string`, _required_):\n  The prompt.\n\n"
        "- **`image_size`** (`ImageSize | Enum`, _optional_):\n"
        "  The size of the generated image. Default value: `landscape_4_3`\n"
        "  Possible enum values: square_hd, square, landscape_4_3\n"
        '  - Default: `"landscape_4_3"`\n  - One of: ImageSize | Enum\n\n'
        '- **`style`** (`StyleEnum`, _optional_):\n  A style.\n  - Options: `vivid`, `"natural"`\n'
    )
    (doc,) = parse_text(text, "krea.txt")
    size, style = doc.inputs[1], doc.inputs[2]
    assert size.enum == ["square_hd", "square", "landscape_4_3"] and size.default == "landscape_4_3"
    assert style.enum == ["vivid", "natural"]


def test_web_page_object_default_printed_by_javascript_is_dropped():
    """`Default value: [object Object]` (a web page's toString of an object) is no default at all."""
    text = (
        "acme/model\n5. Schema\n#\nInput\n#\nprompt string\nThe prompt.\n\n"
        "image_size ImageSize | Enum\nDefault value: [object Object]\n\n"
        "Possible enum values: square_hd, square\n"
    )
    (doc,) = parse_text(text, "page.txt")
    assert doc.inputs[1].default is NO_DEFAULT and doc.inputs[1].enum == ["square_hd", "square"]
