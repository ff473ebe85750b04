"""What every part of a Store shares: the connection, the dialect's few differences, transactions and
the run's key-value metadata. The parts (plansync, leases, transitions, queries) build on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from renderer.state.keys import by_key_sql
from renderer.state.migrations import PG_STEM_HEAD, SQLITE_KEY
from renderer.state.recording import PlanRecorder

_S = TypeVar("_S", bound="StoreCore")


class StoreCore:
    """The connection, the dialect settings and transactions of a Store (see store.Store)."""

    db: Any

    run_dir: Path

    where: str = ""  # the database, for messages (a file path, or a URL without its password)

    shared = (
        False  # several workers may hold jobs at once (PostgreSQL); SQLite has one, under RunLock
    )

    hint = "+"  # SQLite's "do not use an index for this column" (PostgreSQL has no unary + on text)

    seen_table = "temp.seen"

    skip_locked = ""  # PostgreSQL: FOR UPDATE SKIP LOCKED (SQLite has one writer at a time anyway)

    # A job found by its key: the condition (arguments: `_k(blob)`). PostgreSQL has a unique index on
    # the whole key; SQLite indexes its first 4 bytes only (m013), so it names those, then the key.
    K = "k = ?"

    # The id of the job whose key is given (arguments: `_k(blob)` twice): among held jobs first
    # (job_held), then any. While a recording builds the key index only at its end (PlanRecorder),
    # the jobs the runner looks up are the ones it holds: found without a scan.
    BY_KEY = by_key_sql(K)

    NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # the database's clock, epoch seconds

    blob = "BLOB"  # the type of a job's key as stored (key_blob)

    key_sql = SQLITE_KEY  # a `job j` row's key as text, in SQL

    seed_text = "j.seed"  # a `job j` row's seed as text, in SQL

    # A `cells c` / `forms f` row's stem head, in SQL, with its bucket folder (p008; SQLite's, with
    # its prompt ids of m013 and the bucket of m014: SQLiteStore).
    stem_head_sql = PG_STEM_HEAD

    # Whether a cell's prompt id derived from its text (table.text_id) is stored as the 8-byte
    # number cells.pid (m013: SQLite); PostgreSQL keeps every id as text.
    coded_ids = False

    # Recording into an empty state (SQLite) without the index on job keys (record_plan builds it
    # at the end, in one sorted pass).
    keyless = False

    int_source = (
        True  # cells.source may hold a line number as an integer (SQLite; PostgreSQL: text)
    )

    owner: str | None = (
        None  # this worker's id once it claims jobs (every state change is then fenced)
    )

    lease = 30.0  # seconds a claim lasts without renewal

    run_id: int | None = None  # the run in progress (start_run), for the resubmits it records

    recorder: PlanRecorder | None = (
        None  # the plan still being recorded in the background (record_plan)
    )

    # Group commit: while `grouping` is on, the step changes (submitted, completed, downloaded)
    # join one open transaction and become durable at the next `commit()`; the runner awaits that
    # commit before the job's next step, so "committed before the next step" still holds. Any
    # other change commits at once (and with it whatever was deferred before it).
    group_commit = (
        False  # whether this database defers at all (SQLite; PostgreSQL commits each change)
    )

    grouping = False
    # Told when the shared state rides out an outage (postgres.py); a warning for the run's events.
    on_outage: Callable[[str], None] | None = None

    def _k(self, blob: bytes) -> tuple[bytes, ...]:
        """The arguments of K for a job key as stored (key_blob)."""
        return (blob,)

    def _keys_in(self, column: str, blobs: list[bytes]) -> tuple[str, list[bytes]]:
        """(condition, arguments): `column` (a job's `k`) is one of `blobs`; the index finds them."""
        return f"{column} IN ({','.join('?' * len(blobs))})", blobs

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def commit(self) -> None:
        """Commit the deferred changes in one transaction; StateError if they could not be (or were undone)."""

    def checkpoint(self) -> None:
        """At an idle moment of a run: SQLite folds its write-ahead log into the database, which
        it otherwise does on the commit that takes the log past 1,000 pages (10-30 ms of the
        loop, wherever that falls: in the burst of deliveries at a run's end, say) and at the
        close. PostgreSQL: nothing to do."""

    @contextmanager
    def _tx(self, defer: bool = False) -> Iterator[Any]:
        raise NotImplementedError

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Held while one worker records the plan (others then find it recorded)."""
        yield

    def exclusive(self) -> AbstractContextManager[None]:
        """One worker of a shared state at a time (recording the plan, rebuilding lost state)."""
        return self._exclusive()

    def gone(self) -> bool:
        """Has the state been removed since it was opened (the run directory deleted)?"""
        return False

    def meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def set_meta_once(self, name: str, value: str) -> bool:
        """Set `name` to `value` unless it already is; True for exactly one of several concurrent callers."""
        with self._tx() as db:
            return (
                db.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value "
                    "WHERE meta.value <> excluded.value RETURNING name",
                    (name, value),
                ).fetchone()
                is not None
            )
