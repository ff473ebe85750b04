"""JSONL and CSV prompt files read a chunk of lines at a time: a chunk of plain captions is
parsed and checked as a whole (one C-level call a line, column-wise checks), any other chunk row
by row.

A caption set is a million rows of the same shape: a JSON object or a CSV record whose only
column read is its text, a good prompt as it stands. Each chunk (CHUNK whole lines of a block of
reading.raw_blocks) is first tried that way; its rows are then added to the table at once
(PromptTable.add_captions). Any doubt about a chunk (a blank line, whitespace around a JSON
value, a row that is not such a caption, a CSV record that spans lines or chunks, a lone CR, any
parse error) hands that chunk (in a CSV file: the rest of the file) to the row-by-row readers
below, which are the reference: they alone report problems, so every message (file:line:col,
field, hint) is theirs. The two ways give the same table, the same problems, in the same order
(tests/test_rowfiles.py compares them on hostile files); `BATCHED = False` turns the first off.
A file over backed.BACKED_BYTES keeps no text: its rows are found again by line (RowsBacking).
A JSONL file with kept columns tries each block whole through pyarrow's JSON reader first
(jsonarrow.py), on the same terms; any doubt and the block goes the chunked way.
"""

from __future__ import annotations

import csv
import gc
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial, wraps
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

from renderer.errors import ManifestError, Problem, closest
from renderer.manifest import backed, jsonarrow
from renderer.manifest.reading import MAX_ROW_CHARS, raw_blocks, row_too_long

if TYPE_CHECKING:
    from renderer.manifest.kept import Kept
    from renderer.manifest.table import PromptTable

# Rows (line, row as a dict) the long way: sources._prompts with the file's names bound.
LongWay = Callable[[Iterable[tuple[int, dict[str, Any]]]], None]
# Problems at the manifest's `keep:` for kept names the file does not have, given its columns.
Absent = Callable[[Iterable[str]], list[Problem]]

# False: every block row by row (the reference the tests compare the batched way with).
BATCHED = True
# Lines parsed and checked at once (a block holds ~50,000 captions: fewer rows alive at a time).
CHUNK = 8192

CSV_COLUMNS = ("id", "text", "tags")
_READ = ("id", "text", "tags")


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not a finite number")


# One decoder for every line (json.loads with an option makes a decoder per call: 3x the time).
_DECODER = json.JSONDecoder(parse_constant=_no_constant)
# Its C scanner: (value, end) of the JSON value at an index (what decode calls, without the
# whitespace skipping around it); StopIteration where no value starts.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


_FIRST, _SECOND = itemgetter(0), itemgetter(1)
P = ParamSpec("P")


@contextmanager
def _paused_gc() -> Iterator[None]:
    """No garbage collection while a file's rows are made: each chunk's thousands of tuples or
    lists (none in a cycle, all freed with the chunk) would be traversed again and again, ~1 s
    of CPU a million rows. The collector runs as before afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _gc_paused(read: Callable[P, None]) -> Callable[P, None]:
    """`read` with garbage collection paused (_paused_gc)."""

    @wraps(read)
    def paused(*args: P.args, **kwargs: P.kwargs) -> None:
        with _paused_gc():
            read(*args, **kwargs)

    return paused


def _block_lines(text: str) -> list[str]:
    """A block's lines without their line breaks (split at "\n" only: a JSONL line's CR is
    whitespace of its value; the last line needs no break)."""
    return (text[:-1] if text.endswith("\n") else text).split("\n")


def _mapped(columns: dict[str, str]) -> dict[str, str]:
    """The file's names read → id/text/tags, as sources._prompts maps a row."""
    return {columns.get(k, k): k for k in _READ}


def _captions(texts: list[Any]) -> bool:
    """True when each of a block's texts is a prompt as it stands (what sources._bad_text and
    the row cap let through): a str, not blank, no NUL, valid Unicode, at most MAX_ROW_CHARS."""
    if not texts:
        return True
    # Blank: "" or only whitespace (what str.strip() removes is what isspace() tests).
    if set(map(type, texts)) != {str} or "" in texts or any(map(str.isspace, texts)):
        return False
    joined = "".join(texts)
    if "\0" in joined or max(map(len, texts)) > MAX_ROW_CHARS:
        return False
    if not joined.isascii():
        try:
            joined.encode()
        except UnicodeEncodeError:  # an unpaired surrogate (a JSON \ud800 escape)
            return False
    return True


