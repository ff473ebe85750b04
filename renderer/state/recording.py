"""The plan recorder: a first run writes its plan's jobs into the state in the background, so the
first submit does not wait for a million rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from renderer.errors import StateError
from renderer.plan.unique import Fingerprints

if TYPE_CHECKING:
    from renderer.state.store import Store


# A first run records its plan while it renders (PlanRecorder): a short first batch lets the
# first submit go out sooner, and short background batches hold SQLite's one write lock briefly,
# so the runner's own commits (each submit's window) do not wait behind a long insert.
# Measured at 20,000 jobs (64 slots, 0.2 s): process start to first submit 2.1 s with 5,000-job
# batches, 1.2-1.5 s with these (bench/README.md, section 1).
RECORD_BATCH = 250


@dataclass
class Memo:
    """What one recording remembers (bounded: cleared past 100,000 entries): cells and forms by content."""

    cells: dict[tuple[Any, ...], int] = field(default_factory=dict)
    forms: dict[tuple[Any, ...], int] = field(default_factory=dict)
    next_cell: int | None = (
        None  # the id the next new cell gets (a recording into an empty SQLite state)
    )


class PlanRecorder:
    """The rest of a plan recorded by a thread with its own connection, while the run renders the start.

    Jobs are recorded in plan order, RECORD_BATCH at a time, each batch one transaction: what is
    claimable is always a prefix of the plan. The plan's digest is recorded last, so a recording
    cut short (a crash, a stop) leaves a state whose next sync records the rest as new jobs.
    """

    def __init__(
        self,
        store: Store,
        rest: Iterator[Any],
        digest: str | Callable[[], str],
        recorded: int,
        total: int,
    ) -> None:
        self.recorded = recorded  # jobs committed so far (plan positions 0 … recorded-1)
        self.total = total
        self.error: StateError | None = None
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._store, self._rest, self._digest = store, rest, digest
        self.thread = threading.Thread(
            target=self._record, name="renderer-record-plan", daemon=True
        )

    def _record(self) -> None:
        try:
            store = self._store.reopen()
            try:
                memo = Memo()
                stems = (
                    Fingerprints()
                )  # the state was empty: only the plan's own paths, which never clash
                batch: list[Any] = []
                for job in self._rest:
                    batch.append(job)
                    if len(batch) >= RECORD_BATCH:
                        if self._stop.is_set():
                            return
                        store._sync_batch(batch, memo, True, stems)
                        self.recorded += len(batch)
                        batch = []
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
            finally:
                store.close()
        except StateError as exc:
            self.error = exc
        except Exception as exc:  # a bug or an unexpected failure: the run stops and says so
            self.error = StateError(
                f"recording the plan failed: {type(exc).__name__}: {exc}",
                hint="rerun the same command: what was recorded is kept, the rest is recorded then",
            )
        finally:
            self.finished.set()

    def halt(self) -> None:
        """Stop after the batch in hand (its transaction commits or not, whole); join the thread to wait."""
        self._stop.set()

    def backlog(self, before: int | None) -> int:
        """Jobs of the plan below `before` not recorded yet (all planned: the state was empty)."""
        return max(0, min(self.total, before if before is not None else self.total) - self.recorded)
