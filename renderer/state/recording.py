"""The plan recorder: a first run writes its plan's jobs into the state in the background, so the
first submit does not wait for a million rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from renderer.errors import StateError
from renderer.plan.unique import Fingerprints
from renderer.state.keys import build_key_index

if TYPE_CHECKING:
    from renderer.state.store import Store


# A first run records its plan while it renders (PlanRecorder). A batch's rows are made before its
# transaction opens (plansync), so SQLite's one write lock is held only while they are written;
# a batch ends at RECORD_BATCH jobs or after RECORD_SECONDS of making them, whichever comes first,
# so a stop (a --max-jobs trial whose jobs are done) waits for at most that much. Commits are few
# and large: with the key index built at the end (see PlanRecorder), each one appends pages.
# Measured (bench/plan_recording.py, issue 22): 250-job batches into the key index wrote ~19x the
# state's final size; see bench/README.md for these.
RECORD_BATCH = 20_000
RECORD_SECONDS = 0.25


@dataclass
class Memo:
    """What one recording remembers (bounded: cleared past 100,000 entries): cells and forms by content."""

    cells: dict[tuple[Any, ...], int] = field(default_factory=dict)
    forms: dict[tuple[Any, ...], int] = field(default_factory=dict)
    # The id the next new cell gets (a recording into an empty SQLite state numbers its cells).
    next_cell: int | None = None


# The index on job keys and its uniqueness triggers (state/keys.py): a recording into an empty state
# goes without them (record_plan drops them) and builds them at the end. Inserting random keys into
# the index batch by batch rewrote most of its pages at every commit; built at once, it is written once.


class PlanRecorder:
    """The rest of a plan recorded by a thread with its own connection, while the run renders the start.

    Jobs are recorded in plan order, a batch at a time, each batch one transaction: what is
    claimable is always a prefix of the plan. The plan's digest is recorded last, so a recording
    cut short (a crash, a stop) leaves a state whose next sync records the rest as new jobs.
    Meanwhile job keys have no index: the runner finds the jobs it holds by their owner (the
    fenced changes, `get` and `submit_refused` look among held jobs first), never by a scan.
    """

    def __init__(
        self,
        store: Store,
        rest: Iterator[Any],
        digest: str | Callable[[], str],
        recorded: int,
        total: int,
        memo: Memo | None = None,
    ) -> None:
        self.recorded = recorded  # jobs committed so far (plan positions 0 … recorded-1)
        self.total = total
        self.error: StateError | None = None
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._store, self._rest, self._digest = store, rest, digest
        self._memo = memo or Memo()
        self.upto: int | None = None  # stop once this many jobs are recorded (a trial's bound)
        self.thread = threading.Thread(
            target=self._record, name="renderer-record-plan", daemon=True
        )

    def _record(self) -> None:
        try:
            store = self._store.reopen(keyless=True)
            try:
                self._batches(store)
            finally:
                try:
                    # However the recording ended (done, halted, failed): the key index is built now,
                    # in one sorted pass over what was recorded, checked for a key loaded twice, and
                    # its triggers made (a process killed before this gets them from the next open).
                    with store._tx() as db:
                        build_key_index(db)
                finally:
                    store.close()
        except StateError as exc:
            self.error = self.error or exc
        except Exception as exc:  # a bug or an unexpected failure: the run stops and says so
            self.error = StateError(
                f"recording the plan failed: {type(exc).__name__}: {exc}",
                hint="rerun the same command: what was recorded is kept, the rest is recorded then",
            )
        finally:
            self.finished.set()

    def _batches(self, store: Store) -> None:
        memo = self._memo
        stems = Fingerprints()  # the state was empty: only the plan's own paths, which never clash
        batch: list[Any] = []
        started = time.monotonic()
        for job in self._rest:
            if self._stop.is_set() or (self.upto is not None and self.recorded >= self.upto):
                return  # (a batch in hand is not written: it was not begun)
            batch.append(job)
            if len(batch) >= RECORD_BATCH or time.monotonic() - started >= RECORD_SECONDS:
                store._sync_batch(batch, memo, True, stems)
                self.recorded += len(batch)
                batch, started = [], time.monotonic()
        if batch and not self._stop.is_set():
            store._sync_batch(batch, memo, True, stems)
            self.recorded += len(batch)
        digest = self._digest() if callable(self._digest) else self._digest
        if digest and not self._stop.is_set():
            with store._tx() as db:
                db.execute(
                    "INSERT INTO meta VALUES ('plan_digest', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (digest,),
                )

    def start(self) -> None:
        """Begin recording in the thread (once: later calls do nothing)."""
        if self.thread.ident is None:
            self.thread.start()

    def halt(self) -> None:
        """Stop after the batch being written, if one is (its transaction commits or not, whole); join
        the thread to wait."""
        self._stop.set()

    def backlog(self, before: int | None) -> int:
        """Jobs of the plan below `before` not recorded yet (all planned: the state was empty)."""
        return max(0, min(self.total, before if before is not None else self.total) - self.recorded)
