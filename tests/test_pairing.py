"""Pairing by coordinates without holding a side (renderer/view/pairing.py): the partitioned join
gives what two dicts give, item for item and in order; spilled lists read back as written."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.view.pairing import Spilled, join, json_chunks

# (coordinate, payload): few coordinates so that duplicates and overlaps are common; payloads
# nested and shared as a run's entries are (the same strings in many entries).
payloads = st.dictionaries(
    st.sampled_from(["path", "sha", "seed"]), st.sampled_from(["x", "yz", ""])
)
entries = st.lists(st.tuples(st.integers(0, 30), payloads), max_size=80)


def dict_join(a, b):
    """The reference: what compare did with one dict per side."""
    index_a = {k: e for k, e in a}
    index_b = {k: e for k, e in b}
    out = [
        ("pair", k, (k, e), (k, index_b[k])) if k in index_b else ("only_a", k, (k, e), None)
        for k, e in index_a.items()
    ]
    return out + [("only_b", k, (k, e), None) for k, e in index_b.items() if k not in index_a]


@settings(max_examples=60, deadline=None)
@given(entries, entries, st.sampled_from([1, 10**5, 10**6]))
def test_partitioned_join_is_the_dict_join(a, b, size):
    """A diff of a million-image run pairs exactly as a small one does: same pairs, same order."""
    key = lambda e: e[0]  # noqa: E731
    assert list(join(a, b, key, key, size)) == dict_join(a, b)


@settings(max_examples=30, deadline=None)
@given(entries, entries)
def test_entries_without_coordinates_take_no_part(a, b):
    """An unmapped model (key None) is neither paired nor listed as only on one side."""
    key = lambda e: e[0] if e[0] % 2 else None  # noqa: E731
    got = list(join(a, b, key, key, 10**6))
    kept_a = [e for e in a if e[0] % 2]
    kept_b = [e for e in b if e[0] % 2]
    assert got == dict_join(kept_a, kept_b)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
items = st.lists(st.dictionaries(st.text(max_size=5), json_values, max_size=4), max_size=30)


@settings(max_examples=60, deadline=None)
@given(items)
def test_spilled_reads_back_what_was_appended(values):
    """Pairs kept on disk come back as written: by index, by slice, and in order."""
    spilled = Spilled(values)
    assert len(spilled) == len(values)
    assert list(spilled) == values
    assert [spilled[i] for i in range(len(values))] == values
    assert spilled[1:4] == values[1:4]
    if values:
        assert spilled[-1] == values[-1]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=5), json_values, max_size=4), items, items)
def test_json_chunks_write_what_json_dumps_writes(head, pairs, only):
    """`diff --json` prints the same text whether its lists are in memory or spilled."""
    result = {**head, "pairs": pairs, "only_in_a": only}
    spilled = {**head, "pairs": Spilled(pairs), "only_in_a": Spilled(only)}
    assert "".join(json_chunks(spilled)) == json.dumps(result, indent=2)
    assert "".join(json_chunks(result)) == json.dumps(result, indent=2)


unique_entries = st.lists(
    st.tuples(st.integers(0, 30), payloads), max_size=40, unique_by=lambda e: e[0]
)


@settings(max_examples=80, deadline=None)
@given(unique_entries, unique_entries, st.integers(0, 40), st.sampled_from([1, 10**6]))
def test_pairing_in_step_is_the_dict_join_for_unique_coordinates(a, b, shared, size):
    """Two runs of one plan (the same coordinates in the same order, then anything) pair as two dicts do."""
    key = lambda e: e[0] if e[0] != 7 else None  # noqa: E731  (7: an unmapped model)
    prefix = [(100 + i, {"path": str(i)}) for i in range(shared)]
    a, b = prefix + a, prefix + b
    kept = lambda side: [e for e in side if key(e) is not None]  # noqa: E731
    assert list(join(a, b, key, key, size, unique=True)) == dict_join(kept(a), kept(b))
