"""The plan into the state: a run's jobs recorded (first run, in the background) or made to agree with
the state's rows (a rerun), in batches, one transaction each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, cast

from renderer.plan.jobs import Jobs
from renderer.plan.unique import Fingerprints
from renderer.state.buckets import form_of
from renderer.state.cells import Cells
from renderer.state.keys import build_key_index, drop_key_index
from renderer.state.recording import RECORD_BATCH, Memo, PlanRecorder
from renderer.state.rows import (
    distinct_stem,
    key_blob,
    key_text,
)

if TYPE_CHECKING:
    from renderer.state.store import Store


SYNC_BATCH = 5000  # jobs per plan-sync transaction
# A first run records this many jobs before it starts submitting; the rest follow in the
# background in RECORD_BATCH rows a transaction (state/recording.py).
FIRST_BATCH = 500


class PlanSync(Cells):
    """The plan into the state: a run's jobs recorded (first run, in the background) or made to agree with"""

    def sync_plan(self, jobs: Iterable[Any], digest: str = "") -> bool:
        """Record the current plan: new jobs are planned; jobs no longer planned are kept, marked out.

        Streams: the plan is read in batches of SYNC_BATCH jobs, each looked up and written in
        its own transaction, so memory does not grow with the plan. Only what differs from the
        stored rows is written, and a plan whose `digest` matches the one recorded after the
        last complete sync is not read at all (a no-op rerun). Returns whether anything changed.
        """
        if digest and self.meta("plan_digest") == digest:
            return False
        with self._exclusive():
            if (
                digest and self.meta("plan_digest") == digest
            ):  # another worker recorded it meanwhile
                return False
            return self._sync_plan(jobs, digest)

    def record_plan(
        self,
        jobs: Sequence[Any],
        digest: str | Callable[[], str],
        upto: int | None = None,
        start: bool = True,
    ) -> PlanRecorder | None:
        """Record a plan into an empty state: the first batch now, the rest in the background.

        Rendering can start at once (claims take what is recorded, in plan order); the recorder
        (also `self.recorder`) says how far it got. None, with nothing recorded, unless the state
        has no job yet and this process alone writes it (SQLite; a plan with a digest): then
        call sync_plan as before. `digest` may be a function, called by the recorder at the end.
        `upto`: the run needs only the plan's first `upto` jobs (a --max-jobs trial): the recording
        stops once they are in, and the next run records the rest (sync_plan, as a recording).
        `start`: begin the background recording now; else the caller starts it (recorder.start)
        when it chooses, and before it waits for it.
        """
        if (
            self.shared
            or not digest
            or self.db.execute("SELECT 1 FROM job LIMIT 1").fetchone() is not None
        ):
            return None
        rest = iter(jobs)
        first = list(islice(rest, FIRST_BATCH))
        with self._tx() as db:  # the recorder builds it once the plan is in (PlanRecorder)
            drop_key_index(db)
        # The recorder's last step (the key index, one sorted pass) holds the write lock for a
        # while at a million jobs: this connection's commits wait for it rather than fail.
        self.db.execute("PRAGMA busy_timeout = 120000")
        self.keyless = True
        memo = Memo()  # handed on to the recorder: the cells of the first batch are shared on
        try:
            self._sync_batch(first, memo, True, Fingerprints())
        finally:
            self.keyless = False
        # PlanSync is only ever a part of Store (state/store.py), which the recorder drives.
        self.recorder = PlanRecorder(cast("Store", self), rest, digest, len(first), len(jobs), memo)
        if upto is not None and upto <= len(first):
            self.recorder.halt()  # (the thread only builds the key index)
        self.recorder.upto = upto
        if start:
            self.recorder.start()
        return self.recorder

    def reopen(self, keyless: bool = False) -> Store:
        """Another connection to the same state (for another thread); `keyless`: for a recording
        that builds the key index at its end (SQLite)."""
        raise NotImplementedError

    def _sync_plan(self, jobs: Iterable[Any], digest: str) -> bool:
        seen = self.seen_table
        empty = self.db.execute("SELECT 1 FROM job LIMIT 1").fetchone() is None
        if not empty:
            self.db.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {seen.split('.')[-1]} (k {self.blob} PRIMARY KEY)"
            )
            self.db.execute(f"DELETE FROM {seen}")
        # Paths already recorded, as fingerprints (8 bytes a row): a new job whose path another
        # recorded job owns gets its own path (see distinct_stem). The plan's own paths never clash.
        stems = Fingerprints()
        if not empty:
            for (stem,) in self.db.execute("SELECT stem FROM jobs"):
                stems.add(hash(stem.lower()))
        memo = Memo()
        changed = False
        batch: list[Any] = []
        # A state holding exactly the plan's first jobs (a trial, or a recording cut short) gets the
        # rest as a first run's recording does: appended, the key index built once at the end.
        prefix = None if empty or self.shared else self._recorded_prefix(jobs)
        try:
            for n, j in enumerate(jobs):
                if n == prefix:
                    if batch:
                        changed |= self._sync_batch(batch, memo, False, stems)
                        batch = []
                    with self._tx() as db:
                        drop_key_index(db)
                    self.keyless = True
                batch.append(j)
                if len(batch) >= (RECORD_BATCH if self.keyless else SYNC_BATCH):
                    changed |= self._sync_batch(batch, memo, empty or self.keyless, stems)
                    batch = []
            if batch:
                changed |= self._sync_batch(batch, memo, empty or self.keyless, stems)
        finally:
            if self.keyless:
                self.keyless = False
                with self._tx() as db:
                    build_key_index(db)
        with self._tx() as db:
            if not empty:
                # (A prefix of the plan has no job out of it, and its rest is not in `seen`.)
                if prefix is None:
                    cur = db.execute(
                        "UPDATE job SET in_plan = 0, plan_index = NULL "
                        f"WHERE in_plan = 1 AND k NOT IN (SELECT k FROM {seen})"
                    )
                    changed |= cur.rowcount > 0
                db.execute(f"DELETE FROM {seen}")
                if changed:  # cells no job points to any more (a job moved), forms no cell does
                    db.execute("DELETE FROM cells WHERE id NOT IN (SELECT cell FROM job)")
                    db.execute(
                        f"DELETE FROM forms WHERE id NOT IN (SELECT {form_of('cells')} FROM cells)"
                    )
            if digest:
                db.execute(
                    "INSERT INTO meta VALUES ('plan_digest', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (digest,),
                )
        return changed

    def _recorded_prefix(self, jobs: Iterable[Any]) -> int | None:
        """How many jobs the state holds, when they are exactly the plan's first ones in plan order
        (all in the plan, positions 0 … n-1, the same keys); None otherwise."""
        n, low, high, out = self.db.execute(
            "SELECT COUNT(*), MIN(plan_index), MAX(plan_index), SUM(in_plan = 0) FROM job"
        ).fetchone()
        if not n or low != 0 or high != n - 1 or out:
            return None
        if isinstance(jobs, Jobs):
            listed = jobs.keys  # (key, model) of each job, without making the jobs
            planned: Iterator[str] = (k for k, _ in listed())
        else:
            planned = (j.key for j in jobs)
        stored = self.db.execute(f"SELECT {self.key_sql} FROM job j ORDER BY j.plan_index")
        matched = 0
        try:
            for (recorded,), key in zip(stored, islice(planned, n), strict=False):
                if recorded != key:
                    return None
                matched += 1
        finally:
            stored.close()
        return int(n) if matched == n else None

    def _sync_batch(self, batch: list[Any], memo: Memo, empty: bool, stems: Fingerprints) -> bool:
        blobs = [key_blob(j.key) for j in batch]
        stored: dict[bytes, tuple[Any, ...]] = {}
        if not empty:
            for at in range(0, len(batch), 500):
                where, args = self._keys_in("j.k", blobs[at : at + 500])
                stored.update(
                    (bytes(r[0]), tuple(r[1:]))
                    for r in self.db.execute(
                        f"SELECT j.k, j.plan_index, j.in_plan, j.cell, COALESCE(j.stem, {self.stem_head_sql} || "
                        f"{self.seed_text}), c.form, c.prompt_id, c.prompt, c.source, c.stem_head, c.quoted, "
                        f"c.extra, c.pid FROM job j JOIN cells c ON c.id = j.cell JOIN forms f ON f.id = {form_of('c')} "
                        f"WHERE {where}",
                        args,
                    )
                )
        if empty and not self.shared:
            # A recording into an empty state (one writer): the rows are made before the transaction
            # opens, so the runner's commits wait only for the writes, not for this Python work.
            made: list[tuple[Any, ...]] | None = []
            new, moved = self._rows(batch, blobs, stored, memo, stems, made)
            with self._tx() as db:
                self._write(db, blobs, new, moved, made, empty)
        else:
            with self._tx() as db:
                new, moved = self._rows(batch, blobs, stored, memo, stems, None)
                self._write(db, blobs, new, moved, None, empty)
        return bool(new or moved)

    def _rows(
        self,
        batch: list[Any],
        blobs: list[bytes],
        stored: dict[bytes, tuple[Any, ...]],
        memo: Memo,
        stems: Fingerprints,
        made: list[tuple[Any, ...]] | None,
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The batch's new job rows and moved ones (the cells they need are made, or put in `made`)."""
        new, moved = [], []
        batch_stems: set[str] = set()
        for j, kb in zip(batch, blobs, strict=True):
            row = stored.get(kb)
            cell, natural = self._cell(j, memo, None if row is None else (row[2], *row[4:]), made)
            if row is None:
                stem = j.stem
                if hash(stem.lower()) in stems and self._stem_taken(stem, batch_stems):
                    # Another recorded job owns this path (a parameter that is not an axis changed):
                    # never overwrite its files; this job gets its own, named after its key.
                    stem = distinct_stem(stem, j.key)
                stems.add(hash(stem.lower()))
                batch_stems.add(stem.lower())
                new.append(
                    (kb, key_text(j.key), cell, j.seed, j.index, None if stem == natural else stem)
                )
            elif row[:3] != (j.index, 1, cell):
                # A recorded job keeps its path, whatever its new cell would give it.
                moved.append((j.index, cell, None if row[3] == natural else row[3], *self._k(kb)))
        return new, moved

    def _write(
        self,
        db: Any,
        blobs: list[bytes],
        new: list[tuple[Any, ...]],
        moved: list[tuple[Any, ...]],
        made: list[tuple[Any, ...]] | None,
        empty: bool,
    ) -> None:
        if made:
            db.executemany(
                "INSERT INTO cells (id, form, prompt_id, prompt, source, stem_head, quoted, extra, pid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                made,
            )
        if not empty:
            db.executemany(
                f"INSERT INTO {self.seen_table} VALUES (?) ON CONFLICT DO NOTHING",
                [(kb,) for kb in blobs],
            )
        if moved:
            db.executemany(
                f"UPDATE job SET plan_index = ?, in_plan = 1, cell = ?, stem = ? WHERE {self.K}",
                moved,
            )
        if new:
            # ON CONFLICT: two workers recording one plan at once insert each job once (PostgreSQL,
            # whose index on keys is unique). SQLite has one writer, which inserts only the jobs its
            # lookup (`stored`) did not find: each job once, without a unique index to name.
            db.executemany(
                "INSERT INTO job (k, key_text, cell, seed, plan_index, stem) VALUES (?, ?, ?, ?, ?, ?)"
                + (" ON CONFLICT (k) DO NOTHING" if self.shared else ""),
                new,
            )

    def _stem_taken(self, stem: str, batch_stems: set[str]) -> bool:
        """Exactly: does a recorded row, or a new one of this batch, own `stem` (ignoring case)?"""
        return (
            stem.lower() in batch_stems
            or self.db.execute(
                "SELECT 1 FROM jobs WHERE lower(stem) = ? LIMIT 1", (stem.lower(),)
            ).fetchone()
            is not None
        )
