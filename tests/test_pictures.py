"""The emulator's pictures: deterministic, distinguishable, the size that was asked for, changing
gradually with parameters, with a noise knob."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from renderer.models.sizes import capped, requested_size
from renderer.provider.emulator.pictures import render
from renderer.view.bands import Bands, measure


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


def _measure(tmp_path: Path, a: bytes, b: bytes) -> tuple[float, int]:
    (tmp_path / "a.png").write_bytes(a)
    (tmp_path / "b.png").write_bytes(b)
    return measure((str(tmp_path / "a.png"), str(tmp_path / "b.png")))


PROMPT = "Mount Fuji at sunset, snow-capped peak against an orange and purple sky"


def _steps(n: int, **kw: Any) -> bytes:
    params = json.dumps({"num_inference_steps": n, "guidance_scale": 3.5})
    return render("fal-ai/x", PROMPT, 7, 0, (256, 256), "png", params=params, **kw)[0]


@pytest.mark.parametrize("seed", [1, 7, 101])
def test_parameters_change_the_picture_gradually(tmp_path: Path, seed: int):
    """A nearby steps value gives a nearby picture, a far one a farther picture; another seed or
    prompt is another picture (outside the default fail edges)."""

    def at(n: int, prompt: str = PROMPT, s: int = seed) -> bytes:
        params = json.dumps({"num_inference_steps": n})
        return render("fal-ai/x", prompt, s, 0, (256, 256), "png", params=params)[0]

    base = at(28)
    near, far = _measure(tmp_path, base, at(30)), _measure(tmp_path, base, at(50))
    assert 1.0 > near[0] > far[0] and near[0] >= Bands().pass_ssim
    for other in (at(28, s=seed + 1), at(28, prompt="a red panda in Kyoto")):
        assert Bands().judge(*_measure(tmp_path, base, other)) == "fail"


def test_other_parameters_tint_slightly(tmp_path: Path):
    """A string parameter changes the picture a little (not the caption's ink), not into another one."""
    a = render("e", PROMPT, 3, 0, (256, 256), "png", params=json.dumps({"style": "a"}))[0]
    b = render("e", PROMPT, 3, 0, (256, 256), "png", params=json.dumps({"style": "b"}))[0]
    ssim, _ = _measure(tmp_path, a, b)
    assert a != b and ssim > Bands().fail_ssim


def test_the_noise_knob(tmp_path: Path):
    """Without noise the grain does not matter; with it, two grains differ a little (inside the
    default pass band at noise 1) and one grain always gives the same bytes."""
    assert _steps(28, grain=1) == _steps(28, grain=2)
    one, two = _steps(28, noise=1.0, grain=1), _steps(28, noise=1.0, grain=2)
    assert one != two and one == _steps(28, noise=1.0, grain=1)
    assert Bands().judge(*_measure(tmp_path, one, two)) == "pass"
    loud = _measure(tmp_path, _steps(28, noise=4.0, grain=1), _steps(28, noise=4.0, grain=2))
    assert loud[0] < _measure(tmp_path, one, two)[0]
