"""Prompt files: .jsonl, .csv, .txt and .parquet streamed into compact tables, checked row by row."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.errors import ManifestError, Problem, closest
from renderer.manifest import backed
from renderer.manifest.checks import RESERVED_PARAMS
from renderer.manifest.located import json_path
from renderer.manifest.reading import (
    MAX_MANIFEST_BYTES,
    MAX_ROW_CHARS,
    raw_blocks,
    read_text_file,
    row_too_long,
    text_blocks,
    text_lines,
)
from renderer.manifest.table import (
    Fingerprints,
    Prompts,
    PromptTable,
    parts_log,
    text_fingerprint,
    text_id,
)
from renderer.manifest.types import Prompt

if TYPE_CHECKING:
    from renderer.manifest.located import Located

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_ROW_CHARS",
    "duplicate_texts",
    "prompt_file",
    "read_text_file",
    "text_id",
]


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


CSV_COLUMNS = ("id", "text", "tags")


def _bad_text(body: str) -> str | None:
    """Why prompt text cannot be sent, or None."""
    if not body.strip():
        return "is empty or only whitespace"
    if "\0" in body:
        return "contains a NUL character"
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate, which is not valid Unicode"
    return None


def _csv_rows(
    path: Path, name: str, columns: dict[str, str] | None, problems: list[Problem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV read by the csv module from the undecoded-newline text (quoted line breaks
    kept), streamed; problems appended.

    Without `columns` the header is id,text[,tags] exactly; with it (a caption set's own
    header), the named text column must be there and the other columns are not read.
    """
    # Each block ends at a line break, so its lines are the whole text's lines.
    reader = csv.reader(
        (line for _, _, text in text_blocks(path, name) for line in io.StringIO(text, newline="")),
        strict=True,
    )
    header: list[str] | None = None
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record or all(not c.strip() for c in record):
                continue
            if header is None:
                header = [c.strip() for c in record]
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
                        return
                    continue
                for col, column in enumerate(header, 1):
                    if column not in CSV_COLUMNS:
                        problems.append(
                            Problem(
                                name,
                                line,
                                col,
                                f"unknown column {column!r}",
                                allowed=", ".join(CSV_COLUMNS)
                                + "; or name the file's own columns: `- {file: …, text: COLUMN}`",
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
                if problems:
                    return
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


def _jsonl_rows(
    path: Path, name: str, problems: list[Problem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a JSONL file, streamed; problems appended."""
    for n, line in text_lines(path, name):
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
        yield n, row


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not a finite number")


# One decoder for every line (json.loads with an option makes a decoder per call: 3x the time).
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def prompt_file(
    doc: Located,
    base: Path,
    index: int,
    rel: str,
    columns: dict[str, str] | None = None,
    comments: bool = True,
) -> tuple[PromptTable, list[Problem]]:
    """The prompts of one `- file:` entry. `columns` maps text/id/tags to the file's own column
    names (a caption set's `caption`, say); a row without an id gets one derived from its text.
    The file is read as a stream: any size, each row at most MAX_ROW_CHARS."""
    where = ("prompts", index, "file")
    columns = columns or {}
    if "\0" in rel:
        return PromptTable("", where), [
            doc.problem(where, "the prompt file path contains a NUL character")
        ]
    path = (base / rel).resolve()
    if not path.exists():
        return PromptTable("", where), [
            doc.problem(where, f"prompt file not found: {rel} (relative to the manifest's folder)")
        ]
    shown = str(
        base / rel
    )  # as the user wrote it, relative to where they are; `where` keeps the full path
    if path.suffix == ".parquet":
        read = PromptTable(shown, where)
        found = _parquet_rows(path, shown, columns, read)
        if not len(read) and not found:
            found.append(doc.problem(where, f"the prompt file {rel} holds no prompts"))
        return read, found
    name = str(path)
    table = PromptTable(name, where)
    problems: list[Problem] = []
    try:
        read_text_file(path, "prompt file", 0, check_only=True)
        if path.suffix == ".txt":
            _txt_rows(path, name, comments, table)
        else:
            rows = (
                _csv_rows(path, name, columns, problems)
                if path.suffix == ".csv"
                else _jsonl_rows(path, name, problems)
            )
            _prompts(rows, name, columns, problems, table)
    except ManifestError as exc:
        # The file cannot be read as text (or a row is too long): that problem alone.
        return PromptTable(name, where), [replace(p, file=shown) for p in exc.problems]
    if not len(table) and not problems:
        problems.append(doc.problem(where, f"the prompt file {rel} holds no prompts"))
    return table, [replace(p, file=shown) if p.file == name else p for p in problems]


def _txt_rows(path: Path, name: str, comments: bool, table: PromptTable) -> None:
    """A .txt file's lines into `table`, a block at a time: each line stripped is a prompt (its
    id derived from it), but blank lines and, with `comments`, lines starting with '#'. A file
    over BACKED_BYTES keeps no text: its blocks are read again when rows are (backed.py)."""
    backing = None
    if path.stat().st_size > backed.BACKED_BYTES:
        backing = backed.TextBacking(path, name, comments)
        table.back(backing)
    for offset, before, raw, text in raw_blocks(path, name):
        if max(map(len, text.split("\n"))) > MAX_ROW_CHARS:
            for n, line in enumerate(text.split("\n"), before + 1):
                if len(line) > MAX_ROW_CHARS:
                    raise ManifestError([row_too_long(name, n)])
        if backing is not None:
            backing.block(offset, before, raw, len(table))
        lines, bodies = backed.txt_rows(text, before, comments)
        table.add_captions(before + 1, lines, bodies)
    if backing is not None:
        backing.done()


def _prompts(
    rows: Iterable[tuple[int, dict[str, Any]]],
    name: str,
    columns: dict[str, str],
    problems: list[Problem],
    table: PromptTable,
) -> None:
    """Rows (renamed to id/text/tags by `columns`) → the table; problems appended."""
    mapped = {columns.get(k, k): k for k in ("id", "text", "tags")}
    # Rows of a text alone, good as they stand (what _row_prompt would take as is), are added
    # a batch at a time; any other row first adds those before it, then goes the long way.
    lines: list[int] = []
    texts: list[str] = []
    for n, row in rows:
        if columns:
            # Mapped: the named columns are read; any other column of a caption set is not ours.
            row = {mapped[k]: v for k, v in row.items() if k in mapped}
        body = row.get("text")
        if (
            len(row) == 1
            and isinstance(body, str)
            and len(body) <= MAX_ROW_CHARS
            and not _bad_text(body)
        ):
            lines.append(n)
            texts.append(body)
            if len(texts) >= 4096:
                table.add_captions(0, lines, texts)
                lines, texts = [], []
            continue
        table.add_captions(0, lines, texts)
        lines, texts = [], []
        # A row without an id gets one derived from its text, made when the row is read
        # (text_id): the table stores "" for it.
        derived = (
            "id" not in row and isinstance(row.get("text"), str) and not _bad_text(row["text"])
        )
        got = _row_prompt(row, name, n, problems, derived)
        if got is not None:
            table.add(n, *got)
    table.add_captions(0, lines, texts)


def _parquet_rows(
    path: Path, shown: str, columns: dict[str, str], table: PromptTable
) -> list[Problem]:
    """A Parquet file's rows (row number as the line) into `table`, reading only the columns
    used, a batch at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return [
            Problem(
                shown,
                1,
                1,
                "reading a .parquet prompt file needs pyarrow",
                allowed="pip install 'renderer-batch[datasets]'",
            )
        ]
    try:
        # Read a page at a time (buffer_size), not a whole column chunk: a caption set is often
        # one row group, and its text column would otherwise be decoded whole alongside the table.
        handle = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    except Exception as exc:
        return [Problem(shown, 1, 1, f"not a readable Parquet file: {exc}"[:300])]
    present = list(handle.schema_arrow.names)
    wanted = [columns.get(k, k) for k in ("id", "text", "tags")]
    text_column = columns.get("text", "text")
    if text_column not in present:
        return [
            Problem(
                shown,
                1,
                1,
                f"no column {text_column!r} for the prompt text",
                allowed="columns: " + ", ".join(present[:20]) + "; name one with `text: COLUMN`",
                suggestion=closest(text_column, present),
            )
        ]
    problems: list[Problem] = []
    read = [c for c in wanted if c in present]
    n = 0
    backing = None
    if read == [text_column] and _text_bytes(handle, text_column) > backed.BACKED_BYTES:
        # A large caption set keeps no text: its rows are read again when needed (backed.py).
        backing = backed.ParquetBacking(path, shown, text_column, table.line)
        table.back(backing)
    for batch in handle.iter_batches(columns=read, batch_size=16384):
        if (
            read == [text_column]
            and batch.num_rows >= _BATCH_CHECK
            and _plain_captions(batch.column(0))
        ):
            table.add_captions(n + 1, None, batch.column(0).to_pylist())
            n += batch.num_rows
            continue
        if read == [text_column]:
            # Text only (a caption set): each row's id is derived from its text.
            for body in batch.column(0).to_pylist():
                n += 1
                if isinstance(body, str) and len(body) <= MAX_ROW_CHARS and not _bad_text(body):
                    table.add_caption(n, body)
                else:
                    _prompts(
                        [(n, {} if body is None else {text_column: body})],
                        shown,
                        columns,
                        problems,
                        table,
                    )
            continue
        rows = []
        for record in batch.to_pylist():
            n += 1
            rows.append((n, {k: v for k, v in record.items() if v is not None}))
        _prompts(rows, shown, columns, problems, table)
    if backing is not None:
        backing.done()
    return problems


# A Parquet batch of at least this many rows is checked at once by pyarrow (whose compute module
# takes ~0.1 s to import: a smaller file is checked row by row).
_BATCH_CHECK = 4096


def _text_bytes(handle: Any, column: str) -> int:
    """The uncompressed size of a Parquet file's column (its row groups' metadata)."""
    meta = handle.metadata
    return sum(
        chunk.total_uncompressed_size
        for g in range(meta.num_row_groups)
        for chunk in map(meta.row_group(g).column, range(meta.num_columns))
        if chunk.path_in_schema == column
    )


def _plain_captions(column: Any) -> bool:
    """True when every value of a Parquet text column is a prompt as it stands (the checks a row
    would get, for a whole batch at once): a string, at most MAX_ROW_CHARS, no NUL, and some
    printable ASCII character (never whitespace, so it is not blank). Else each row is checked."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return False
    if column.null_count or not len(column):
        return not len(column)
    return bool(
        pc.max(pc.binary_length(column)).as_py() <= MAX_ROW_CHARS  # bytes: at least the characters
        and not pc.any(pc.match_substring(column, "\0")).as_py()
        and pc.all(pc.match_substring_regex(column, "[!-~]")).as_py()
    )


def _row_prompt(
    row: dict[str, Any], name: str, n: int, problems: list[Problem], derived: bool = False
) -> tuple[str, str, dict[str, Any], tuple[str, ...]] | None:
    """(id, text, params, tags) of a row, or None with its problems appended. `derived`: the row
    has no id and gets one from its text when it is read (text_id); its id here is ""."""
    unknown = [k for k in row if k not in ("id", "text", "tags", "params")]
    for key in unknown:
        problems.append(
            Problem(
                name,
                n,
                1,
                f"unknown field {key!r}",
                allowed="id, text, tags, params",
                suggestion=closest(key, ("id", "text", "tags", "params")),
            )
        )
    pid, body = ("" if derived else row.get("id")), row.get("text")
    if not isinstance(pid, str) or not (derived or _SAFE_ID.fullmatch(pid)):
        problems.append(
            Problem(
                name,
                n,
                1,
                f"prompt id {pid!r} is missing or not a safe name",
                allowed="1-64 letters, digits, '.', '_' or '-'",
            )
        )
        return None
    if not isinstance(body, str):
        problems.append(Problem(name, n, 1, f"prompt {pid!r} has no text"))
        return None
    reason = _bad_text(body)
    if reason:
        problems.append(Problem(name, n, 1, f"prompt {pid!r} text {reason}"))
        return None
    if len(body) > MAX_ROW_CHARS:
        problems.append(row_too_long(name, n))
        return None
    tags = row.get("tags")
    if tags is None or tags == "":
        tags = []
    elif isinstance(tags, str):
        tags = [t.strip() for t in re.split(r"[;,|]", tags) if t.strip()]
    elif not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        problems.append(
            Problem(
                name,
                n,
                1,
                f"prompt {pid!r}: tags must be a list of strings, not {tags!r}"[:200],
                allowed='["a", "b"] or "a;b"',
            )
        )
        return None
    params = row.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        problems.append(Problem(name, n, 1, f"prompt {pid!r}: params must be an object"))
        return None
    for key in params:
        if key in RESERVED_PARAMS:
            problems.append(
                Problem(
                    name,
                    n,
                    1,
                    f"prompt {pid!r}: {key!r} cannot be a parameter",
                    allowed=RESERVED_PARAMS[key],
                )
            )
            return None
    return pid, body, params, tuple(t.strip() for t in tags)


def duplicate_texts(prompts: Sequence[Prompt], shown: dict[str, str]) -> list[Problem]:
    """One problem per text listed more than once with the same parameters (it would be paid twice).

    A first pass keeps 64-bit fingerprints of (text, params) only; the prompts whose fingerprint
    came twice are then compared exactly (none, for a caption set without repeats).
    """
    suspects = parts_log(
        prompts.parts if isinstance(prompts, Prompts) else (prompts,),
        lambda table: table.texts_params,
        lambda p: text_fingerprint(p.text, p.params),
    ).repeated()
    if not suspects:
        return []
    groups: dict[tuple[str, str], list[Prompt]] = {}
    for p in prompts:
        if text_fingerprint(p.text, p.params) & Fingerprints.MASK in suspects:
            groups.setdefault((p.text, _params_key(p.params)), []).append(p)
    problems = []
    for same in groups.values():
        if len(same) < 2:
            continue
        first, second = same[0], same[1]
        rows = ", ".join(f"{shown.get(p.where[0], p.where[0])}:{p.where[1]}" for p in same[:10])
        rows += " …" if len(same) > 10 else ""
        problems.append(
            Problem(
                shown.get(second.where[0], second.where[0]),
                second.where[1],
                second.where[2],
                f"the text of prompt {first.id!r} is listed {len(same)} times (at {rows}); "
                "each copy would be rendered and paid again",
                json_path(second.path),
                allowed="keep one copy, or give the copies different params",
            )
        )
    return problems


def _params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)
