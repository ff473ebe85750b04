"""What the state answers: a job's row, pending work (derived by query, in pages), finished files,
counts and costs, the rows an export reads, and the runs recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from renderer.errors import StateError
from renderer.state.buckets import form_of
from renderer.state.reading import PAGE, Reading
from renderer.state.rows import (
    OPEN,
    STATES,
    Row,
    _dumps,
    key_blob,
)


class Queries(Reading):
    """What the state answers: a job's row, pending work (derived by query, in pages), finished files,"""

    def get(self, key: str) -> Row:
        row = self.db.execute(
            f"SELECT * FROM jobs WHERE id = {self.BY_KEY}", 2 * self._k(key_blob(key))
        ).fetchone()
        if row is None:
            raise StateError(f"job {key} is not in {self.where}")
        return Row.from_sql(row)

    def unfinished(self, before: int | None = None, *, others: bool = False) -> int:
        """Jobs of the plan not finished yet, held or not: 0 means the run is complete.

        `others`: only those this worker does not hold (free, expired, or another worker's).
        """
        sql, args = (
            "SELECT COUNT(*) FROM job WHERE " + OPEN + " AND plan_index < ?",
            list[Any]([before or 2**62]),
        )
        if others and self.owner is not None:
            sql += f" AND (owner IS NULL OR owner <> ? OR lease_until <= {self.NOW})"
            args.append(self.owner)
        return int(self.db.execute(sql, args).fetchone()[0])

    def pending(self) -> list[str]:
        """Keys of planned jobs that still need work, in plan order."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT key FROM jobs WHERE in_plan = 1 AND state NOT IN ('downloaded', 'failed') ORDER BY plan_index"
            )
        ]

    def pending_page(
        self, after: int, limit: int = PAGE, before: int | None = None
    ) -> list[tuple[int, str, str]]:
        """(plan_index, key, endpoint) of pending jobs after plan index `after`, in plan order.

        `before` bounds the plan index (a trial run's --max-jobs).
        """
        return [
            (int(r[0]), r[1], r[2])
            for r in self.db.execute(
                # OPEN as written in the partial index job_open: the page is read from it, in order.
                f"SELECT plan_index, key, endpoint FROM jobs WHERE {OPEN} "
                "AND plan_index > ? AND plan_index < ? ORDER BY plan_index LIMIT ?",
                (after, before if before is not None else 2**62, limit),
            )
        ]

    def pending_count(self, before: int | None = None) -> int:
        """Jobs still to do below `before`, counting those the background recording has not reached."""
        backlog = self.recorder.backlog(before) if self.recorder is not None else 0
        return self.unfinished(before) + backlog

    def rows(self, *, in_plan: bool | None = None, state: str | None = None) -> list[Row]:
        sql, args = "SELECT * FROM jobs WHERE 1 = 1", list[Any]()
        if in_plan is not None:
            sql += " AND in_plan = ?"
            args.append(int(in_plan))
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        return [Row.from_sql(r) for r in self.db.execute(sql + " ORDER BY plan_index, key", args)]

    def plan_rows_paged(self, page: int = PAGE) -> Iterator[Row]:
        """The jobs of the plan in plan order, read `page` rows at a time."""
        return (Row.from_sql(r) for r in self.plan_records_paged(page))

    def plan_records_paged(self, page: int = PAGE) -> Iterator[Any]:
        """The plan's `jobs` rows as the database gives them (columns by name, JSON still text),
        in plan order, `page` at a time: what `report` streams, decoding only what it uses.

        Keyset pages on (plan_index, id): memory is one page whatever the run's size, and each
        page is an index range scan, not an OFFSET that rereads what came before.
        """
        after: tuple[int, int] = (-1, -1)
        while True:
            batch = self.db.execute(
                "SELECT * FROM jobs WHERE in_plan = 1 AND (plan_index > ? OR (plan_index = ? AND id > ?)) "
                "ORDER BY plan_index, id LIMIT ?",
                (after[0], after[0], after[1], page),
            ).fetchall()
            if not batch:
                return
            yield from batch
            after = (int(batch[-1]["plan_index"]), int(batch[-1]["id"]))

    def axis_names(self) -> set[str]:
        """The parameter axes the plan's jobs have (one DISTINCT over the cells' axes, not per job)."""
        names: set[str] = set()
        for (text,) in self.db.execute("SELECT DISTINCT axes FROM jobs WHERE in_plan = 1"):
            names.update(json.loads(text) if isinstance(text, str) else text or {})
        return names

    def downloaded_files(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """(key, files) of every finished job, in no particular order, read in pages by key."""
        after = -1
        while True:
            page = self.db.execute(
                f"SELECT j.id, {self.key_sql}, j.files FROM job j WHERE j.id > ? AND j.in_plan = 1 "
                "AND j.state = 'downloaded' ORDER BY j.id LIMIT ?",
                (after, PAGE * 5),
            ).fetchall()
            if not page:
                return
            yield from ((r[1], json.loads(r[2])) for r in page)
            after = page[-1][0]

    def file_stats(self) -> Iterator[list[tuple[Any, Any, Any, Any]]]:
        """Pages of (ref, path, size, mtime_ns): one per recorded file of each finished job of the plan.

        What a rerun checks against the disk, without decoding each job's file list in Python
        (SQLiteStore reads columns). `ref` names the job: key_of(ref) is its key. Pages are whole
        jobs; write between pages freely.
        """
        page: list[tuple[str, Any, Any, Any]] = []
        for key, entries in self.downloaded_files():
            page.extend((key, e.get("path"), e.get("size"), e.get("mtime_ns")) for e in entries)
            if len(page) >= PAGE * 5:
                yield page
                page = []
        if page:
            yield page

    def key_of(self, ref: Any) -> str:
        """The key of the job a file_stats row names."""
        return str(ref)

    nsfw_sql = "json_extract(result, '$.has_nsfw_concepts')"

    def export_rows(self, after: float | None = None) -> Iterator[dict[str, Any]]:
        """Finished jobs in plan order, with what the dataset needs (of the result, only the NSFW flags),
        read in pages (`stream`).

        `after`: only jobs downloaded later than that (epoch s): what an append to metadata.jsonl needs.
        """
        since, args = ("", ()) if after is None else (" AND downloaded_at > ?", (after,))
        for r in self.stream(
            "key, prompt, prompt_id, model, endpoint, seed, axes, input, tags, files, request_id, "
            f"{self.nsfw_sql} AS nsfw, provider, downloaded_at, extra",
            f"state = 'downloaded'{since}",
            args,
        ):
            nsfw = r["nsfw"]
            yield {
                "key": r["key"],
                "prompt": r["prompt"],
                "prompt_id": r["prompt_id"],
                "model": r["model"],
                "endpoint": r["endpoint"],
                "seed": r["seed"],
                "axes": _loaded(r["axes"]),
                "input": json.loads(r["input"]),
                "tags": _loaded(r["tags"]),
                "files": json.loads(r["files"]),
                "request_id": r["request_id"],
                "provider": r["provider"],
                "downloaded_at": r["downloaded_at"],
                # the prompt's kept columns (`keep:`), or None
                "extra": json.loads(r["extra"]) if r["extra"] is not None else None,
                # the flags as JSON text: an array, or a bare scalar when the result had no list
                "has_nsfw_concepts": json.loads(nsfw)
                if isinstance(nsfw, str) and nsfw.startswith("[")
                else None,
            }

    def counts(self) -> dict[str, int]:
        found = {state: 0 for state in STATES}
        for state, n in self.db.execute(
            "SELECT state, COUNT(*) FROM job WHERE in_plan = 1 GROUP BY state"
        ):
            found[state] = int(n)
        found["no_longer_planned"] = int(
            self.db.execute("SELECT COUNT(*) FROM job WHERE in_plan = 0").fetchone()[0]
        )
        return found

    def submitted_by_account(self) -> dict[str | None, int]:
        """Submitted jobs of the plan per account that holds their request (None: the single key)."""
        return {
            r[0]: int(r[1])
            for r in self.db.execute(
                "SELECT account, COUNT(*) FROM job WHERE in_plan = 1 AND state = 'submitted' "
                "GROUP BY account"
            )
        }

    def ambiguous(self) -> int:
        """Jobs whose last submit has no recorded outcome (a crash between submit and commit)."""
        return int(
            self.db.execute(
                "SELECT COUNT(*) FROM job WHERE submit_started IS NOT NULL AND request_id IS NULL"
            ).fetchone()[0]
        )

    def unfinished_stems(self) -> Iterator[str]:
        """Stems of jobs whose files may be mid-write, planned or not.

        Only a job with a result writes files (state completed, or failed after one); a planned
        or submitted job has written nothing, and a million of them need not be listed.
        """
        for r in self.db.execute(
            "SELECT stem FROM jobs WHERE state != 'downloaded' AND "
            "(result IS NOT NULL OR state = 'completed')"
        ):
            yield r[0]

    def models_without_cost(self) -> list[str]:
        """Models of finished jobs with a file that has no recorded cost."""
        return [
            r[0]
            for r in self.db.execute(
                f"SELECT model FROM forms WHERE id IN (SELECT {form_of('cells')} FROM cells WHERE id IN (SELECT cell FROM job "
                "WHERE +in_plan = 1 AND +state = 'downloaded' AND uncosted > 0)) GROUP BY model ORDER BY model"
            )
        ]

    # The cost of every finished file, and whether some file has none: m008's columns, one scan.
    cost_sql = (
        "SELECT COALESCE(SUM(cost), 0), COALESCE(MAX(uncosted > 0), 0) "
        "FROM job WHERE +in_plan = 1 AND +state = 'downloaded'"
    )

    def cost(self) -> tuple[float, bool]:
        """(the recorded cost of every finished file of the plan, whether some file has no cost), summed in SQL."""
        total, uncosted = self.db.execute(self.cost_sql).fetchone()
        return float(total or 0.0), bool(uncosted)

    def done_by_model(self) -> dict[str, int]:
        """Downloaded jobs of the recorded plan, per model."""
        return {
            m: int(n)
            for m, n in self.db.execute(
                "SELECT model, COUNT(*) FROM jobs WHERE in_plan = 1 AND state = 'downloaded' GROUP BY model"
            ).fetchall()
        }

    def done_keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM jobs WHERE state = 'downloaded'")}

    def start_run(self, ambiguous: int) -> int:
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO runs (started_at, ambiguous_resubmits) VALUES (?, ?) RETURNING id",
                (time.time(), ambiguous),
            ).fetchone()
            self.run_id = int(row[0])
            return self.run_id

    def finish_run(self, run_id: int, outcome: str, summary: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, outcome = ?, summary = ? WHERE id = ?",
                (time.time(), outcome, _dumps(summary), run_id),
            )

    def runs_started(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def total_ambiguous(self) -> int:
        return int(
            self.db.execute("SELECT COALESCE(SUM(ambiguous_resubmits), 0) FROM runs").fetchone()[0]
        )

    def last_summary(self) -> dict[str, Any] | None:
        """What the last finished run recorded (run.json's content), if any."""
        row = self.db.execute("SELECT summary FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return json.loads(row[0]) if row and row[0] else None


def _loaded(text: str) -> Any:
    """json.loads, without its cost (~2 µs, a twentieth of an export's per image) for the empty
    object and list most jobs' axes and tags are; fresh ones each time, as json.loads gives."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return json.loads(text)
