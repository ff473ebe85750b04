"""Output paths: readable, portable, and a pure function of the job's own values."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from renderer.layout import job_stem, model_segment, segment, value_segment

PORTABLE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def test_readable_stem():
    """run/model/prompt/axes/seed reads as a person would name it."""
    stem = job_stem("fal-ai/imagen4/preview", "cat", {"aspect_ratio": "16:9", "style": "anime"}, 7)
    assert stem == "fal-ai--imagen4--preview/cat/aspect_ratio-16x9_style-anime/s7"


def test_sizes_and_objects_become_short_segments():
    """A {width, height} object reads as WxH; other objects as a short stable hash."""
    assert value_segment({"width": 1280, "height": 720}) == "1280x720"
    assert value_segment({"a": 1}) == value_segment({"a": 1})
    assert value_segment(True) == "true"


def test_windows_reserved_names_and_trailing_dots():
    """CON, nul.txt and trailing dots cannot become file names."""
    assert segment("CON") == "_CON"
    assert segment("nul.txt") == "_nul.txt"
    assert segment("trail.") == "trail"
    assert segment("..") == "_"


def test_model_ids_do_not_nest():
    """`…/preview` and `…/preview/ultra` are sibling directories, never parent and child."""
    assert "/" not in model_segment("fal-ai/imagen4/preview/ultra")


@given(st.text(min_size=1, max_size=200))
def test_segments_are_portable(text):
    """Any text becomes a non-empty segment of portable characters, at most 80 long."""
    seg = segment(text)
    assert seg and set(seg) <= PORTABLE and len(seg) <= 80
    assert seg not in (".", "..") and not seg.endswith((".", " "))


_SAFE = "abcdefghijklmnopqrstuvwxyz0123456789_"


@given(
    st.text(alphabet=_SAFE, min_size=1, max_size=150),
    st.text(alphabet=_SAFE, max_size=20),
    st.text(alphabet=_SAFE, max_size=20),
)
def test_long_distinct_texts_stay_distinct(prefix, tail_a, tail_b):
    """Truncated segments keep a hash of the full text, so long names do not merge."""
    # Two texts over the 80-character limit that often share everything the cut keeps (the old
    # generator reached its assertion in 0 of 500 examples): only the hash can tell them apart.
    a, b = (prefix * 81)[:81] + tail_a, (prefix * 81)[:81] + tail_b
    assume(a != b)
    assert len(segment(a)) == 80 and len(segment(b)) == 80
    assert segment(a) != segment(b)