# --- JSONL -------------------------------------------------------------------------------------


@_gc_paused
def jsonl_into(
    path: Path,
    name: str,
    columns: dict[str, str],
    problems: list[Problem],
    table: PromptTable,
    long_way: LongWay,
    seen: dict[str, None] | None = None,
    wanted: Sequence[str] = (),
) -> None:
    """A JSONL file's rows into `table` (good rows) and `problems`; `seen` collects the rows'
    keys (all of `wanted`, a bounded number of the others)."""
    kept = table.kept
    names = kept.names if kept is not None else ()
    mapped = _mapped(columns) if columns else {k: k for k in _READ}
    text_key = next((k for k, v in mapped.items() if v == "text"), None)
    # A row is a caption when, as _prompts reads it, it is {"text": its text}: mapped, no other
    # name read; unmapped, no key but text and the kept ones.
    others = {k for k, v in mapped.items() if v != "text"} if columns else None
    allowed = {"text", *names}
    backing = None
    if path.stat().st_size > backed.BACKED_BYTES:
        again = partial(_jsonl_records, text_key, names)
        backing = backed.RowsBacking(path, name, table.line, again)
        table.back(backing)
    for offset, before, raw, text in raw_blocks(path, name):
        if backing is not None:
            backing.block(offset, before, raw, len(table))  # every row added: _prompts flushed
        if kept is not None and BATCHED and text_key is not None:
            whole = _jsonl_arrow(raw, text_key, others, allowed, seen, kept)
            if whole is not None:
                table.add_captions(before + 1, None, *whole)
                continue
        lines = _block_lines(text)
        # A CRLF line's CR is whitespace after its value (a raw CR inside a JSON string is an
        # error): the same rows without it.
        bare = _block_lines(text.replace("\r\n", "\n")) if "\r\n" in text else lines
        for at in range(0, len(lines), CHUNK):
            first = before + 1 + at
            batch = None
            if BATCHED and text_key is not None:
                batch = _jsonl_batch(bare[at : at + CHUNK], text_key, others, allowed)
            if batch is None:
                numbered = enumerate(lines[at : at + CHUNK], first)
                long_way(_jsonl_rows(numbered, name, problems, seen, wanted))
                continue
            rows, texts = batch
            if seen is not None and not set().union(*rows) <= seen.keys():
                _note_keys(rows, seen, wanted)
            extras = None
            if kept is not None:
                extras = kept.rows([list(map(dict.get, rows, repeat(k))) for k in names])
            table.add_captions(first, None, texts, extras)
    if backing is not None:
        backing.done()


def _jsonl_records(
    text_key: str | None, names: Sequence[str], blocks: Iterable[tuple[int, str]]
) -> Iterator[tuple[int, Any, list[Any]]]:
    """(line, text, kept values) of each JSON object line of blocks read again (backed.py); a
    line that is not one is no prompt's and is passed over."""
    for before, text in blocks:
        for n, line in enumerate(_block_lines(text), before + 1):
            if not line.strip():
                continue
            try:
                row = _DECODER.decode(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict):
                yield n, row.get(text_key or ""), [row.get(k) for k in names]


def _jsonl_arrow(
    raw: bytes,
    text_key: str,
    others: set[str] | None,
    allowed: set[str],
    seen: dict[str, None] | None,
    kept: Kept,
) -> tuple[list[str], list[str]] | None:
    """(texts, kept values' stored texts) of a whole block read by Arrow (jsonarrow) when its
    every line is a caption as _jsonl_batch takes one and its keys are all seen already (the
    first rows with a key go the chunked way, which notes keys first seen first); else None."""
    block = jsonarrow.columns(raw)
    if block is None:
        return None
    keys = set(block.names)
    if (keys & others) if others is not None else not keys <= allowed:
        return None
    if seen is not None and not keys <= seen.keys():
        return None
    texts = block.values(text_key)
    if not _captions(texts):
        return None
    try:
        return texts, block.kept(kept)  # kinds noted only once every column is encoded
    except Exception:  # anything Arrow's compute refuses: the chunked way is the reference
        return None


