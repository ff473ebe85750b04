"""Prompt files: .jsonl, .csv, .txt and .parquet streamed into compact tables, checked row by row."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.errors import ManifestError, Problem, closest
from renderer.manifest import backed, rowfiles
from renderer.manifest.checks import RESERVED_PARAMS
from renderer.manifest.columnar import BATCH_CHECK, column_bytes, plain_captions
from renderer.manifest.kept import Kept, binary_columns
from renderer.manifest.located import json_path
from renderer.manifest.reading import (
    MAX_MANIFEST_BYTES,
    MAX_ROW_CHARS,
    raw_blocks,
    read_text_file,
    row_too_long,
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

# Problems at the manifest's `keep:` for kept names the file does not have, given its columns.
Absent = Callable[[Iterable[str]], list[Problem]]

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_ROW_CHARS",
    "duplicate_texts",
    "prompt_file",
    "read_text_file",
    "text_id",
]


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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


def prompt_file(
    doc: Located,
    base: Path,
    index: int,
    rel: str,
    columns: dict[str, str] | None = None,
    comments: bool = True,
    keep: Sequence[str] = (),
) -> tuple[PromptTable, list[Problem]]:
    """The prompts of one `- file:` entry. `columns` maps text/id/tags to the file's own column
    names (a caption set's `caption`, say); a row without an id gets one derived from its text.
    `keep` names more columns whose values each row carries into the dataset (`Prompt.extra`;
    see keep_problems for the names allowed). The file is read as a stream: any size, each
    row at most MAX_ROW_CHARS."""
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

    def absent(present: Iterable[str]) -> list[Problem]:
        """A problem at `keep:` for each kept name that is not one of the file's columns."""
        present = list(present)
        folded = {p.lower(): p for p in present}  # `Source_URL` for source_url
        listed = ", ".join(present[:20]) + (" …" if len(present) > 20 else "")
        return [
            doc.problem(
                ("prompts", index, "keep", j),
                f"the prompt file {rel} has no column {name!r} to keep",
                allowed=f"its columns: {listed}" if present else "the file's own columns",
                suggestion=folded.get(name.lower()) or closest(name, present),
            )
            for j, name in enumerate(keep)
            if name not in present
        ]

    kept = Kept(keep) if keep and Path(rel).suffix != ".txt" else None
    if Path(rel).suffix == ".parquet":
        read = PromptTable(shown, where, kept)
        found = _parquet_rows(path, shown, columns, read, absent)
        if not len(read) and not found:
            found.append(doc.problem(where, f"the prompt file {rel} holds no prompts"))
        return read, found
    name = str(path)
    table = PromptTable(name, where, kept)
    problems: list[Problem] = []
    try:
        read_text_file(path, "prompt file", 0, check_only=True)
        if Path(rel).suffix == ".txt":
            _txt_rows(path, name, comments, table)
        else:

            def long_way(rows: Iterable[tuple[int, dict[str, Any]]]) -> None:
                _prompts(rows, name, columns, problems, table)

            if Path(rel).suffix == ".csv":
                rowfiles.csv_into(path, name, columns, problems, table, long_way, absent)
            else:
                seen: dict[str, None] = {}  # a JSONL file's keys, first seen first (`keep:`)
                rowfiles.jsonl_into(
                    path, name, columns, problems, table, long_way, seen if kept else None, keep
                )
                if kept is not None:
                    # A kept key no row has is a misspelling (a key only some rows have is null
                    # in the others): known once the whole file is read.
                    problems += absent(seen)
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
    """Rows (renamed to id/text/tags by `columns`) → the table; problems appended. The table's
    kept columns are taken from each row first (null where a row lacks one)."""
    mapped = {columns.get(k, k): k for k in ("id", "text", "tags")}
    kept = table.kept
    names = set(kept.names) if kept is not None else set()
    extra = None
    # Rows of a text alone, good as they stand (what _row_prompt would take as is), are added
    # a batch at a time (with their kept values); any other row first adds those before it,
    # then goes the long way.
    lines: list[int] = []
    texts: list[str] = []
    extras: list[str] = []  # with kept columns, each of those rows' values
    for n, row in rows:
        if kept is not None:
            extra = kept.row([row.get(k) for k in kept.names])
            if not columns:
                row = {k: v for k, v in row.items() if k not in names}
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
            if extra is not None:
                extras.append(extra)
            if len(texts) >= 4096:
                table.add_captions(0, lines, texts, extras)
                lines, texts, extras = [], [], []
            continue
        table.add_captions(0, lines, texts, extras)
        lines, texts, extras = [], [], []
        # A row without an id gets one derived from its text, made when the row is read
        # (text_id): the table stores "" for it.
        derived = (
            "id" not in row and isinstance(row.get("text"), str) and not _bad_text(row["text"])
        )
        got = _row_prompt(row, name, n, problems, derived)
        if got is not None:
            table.add(n, *got, extra=extra)
    table.add_captions(0, lines, texts, extras)


def _parquet_rows(
    path: Path, shown: str, columns: dict[str, str], table: PromptTable, absent: Absent
) -> list[Problem]:
    """A Parquet file's rows (row number as the line) into `table`, reading only the columns
    used (and kept), a batch at a time."""
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
    kept = table.kept
    if kept is not None:
        missing = absent(present) or binary_columns(handle.schema_arrow, kept.names, shown)
        if missing:
            return missing
    problems: list[Problem] = []
    read = [c for c in wanted if c in present]
    kept_names = kept.names if kept is not None else ()
    n, backing = 0, None
    if (
        read == [text_column]
        and column_bytes(handle, {text_column, *kept_names}) > backed.BACKED_BYTES
    ):
        # A large caption set keeps no text nor kept values: its rows are read again when
        # needed (backed.py); its kept values' kinds are noted as it is read.
        backing = backed.ParquetBacking(path, shown, text_column, table.line, kept_names)
        table.back(backing)
    for batch in handle.iter_batches(columns=[*read, *kept_names], batch_size=16384):
        if read == [text_column]:
            values = [batch.column(c).to_pylist() for c in kept_names]
            # Kept values stored as read; a backed table's only noted (they are read again).
            extras: list[Any] = [None] * batch.num_rows
            if kept is not None and backing is None:
                extras = kept.rows(values)
            elif kept is not None:
                kept.note(values)
            if batch.num_rows >= BATCH_CHECK and plain_captions(batch.column(0)):
                table.add_captions(n + 1, None, batch.column(0).to_pylist(), extras)
                n += batch.num_rows
                continue
            # Text only (a caption set): each row's id is derived from its text.
            texts = batch.column(0).to_pylist()
            for i, body in enumerate(texts):
                n += 1
                if isinstance(body, str) and len(body) <= MAX_ROW_CHARS and not _bad_text(body):
                    table.add_caption(n, body, extras[i])
                else:
                    # A problem to report: the long way, for its message.
                    _prompts(
                        [(n, {} if body is None else {text_column: body})],
                        shown,
                        columns,
                        problems,
                        PromptTable(shown, table.path),
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
                allowed="id, text, tags, params; or carry it into the dataset: `keep: [NAME]`",
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
