"""Job claims shared by many workers in PostgreSQL: leases, renewal, fencing, reclaim.

The building block of a distributed run (`--state postgresql://…`): every worker runs the same
command; each claims small batches of jobs, holds them under a lease it renews while alive, and
may change a job's state only while it still holds that job's lease.

Invariants:
  * Claiming is one statement: `FOR UPDATE SKIP LOCKED` picks unclaimed or expired jobs in plan
    order, so concurrent claimers never receive the same job and never wait on each other.
  * Every state change is fenced: `WHERE owner = me AND lease_until > now()`. A worker whose
    lease expired (a paused VM, two pods with one index) changes nothing and learns so
    (LeaseLost); it must drop the job without writing anything.
  * A job's request id is committed before anything else happens to it; a reclaimed job comes
    back with that id, so the new owner reattaches to the request instead of paying again.
  * Finished jobs (downloaded, failed) are never claimed again.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import StateError

FINISHED = ("downloaded", "failed")
STATES = ("planned", "submitting", "submitted", "completed", *FINISHED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    key         text PRIMARY KEY,
    position    bigint NOT NULL,
    state       text NOT NULL DEFAULT 'planned',
    owner       text,
    lease_until timestamptz,
    request_id  text,
    account     text,
    claims      integer NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS claims_open ON claims (position) WHERE state NOT IN ('downloaded', 'failed');
CREATE TABLE IF NOT EXISTS workers (
    id        text PRIMARY KEY,
    host      text NOT NULL,
    started   timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now()
);
"""


class LeaseLost(StateError):
    """This worker no longer holds the job's lease: another worker may own it now."""


@dataclass(frozen=True)
class Claim:
    key: str
    state: str
    request_id: str | None  # set: reattach to this request, never submit again
    account: str | None
    claims: int  # how many times the job was claimed (> 1: reclaimed after a lease expired)


class Leases:
    """One worker's view of the shared claims table."""

    def __init__(self, url: str, owner: str, *, lease_seconds: float = 30.0) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise StateError("shared state in PostgreSQL needs the psycopg package",
                             hint="pip install 'renderer[postgres]'") from exc
        self.owner = owner
        self.lease = float(lease_seconds)
        try:
            self.db = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            # libpq's message names host and database, never a password given in the URL.
            raise StateError(f"cannot connect to the shared state: {str(exc).strip().splitlines()[0][:300]}",
                             hint="check the postgresql://… URL (--state, RENDERER_STATE) and that the server is up") \
                from exc
        with self.db.transaction():
            # Concurrent first starts: one creates the tables, the others wait for it.
            self.db.execute("SELECT pg_advisory_xact_lock(7403112)")
            self.db.execute(SCHEMA)
        self.db.execute(
            "INSERT INTO workers (id, host) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, "
            "heartbeat = now()", (owner, socket.gethostname()))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _interval(self) -> str:
        return f"{self.lease} seconds"

    def add(self, keys: Iterable[str]) -> int:
        """Register the plan's jobs (idempotent: every worker may call it); returns how many were new."""
        rows = [(key, position) for position, key in enumerate(keys)]
        with self.db.transaction(), self.db.cursor() as cur:
            before = cur.execute("SELECT count(*) FROM claims").fetchone()
            cur.executemany("INSERT INTO claims (key, position) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", rows)
            after = cur.execute("SELECT count(*) FROM claims").fetchone()
        return int(after[0]) - int(before[0]) if before and after else 0

    def claim(self, limit: int) -> list[Claim]:
        """Up to `limit` open jobs that nobody holds (or whose lease expired), now leased to this worker."""
        rows = self.db.execute(
            """
            UPDATE claims SET owner = %(me)s, lease_until = now() + %(lease)s::interval,
                              claims = claims + 1, updated_at = now()
            WHERE key IN (
                SELECT key FROM claims
                WHERE state NOT IN ('downloaded', 'failed') AND (owner IS NULL OR lease_until <= now())
                ORDER BY position LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED)
            RETURNING key, state, request_id, account, claims, position
            """, {"me": self.owner, "lease": self._interval(), "limit": int(limit)}).fetchall()
        return [Claim(r[0], r[1], r[2], r[3], r[4]) for r in sorted(rows, key=lambda r: r[5])]

    def renew(self) -> set[str]:
        """Extend the lease of every job still held; returns their keys (the others are lost)."""
        rows = self.db.execute(
            "UPDATE claims SET lease_until = now() + %s::interval WHERE owner = %s AND lease_until > now() "
            "AND state NOT IN ('downloaded', 'failed') RETURNING key", (self._interval(), self.owner)).fetchall()
        self.db.execute("UPDATE workers SET heartbeat = now() WHERE id = %s", (self.owner,))
        return {r[0] for r in rows}

    def update(self, key: str, state: str, *, request_id: str | None = None, account: str | None = None) -> None:
        """Move a held job to `state` (fenced); finished states release it. LeaseLost when not held."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        fields: dict[str, Any] = {"state": state, "key": key, "me": self.owner}
        sets = ["state = %(state)s", "updated_at = now()"]
        if request_id is not None:
            sets.append("request_id = %(request_id)s")
            fields["request_id"] = request_id
        if account is not None:
            sets.append("account = %(account)s")
            fields["account"] = account
        if state in FINISHED:
            sets += ["owner = NULL", "lease_until = NULL"]
        done = self.db.execute(
            f"UPDATE claims SET {', '.join(sets)} WHERE key = %(key)s AND owner = %(me)s AND lease_until > now()",
            fields)
        if done.rowcount != 1:
            raise LeaseLost(f"job {key}: this worker ({self.owner}) no longer holds its lease; nothing was recorded",
                            hint="the lease expired (a pause longer than the lease?); another worker owns the job now")

    def release(self, keys: Sequence[str]) -> None:
        """Give jobs back unfinished (a graceful stop): others may claim them at once."""
        self.db.execute("UPDATE claims SET owner = NULL, lease_until = NULL WHERE owner = %s AND key = ANY(%s)",
                        (self.owner, list(keys)))

    def remaining(self) -> int:
        """Jobs not finished yet, held or not: 0 means the run is complete."""
        row = self.db.execute("SELECT count(*) FROM claims WHERE state NOT IN ('downloaded', 'failed')").fetchone()
        return int(row[0]) if row else 0

    def counts(self) -> dict[str, int]:
        found = dict(self.db.execute("SELECT state, count(*) FROM claims GROUP BY state").fetchall())
        return {state: int(found.get(state, 0)) for state in STATES}

    def workers(self) -> list[dict[str, Any]]:
        """Per worker: id, host, last heartbeat, jobs held now (for `status`)."""
        rows = self.db.execute(
            """
            SELECT w.id, w.host, w.heartbeat,
                   count(c.key) FILTER (WHERE c.lease_until > now() AND c.state NOT IN ('downloaded', 'failed'))
            FROM workers w LEFT JOIN claims c ON c.owner = w.id
            GROUP BY w.id, w.host, w.heartbeat ORDER BY w.id
            """).fetchall()
        return [{"id": r[0], "host": r[1], "heartbeat": r[2].isoformat(), "held": int(r[3])} for r in rows]
