"""What the tools after a run read from the state (export, diff, status, plan): a run's jobs in
pages by plan order, whatever its size or database, and what can be summed or grouped by the
database instead of read job by job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from renderer.state.core import StoreCore
from renderer.state.rows import distinct_stem, key_blob

PAGE = 2000  # rows per page when the runner reads pending work or finished files, and the tools


class Reading(StoreCore):
    """Streaming, grouped and per-path reads of the plan's jobs (a mixin of Store, under Queries)."""

    def stream(
        self, columns: str, where: str = "", args: tuple[Any, ...] = (), chunk: int = PAGE * 5
    ) -> Iterator[Any]:
        """Rows of the plan's jobs (the `jobs` view: `columns`, filtered by `where`), in plan order,
        read in pages of `chunk` by (plan_index, id): memory is one page whatever the run's size,
        with either database (psycopg would otherwise fetch a whole result at once).

        The order is the one metadata.jsonl and export_rows use; each page is its own statement,
        so a writer may commit between pages (a job finished meanwhile may or may not be seen).
        """
        last: tuple[int, int] = (-(2**62), -1)
        extra = f" AND ({where})" if where else ""
        sql = (
            f"SELECT plan_index AS plan_index_, id AS id_, {columns} FROM jobs WHERE in_plan = 1{extra} "
            # The first condition lets either database seek the plan_index index; the second breaks ties.
            "AND plan_index >= ? AND (plan_index > ? OR id > ?) ORDER BY plan_index, id LIMIT ?"
        )
        while True:
            page = self.db.execute(sql, (*args, last[0], last[0], last[1], chunk)).fetchall()
            yield from page
            if len(page) < chunk:
                return
            last = (int(page[-1]["plan_index_"]), int(page[-1]["id_"]))

    def axis_kinds(self) -> Iterator[dict[str, Any]]:
        """Each distinct `axes` of the plan once, in the order of its first job: what the dataset's
        columns are decided from (Columns.from_axes), without reading every job."""
        for r in self.db.execute(
            "SELECT axes, MIN(plan_index) AS first_at FROM jobs WHERE in_plan = 1 "
            "GROUP BY axes ORDER BY first_at"
        ):
            yield json.loads(r[0])

    # Each kept column's JSON types over the finished jobs' cells: (name, type, first cell, place
    # in it). Finished only: an export holds only those, and a caption set's plan has a cell per job
    # (a million, for a trial's few hundred finished ones).
    kept_sql = (
        "SELECT e.key, e.type, MIN(c.id), MIN(e.id) FROM cells c, json_each(c.extra) e "
        "WHERE c.extra IS NOT NULL AND c.id IN "
        "(SELECT cell FROM job WHERE in_plan = 1 AND state = 'downloaded') GROUP BY e.key, e.type"
    )

    def kept_kinds(self) -> dict[str, set[str]]:
        """Each kept column (`keep:`) of the plan's finished jobs → the dataset kinds of its values,
        in the order the first cell that has it names it: what an export types them from, in SQL.
        (A run types metadata.jsonl's from the manifest's whole prompt files: the same kinds
        unless the rows not finished yet hold other ones.)"""
        kinds = {"text": "string", "integer": "int64", "real": "float64"}
        found: dict[str, tuple[tuple[int, int], set[str]]] = {}
        for name, kind, cell, at in self.db.execute(self.kept_sql):
            first, seen = found.get(name, ((cell, at), set()))
            if kind in ("true", "false"):
                seen.add("bool")
            elif kind in kinds:
                seen.add(kinds[kind])
            found[name] = (min(first, (cell, at)), seen)
        return {name: seen for name, (_, seen) in sorted(found.items(), key=lambda i: i[1][0])}

    def model_names(self) -> set[str]:
        """Every model label and endpoint of the plan (what `diff --map` may name)."""
        names: set[str] = set()
        for model, endpoint in self.db.execute(
            "SELECT DISTINCT model, endpoint FROM jobs WHERE in_plan = 1"
        ):
            names.update((model, endpoint))
        return names

    def real_stems(self, jobs: Iterable[Any], batch: int = 500) -> Iterator[tuple[Any, str]]:
        """(job, the stem it will really write to) for each job of a plan, in order, as recording the plan
        would decide it (plansync): a recorded job keeps its own; a new job whose stem a recorded
        job owns (ignoring case) gets distinct_stem. What `plan` shows, read-only."""
        owned: set[int] | None = None  # hashes of every recorded stem, folded: read once if needed
        held: list[Any] = []

        def flush() -> Iterator[tuple[Any, str]]:
            nonlocal owned
            blobs = [key_blob(j.key) for j in held]
            where, args = self._keys_in("j.k", blobs)
            recorded = {
                bytes(r[0]): r[1]
                for r in self.db.execute(
                    f"SELECT j.k, v.stem FROM job j JOIN jobs v ON v.id = j.id WHERE {where}", args
                )
            }
            for j, blob in zip(held, blobs, strict=True):
                stem = recorded.get(blob)
                if stem is None:
                    if owned is None:
                        owned = {
                            hash(r[0].lower()) for r in self.db.execute("SELECT stem FROM jobs")
                        }
                    stem = j.stem
                    if (
                        hash(stem.lower()) in owned
                        and self.db.execute(
                            "SELECT 1 FROM jobs WHERE lower(stem) = ? LIMIT 1", (stem.lower(),)
                        ).fetchone()
                    ):
                        stem = distinct_stem(stem, j.key)
                yield j, stem
            held.clear()

        for job in jobs:
            held.append(job)
            if len(held) >= batch:
                yield from flush()
        if held:
            yield from flush()

    files_sql = "json_array_length(files)"  # the number of files a finished job wrote

    def images_by_model(self) -> dict[str, tuple[str, int]]:
        """model → (endpoint, images) over the plan's finished jobs, models in plan order: what an
        export's card and shard names need, counted in SQL (no job read into Python)."""
        return {
            r[0]: (r[1], int(r[2] or 0))
            for r in self.db.execute(
                f"SELECT model, MIN(endpoint), SUM({self.files_sql}), MIN(plan_index) AS first_at "
                "FROM jobs WHERE in_plan = 1 AND state = 'downloaded' GROUP BY model ORDER BY first_at"
            )
        }
