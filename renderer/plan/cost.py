"""What a plan costs: prices by endpoint or label, per image or per megapixel (one formula)."""

from __future__ import annotations

import math

RATIO_PRESET = {
    "1:1": "square_hd",
    "3:4": "portrait_4_3",
    "9:16": "portrait_16_9",
    "4:3": "landscape_4_3",
    "16:9": "landscape_16_9",
}


def ratio_size(ratio: str, area: int = 1024 * 1024) -> dict[str, int]:
    """A {width, height} near one megapixel for a ratio, in multiples of 16."""
    w, h = (int(x) for x in ratio.split(":"))
    width = round(math.sqrt(area * w / h) / 16) * 16
    height = round(math.sqrt(area * h / w) / 16) * 16
    return {"width": width, "height": height}


def megapixels(width: int, height: int) -> float:
    """The one megapixel formula: what a per-megapixel price multiplies (10^6 pixels, as fal bills)."""
    return width * height / 1e6


def price_of(
    prices: dict[str, dict[str, float]], endpoint: str, model: str
) -> dict[str, float] | None:
    """The manifest's price for a model: by endpoint id, else by label; None when unpriced."""
    return prices.get(endpoint) or prices.get(model) or None


def image_cost(price: dict[str, float], width: int, height: int) -> float:
    """What one delivered image cost by the manifest's price: per image, or per megapixel of its real size."""
    if "per_image" in price:
        return float(price["per_image"])
    return float(price.get("per_megapixel", 0.0)) * megapixels(width, height)
