"""renderer.models.tables: third-party parameter tables (markdown or tab-separated)."""

from __future__ import annotations

import pytest

from renderer.errors import DocumentError
from renderer.models.generate import merge
from renderer.models.read import parse_text
from renderer.models.tables import parse_table

from .corpus import CORPUS


def test_a_catalogue_card_table_is_read_row_by_row():
    """The flux/dev catalogue card's table (a real page): types, enums, defaults, the required mark, wrapped rows."""
    text = (CORPUS / "fal-ai__flux__dev/proxy.txt").read_text(encoding="utf-8")
    doc = parse_table(text, "card.md")
    fields = {f.name: f for f in doc.inputs}
    assert doc.endpoint == "fal-ai/flux/dev" and len(fields) == 10
    assert fields["prompt"].required and not fields["seed"].required
    assert (fields["acceleration"].enum, fields["acceleration"].default) == (
        ["none", "regular", "high"],
        "none",
    )
    assert (fields["guidance_scale"].type, fields["guidance_scale"].default) == ("float", 3.5)
    assert fields["image_size"].type == "any" and fields["image_size"].default == "landscape_4_3"


def test_a_tab_separated_table_with_chinese_headers_and_prose():
    """Tab-separated rows headed 参数/类型/必填/说明; ranges and values from the descriptions."""
    text = (
        "模型: https://fal.ai/models/acme/painter\n\n参数\t类型\t必填\t说明\n"
        "prompt\tstring\t是\t提示词\n"
        "steps\tinteger\t否\t步数。默认值：28  范围值1-50\n"
        "format\tstring\t否\t支持：png、jpeg\n"
    )
    (doc,) = parse_text(text, "proxy.txt")
    steps, fmt = doc.inputs[1], doc.inputs[2]
    assert doc.endpoint == "acme/painter" and doc.inputs[0].required
    assert (steps.default, steps.range) == (28, (1, 50)) and fmt.enum == ["png", "jpeg"]
    schema = merge("acme/painter", [doc], [])
    assert schema["properties"]["steps"]["maximum"] == 50


def test_a_wrong_default_in_a_table_names_its_row():
    """An integer column default that is not a number refuses the document at its line."""
    text = "/acme/x\n\n| Parameter | Type | Default |\n|---|---|---|\n| `prompt` | string | |\n| `steps` | integer | many |\n"
    with pytest.raises(DocumentError) as caught:
        parse_text(text, "t.md")
    assert str(caught.value).startswith("t.md:6: steps: default 'many' is not of type integer")
