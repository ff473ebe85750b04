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
    for n, (text, own, params, tags) in enumerate(rows, 1):
        pid = own or text_id(text)
        table.add(n * 2, own or "", text, params, tags)  # "": derived when read
        expected.append(
            Prompt(pid, text, params, tags, ("p.jsonl", n * 2, 1), ("prompts", 1, "file"))
        )
    assert list(table) == expected and len(table) == len(expected)
    assert [table[i] for i in range(len(table))] == expected and table[-1:] == expected[-1:]
    assert list(table.ids()) == [p.id for p in expected]
    assert list(table.given_ids()) == [own for _, own, _, _ in rows if own]
    assert list(table.texts()) == [p.text for p in expected]
    assert [row for chunk in table.literal_rows() for row in zip(*chunk, strict=True)] == [
        (p.text, f"p.jsonl:{p.where[1]}", p.tags, None) for p in expected
    ]
    assert table.with_params == any(params for _, _, params, _ in rows)
    first = [Prompt(f"i{i}", "x", {}, (), ("m.yaml", i, 3), ("prompts", 0)) for i in range(inline)]
    chained = Prompts([first, table, first])
    whole = first + expected + first
    assert list(chained) == whole and len(chained) == len(whole)
    assert [chained[i] for i in range(len(whole))] == whole and chained == whole
    assert list(chained.templated()) == first + first


@settings(deadline=None)
@given(_TEXT, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,70}", fullmatch=True))
def test_a_derived_id_is_fingerprinted_by_its_texts_sha256(text: str, other: str):
    """A caption's id is compared without being made: its fingerprint is 48 bits of its text's sha256."""
    import hashlib

    pid = text_id(text)
    sha = hashlib.sha256(text.encode()).digest()
    assert table.id_fingerprint(pid) == int.from_bytes(sha[:6], "big")
    captions = PromptTable("p.txt", ("prompts", 0, "file"))
    captions.add_caption(1, text)
    captions.add(2, other, text + "!")
    assert list(captions.folded_ids._values) == [
        table.id_fingerprint(pid),
        table.id_fingerprint(other),
    ]
    # Ids equal but for case have equal fingerprints, however they end.
    assert table.id_fingerprint(other.upper()) == table.id_fingerprint(other.lower())
    assert table.id_fingerprint(pid.upper()) == table.id_fingerprint(pid)


@settings(deadline=None, max_examples=30)
@given(st.lists(_TEXT, min_size=1, max_size=40))
def test_captions_added_at_once_are_captions_added_one_by_one(texts: list[str]):
    """A batch of captions gives the table, ids and fingerprints of one row at a time, numpy or not."""
    many = [t.encode() for t in texts] * (table._NUMPY_BATCH // len(texts) + 1)  # numpy's way
    few = table.caption_fingerprints([t.encode() for t in texts])
    assert [list(f) for f in table.caption_fingerprints(many)] == [
        list(f) * (len(many) // len(texts)) for f in few
    ]
    batch, single = PromptTable("p.txt", ("p",)), PromptTable("p.txt", ("p",))
    batch.add_captions(3, None, texts[:5])
    batch.add_captions(0, list(range(8, 8 + len(texts[5:]))), texts[5:])
    for n, text in enumerate(texts):
        single.add_caption(3 + n if n < 5 else 8 + n - 5, text)
    assert list(batch) == list(single)
    assert (
        list(batch.texts_params._values)
        == list(single.texts_params._values)
        == [table.text_fingerprint(t, {}) for t in texts]
    )
    assert (
        list(batch.folded_ids._values)
        == list(single.folded_ids._values)
        == [table.id_fingerprint(text_id(t)) for t in texts]
    )


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
        st.tuples(
            _TEXT,
            st.text(max_size=5) | st.none(),
            st.integers(-9, 9) | st.none(),
            st.sampled_from(["given", "derived", "batch"]),
        ),
        max_size=10,
    ),
    st.integers(0, 10),
)
def test_kept_values_come_back_with_their_rows(rows, start: int):
    """A table with kept columns gives each prompt its own values (Prompt.extra), whichever row a read starts at and however its rows were added."""
    import json

    from renderer.manifest.kept import Kept

    kept = Kept(["source_url", "original_id"])
    table = PromptTable("p.jsonl", ("prompts", 0, "file"), kept)
    batch: tuple[list[str], list[str]] = ([], [])  # captions added at once, with their values
    for n, (text, url, number, how) in enumerate(rows, 1):
        if how != "batch" and batch[0]:
            table.add_captions(n - len(batch[0]), None, *batch)
            batch = ([], [])
        if how == "batch":
            batch[0].append(text)
            batch[1].append(kept.row([url, number]))
        else:
            own = text_id(text) if how == "given" else ""  # "": derived when read
            table.add(n, own, text, extra=kept.row([url, number]))
    table.add_captions(len(rows) + 1 - len(batch[0]), None, *batch)
    expected = [{"source_url": url, "original_id": number} for _, url, number, _ in rows]
    assert [json.loads(p.extra or "") for p in table] == expected
    assert [json.loads(p.extra or "") for p in table[start:]] == expected[start:]
    assert [json.loads(e or "") for chunk in table.literal_rows() for e in chunk[3]] == expected
    assert [p.where[1] for p in table] == list(range(1, len(rows) + 1))
    with pytest.raises(ValueError):
        table.add(99, "x", "x")  # a row without its values would shift every later row's
    with pytest.raises(ValueError):
        table.add_captions(99, None, ["x", "y"], [kept.row(["u", 1])])  # one value for two rows
    assert PromptTable("p.txt", ("prompts", 0, "file")).kept is None
