"""The emulator's pictures: deterministic, distinguishable, and the size that was asked for."""

from __future__ import annotations

import io

from PIL import Image

from renderer.models.sizes import capped, requested_size
from renderer.provider.emulator.pictures import render


def test_same_inputs_same_bytes_other_seed_other_bytes():
    """render() is a pure function of its inputs, and the seed changes the picture."""
    a = render("fal-ai/x", "a cat", 1, 0, (64, 32), "png")
    assert a == render("fal-ai/x", "a cat", 1, 0, (64, 32), "png")
    assert a != render("fal-ai/x", "a cat", 2, 0, (64, 32), "png")
    assert a != render("fal-ai/x", "a cat", 1, 0, (64, 32), "png", variant="v2")


def test_sizes_from_ratio_preset_object_and_resolution():
    """aspect_ratio, presets, {width, height} and 2K resolution give the model's size."""
    assert requested_size({"aspect_ratio": "16:9"}, {}) == (1024, 576)
    assert requested_size({"aspect_ratio": "9:16", "resolution": "2K"}, {}) == (1152, 2048)
    assert requested_size({"image_size": "portrait_4_3"}, {}) == (768, 1024)
    assert requested_size({}, {"image_size": {"width": 300, "height": 200}}) == (300, 200)
    assert capped((1024, 576), 256) == (256, 144)


def test_formats_decode_as_what_they_claim():
    """PNG, JPEG and WebP come out as those formats."""
    for fmt, name in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
        data, content_type = render("e", "p", 1, 0, (40, 30), fmt)
        assert Image.open(io.BytesIO(data)).format == name
        assert content_type == f"image/{name.lower()}"
