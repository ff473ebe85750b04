"""The emulator's images: deterministic, distinguishable, and honest about their size.

`render()` is a pure function of (endpoint, prompt, seed, index, size, format, variant): the
same request always yields the same bytes, a different seed different bytes. Each picture
shows the prompt's opening words, the model and the seed on a background derived from them,
so a person browsing a contact sheet can tell them apart.
"""

from __future__ import annotations

import hashlib
import io
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


def render(
    endpoint: str,
    prompt: str,
    seed: int,
    index: int,
    size: tuple[int, int],
    fmt: str,
    variant: str = "",
) -> tuple[bytes, str]:
    """Encoded image bytes and their content type."""
    width, height = size
    d = _digest(endpoint, prompt, seed, index, variant)
    background = (d[0], d[1], d[2])
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    # A few shapes placed by the digest: seeds differ visibly, not only in the caption.
    for n in range(4):
        b = d[3 + n * 6 : 9 + n * 6]
        x0, y0 = b[0] * width // 256, b[1] * height // 256
        r = max(2, b[2] * min(width, height) // 512)
        color = (b[3], b[4], b[5])
        if n % 2:
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=color)
        else:
            draw.rectangle((x0 - r, y0 - r // 2, x0 + r, y0 + r // 2), fill=color)
    words = " ".join(prompt.split()[:5])
    model = endpoint.split("/", 1)[-1]
    lines = [words, model, f"seed {seed}  #{index}"]
    font_size = max(8, min(width, height) // 12)
    font = _font(font_size)
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    y = max(2, height // 20)
    band = y + math.ceil(font_size * 1.3) * len(lines)
    draw.rectangle((0, 0, width, band), fill=background)  # the caption stays legible over shapes
    for line in lines:
        draw.text((max(2, width // 20), y), line, fill=ink, font=font)
        y += math.ceil(font_size * 1.3)
    pil_format, content_type = FORMATS.get(fmt.lower(), FORMATS["png"])
    out = io.BytesIO()
    options: dict[str, Any] = {"optimize": False}
    if pil_format == "PNG":
        options["compress_level"] = 1  # the emulator's time goes to the queue, not to zlib
    elif pil_format in ("JPEG", "WEBP"):
        options["quality"] = 90
    image.save(out, pil_format, **options)
    return out.getvalue(), content_type
