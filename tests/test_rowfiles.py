"""JSONL and CSV prompt files read a chunk at a time agree with the row-by-row readers on hostile files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from renderer.errors import ManifestError
from renderer.manifest import backed, reading, rowfiles
from renderer.manifest.kept import kept_kinds
from renderer.manifest.load import parse
from renderer.manifest.table import PromptTable

_EDGES = [
    "a red fox",
    "",
    "  ",
    "\u00a0",
    "\u3000",
    "a\0b",
    "\ud800",
    "two\nlines",
    "cr\rinside",
    'say "hi", twice',
    "naïve café",
]
# A caption: mostly good, often one of the edge cases a batch must not let through.
_CAPTION = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8),
    st.sampled_from(_EDGES),
    st.sampled_from(_EDGES),
    st.integers(-3, 3),
    st.none(),
)
# Values a user could put where a caption is expected, or beside it.
_VALUE = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8),
    st.sampled_from(
        [
            "a red fox",
            "a heron at dawn",
            "",
            "  ",
            "\u00a0",
            "x\u2028y",
            "tab\there",
            'say "hi", twice',
            "two\nlines",
            "cr\rinside",
            "crlf\r\ninside",
            "naïve café",
            "😀 emoji",
            "a\0b",
            "\ud800",
            "# not a comment",
            "id",
            "caption",
        ]
    ),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 2), max_size=2),
)


def _run(
    folder: Path, entry: str, batched: bool, monkeypatch: pytest.MonkeyPatch, held: bool = True
) -> Any:
    """What a user gets from the manifest: each prompt in full and the kept columns' kinds, or
    every problem (file:line:col, message, hint, suggestion). `held`: False reads the texts
    again from the file (backed.py) whatever its size."""
    monkeypatch.setattr(rowfiles, "BATCHED", batched)
    with monkeypatch.context() as patch:
        if not held:
            patch.setattr(backed, "BACKED_BYTES", -1)
        path = folder / "m.yaml"
        path.write_text(f"name: t\nprompts:\n  - {entry}\nmodels: [m]\nseeds: [1]\n")
        try:
            m = parse(path.read_text(), path)
        except ManifestError as exc:
            return ("problems", exc.problems)
        prompts = [(p.id, p.text, p.params, p.tags, p.where, p.extra) for p in m.prompts]
        middle = len(m.prompts) // 2
        assert [p.text for p in m.prompts[middle:]] == [p[1] for p in prompts[middle:]]
        return ("prompts", prompts, kept_kinds(m.prompts))


def _compare(folder: Path, entry: str, monkeypatch: pytest.MonkeyPatch, held: bool = True) -> Any:
    """The chunked way (its texts held or read again) against the row-by-row way, held."""
    batched = _run(folder, entry, True, monkeypatch, held)
    assert batched == _run(folder, entry, False, monkeypatch)
    return batched


_KEYS = st.sampled_from(["caption", "text", "id", "tags", "params", "source_url", "Caption"])
_JSONL_LINE = st.one_of(
    st.dictionaries(_KEYS, _VALUE, max_size=3).map(json.dumps),
    st.fixed_dictionaries({"caption": _CAPTION}).map(lambda d: json.dumps(d, ensure_ascii=False)),
    st.fixed_dictionaries({"caption": _CAPTION}).map(json.dumps),
    st.fixed_dictionaries({"text": _CAPTION}).map(json.dumps),
    st.fixed_dictionaries({"caption": _VALUE, "source_url": _VALUE}).map(
        lambda d: json.dumps(d, separators=(",", ":"))
    ),
    st.sampled_from(
        [
            "",
            "   ",
            '{"caption": "dup", "caption": "last wins"}',
            '{"caption": "trailing"} ',
            ' {"caption": "leading"}',
            '{"caption": "two"} {"caption": "values"}',
            '{"caption": "x"}, {"caption": "y"}',
            '[{"caption": "a list"}]',
            '"just a string"',
            "42",
            "null",
            '{"caption": NaN}',
            '{"caption": "unterminated',
            '{"caption": "\\ud800"}',
            '{"caption": "nul \\u0000"}',
            '{"caption": "ok"}\r',
            '{"caption":\r"cr inside"}',
            '{"caption": "' + "w" * 40 + '"}',
        ]
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(_JSONL_LINE, min_size=1, max_size=12),
    pad=st.integers(0, 20),
    ending=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    entry=st.sampled_from(
        [
            "{file: p.jsonl, text: caption}",
            "{file: p.jsonl}",
            "{file: p.jsonl, text: caption, keep: [source_url]}",
            "{file: p.jsonl, keep: [source_url]}",
            "{file: p.jsonl, text: caption, id: source_url}",
        ]
    ),
    block=st.integers(8, 200),
    chunk=st.integers(1, 6),
    held=st.booleans(),
)
@example(
    lines=['{"caption": "a"}', ""],
    pad=0,
    ending="\n",
    bom=False,
    entry="{file: p.jsonl, text: caption}",
    block=64,
    chunk=4,
    held=False,
)
def test_jsonl_read_a_chunk_at_a_time_is_read_row_by_row(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[str],
    pad: int,
    ending: str,
    bom: bool,
    entry: str,
    block: int,
    chunk: int,
    held: bool,
):
    """A .jsonl file gives the same prompts (id, text, line, kept values) or the same located problems either way, whatever its blocks and chunks, its texts held or read again."""
    monkeypatch.setattr(reading, "BLOCK", block)
    monkeypatch.setattr(rowfiles, "CHUNK", chunk)
    good = [json.dumps({"caption": f"padding {i}", "source_url": i}) for i in range(pad)]
    body = ending.join(good + lines) + ending
    (tmp_path / "p.jsonl").write_bytes(
        (b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8", "surrogatepass")
    )
    _compare(tmp_path, entry, monkeypatch, held)


def _csv_text(rows: list[list[Any]], ending: str) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator=ending).writerows(rows)
    return out.getvalue()


_CSV_ROW = st.one_of(
    st.tuples(_CAPTION.map(lambda v: "" if v is None else str(v)), st.integers(0, 9)).map(list),
    st.tuples(_CAPTION.map(lambda v: "" if v is None else str(v)), st.integers(0, 9)).map(list),
    st.lists(_VALUE.map(lambda v: "" if v is None else str(v)), min_size=0, max_size=4),
    st.tuples(_VALUE.map(str), st.integers(0, 9)).map(list),
)
_CSV_RAW = st.sampled_from(
    [
        "",
        "   ",
        ",,",
        '"open quote,1',
        '"closed"x,1',
        'mid"quote,1',
        '"a ""doubled"" quote",1',
        '"line\nbreak",1',
        '"crlf\r\nbreak",1',
        "lone\rcr,1",
        "trailing space ,1",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.sampled_from(
        [
            "caption,n",
            "caption",
            "n,caption",
            "caption,caption",
            " caption , source_url",
            "text",
            "id,text",
            "text,tags",
            "text,source_url",
            "capton,n",
            "",
        ]
    ),
    rows=st.lists(
        st.one_of(_CSV_ROW.map(lambda r: _csv_text([r], "\n")[:-1]), _CSV_RAW), max_size=10
    ),
    pad=st.integers(0, 20),
    ending=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    blank_top=st.booleans(),
    entry=st.sampled_from(
        [
            "{file: p.csv, text: caption}",
            "{file: p.csv}",
            "{file: p.csv, text: caption, keep: [source_url]}",
            "{file: p.csv, keep: [source_url]}",
            "{file: p.csv, text: caption, keep: [n]}",
        ]
    ),
    block=st.integers(8, 200),
    chunk=st.integers(1, 6),
    held=st.booleans(),
)
def test_csv_read_a_chunk_at_a_time_is_read_row_by_row(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    header: str,
    rows: list[str],
    pad: int,
    ending: str,
    bom: bool,
    blank_top: bool,
    entry: str,
    block: int,
    chunk: int,
    held: bool,
):
    """A .csv file gives the same prompts (id, text, line, kept values) or the same located problems either way (quoting, line breaks, ragged rows, duplicate header names), its texts held or read again."""
    monkeypatch.setattr(reading, "BLOCK", block)
    monkeypatch.setattr(rowfiles, "CHUNK", chunk)
    width = len(header.split(","))
    good = [",".join([f"padding {i}", *[str(i)] * (width - 1)]) for i in range(pad)]
    lines = ([""] if blank_top else []) + [header, *good, *rows]
    body = ending.join(lines).replace("\n", ending) + ending
    (tmp_path / "p.csv").write_bytes(
        (b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8", "surrogatepass")
    )
    _compare(tmp_path, entry, monkeypatch, held)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_caption_set_is_read_a_chunk_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
):
    """A plain caption set goes the chunked way (not one row at a time), with its kept values, lines after a blank line and a quoted line break right."""
    calls: list[int] = []
    original = PromptTable.add_captions

    def counting(self: PromptTable, first: int, lines: Any, texts: Any, extras: Any = None) -> None:
        calls.append(len(texts))
        original(self, first, lines, texts, extras)

    monkeypatch.setattr(PromptTable, "add_captions", counting)
    monkeypatch.setattr(rowfiles, "CHUNK", 100)
    n = 1000
    if suffix == ".jsonl":
        body = "".join(
            json.dumps({"caption": f"a fox {i}", "source_url": f"u{i}"}) + "\n" for i in range(n)
        )
        body += "\n" + json.dumps({"caption": "after a blank line", "source_url": "v"}) + "\n"
    else:
        body = _csv_text(
            [["caption", "source_url"], *([f"a fox {i}", f"u{i}"] for i in range(n))], "\r\n"
        )
        body += _csv_text([["two\nlines", "v"], ["after it", "w"]], "\r\n")
    (tmp_path / f"p{suffix}").write_text(body, newline="")
    entry = f"{{file: p{suffix}, text: caption, keep: [source_url]}}"
    got = _run(tmp_path, entry, True, monkeypatch)
    assert max(calls) == 100  # the caption rows went a chunk at a time
    assert got == _run(tmp_path, entry, False, monkeypatch)
    assert got[0] == "prompts"
    prompts = got[1]
    first_line = 1 if suffix == ".jsonl" else 2
    assert [(p[1], p[4][1]) for p in prompts[:3]] == [
        (f"a fox {i}", first_line + i) for i in range(3)
    ]
    assert json.loads(prompts[n - 1][5]) == {"source_url": f"u{n - 1}"}
    last = ("after a blank line", n + 2) if suffix == ".jsonl" else ("after it", n + 4)
    assert (prompts[-1][1], prompts[-1][4][1]) == last


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_large_file_changed_after_its_check_is_refused_not_misread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
):
    """A .jsonl or .csv file whose texts are read again stops the command if it changed since its check, even to the same size and time."""
    import os

    monkeypatch.setattr(backed, "BACKED_BYTES", -1)
    path = tmp_path / f"p{suffix}"
    header = "" if suffix == ".jsonl" else "caption\n"
    row = (
        (lambda t: json.dumps({"caption": t}) + "\n")
        if suffix == ".jsonl"
        else (lambda t: t + "\n")
    )
    path.write_text(header + "".join(row(f"a fox {i}") for i in range(50)))
    m = parse(_manifest_text(tmp_path, f"{{file: p{suffix}, text: caption}}"), tmp_path / "m.yaml")
    assert [p.text for p in m.prompts][-1] == "a fox 49"
    stat = path.stat()
    path.write_text(header + "".join(row(f"a cat {i}") for i in range(50)))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ManifestError, match="changed"):
        list(m.prompts)


def _manifest_text(folder: Path, entry: str) -> str:
    return f"name: t\nprompts:\n  - {entry}\nmodels: [m]\nseeds: [1]\n"
