"""How far apart two pictures are, and what that distance means for a release gate.

Two distances, neither needing model weights:
  SSIM   structural similarity (scikit-image's `structural_similarity`, over RGB on a common
         downscale of at most MEASURE_SIDE pixels): 1 for the same picture, lower as structure,
         contrast or tone drift;
  pHash  the Hamming distance (0-64) of two 64-bit DCT perceptual hashes (ImageHash's `phash`):
         small for re-encoding and noise, large when the composition changes.
Each pair is put in a band by `Bands.judge`:
  pass    SSIM >= pass_ssim and pHash <= pass_phash;
  fail    SSIM <  fail_ssim or  pHash >  fail_phash;
  review  anything between.
Hosted models do not promise the same pixels run to run, so a fixed band is either flaky or blind:
`calibrate` measures the provider's own noise (the same manifest rendered twice) and `derive`
widens the pass band to several times that noise (never narrower than the defaults), which is what
a baseline stores with itself (renderer/view/baseline.py).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any

from PIL import Image

MEASURE_SIDE = 128  # SSIM and pHash are taken on at most this large a copy: the gate is for the eye
BANDS = ("pass", "review", "fail")
EDGES = ("pass_ssim", "pass_phash", "fail_ssim", "fail_phash")

# Noise is multiplied by these to place the band edges: a re-render that is PASS_MARGIN times as
# far as the worst calibration pair still passes; FAIL_MARGIN times as far fails outright.
PASS_MARGIN = 2.0
FAIL_MARGIN = 10.0


@dataclass(frozen=True)
class Bands:
    """Band edges. SSIM limits are similarities (higher is closer), pHash limits distances."""

    pass_ssim: float = 0.92
    pass_phash: int = 6
    fail_ssim: float = 0.70
    fail_phash: int = 18
    source: str = "defaults"  # where the edges came from, shown in every report

    def judge(self, ssim: float, phash: int) -> str:
        if ssim < self.fail_ssim or phash > self.fail_phash:
            return "fail"
        if ssim >= self.pass_ssim and phash <= self.pass_phash:
            return "pass"
        return "review"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bands:
        return cls(
            pass_ssim=float(data["pass_ssim"]),
            pass_phash=int(data["pass_phash"]),
            fail_ssim=float(data["fail_ssim"]),
            fail_phash=int(data["fail_phash"]),
            source=str(data.get("source", "defaults")),
        )

    def override(self, values: dict[str, Any], source: str) -> Bands:
        """These edges with some replaced (manifest `regression.bands`, flags), the source named."""
        chosen = {k: values[k] for k in EDGES if values.get(k) is not None}
        if not chosen:
            return self
        return replace(self, **chosen, source=f"{source} ({', '.join(chosen)}) over {self.source}")

    def describe(self) -> str:
        return (
            f"pass: SSIM ≥ {self.pass_ssim:.4f} and pHash ≤ {self.pass_phash}; "
            f"fail: SSIM < {self.fail_ssim:.4f} or pHash > {self.fail_phash} ({self.source})"
        )


def _load(path: str, size: tuple[int, int] | None = None) -> Image.Image:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if size is None:
        rgb.thumbnail((MEASURE_SIDE, MEASURE_SIDE), Image.Resampling.BILINEAR)
        # SSIM's 7x7 window needs at least 7 pixels a side.
        if min(rgb.size) < 16:
            rgb = rgb.resize((max(16, rgb.width), max(16, rgb.height)))
        return rgb
    return rgb.resize(size, Image.Resampling.BILINEAR)


def measure(paths: tuple[str, str]) -> tuple[float, int]:
    """(SSIM over RGB, pHash Hamming distance) of two image files, B scaled to A's measuring size."""
    import imagehash
    import numpy
    from skimage.metrics import structural_similarity

    a = _load(paths[0])
    b = _load(paths[1], a.size)
    ssim = float(
        structural_similarity(numpy.asarray(a), numpy.asarray(b), channel_axis=2, data_range=255)
    )
    phash = int(imagehash.phash(a) - imagehash.phash(b))
    return round(ssim, 5), phash


def measure_or_none(paths: tuple[str, str]) -> tuple[float, int] | None:
    """`measure`, or None when either file is not a readable image (then the pair fails)."""
    try:
        return measure(paths)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def calibrate(measured: list[tuple[float, int]]) -> dict[str, Any]:
    """The provider's own noise, from pairs that should be the same picture (one input rendered twice)."""
    if not measured:
        return {"pairs": 0, "ssim_min": 1.0, "ssim_median": 1.0, "phash_max": 0, "phash_median": 0}
    ssims = [s for s, _ in measured]
    hashes = [h for _, h in measured]
    return {
        "pairs": len(measured),
        "ssim_min": min(ssims),
        "ssim_median": round(statistics.median(ssims), 5),
        "phash_max": max(hashes),
        "phash_median": statistics.median(hashes),
    }


def derive(noise: dict[str, Any], floor: Bands = Bands(), source: str = "calibration") -> Bands:
    """Band edges from measured noise: several times the worst calibration pair, never tighter
    than `floor` (a deterministic provider measures no noise; re-encoding must still pass)."""
    distance = 1.0 - float(noise["ssim_min"])  # SSIM as a distance: 0 for the same picture
    worst_hash = int(noise["phash_max"])
    pass_ssim = min(floor.pass_ssim, 1.0 - PASS_MARGIN * distance)
    fail_ssim = min(floor.fail_ssim, 1.0 - FAIL_MARGIN * distance)
    pass_phash = max(floor.pass_phash, round(PASS_MARGIN * worst_hash))
    # pHash moves in coarse steps (a few bits for noise, 20-40 for another picture): the fail edge
    # is a multiple of the pass edge, not of the noise, or a noisy provider could never fail.
    fail_phash = max(floor.fail_phash, round(PASS_MARGIN * pass_phash))
    return Bands(
        pass_ssim=round(max(0.0, pass_ssim), 4),
        pass_phash=min(64, pass_phash),
        fail_ssim=round(max(0.0, min(fail_ssim, pass_ssim)), 4),
        fail_phash=min(64, max(fail_phash, pass_phash)),
        source=source,
    )
