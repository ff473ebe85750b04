"""A JSONL block read by pyarrow's JSON reader (manifest/jsonarrow.py): the same rows, kept values and problems as the json module's way, or no reading at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from renderer.errors import ManifestError
from renderer.manifest import jsonarrow, reading, rowfiles
from renderer.manifest.kept import Kept, kept_kinds
from renderer.manifest.load import parse

pytest.importorskip("pyarrow")

_NAMES = ["source_url", "license", "original_id"]
# Values beside a caption, one kind a column in a block (Arrow refuses a column of two kinds):
# strings (escapes, control characters, quotes, non-ASCII, U+001F, emoji), integers within 64
# bits, booleans; any of them null or absent.
_KINDS = [
    st.one_of(
        st.text(max_size=6),
        st.sampled_from(["a red fox", "naïve café", "😀", 'say "hi"', "back\\slash", "\x1f", ""]),
    ),
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, -(2**63), 2**63 - 1])),
    st.booleans(),
    st.none(),
]
# And every other value a user could keep (the json way).
_OTHER = st.one_of(
    st.integers(2**63, 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.sampled_from("ab"), st.integers(0, 2), max_size=2),
)


@st.composite
def _rows(draw: Any, plain: bool) -> list[dict[str, Any]]:
    kinds = {n: draw(st.sampled_from(_KINDS)) for n in _NAMES}
    rows = []
    for _ in range(draw(st.integers(1, 8))):
        row: dict[str, Any] = {"caption": draw(st.text(min_size=1, max_size=8))}
        for name in _NAMES:
            if draw(st.integers(0, 4)):  # an absent key is null
                kind = kinds[name] if plain else st.one_of(kinds[name], _OTHER)
                row[name] = draw(st.one_of(kind, st.none()))
        rows.append(row)
    return rows


@settings(max_examples=200, deadline=None)
@given(rows=_rows(True), ascii_=st.booleans(), crlf=st.booleans())
def test_a_block_of_plain_values_reads_as_the_json_module_reads_it(
    rows: list[dict[str, Any]], ascii_: bool, crlf: bool
):
    """Arrow's reading of a block of plain objects is the json module's, value for value: the texts, each row's stored kept values and the kinds noted."""
    end = "\r\n" if crlf else "\n"
    raw = "".join(json.dumps(r, ensure_ascii=ascii_) + end for r in rows).encode()
    text = raw.decode().replace("\r\n", "\n")
    block = jsonarrow.columns(raw)
    assert block is not None
    expected = [json.loads(line) for line in text[:-1].split("\n")]
    assert block.values("caption") == [r["caption"] for r in expected]
    arrow, python = Kept(_NAMES), Kept(_NAMES)
    assert block.kept(arrow) == python.rows([[r.get(k) for r in expected] for k in _NAMES])
    assert arrow.kinds == python.kinds


@pytest.mark.parametrize(
    "lines",
    [
        ["null", '{"caption": "a"}'],  # a first null line crashes pyarrow 26's reader
        ['{"caption": "a"}', "null"],  # a row of nulls to Arrow
        ['{"caption": "a"}', "42"],
        ['{"caption": "a"}', '"a string"'],
        ['{"caption": "a"}', "[1]"],
        ['{"caption": "a"}', ""],  # no row to Arrow
        ['{"caption": "a"}', "   "],
        ['{"caption": "a"}', ' {"caption": "b"}'],
        ['{"caption": "a"} {"caption": "b"}'],  # two rows to Arrow
        ['{"caption": "a"}\r{"caption": "b"}'],  # a lone CR: a line break to Arrow
        ['{"caption": "a"}\r', '{"caption": "b"}\r\r'],
        ["", '{"caption": "a"}'],
        ['{"caption": "' + "w" * reading.MAX_ROW_CHARS + '"}'],  # refused where it is
        ['{"caption": "a", "caption": "b"}'],  # json keeps the last
        ['{"caption": "a", "\\u0063aption": "b"}'],
        ['{"caption": "\\ud800"}'],  # json makes a lone surrogate
        ['{"caption": "a", "n": NaN}'],  # Arrow reads NaN and Infinity
        ['{"caption": "a", "n": -Infinity}'],
        ['{"caption": "a", "n": 9223372036854775808}'],  # beyond int64: a double to Arrow
        ['{"caption": "a", "n": 1.0}'],
        ['{"caption": "a", "n": 1e2}'],
        ['{"caption": "a", "n": [1]}'],
        ['{"caption": "a", "n": {}}'],
        ['{"caption": "a", "n": 1}', '{"caption": "b", "n": "1"}'],
        ['{"caption": "a",}'],
        ['{"caption": "a"} x'],
    ],
)
def test_a_block_arrow_could_misread_is_not_read(lines: list[str]):
    """A block with a line that is not one JSON object of plain values (or that Arrow reads otherwise than json) is left to the json way, never read wrong or crashing."""
    raw = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    assert jsonarrow.columns(raw) is None


def _parse(folder: Path, body: bytes, entry: str, arrow: bool, batched: bool, patch: Any) -> Any:
    """What a user gets: each prompt in full and the kinds kept, or every problem."""
    patch.setattr(jsonarrow, "ARROW", arrow)
    patch.setattr(rowfiles, "BATCHED", batched)
    (folder / "p.jsonl").write_bytes(body)
    path = folder / "m.yaml"
    path.write_text(f"name: t\nprompts:\n  - {entry}\nmodels: [m]\nseeds: [1]\n")
    try:
        m = parse(path.read_text(), path)
    except ManifestError as exc:
        return ("problems", exc.problems)
    prompts = [(p.id, p.text, p.params, p.tags, p.where, p.extra) for p in m.prompts]
    return ("prompts", prompts, kept_kinds(m.prompts))


