"""Prompt files: .jsonl, .csv and .txt read into prompts, bounded and checked row by row."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import stat
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.errors import ManifestError, Problem, closest
from renderer.manifest.checks import RESERVED_PARAMS
from renderer.manifest.located import json_path
from renderer.manifest.types import Prompt

if TYPE_CHECKING:
    from renderer.manifest.located import Located, Path_


# Loading costs about 12x the file in memory (a 16.6 MB CSV of 200,000 prompts grew the process
# by 199 MB), so 64 MB (~800,000 prompts) keeps a load under a gigabyte; larger is refused, named.
MAX_PROMPT_FILE_BYTES = 64 * 1024 * 1024


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
    text: str, name: str, columns: dict[str, str] | None = None
) -> tuple[list[tuple[int, dict[str, Any]]], list[Problem]]:
    """Rows of a CSV read by the csv module from the undecoded-newline text (quoted line breaks kept).

    Without `columns` the header is id,text[,tags] exactly; with it (a caption set's own
    header), the named text column must be there and the other columns are not read.
    """
    problems: list[Problem] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, dict[str, Any]]] = []
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
                        return [], problems
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
                    return [], problems
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
            rows.append((line, dict(zip(header, record, strict=True))))
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
    return rows, problems


def _jsonl_rows(text: str, name: str) -> tuple[list[tuple[int, dict[str, Any]]], list[Problem]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[Problem] = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_no_constant)
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
        rows.append((n, row))
    return rows, problems


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not a finite number")


def text_id(body: str) -> str:
    """An id derived from a prompt's text: its first words and 48 bits of its hash.

    Stable on rerun and independent of every other row (inserting a row renames no prompt);
    distinct texts collide with odds of ~1 in 500 at a million prompts sharing their first
    words (24 bits collided ~12 times in 20,000).
    """
    words = re.sub(r"[^a-z0-9]+", "-", body.lower()).strip("-").split("-")[:4]
    pid = (
        "-".join(w for w in words if w)[:40] + "-" + hashlib.sha256(body.encode()).hexdigest()[:12]
    )
    return pid.lstrip("-")


def prompt_file(
    doc: Located,
    base: Path,
    index: int,
    rel: str,
    columns: dict[str, str] | None = None,
    comments: bool = True,
) -> tuple[list[Prompt], list[Problem]]:
    """The prompts of one `- file:` entry. `columns` maps text/id/tags to the file's own column
    names (a caption set's `caption`, say); a row without an id gets one derived from its text."""
    where = ("prompts", index, "file")
    columns = columns or {}
    if "\0" in rel:
        return [], [doc.problem(where, "the prompt file path contains a NUL character")]
    path = (base / rel).resolve()
    if not path.exists():
        return [], [
            doc.problem(where, f"prompt file not found: {rel} (relative to the manifest's folder)")
        ]
    shown = str(
        base / rel
    )  # as the user wrote it, relative to where they are; `where` keeps the full path
    if path.suffix == ".parquet":
        table, found = _parquet_rows(path, shown, columns)
        read = _prompts(table, shown, where, columns, found)
        if not read and not found:
            found.append(doc.problem(where, f"the prompt file {rel} holds no prompts"))
        return read, found
    try:
        text, name = read_text_file(
            path,
            "prompt file",
            MAX_PROMPT_FILE_BYTES,
            too_large=f"at most {MAX_PROMPT_FILE_BYTES >> 20} MB a text prompt file (~270,000 captions of "
            "245 bytes): use a .parquet file (read column by column, no such cap), or split it into "
            "several `- file:` entries",
        )
    except ManifestError as exc:
        return [], [replace(p, file=shown) for p in exc.problems]
    prompts: list[Prompt] = []
    problems: list[Problem] = []
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        return [], [Problem(name, line, 1, "the prompt file contains a NUL byte; prompts are text")]
    if path.suffix == ".txt":
        for n, text_line in enumerate(text.split("\n"), 1):
            if not text_line.strip() or (comments and text_line.lstrip().startswith("#")):
                continue
            body = text_line.strip()
            prompts.append(Prompt(text_id(body), body, {}, (), (name, n, 1), where))
    else:
        rows, problems = (
            _csv_rows(text, name, columns) if path.suffix == ".csv" else _jsonl_rows(text, name)
        )
        prompts = _prompts(rows, name, where, columns, problems)
    if not prompts and not problems:
        problems.append(doc.problem(where, f"the prompt file {rel} holds no prompts"))
    return prompts, [replace(p, file=shown) if p.file == name else p for p in problems]


def _prompts(
    rows: list[tuple[int, dict[str, Any]]],
    name: str,
    where: Path_,
    columns: dict[str, str],
    problems: list[Problem],
) -> list[Prompt]:
    """Rows (renamed to id/text/tags by `columns`) → prompts; problems appended."""
    prompts = []
    mapped = {columns.get(k, k): k for k in ("id", "text", "tags")}
    for n, row in rows:
        if columns:
            # Mapped: the named columns are read; any other column of a caption set is not ours.
            row = {mapped[k]: v for k, v in row.items() if k in mapped}
        if "id" not in row and isinstance(row.get("text"), str) and not _bad_text(row["text"]):
            row = {**row, "id": text_id(row["text"])}
        prompt = _row_prompt(row, name, n, where, problems)
        if prompt is not None:
            prompts.append(prompt)
    return prompts


def _parquet_rows(
    path: Path, shown: str, columns: dict[str, str]
) -> tuple[list[tuple[int, dict[str, Any]]], list[Problem]]:
    """Rows of a Parquet file (row number as the line), reading only the columns used."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return [], [
            Problem(
                shown,
                1,
                1,
                "reading a .parquet prompt file needs pyarrow",
                allowed="pip install 'renderer-batch[datasets]'",
            )
        ]
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:
        return [], [Problem(shown, 1, 1, f"not a readable Parquet file: {exc}"[:300])]
    present = list(handle.schema_arrow.names)
    wanted = [columns.get(k, k) for k in ("id", "text", "tags")]
    text_column = columns.get("text", "text")
    if text_column not in present:
        return [], [
            Problem(
                shown,
                1,
                1,
                f"no column {text_column!r} for the prompt text",
                allowed="columns: " + ", ".join(present[:20]) + "; name one with `text: COLUMN`",
                suggestion=closest(text_column, present),
            )
        ]
    rows: list[tuple[int, dict[str, Any]]] = []
    n = 0
    for batch in handle.iter_batches(columns=[c for c in wanted if c in present], batch_size=65536):
        for record in batch.to_pylist():
            n += 1
            rows.append((n, {k: v for k, v in record.items() if v is not None}))
    return rows, []


def _row_prompt(
    row: dict[str, Any], name: str, n: int, where: Path_, problems: list[Problem]
) -> Prompt | None:
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
    pid, body = row.get("id"), row.get("text")
    if not isinstance(pid, str) or not _SAFE_ID.fullmatch(pid):
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
    return Prompt(pid, body, params, tuple(t.strip() for t in tags), (name, n, 1), where)


def duplicate_texts(prompts: list[Prompt], shown: dict[str, str]) -> list[Problem]:
    """One problem per text listed more than once with the same parameters (it would be paid twice)."""
    groups: dict[tuple[str, str], list[Prompt]] = {}
    for p in prompts:
        groups.setdefault((p.text, json.dumps(p.params, sort_keys=True, default=str)), []).append(p)
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


MAX_MANIFEST_BYTES = (
    16 * 1024 * 1024
)  # a manifest is text; larger is a wrong file (lists belong in prompt files)


def read_text_file(
    path: Path, what: str, limit: int, too_large: str | None = None
) -> tuple[str, str]:
    """(text, shown name) of a regular UTF-8 file (BOM or not); ManifestError for every other case.

    Guards each OS-level problem: NUL in the path, missing, a directory, a device or pipe
    (`/dev/zero` would never end), unreadable, too large, not UTF-8 (with the byte offset).
    """
    shown = str(path)
    if "\0" in shown:
        raise ManifestError(
            [Problem(shown.replace("\0", "\\0"), 1, 1, f"the {what} path contains a NUL byte")]
        )
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ManifestError(
            [Problem(shown, 1, 1, f"no such {what} file")],
            hint="check the path; manifests/ has examples",
        ) from None
    except OSError as exc:
        raise ManifestError(
            [Problem(shown, 1, 1, f"cannot read the {what}: {exc.strerror or exc}")]
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise ManifestError([Problem(shown, 1, 1, f"is a directory, not a {what} file")])
    if not stat.S_ISREG(info.st_mode):
        raise ManifestError(
            [
                Problem(
                    shown,
                    1,
                    1,
                    f"is not a regular file (a device, pipe or socket); give a {what} file",
                )
            ]
        )
    if info.st_size > limit:
        raise ManifestError(
            [
                Problem(
                    shown,
                    1,
                    1,
                    f"the {what} is {info.st_size:,} bytes; the limit is {limit:,}",
                    allowed=too_large or f"a {what} of at most {limit:,} bytes",
                )
            ]
        )
    try:
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise ManifestError(
            [Problem(shown, 1, 1, f"cannot read the {what}: {exc.strerror or exc}")]
        ) from None
    return decode_utf8(raw, shown, what), shown


def decode_utf8(raw: bytes, shown: str, what: str) -> str:
    """UTF-8 with or without a BOM; anything else is located by line and byte offset."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ManifestError([Problem(shown, 1, 1, f"the {what} is UTF-16 text; save it as UTF-8")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ManifestError(
            [
                Problem(
                    shown,
                    line,
                    col,
                    f"the {what} is not UTF-8 text: byte 0x{raw[exc.start]:02x} "
                    f"at byte offset {exc.start} cannot be decoded",
                    allowed="UTF-8 (with or without BOM); re-save it as UTF-8",
                )
            ]
        ) from None