def _jsonl_batch(
    lines: list[str], text_key: str, others: set[str] | None, allowed: set[str]
) -> tuple[list[dict[str, Any]], list[str]] | None:
    """(rows, texts) of a block whose every line is a JSON object that is a caption, or None."""
    if max(map(len, lines)) > MAX_ROW_CHARS:
        return None  # the long way refuses it where it is
    try:
        # scan_once(line, 0) is what decode(line) does for a line with no whitespace around its
        # value: the value and where it ends (the memo is cleared after each call).
        scanned = list(map(_SCAN, lines, repeat(0, len(lines))))
        rows, ends = list(map(_FIRST, scanned)), list(map(_SECOND, scanned))
    except Exception:  # StopIteration (a blank line, a line that is not JSON), any JSON error
        return None
    if ends != list(map(len, lines)):
        return None  # whitespace or more after the value: the long way
    if set(map(type, rows)) != {dict}:
        return None
    keys = set().union(*rows)
    if (keys & others) if others is not None else not keys <= allowed:
        return None
    texts = [row.get(text_key) for row in rows]
    return (rows, texts) if _captions(texts) else None


def _note_keys(
    rows: Iterable[dict[str, Any]], seen: dict[str, None], wanted: Sequence[str]
) -> None:
    for row in rows:
        for key in row:
            # Every kept key found, and the first 1,000 others to suggest from.
            if key not in seen and (len(seen) < 1000 or key in wanted):
                seen[key] = None


