"""SQLite's job-key index and the triggers that make the database refuse a second row for a key.

From m013 the index on job keys holds each 20-byte key's first 4 bytes (13 bytes a job by dbstat at
100k jobs, where a unique index on the whole key took 29), so it cannot be UNIQUE itself. Uniqueness
stays the database's, not one code path's: two triggers, BEFORE INSERT and BEFORE UPDATE OF k, probe
the prefix index for the same key and abort the statement as the unique index did
(sqlite3.IntegrityError, "UNIQUE constraint failed: job.k").

Invariant: the triggers exist exactly when the index does. A recording into an empty state drops
both (a probe per insert without the index would scan the table) and `build_key_index` makes them
again, in one transaction, after checking that no key was loaded twice meanwhile; a process killed
before that leaves neither, and the next writable open builds them (SQLiteStore).
"""

from __future__ import annotations

import sqlite3

from renderer.errors import StateError

KEY_INDEX = "CREATE INDEX IF NOT EXISTS job_key ON job (substr(k, 1, 4))"

_SAME_KEY = "SELECT 1 FROM job WHERE substr(k, 1, 4) = substr(NEW.k, 1, 4) AND k = NEW.k"
_REFUSE = "SELECT RAISE(ABORT, 'UNIQUE constraint failed: job.k')"
KEY_TRIGGERS = (
    f"CREATE TRIGGER IF NOT EXISTS job_key_insert BEFORE INSERT ON job "
    f"WHEN EXISTS ({_SAME_KEY}) BEGIN {_REFUSE}; END",
    f"CREATE TRIGGER IF NOT EXISTS job_key_update BEFORE UPDATE OF k ON job "
    f"WHEN NEW.k IS NOT OLD.k AND EXISTS ({_SAME_KEY}) BEGIN {_REFUSE}; END",
)
_NAMES = ("job_key", "job_key_insert", "job_key_update")

# A key held by two rows, found through the prefix index: one probe a row, ~2 s at 1M jobs
# (bench/README.md). A GROUP BY over the index measured no faster: SQLite 3.40 reads each row to
# get the indexed expression.
DUPLICATE = (
    "SELECT COALESCE(a.key_text, 'j1-' || lower(hex(a.k))) FROM job a WHERE EXISTS (SELECT 1 FROM job b "
    "WHERE substr(b.k, 1, 4) = substr(a.k, 1, 4) AND b.id <> a.id AND b.k = a.k) LIMIT 1"
)


def drop_key_index(db: sqlite3.Connection) -> None:
    """Drop the key index and its triggers together (before a bulk load), in one transaction."""
    # sqlite3 opens no transaction for DDL: one is opened here (the caller commits or rolls back).
    if not db.in_transaction:
        db.execute("BEGIN")
    db.execute("DROP TRIGGER IF EXISTS job_key_update")
    db.execute("DROP TRIGGER IF EXISTS job_key_insert")
    db.execute("DROP INDEX IF EXISTS job_key")


def make_key_index(db: sqlite3.Connection) -> None:
    """Create the key index and its triggers on a table known to hold each key once (m013 makes them
    where the unique index held until then)."""
    db.execute(KEY_INDEX)
    for sql in KEY_TRIGGERS:
        db.execute(sql)


def build_key_index(db: sqlite3.Connection) -> None:
    """Make sure the key index and its triggers exist, in one transaction the caller commits or rolls
    back: if any is missing, build them and check that no key was stored twice meanwhile; if one
    was, raise StateError (the caller's rollback then leaves neither index nor triggers)."""
    present = db.execute(
        f"SELECT COUNT(*) FROM sqlite_master WHERE name IN {_NAMES!r}"  # (a literal tuple)
    ).fetchone()[0]
    if present == len(_NAMES):
        return
    # sqlite3 opens no transaction for DDL: one is opened here (the caller commits or rolls back).
    if not db.in_transaction:
        db.execute("BEGIN")
    db.execute(KEY_INDEX)
    twice = db.execute(DUPLICATE).fetchone()
    if twice is not None:
        raise StateError(
            f"the state holds job {twice[0]} twice: a job key must be recorded once",
            hint="keep a copy of the state and report it: one of the two rows may hold a paid request",
        )
    for sql in KEY_TRIGGERS:
        db.execute(sql)


def by_key_sql(k: str) -> str:
    """The id of a job by key (`k`: the dialect's condition): among held jobs first, then any."""
    return f"(SELECT id FROM job WHERE {k} AND owner IS NOT NULL UNION ALL SELECT id FROM job WHERE {k} LIMIT 1)"
