"""The emulator's images: deterministic, distinguishable, honest about their size, and changing
with the request the way a model's pictures do, so regression diffs can be tried offline.

`render()` is a pure function of its arguments: the same request always yields the same bytes.
  - (endpoint, prompt, seed, index, variant) fix the picture: background, four shapes and the
    caption (the prompt's opening words, the model and the seed). Another prompt, seed or model
    is another picture: a large change.
  - `params` (the other parameters, canonical JSON) move it a little and gradually: numeric
    values (steps, guidance, ...) add to a phase that slides each shape along a small circle and
    shifts its colour, so a nearby value gives a nearby picture and a far one a larger (bounded)
    change; other values (strings, booleans) shift the background's tint slightly.
  - `noise` > 0 adds what a hosted model does run to run: pixel grain of standard deviation
    NOISE_SIGMA x noise levels and shapes jittered by up to `noise` pixels, drawn from `grain`
    (the emulator passes a number derived from the request id, so two renders of one input differ
    a little and one request's bytes stay fixed).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

FORMATS = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "jpg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).digest()


NOISE_SIGMA = 1.5  # pixel grain (levels of 255) at noise 1
DRIFT = 0.06  # how far shapes slide with the parameters, as a share of the shorter side
PHASE_PER_UNIT = 0.03  # radians a numeric parameter's unit turns the drift phase


def _phase(params: str) -> tuple[float, int]:
    """(drift phase from the numeric parameters, tint from the others) of a canonical-JSON dict."""
    try:
        values = json.loads(params) if params else {}
    except ValueError:
        values = {}
    phase, other = 0.0, []
    for name, value in sorted(values.items() if isinstance(values, dict) else []):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # Each parameter turns the phase at its own rate (0.5-1.5x), so two do not cancel.
            rate = 0.5 + _digest("rate", name)[0] / 255
            phase += PHASE_PER_UNIT * rate * float(value)
        else:
            other.append((name, value))
    tint = _digest("tint", json.dumps(other, sort_keys=True))[0] % 13 - 6 if other else 0
    return phase, tint


def render(
    endpoint: str,
    prompt: str,
    seed: int,
    index: int,
    size: tuple[int, int],
    fmt: str,
    variant: str = "",
    params: str = "",
    noise: float = 0.0,
    grain: int = 0,
) -> tuple[bytes, str]:
    """Encoded image bytes and their content type."""
    width, height = size
    d = _digest(endpoint, prompt, seed, index, variant)
    phase, tint = _phase(params)
    background = tuple(max(0, min(255, c + tint)) for c in d[0:3])
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    rng = None
    if noise > 0:
        import numpy  # only a noisy emulator needs it: `renderer run` on the emulator starts faster

        rng = numpy.random.default_rng(grain)
    side = min(width, height)
    # A few shapes placed by the digest: seeds differ visibly, not only in the caption.
    for n in range(4):
        b = d[3 + n * 6 : 9 + n * 6]
        angle = phase + n * math.pi / 2  # each shape starts at its own point of its circle
        x0 = b[0] * width // 256 + round(DRIFT * side * math.cos(angle))
        y0 = b[1] * height // 256 + round(DRIFT * side * math.sin(angle))
        if rng is not None:
            jitter = max(1, round(noise))
            x0 += int(rng.integers(-jitter, jitter + 1))
            y0 += int(rng.integers(-jitter, jitter + 1))
        r = max(2, b[2] * side // 512)
        shade = round(12 * math.sin(phase + n))
        color = tuple(max(0, min(255, c + shade)) for c in b[3:6])
        if n % 2:
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=color)
        else:
            draw.rectangle((x0 - r, y0 - r // 2, x0 + r, y0 + r // 2), fill=color)
    words = " ".join(prompt.split()[:5])
    model = endpoint.split("/", 1)[-1]
    lines = [words, model, f"seed {seed}  #{index}"]
    font_size = max(8, min(width, height) // 12)
    font = _font(font_size)
    # The ink follows the untinted background: a tint never flips the caption's colour.
    luminance = 0.299 * d[0] + 0.587 * d[1] + 0.114 * d[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    y = max(2, height // 20)
    band = y + math.ceil(font_size * 1.3) * len(lines)
    draw.rectangle((0, 0, width, band), fill=background)  # the caption stays legible over shapes
    for line in lines:
        draw.text((max(2, width // 20), y), line, fill=ink, font=font)
        y += math.ceil(font_size * 1.3)
    if rng is not None:
        import numpy

        pixels = numpy.asarray(image, dtype=numpy.float32)
        grain_field = rng.normal(0.0, NOISE_SIGMA * noise, (height, width, 1))
        image = Image.fromarray(
            numpy.clip(pixels + grain_field, 0, 255).round().astype(numpy.uint8)
        )
    pil_format, content_type = FORMATS.get(fmt.lower(), FORMATS["png"])
    out = io.BytesIO()
    options: dict[str, Any] = {"optimize": False}
    if pil_format == "PNG":
        options["compress_level"] = 1  # the emulator's time goes to the queue, not to zlib
    elif pil_format in ("JPEG", "WEBP"):
        options["quality"] = 90
    image.save(out, pil_format, **options)
    return out.getvalue(), content_type
