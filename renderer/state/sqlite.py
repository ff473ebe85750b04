"""The SQLite backend: one run directory's renderer.sqlite, one writer at a time (the run lock)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from renderer.errors import StateError
from renderer.layout import DB_NAME
from renderer.state import queries
from renderer.state.keys import build_key_index, by_key_sql
from renderer.state.migrations import (
    JOB_COLUMNS,
    SQLITE_KEY,
    SQLITE_STEM_HEAD,
    cells_v7_views,
    migrate,
)
from renderer.state.rows import LeaseLost, key_blob, key_text, sql_error
from renderer.state.store import Store


class SQLiteStore(Store):
    """The embedded default: renderer.sqlite in the run directory, used by one process at a time."""

    def __init__(self, run_dir: Path, *, readonly: bool = False, keyless: bool = False) -> None:
        self.run_dir = run_dir
        self.path = run_dir / DB_NAME
        self.where = str(self.path)
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path)
            self.db.row_factory = sqlite3.Row
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.execute("PRAGMA busy_timeout=5000")
                applied = migrate(self.db)
                # m013 copied a state's cells, m014 deleted forms: their old pages are returned to
                # the disk, once (VACUUM is atomic; if it fails, the committed migration stays).
                # m014 alone on a state with nothing to move frees no page: no VACUUM then.
                if (
                    {"m013_compact", "m014_buckets"} & set(applied)
                    and "m001_jobs" not in applied
                    and self.db.execute("PRAGMA freelist_count").fetchone()[0]
                ):
                    self.db.execute("VACUUM")
                if keyless:  # the recorder's own connection (see PlanRecorder)
                    self.keyless = True
                elif self.db.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'job' AND type = 'table'"
                ).fetchone():  # a recording killed before its end left the key index out
                    with self.db:
                        build_key_index(self.db)
            elif self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'jobs' AND type = 'table'"
            ).fetchone():
                _old_schema_views(self.db)
            elif (
                self.db.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'cells' AND type = 'table'"
                ).fetchone()
                and not self.db.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'forms'"
                ).fetchone()
            ):
                _cells_v7_views(self.db)
        except sqlite3.Error as exc:
            raise sql_error(self.path, exc) from exc
        self._deferred = 0  # changes waiting in the open transaction for commit()
        self._undone: StateError | None = (
            None  # why deferred changes were rolled back (commit() raises it)
        )
        stat = os.stat(self.path) if self.path.exists() else None
        self._identity = (stat.st_dev, stat.st_ino) if stat else (0, 0)

    group_commit = True

    # m013: the key index holds the key's first 4 bytes (state/keys.py); a lookup names them.
    K = "substr(k, 1, 4) = ? AND k = ?"

    BY_KEY = by_key_sql(K)

    stem_head_sql = SQLITE_STEM_HEAD

    coded_ids = True

    def _k(self, blob: bytes) -> tuple[bytes, ...]:
        return (blob[:4], blob)

    def _keys_in(self, column: str, blobs: list[bytes]) -> tuple[str, list[bytes]]:
        marks = ",".join("?" * len(blobs))
        return f"substr({column}, 1, 4) IN ({marks}) AND {column} IN ({marks})", [
            *(b[:4] for b in blobs),
            *blobs,
        ]

    def reopen(self, keyless: bool = False) -> SQLiteStore:
        return SQLiteStore(self.run_dir, keyless=keyless)

    @contextmanager
    def _tx(self, defer: bool = False) -> Iterator[sqlite3.Connection]:
        deferred = defer and self.grouping
        try:
            yield self.db
            if deferred:
                self._deferred += 1
            else:
                self.db.commit()  # and with it every change deferred before this one
                self._deferred = 0
        except LeaseLost:
            # The fenced statement changed nothing; other jobs' deferred changes stay for commit().
            if not self._deferred:
                self.db.rollback()
            raise
        except sqlite3.Error as exc:
            error = sql_error(self.path, exc)
            self._undo(error)
            raise error from exc
        except BaseException:
            self._undo(
                StateError(
                    f"{self.path}: a state change was interrupted; recent changes were undone",
                    hint="rerun the same command: nothing committed is lost",
                )
            )
            raise

    def _undo(self, error: StateError) -> None:
        """Roll the open transaction back; deferred changes went with it, so their commit() must fail."""
        if self._deferred:
            self._undone = self._undone or error
        self._deferred = 0
        with suppress(sqlite3.Error):
            self.db.rollback()

    def commit(self) -> None:
        if self._deferred:
            with self._tx():
                pass
        undone, self._undone = self._undone, None
        if undone is not None:
            raise undone

    def checkpoint(self) -> None:
        """The write-ahead log folded into the database now (see StoreCore.checkpoint). PASSIVE:
        it waits for no lock and leaves alone what a reader still uses; a failure changes nothing
        (the log stays, and is folded in later as usual)."""
        if self._deferred:  # (changes waiting for their group commit: a checkpoint waits for them)
            return
        with suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def meta(self, name: str) -> str | None:
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
            return None  # a read-only open of a database from before migration 4
        return super().meta(name)

    def workers(self) -> list[dict[str, Any]]:
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'workers'").fetchone() is None:
            return []  # a read-only open of a database from before migration 6
        if not any(r[1] == "left_at" for r in self.db.execute("PRAGMA table_info(workers)")):
            return []  # (before migration 10: a run of an older version, long over)
        return super().workers()

    def gone(self) -> bool:
        """Has the database file been deleted or replaced since it was opened (the run directory removed)?"""
        try:
            stat = os.stat(self.path)
        except OSError:
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def downloaded_files(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """(key, files) of every finished job, in no particular order, read in pages.

        Each page is one JSON document built by SQLite and decoded once: on a rerun of 100,000
        finished jobs this is several times faster than decoding each row's column on its own.
        Pages go by rowid, so rows changed while the caller works are neither skipped nor repeated.
        """
        after = 0
        while True:
            last, blob = self.db.execute(
                "SELECT MAX(r), '[' || COALESCE(group_concat('[' || json_quote(key) || ',' || files || ']', ','), '')"
                f" || ']' FROM (SELECT j.id AS r, {self.key_sql} AS key, j.files AS files FROM job j WHERE j.id > ? "
                "AND +j.in_plan = 1 AND +j.state = 'downloaded' ORDER BY j.id LIMIT ?)",
                (after, queries.PAGE * 5),
            ).fetchone()
            if last is None:
                return
            yield from ((key, entries) for key, entries in json.loads(blob))
            after = last

    def file_stats(self) -> Iterator[list[tuple[Any, Any, Any, Any]]]:
        # Plain columns for a job with one file (m008); only a job with several reads its JSON.
        # Rows carry the job's id, not its key: key_of() makes a key only for the few that changed.
        finished = "+j.in_plan = 1 AND +j.state = 'downloaded'"
        after = 0
        while (upto := _page_bound(self.db, after, finished)) is not None:
            yield self.db.execute(
                f"SELECT j.id, j.fpath, j.fsize, j.fmtime FROM job j WHERE j.id > ? AND j.id <= ? AND {finished} "
                "AND j.fpath IS NOT NULL UNION ALL SELECT j.id, json_extract(f.value, '$.path'), "
                "json_extract(f.value, '$.size'), json_extract(f.value, '$.mtime_ns') FROM job j, json_each(j.files) f "
                f"WHERE j.id > ? AND j.id <= ? AND {finished} AND j.fpath IS NULL",
                (after, upto, after, upto),
            ).fetchall()
            after = upto

    def key_of(self, ref: Any) -> str:
        row = self.db.execute(f"SELECT {self.key_sql} FROM job j WHERE j.id = ?", (ref,)).fetchone()
        return str(row[0])


def _page_bound(db: Any, after: int, where: str) -> int | None:
    """The last job id of the next page of finished jobs after `after` (None: no more)."""
    row = db.execute(
        f"SELECT MAX(id) FROM (SELECT id FROM job j WHERE id > ? AND {where} ORDER BY id LIMIT ?)",
        (after, queries.PAGE * 5),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _old_schema_views(db: sqlite3.Connection) -> None:
    """A read-only look at a database from before m007_cells (status, report, diff of an old run):
    temporary views give its one table the new names (temp shadows main); nothing is written."""
    have = {r[1] for r in db.execute("PRAGMA main.table_info(jobs)")}

    def col(name: str) -> str:
        return name if name in have else "0" if name == "claims" else "NULL"

    db.create_function("renderer_key", 1, key_blob, deterministic=True)
    db.create_function("renderer_key_text", 1, key_text, deterministic=True)
    db.execute(
        "CREATE TEMP VIEW forms AS SELECT rowid AS id, NULL AS digest, endpoint, model, axes, input AS input_head, "
        "NULL AS input_mid, NULL AS input_tail, num_images, tags, '' AS source_head, NULL AS stem_head, "
        "NULL AS stem_mid FROM main.jobs"
    )
    db.execute(
        "CREATE TEMP VIEW cells AS SELECT rowid AS id, rowid AS form, prompt_id, prompt, source, "
        "NULL AS stem_head, NULL AS quoted, NULL AS extra FROM main.jobs"
    )
    per_job = ", ".join(f"{col(c)} AS {c}" for c in JOB_COLUMNS.split(", "))
    db.execute(
        "CREATE TEMP VIEW job AS SELECT rowid AS id, renderer_key(key) AS k, renderer_key_text(key) AS key_text, "
        f"rowid AS cell, seed, plan_index, in_plan, stem, {per_job} FROM main.jobs"
    )
    db.execute(
        "CREATE TEMP VIEW jobs AS SELECT rowid AS id, key, plan_index, in_plan, endpoint, model, prompt_id, "
        f"prompt, seed, axes, stem, input, num_images, tags, source, {per_job}, NULL AS extra FROM main.jobs"
    )


def _cells_v7_views(db: sqlite3.Connection) -> None:
    """A read-only look at a database from m007 to m011 (see migrations.cells_v7_views)."""
    extra = any(r[1] == "extra" for r in db.execute("PRAGMA main.table_info(cells)"))
    for sql in cells_v7_views("main.cells", extra, SQLITE_KEY, "j.seed"):
        db.execute(sql)
