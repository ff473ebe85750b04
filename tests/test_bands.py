"""Bands: the SSIM/pHash edges, how a pair is judged, and bands derived from measured noise."""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from renderer.view.bands import Bands, calibrate, derive, measure, measure_or_none

similarity = st.floats(0.0, 1.0, allow_nan=False)
distance = st.integers(0, 64)
measures = st.lists(st.tuples(similarity, distance), min_size=1, max_size=30)


@st.composite
def bands(draw: st.DrawFn) -> Bands:
    fail_ssim, pass_ssim = sorted((draw(similarity), draw(similarity)))
    pass_phash, fail_phash = sorted((draw(distance), draw(distance)))
    return Bands(pass_ssim, pass_phash, fail_ssim, fail_phash)


RANK = {"pass": 0, "review": 1, "fail": 2}


@given(bands(), similarity, distance, similarity, distance)
def test_closer_is_never_judged_worse(b: Bands, s1: float, h1: int, s2: float, h2: int):
    """A pair at least as similar on both distances never lands in a worse band."""
    closer, farther = (max(s1, s2), min(h1, h2)), (min(s1, s2), max(h1, h2))
    assert RANK[b.judge(*closer)] <= RANK[b.judge(*farther)]


@given(measures)
def test_calibration_pairs_pass_under_the_bands_derived_from_them(measured):
    """Every pair the noise was measured on passes under the bands derived from that noise."""
    derived = derive(calibrate(measured))
    assert all(derived.judge(s, h) == "pass" for s, h in measured)


@given(measures)
def test_derived_bands_are_never_tighter_than_the_defaults(measured):
    """Calibration only widens: a quiet provider keeps the default edges, re-encoding still passes."""
    floor, derived = Bands(), derive(calibrate(measured))
    assert derived.pass_ssim <= floor.pass_ssim and derived.fail_ssim <= floor.fail_ssim
    assert derived.pass_phash >= floor.pass_phash and derived.fail_phash >= floor.fail_phash
    assert derived.fail_ssim <= derived.pass_ssim and derived.fail_phash >= derived.pass_phash


def test_bands_round_trip_through_json():
    """Bands stored in a baseline read back equal, source included."""
    b = Bands(0.9, 5, 0.6, 20, "calibrated")
    assert Bands.from_json(b.to_json()) == b


def _picture(path: Path, shift: int = 0, size: tuple[int, int] = (200, 150)) -> str:
    image = Image.new("RGB", size, (40, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30 + shift, 30, 110 + shift, 110), fill=(240, 200, 40))
    draw.rectangle((120, 20 + shift, 180, 60 + shift), fill=(200, 40, 40))
    image.save(path)
    return str(path)


def test_measure_orders_small_and_large_changes(tmp_path: Path):
    """A shape moved by 3 px is closer (higher SSIM) than one moved by 40 px; the same picture at
    another size measures as nearly the same."""
    base = _picture(tmp_path / "a.png")
    small = measure((base, _picture(tmp_path / "b.png", 3)))
    large = measure((base, _picture(tmp_path / "c.png", 40)))
    assert 1.0 > small[0] > large[0] and small[1] <= large[1]
    scaled = tmp_path / "d.png"
    with Image.open(base) as im:
        im.resize((400, 300), Image.Resampling.LANCZOS).save(scaled)
    ssim, phash = measure((base, str(scaled)))
    assert ssim > 0.95 and phash <= 4


def test_an_unreadable_file_measures_as_none(tmp_path: Path):
    """A file that is not an image gives None (the pair fails), not an exception."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    good = io.BytesIO()
    Image.new("RGB", (8, 8)).save(good, "PNG")
    (tmp_path / "good.png").write_bytes(good.getvalue())
    assert measure_or_none((str(tmp_path / "good.png"), str(bad))) is None
    # A tiny picture is still measured (SSIM's window needs 7 pixels a side).
    assert measure_or_none((str(tmp_path / "good.png"), str(tmp_path / "good.png"))) == (1.0, 0)
