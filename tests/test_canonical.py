"""The one canonical JSON text, and the bytes each caller has always produced with it."""

from __future__ import annotations

from renderer.canonical import canonical_json
from renderer.layout import value_segment


def test_canonical_json_sorts_keys_without_spaces():
    assert canonical_json({"b": [1, 2], "a": "é"}) == '{"a":"é","b":[1,2]}'
    assert canonical_json({"a": "é"}, ensure_ascii=True) == '{"a":"\\u00e9"}'


def test_value_segment_of_non_ascii_value_is_pinned():
    # Path segments hash the escaped (ensure_ascii=True) text: these exact names are on disk in
    # existing runs, so they must never change.
    assert value_segment({"text": "café ☕"}) == "h55704e4660"
    assert value_segment(["ü"]) == "h1796f4352e"
