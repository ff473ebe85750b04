"""What the state hands out and takes in: job states, the Row of a job, claimed jobs, key encodings,
and the translation of a database error into a StateError.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renderer.errors import StateError
from renderer.layout import DB_NAME

STATES = ("planned", "submitted", "completed", "downloaded", "failed")


FINISHED = ("downloaded", "failed")


# The jobs a claim may take (a partial index holds exactly these; the text must match it).
OPEN = "in_plan = 1 AND state NOT IN ('downloaded', 'failed')"


DAMAGED_HINT = (
    f"if the file is damaged, move {DB_NAME} aside (and its -wal/-shm files) and rerun: the state is "
    "rebuilt from the images' sidecars, so finished jobs are not paid for again"
)


@dataclass(frozen=True)
class Row:
    """A job as stored."""

    key: str
    plan_index: int | None
    in_plan: bool
    endpoint: str
    model: str
    prompt_id: str
    prompt: str
    seed: int | None
    axes: dict[str, Any]
    stem: str
    input: dict[str, Any]
    num_images: int
    tags: list[str]
    source: str
    state: str
    attempts: int
    submit_started: float | None
    request_id: str | None
    status_url: str | None
    response_url: str | None
    cancel_url: str | None
    submitted_at: float | None
    completed_at: float | None
    downloaded_at: float | None
    result: dict[str, Any] | None
    files: list[dict[str, Any]] | None
    error: str | None
    error_kind: str | None
    provider: str | None = None
    account: str | None = (
        None  # the account name that submitted request_id (None: the single account)
    )
    extra: str | None = None  # the prompt's kept columns (`keep:`), a JSON object text

    def evolve(self, **changes: Any) -> Row:
        """A copy with `changes` (fields by name): dataclasses.replace without re-running __init__ (hot path)."""
        unknown = changes.keys() - self.__dict__.keys()
        if unknown:
            raise TypeError(f"Row has no field(s) {sorted(unknown)}")
        new = object.__new__(Row)
        new.__dict__.update(self.__dict__, **changes)
        return new

    @classmethod
    def from_sql(cls, r: sqlite3.Row) -> Row:
        """The Row of a `jobs` row (any column order; columns Row has no field for are left).

        Built into the instance's __dict__ as `evolve` does: the frozen dataclass's __init__
        (a guarded setattr per field, 31 of them) was most of a read's Python cost, ~17 us a
        job on every step's read."""
        values = dict(zip(r.keys(), r, strict=True))
        for name in _JSON_FIELDS:
            text = values[name]
            values[name] = json.loads(text) if text is not None else None
        values["in_plan"] = bool(values["in_plan"])
        values.setdefault("extra", None)  # a database from before m011 (an old test's schema)
        new = object.__new__(Row)
        new.__dict__.update({name: values[name] for name in _FIELDS})
        return new


# Row's fields, and those stored as JSON text.
_FIELDS = tuple(Row.__dataclass_fields__)
_JSON_FIELDS = ("axes", "input", "tags", "result", "files")


def sql_error(path: Path, exc: sqlite3.Error) -> StateError:
    """An SQLite failure as the person running renderer needs it: what, where, what to do."""
    text = str(exc)
    if "full" in text:
        return StateError(
            f"{path}: cannot write the run database: the disk is full ({text})",
            hint="free space on that disk, then rerun the same command: nothing recorded is lost "
            "and nothing is paid twice",
        )
    if "readonly" in text or "read-only" in text:
        return StateError(
            f"{path}: cannot write the run database ({text})",
            hint="make the run folder writable, then rerun the same command",
        )
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return StateError(f"{path}: the run database is damaged ({text})", hint=DAMAGED_HINT)
    return StateError(
        f"{path}: the run database failed: {text}",
        hint="rerun the same command; if it fails again, " + DAMAGED_HINT,
    )


def distinct_stem(stem: str, key: str) -> str:
    """A job's own path when its natural one belongs to another job: the stem plus part of its key."""
    return f"{stem}_{key.removeprefix('j1-')[:8]}"


_KEY = re.compile(r"j1-(?:[0-9a-f]{2})+")


def key_blob(key: str) -> bytes:
    """A job key as stored (column `k`): the bytes of its hex digest (20 for `j1-` + 40 hex).

    Any other text (tools and tests may name jobs freely) is kept whole in `key_text`, and `k`
    is then the sha256 of it, so `k` alone still finds every job."""
    if _KEY.fullmatch(key):
        return bytes.fromhex(key[3:])
    return hashlib.sha256(f"renderer-key:{key}".encode()).digest()


def key_text(key: str) -> str | None:
    """What column `key_text` keeps: None for the keys renderer makes."""
    return None if _KEY.fullmatch(key) else key


_HEX12 = re.compile(r"[0-9a-f]{12}")
_SLUG_HEAD = re.compile(r"[A-Za-z0-9 ]*")  # what lower() and replace() treat alike in both


def coded_id(pid: Any, prompt: Any) -> int | None:
    """A prompt id derived from its text (manifest.table.text_id: `slug-<12 hex>`) as cells.pid
    stores it (m013): the slug's length << 48 | the 12 hex digits, when the slug is the prompt's
    ASCII head lower-cased with spaces as '-' (as migrations.SQLITE_PID rebuilds it); else None
    (also for values that are not text: a prompt that is not a string, a hand-edited database,
    where raising in m013 would lock the user out of their run).
    """
    if not isinstance(pid, str) or not isinstance(prompt, str):
        return None
    if len(pid) < 12 or not _HEX12.fullmatch(pid, len(pid) - 12):
        return None
    n = max(len(pid) - 13, 0)
    head = prompt[:n]
    if n > 255 or len(head) != n or not _SLUG_HEAD.fullmatch(head):
        return None
    rebuilt = (head.lower().replace(" ", "-") + "-" if n else "") + pid[-12:]
    return (n << 48) | int(pid[-12:], 16) if rebuilt == pid else None


def blob_key(blob: bytes, text: str | None) -> str:
    return text if text is not None else "j1-" + bytes(blob).hex()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class LeaseLost(StateError):
    """This worker no longer holds the job's lease: another worker may own it now; nothing was recorded."""


@dataclass(frozen=True, order=True)
class Claimed:
    """A job now leased to this worker."""

    plan_index: int
    key: str
    endpoint: str


def file_columns_sql(files: str) -> str:
    """SET clauses deriving a job's file columns (see m008_file_columns) from the JSON `files`.

    Text that is not a JSON array (never written by renderer; a hand-edited database) and
    entries that are not objects derive NULLs and count as uncosted instead of raising: a
    migration that raised would lock the user out of their run.
    """
    f = f"CASE WHEN json_valid({files}) THEN CASE WHEN json_type({files}) = 'array' THEN {files} END END"
    one = f"CASE WHEN json_array_length({f}) = 1 THEN json_extract({f}, '$[0].%s') END"
    number = "CASE WHEN type = 'object' THEN json_type(value, '$.cost') IN ('integer', 'real') ELSE 0 END"
    return (
        f"fpath = {one % 'path'}, fsize = {one % 'size'}, fmtime = {one % 'mtime_ns'}, "
        f"cost = (SELECT SUM(json_extract(value, '$.cost')) FROM json_each({f}) WHERE {number}), "
        f"uncosted = (SELECT COUNT(*) FROM json_each({f}) WHERE NOT COALESCE({number}, 0))"
    )