_LINE = st.one_of(
    st.builds(lambda r: json.dumps(r), st.builds(lambda d: d, _rows(False)).map(lambda r: r[0])),
    st.builds(lambda r: json.dumps(r, ensure_ascii=False), _rows(True).map(lambda r: r[0])),
    st.sampled_from(
        [
            "",
            "null",
            '{"caption": "dup", "caption": "last"}',
            '{"caption": "x", "id": "an id"}',
            '{"caption": "  "}',
            '{"caption": "nul \\u0000"}',
            '{"caption": 5}',
            '{"caption": "\\ud800"}',
            '{"caption": "x", "n": NaN}',
            '{"caption": "x"} {"caption": "y"}',
            '{"caption": "unterminated',
            '{"caption": "x", "source_url": "crlf"}\r',
            '{"caption": "' + "w" * 60 + '"}',
        ]
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(_LINE, min_size=1, max_size=12),
    block=st.integers(60, 400),
    bom=st.booleans(),
    entry=st.sampled_from(
        [
            "{file: p.jsonl, text: caption, keep: [source_url, license, original_id]}",
            "{file: p.jsonl, text: caption, keep: [original_id]}",
            "{file: p.jsonl, keep: [source_url, license]}",
        ]
    ),
)
def test_a_file_read_through_arrow_is_read_row_by_row(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[str],
    block: int,
    bom: bool,
    entry: str,
):
    """A .jsonl file with kept columns gives the same prompts (id, text, line, kept values, kinds) or the same located problems through Arrow as row by row."""
    monkeypatch.setattr(reading, "BLOCK", block)
    # A first row with every key: later blocks' keys are all seen, so Arrow may read them.
    first = json.dumps({"caption": "first", "text": "t", **dict.fromkeys(_NAMES, "v")})
    body = (b"\xef\xbb\xbf" if bom else b"") + "\n".join([first, *lines, ""]).encode(
        "utf-8", "surrogatepass"
    )
    with monkeypatch.context() as patch:
        arrow = _parse(tmp_path, body, entry, True, True, patch)
        assert arrow == _parse(tmp_path, body, entry, False, False, patch)


def test_a_caption_set_keeping_columns_is_read_through_arrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A caption set with kept columns goes through Arrow a block at a time after its first block, with the same prompts, lines and kept values as row by row."""
    accepted: list[int] = []
    original = jsonarrow.columns

    def counting(raw: bytes) -> Any:
        block = original(raw)
        accepted.append(raw.count(b"\n") if block is not None else 0)
        return block

    monkeypatch.setattr(jsonarrow, "columns", counting)
    monkeypatch.setattr(reading, "BLOCK", 2000)
    rows = [
        {"caption": f"a fox {i}", "source_url": f"https://e.org/{i}", "original_id": i}
        for i in range(500)
    ]
    rows[250]["license"] = "cc0"  # a key first seen after the first block: that block the json way
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    entry = "{file: p.jsonl, text: caption, keep: [source_url, license, original_id]}"
    with monkeypatch.context() as patch:
        got = _parse(tmp_path, body, entry, True, True, patch)
        assert sum(accepted) > 400  # all but two blocks went through Arrow
        assert got == _parse(tmp_path, body, entry, False, False, patch)
    assert got[0] == "prompts"
    prompts = got[1]
    assert [p[4][1] for p in prompts] == list(range(1, 501))
    assert json.loads(prompts[499][5]) == {
        "source_url": "https://e.org/499",
        "license": None,
        "original_id": 499,
    }
    assert got[2] == {"source_url": {"string"}, "license": {"string"}, "original_id": {"int64"}}


def test_a_row_too_long_is_refused_where_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A .jsonl line over the row cap in a file keeping columns is refused at its line, with Arrow as row by row."""
    monkeypatch.setattr(reading, "BLOCK", 4096)
    rows = [json.dumps({"caption": f"a fox {i}", "source_url": f"u{i}"}) for i in range(300)]
    rows[200] = json.dumps({"caption": "long", "source_url": "w" * reading.MAX_ROW_CHARS})
    body = ("\n".join(rows) + "\n").encode()
    entry = "{file: p.jsonl, text: caption, keep: [source_url]}"
    with monkeypatch.context() as patch:
        got = _parse(tmp_path, body, entry, True, True, patch)
        assert got == _parse(tmp_path, body, entry, False, False, patch)
    assert got[0] == "problems"
    assert [(p.line, "characters" in p.message) for p in got[1]] == [(201, True)]


@pytest.mark.parametrize(
    "bad",
    [b'{"caption": "\xff"}', b'{"caption": "a", "source_url": "\xed\xa0\x80"}', b"\x00"],
)
def test_bytes_that_are_not_text_are_refused_where_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: bytes
):
    """Invalid UTF-8 (or a NUL) in a later block of a .jsonl file keeping columns is the same located refusal with Arrow as row by row."""
    monkeypatch.setattr(reading, "BLOCK", 512)
    rows = [
        json.dumps({"caption": f"a fox {i}", "source_url": f"u{i}"}).encode() for i in range(80)
    ]
    rows[60] = bad
    body = b"\n".join(rows) + b"\n"
    entry = "{file: p.jsonl, text: caption, keep: [source_url]}"
    with monkeypatch.context() as patch:
        got = _parse(tmp_path, body, entry, True, True, patch)
        assert got == _parse(tmp_path, body, entry, False, False, patch)
    assert got[0] == "problems"
    assert [p.line for p in got[1]] == [61]
