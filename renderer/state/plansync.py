"""The plan into the state: a run's jobs recorded (first run, in the background) or made to agree with
the state's rows (a rerun), in batches, one transaction each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, cast

from renderer.plan.unique import Fingerprints
from renderer.state.core import StoreCore
from renderer.state.recording import PlanRecorder
from renderer.state.rows import (
    _dumps,
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


class PlanSync(StoreCore):
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
        self, jobs: Sequence[Any], digest: str | Callable[[], str]
    ) -> PlanRecorder | None:
        """Record a plan into an empty state: the first batch now, the rest in the background.

        Rendering can start at once (claims take what is recorded, in plan order); the recorder
        (also `self.recorder`) says how far it got. None, with nothing recorded, unless the state
        has no job yet and this process alone writes it (SQLite; a plan with a digest): then
        call sync_plan as before. `digest` may be a function, called by the recorder at the end.
        """
        if (
            self.shared
            or not digest
            or self.db.execute("SELECT 1 FROM job LIMIT 1").fetchone() is not None
        ):
            return None
        rest = iter(jobs)
        first = list(islice(rest, FIRST_BATCH))
        self._sync_batch(first, {}, True, Fingerprints())
        # PlanSync is only ever a part of Store (state/store.py), which the recorder drives.
        self.recorder = PlanRecorder(cast("Store", self), rest, digest, len(first), len(jobs))
        self.recorder.thread.start()
        return self.recorder

    def reopen(self) -> Store:
        """Another connection to the same state (for another thread)."""
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
        cells: dict[tuple[Any, ...], int] = {}
        changed = False
        batch: list[Any] = []
        for j in jobs:
            batch.append(j)
            if len(batch) >= SYNC_BATCH:
                changed |= self._sync_batch(batch, cells, empty, stems)
                batch = []
        if batch:
            changed |= self._sync_batch(batch, cells, empty, stems)
        with self._tx() as db:
            if not empty:
                cur = db.execute(
                    "UPDATE job SET in_plan = 0, plan_index = NULL "
                    f"WHERE in_plan = 1 AND k NOT IN (SELECT k FROM {seen})"
                )
                changed |= cur.rowcount > 0
                db.execute(f"DELETE FROM {seen}")
                if changed:  # cells no job points to any more (a job moved to another cell)
                    db.execute("DELETE FROM cells WHERE id NOT IN (SELECT cell FROM job)")
            if digest:
                db.execute(
                    "INSERT INTO meta VALUES ('plan_digest', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (digest,),
                )
        return changed

    def _cell(self, j: Any, cells: dict[tuple[Any, ...], int]) -> tuple[int, str | None]:
        """The id of the job's cell (found or made) and the stem the cell gives it (None: none).

        The input is kept as head || seed || tail when its JSON holds the seed exactly once,
        so the view rebuilds the very text stored before; otherwise the cell holds it whole.
        """
        text, seed = _dumps(j.input), j.seed
        head, tail, stem_head = text, None, None
        if isinstance(seed, int) and not isinstance(seed, bool):
            digits = str(seed)
            # '"seed":' cannot occur inside a JSON string (its quotes would be escaped).
            if text.count('"seed":') == 1:
                at = text.index('"seed":') + 7
                if text.startswith(digits, at) and text[at + len(digits)] in ",}":
                    head, tail = text[:at], text[at + len(digits) :]
            if j.stem.endswith(f"/s{digits}"):
                stem_head = j.stem[: -len(digits)]
        content: tuple[Any, ...] = (
            j.endpoint,
            j.model,
            j.prompt_id,
            j.input.get("prompt", ""),
            _dumps(j.axes),
            head,
            tail,
            j.num_images,
            _dumps(list(j.tags)),
            j.where,
            stem_head,
        )
        # The kept columns only where there are some: every other cell keeps its digest.
        extra = getattr(j, "extra", None)
        if extra is not None:
            content = (*content, extra)
        cell = cells.get(content)
        if cell is None:
            digest = hashlib.sha256(_dumps(content).encode()).digest()[:16]
            row = self.db.execute("SELECT id FROM cells WHERE digest = ?", (digest,)).fetchone()
            if row is None:
                # ON CONFLICT: two workers recording one plan at once make each cell once.
                row = (
                    self.db.execute(
                        "INSERT INTO cells (digest, endpoint, model, prompt_id, prompt, axes, input_head, input_tail, "
                        f"num_images, tags, source, stem_head{'' if extra is None else ', extra'}) "
                        f"VALUES ({', '.join('?' * (len(content) + 1))}) "
                        "ON CONFLICT (digest) DO NOTHING RETURNING id",
                        (digest, *content),
                    ).fetchone()
                    or self.db.execute(
                        "SELECT id FROM cells WHERE digest = ?", (digest,)
                    ).fetchone()
                )
            if len(cells) >= 100_000:  # a plan of all-distinct cells: memory stays bounded
                cells.clear()
            cell = cells[content] = int(row[0])
        return cell, None if stem_head is None else f"{stem_head}{seed}"

    def _sync_batch(
        self, batch: list[Any], cells: dict[tuple[Any, ...], int], empty: bool, stems: Fingerprints
    ) -> bool:
        blobs = [key_blob(j.key) for j in batch]
        stored: dict[bytes, tuple[Any, ...]] = {}
        if not empty:
            for at in range(0, len(batch), 500):
                part = blobs[at : at + 500]
                stored.update(
                    (bytes(r[0]), tuple(r[1:]))
                    for r in self.db.execute(
                        f"SELECT j.k, j.plan_index, j.in_plan, j.cell, COALESCE(j.stem, c.stem_head || {self.seed_text}) "
                        f"FROM job j JOIN cells c ON c.id = j.cell WHERE j.k IN ({','.join('?' * len(part))})",
                        part,
                    )
                )
        new, moved = [], []
        batch_stems: set[str] = set()
        with self._tx() as db:
            for j, kb in zip(batch, blobs, strict=True):
                cell, natural = self._cell(j, cells)
                row = stored.get(kb)
                if row is None:
                    stem = j.stem
                    if hash(stem.lower()) in stems and self._stem_taken(stem, batch_stems):
                        # Another recorded job owns this path (a parameter that is not an axis changed):
                        # never overwrite its files; this job gets its own, named after its key.
                        stem = distinct_stem(stem, j.key)
                    stems.add(hash(stem.lower()))
                    batch_stems.add(stem.lower())
                    new.append(
                        (
                            kb,
                            key_text(j.key),
                            cell,
                            j.seed,
                            j.index,
                            None if stem == natural else stem,
                        )
                    )
                elif row[:3] != (j.index, 1, cell):
                    # A recorded job keeps its path, whatever its new cell would give it.
                    moved.append((j.index, cell, None if row[3] == natural else row[3], kb))
            if not empty:
                db.executemany(
                    f"INSERT INTO {self.seen_table} VALUES (?) ON CONFLICT DO NOTHING",
                    [(kb,) for kb in blobs],
                )
            if moved:
                db.executemany(
                    "UPDATE job SET plan_index = ?, in_plan = 1, cell = ?, stem = ? WHERE k = ?",
                    moved,
                )
            if new:
                # ON CONFLICT: two workers recording one plan at once insert each job once.
                db.executemany(
                    "INSERT INTO job (k, key_text, cell, seed, plan_index, stem) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (k) DO NOTHING",
                    new,
                )
        return bool(new or moved)

    def _stem_taken(self, stem: str, batch_stems: set[str]) -> bool:
        """Exactly: does a recorded row, or a new one of this batch, own `stem` (ignoring case)?"""
        return (
            stem.lower() in batch_stems
            or self.db.execute(
                "SELECT 1 FROM jobs WHERE lower(stem) = ? LIMIT 1", (stem.lower(),)
            ).fetchone()
            is not None
        )