def _jsonl_rows(
    lines: Iterable[tuple[int, str]],
    name: str,
    problems: list[Problem],
    seen: dict[str, None] | None = None,
    wanted: Sequence[str] = (),
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of numbered JSONL lines, one at a time; problems appended; `seen` collects the
    rows' keys (all of `wanted`, a bounded number of the others)."""
    for n, line in lines:
        if len(line) > MAX_ROW_CHARS:
            raise ManifestError([row_too_long(name, n)])
        if not line.strip():
            continue
        try:
            row = _DECODER.decode(line)
        except (json.JSONDecodeError, ValueError) as exc:
            col = exc.colno if isinstance(exc, json.JSONDecodeError) else 1
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            problems.append(Problem(name, n, col, f"invalid JSON: {msg}"))
            continue
        except RecursionError:
            problems.append(Problem(name, n, 1, "invalid JSON: nested too deeply"))
            continue
        if not isinstance(row, dict):
            problems.append(Problem(name, n, 1, "each line must be a JSON object with id and text"))
            continue
        if seen is not None:
            _note_keys((row,), seen, wanted)
        yield n, row


# --- CSV ---------------------------------------------------------------------------------------


@_gc_paused
def csv_into(
    path: Path,
    name: str,
    columns: dict[str, str] | None,
    problems: list[Problem],
    table: PromptTable,
    long_way: LongWay,
    absent: Absent | None = None,
) -> None:
    """A CSV file's rows into `table` (good rows) and `problems`, read by the csv module from
    the undecoded-newline text (quoted line breaks kept).

    Without `columns` the header is id,text[,tags] exactly; with it (a caption set's own
    header), the named text column must be there and the other columns are not read. Kept
    columns (the table's) must be in the header (`absent` says which are not) and are read too.
    """
    kept = table.kept
    blocks = raw_blocks(path, name)
    header: list[str] | None = None
    backing = None
    if path.stat().st_size > backed.BACKED_BYTES:

        def again(read: Iterator[tuple[int, str]]) -> Iterator[tuple[int, Any, list[Any]]]:
            return _csv_records_again(read, header or [], columns, kept)

        backing = backed.RowsBacking(path, name, table.line, again)
        table.back(backing)

    def found(read: list[str]) -> None:
        nonlocal header
        header = read

    for offset, before, raw, text in blocks:
        if backing is not None:
            backing.block(offset, before, raw, len(table))  # a record starts it (fast so far)
        # A lone CR ends a line for the csv module, not for the blocks' count: the long way.
        lines = io.StringIO(text, newline="").readlines() if BATCHED and not _lone_cr(text) else []
        at = 0
        while at < len(lines) or not lines:
            chunk = lines[at : at + CHUNK]
            records = _csv_records_of(chunk) if chunk else None
            if records is None:
                # Doubt about the records' lines (or a parse error): the row-by-row reader from
                # here to the end of the file (a quoted field may run into the next block).
                rest = chain(
                    lines[at:] or io.StringIO(text, newline=""), _lines_of(blocks, backing)
                )
                long_way(
                    _csv_rows(
                        rest, before + 1 + at, header, name, columns, problems, kept, absent, found
                    )
                )
                if backing is not None:
                    backing.done()
                return
            first, at = before + 1 + at, at + CHUNK
            if header is None:
                top = next((i for i, r in enumerate(records) if not _blank(r)), None)
                if top is None:
                    continue
                header = _csv_header(
                    records[top], first + top, name, columns, problems, kept, absent
                )
                if header is None:
                    return
                records, first = records[top + 1 :], first + top + 1
            texts = _csv_batch(records, header, columns, kept)
            if texts is None:
                long_way(_csv_records(enumerate(records, first), header, name, problems))
                continue
            extras = None
            if kept is not None:
                at_kept = [_last(header, k) for k in kept.names]
                extras = kept.rows([[r[i] for r in records] for i in at_kept])
            table.add_captions(first, None, texts, extras)
    if backing is not None:
        backing.done()
    if header is None and not problems:
        problems.append(Problem(name, 1, 1, "the CSV has no header row", allowed="id,text[,tags]"))


def _lone_cr(text: str) -> bool:
    return "\r" in text and text.count("\r") != text.count("\r\n")


def _lines_of(
    blocks: Iterable[tuple[int, int, bytes, str]], backing: backed.RowsBacking | None
) -> Iterator[str]:
    """The lines (with their line breaks, as the csv module wants them) of blocks of text, each
    block noted by `backing` as one a record may run into."""
    for offset, before, raw, text in blocks:
        if backing is not None:
            backing.block(offset, before, raw, None)
        yield from io.StringIO(text, newline="")


def _csv_records_again(
    blocks: Iterator[tuple[int, str]],
    header: list[str],
    columns: dict[str, str] | None,
    kept: Kept | None,
) -> Iterator[tuple[int, Any, list[Any]]]:
    """(line, text, kept values) of each record of blocks read again (backed.py), numbered as
    _csv_rows numbers them; a record of another width (the header's may match: it is at no
    prompt's line) has no text."""
    first = next(blocks, None)
    if first is None:
        return
    before, text = first
    lines = chain(
        io.StringIO(text, newline=""), (x for _, t in blocks for x in io.StringIO(t, newline=""))
    )
    reader = csv.reader(lines, strict=True)
    at = _last(header, (columns or {}).get("text", "text")) if header else 0
    at_kept = [_last(header, k) for k in kept.names] if kept is not None and header else []
    start = before + 1
    try:
        for record in reader:
            line, start = start, before + 1 + reader.line_num
            if len(record) == len(header):
                yield line, record[at], [record[i] for i in at_kept]
            else:
                yield line, None, []
    except csv.Error:
        return  # the rows after it are missing: the backing says the file changed


def _csv_records_of(lines: list[str]) -> list[list[str]] | None:
    """The records of whole lines when each is one line (line i is record i), else None."""
    reader = csv.reader(lines, strict=True)
    try:
        records = list(reader)
    except csv.Error:
        return None
    return records if reader.line_num == len(records) else None


def _blank(record: list[str]) -> bool:
    return not record or all(not c.strip() for c in record)


def _last(header: list[str], column: str) -> int:
    """The index of a row's value for `column`: dict(zip(header, record)) keeps the last."""
    return len(header) - 1 - header[::-1].index(column)


def _csv_batch(
    records: list[list[str]], header: list[str], columns: dict[str, str] | None, kept: Kept | None
) -> list[str] | None:
    """The texts of a block's records when every one is a caption as _prompts reads its row
    ({"text": its text} after mapping and the kept columns), else None."""
    names = set(kept.names) if kept is not None else set()
    if columns:
        mapped = _mapped(columns)
        text_column = next((k for k, v in mapped.items() if v == "text"), "")
        if text_column not in header or any(mapped.get(c, "text") != "text" for c in header):
            return None  # an id or tags column (or no text): each row the long way
    else:
        text_column = "text"
        if set(header) - names != {"text"}:
            return None
    if records and set(map(len, records)) != {len(header)}:
        return None  # a blank or ragged record
    at = _last(header, text_column)
    texts = [r[at] for r in records]
    return texts if _captions(texts) else None


def _csv_header(
    record: list[str],
    line: int,
    name: str,
    columns: dict[str, str] | None,
    problems: list[Problem],
    kept: Kept | None,
    absent: Absent | None,
) -> list[str] | None:
    """The header of the CSV's first non-blank record; None (its problems appended) when the
    rows cannot be read by it."""
    header = [c.strip() for c in record]
    missing = absent(header) if kept is not None and absent is not None else []
    problems.extend(missing)
    if columns:
        text_column = columns.get("text", "text")
        if text_column not in header:
            problems.append(
                Problem(
                    name,
                    line,
                    1,
                    f"the header has no {text_column!r} column for the prompt text",
                    allowed="columns: " + ", ".join(header[:20]),
                    suggestion=closest(text_column, header),
                )
            )
            return None
        return None if missing else header
    for col, column in enumerate(header, 1):
        if column not in CSV_COLUMNS and not (kept and column in kept.names):
            problems.append(
                Problem(
                    name,
                    line,
                    col,
                    f"unknown column {column!r}",
                    allowed=", ".join(CSV_COLUMNS)
                    + "; or name the file's own columns: `- {file: …, text: COLUMN}`"
                    + "; or carry it into the dataset: `keep: [COLUMN]`",
                    suggestion=closest(column, CSV_COLUMNS),
                )
            )
    for column in ("text",) if not problems else ():
        if column not in header:
            problems.append(
                Problem(
                    name,
                    line,
                    1,
                    f"the header has no {column!r} column",
                    allowed="a first row naming the columns: id,text[,tags]",
                )
            )
    return None if problems else header


def _csv_records(
    records: Iterable[tuple[int, list[str]]], header: list[str], name: str, problems: list[Problem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of numbered records after the header: blank ones skipped, ragged ones reported."""
    for line, record in records:
        if _blank(record):
            continue
        if len(record) != len(header):
            problems.append(
                Problem(
                    name,
                    line,
                    1,
                    f"row has {len(record)} fields; the header has {len(header)}",
                    allowed='quote fields that contain commas: "a, b"',
                )
            )
            continue
        yield line, dict(zip(header, record, strict=True))


def _csv_rows(
    lines: Iterable[str],
    first: int,
    header: list[str] | None,
    name: str,
    columns: dict[str, str] | None,
    problems: list[Problem],
    kept: Kept | None,
    absent: Absent | None,
    found: Callable[[list[str]], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV's lines (with their line breaks; the first at line `first`), one record at
    a time; the header read first unless given (and passed to `found`); problems appended."""
    reader = csv.reader(lines, strict=True)
    start = first
    try:
        for record in reader:
            line, start = start, first + reader.line_num
            if header is None:
                if _blank(record):
                    continue
                header = _csv_header(record, line, name, columns, problems, kept, absent)
                if header is None:
                    return
                if found is not None:
                    found(header)
                continue
            yield from _csv_records([(line, record)], header, name, problems)
    except csv.Error as exc:
        # strict=True: a quote left open runs to the end of the file instead of silently
        # swallowing the rows after it; report where that row started.
        reason = (
            "a quote opened in this row is never closed (it would swallow every row after it)"
            if "end of data" in str(exc)
            else f"CSV error in the row starting here: {exc}"
        )
        problems.append(
            Problem(
                name,
                start,
                1,
                reason,
                allowed='close every opening quote; double a quote inside a quoted field ("")',
            )
        )
    if header is None and not problems:
        problems.append(Problem(name, 1, 1, "the CSV has no header row", allowed="id,text[,tags]"))
