"""fal's image-size vocabulary: presets, the size an input asks for, and a cap.

Plain arithmetic, shared by planning (cost estimates) and the emulator (pictures); it imports
nothing heavy, so planning never loads Pillow.
"""

from __future__ import annotations

from typing import Any

PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


def requested_size(payload: dict[str, Any], documented: dict[str, Any]) -> tuple[int, int]:
    """The (width, height) a model would produce for this input, before any emulator cap."""
    merged = {**documented, **payload}
    size = merged.get("image_size")
    if isinstance(size, dict):
        return int(size.get("width", 512)), int(size.get("height", 512))
    if isinstance(size, str) and size in PRESETS:
        return PRESETS[size]
    ratio = merged.get("aspect_ratio")
    long_side = 2048 if merged.get("resolution") == "2K" else 1024
    if isinstance(ratio, str) and ratio.count(":") == 1:
        w, h = (float(x) for x in ratio.split(":"))
        if w >= h:
            return long_side, max(1, round(long_side * h / w))
        return max(1, round(long_side * w / h)), long_side
    return 1024, 1024


def capped(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """Scale down (keeping the ratio) so the longest side is at most max_side."""
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))
