"""Compact prompt tables, the manifest's chained prompts, and fingerprint logs; properties by hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from renderer.manifest import table
from renderer.manifest.table import FingerprintLog, Prompts, PromptTable, text_id
from renderer.manifest.types import Prompt

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(deadline=None)
@given(
    st.lists(
        st.tuples(
            _TEXT,
            st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True),
            st.dictionaries(st.sampled_from(["num_images", "guidance_scale"]), st.integers(1, 4)),
            st.lists(st.sampled_from(["a", "b"]), max_size=2).map(tuple),
        ),
        max_size=12,
    ),
    st.integers(0, 3),
)
def test_a_table_gives_back_the_prompts_it_was_given(rows, inline: int):
    """Each row comes back as the Prompt it stands for (text, id, params, tags, file:line), in order and by index."""
    table = PromptTable("p.jsonl", ("prompts", 1, "file"))
    expected = []
    for n, (text, pid, params, tags) in enumerate(rows, 1):
        pid = pid or text_id(text)
        table.add(n * 2, pid, text, params, tags)
        expected.append(
            Prompt(pid, text, params, tags, ("p.jsonl", n * 2, 1), ("prompts", 1, "file"))
        )
    assert list(table) == expected and len(table) == len(expected)
    assert [table[i] for i in range(len(table))] == expected and table[-1:] == expected[-1:]
    assert list(table.ids()) == [p.id for p in expected]
    first = [Prompt(f"i{i}", "x", {}, (), ("m.yaml", i, 3), ("prompts", 0)) for i in range(inline)]
    chained = Prompts([first, table, first])
    whole = first + expected + first
    assert list(chained) == whole and len(chained) == len(whole)
    assert [chained[i] for i in range(len(whole))] == whole and chained == whole
    assert list(chained.templated()) == first + first


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.integers(-(2**70), 2**70), max_size=60),
    st.lists(st.integers(-(2**70), 2**70), max_size=60),
)
def test_a_log_finds_what_came_twice_as_a_set_would(
    monkeypatch: pytest.MonkeyPatch, left: list[int], right: list[int]
):
    """repeated() is the low-64-bit values added more than once; common() those in both logs."""
    mask = 2**64 - 1
    a, b = FingerprintLog(), FingerprintLog()
    for x in left:
        a.add(x)
    for x in right:
        b.add(x)
    low_a, low_b = [x & mask for x in left], [x & mask for x in right]
    for small in (table.SMALL_LOG, 0):  # in Python, and with numpy as for a large log
        monkeypatch.setattr(table, "SMALL_LOG", small)
        assert a.repeated() == {x for x in low_a if low_a.count(x) > 1}
        assert a.common(b) == set(low_a) & set(low_b) and len(a) == len(left)


@settings(deadline=None)
@given(
    st.lists(
        st.tuples(_TEXT, st.text(max_size=5) | st.none(), st.integers(-9, 9) | st.none()),
        max_size=10,
    ),
    st.integers(0, 10),
)
def test_kept_values_come_back_with_their_rows(rows, start: int):
    """A table with kept columns gives each prompt its own values (Prompt.extra), whichever row a read starts at."""
    import json

    from renderer.manifest.kept import Kept

    kept = Kept(["source_url", "original_id"])
    table = PromptTable("p.jsonl", ("prompts", 0, "file"), kept)
    for n, (text, url, number) in enumerate(rows, 1):
        table.add(n, text_id(text), text, extra=kept.row([url, number]))
    expected = [{"source_url": url, "original_id": number} for _, url, number in rows]
    assert [json.loads(p.extra or "") for p in table] == expected
    assert [json.loads(p.extra or "") for p in table[start:]] == expected[start:]
    with pytest.raises(ValueError):
        table.add(99, "x", "x")  # a row without its values would shift every later row's
    assert PromptTable("p.txt", ("prompts", 0, "file")).kept is None
