"""Workers and their claims: who works on which job until when, renewed and released; fencing
keeps a worker whose lease expired from committing anything.
"""

from __future__ import annotations

import time
from typing import Any

from renderer.state.buckets import form_of
from renderer.state.core import StoreCore
from renderer.state.rows import (
    OPEN,
    Claimed,
    blob_key,
)


class Leases(StoreCore):
    """Workers and their claims: who works on which job until when, renewed and released; fencing"""

    def join(self, owner: str, lease: float, host: str = "", pid: int | None = None) -> None:
        """Become worker `owner`: claims last `lease` seconds unless renewed; state changes are fenced."""
        self.owner, self.lease = owner, float(lease)
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO workers (id, host, pid, started, heartbeat) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
                "heartbeat = excluded.heartbeat",
                (owner, host, pid, now, now),
            )

    def void_claims(self) -> None:
        """Free every claim: for the embedded database only, whose one worker runs under RunLock,
        so claims still recorded are those of an earlier, killed run."""
        assert not self.shared, "shared state: claims end by their leases, never by a worker's say"
        with self._tx() as db:
            db.execute("UPDATE job SET owner = NULL, lease_until = NULL WHERE owner IS NOT NULL")

    def claim(self, limit: int, before: int | None = None) -> list[Claimed]:
        """Up to `limit` unfinished jobs nobody holds (or whose lease expired), in plan order, now ours.

        `before` bounds the plan position (a trial's --max-jobs). Concurrent claimers never get
        the same job (SKIP LOCKED on PostgreSQL; one writer at a time on SQLite).
        """
        assert self.owner is not None, "join() first"
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE job SET owner = ?, lease_until = {self.NOW} + ?, claims = claims + 1 "
                "WHERE id IN (SELECT id FROM job WHERE " + OPEN + " AND plan_index < ? "
                f"AND (owner IS NULL OR lease_until <= {self.NOW}) ORDER BY plan_index LIMIT ? {self.skip_locked}) "
                "RETURNING plan_index, k, key_text, cell",
                (self.owner, self.lease, before if before is not None else 2**62, int(limit)),
            ).fetchall()
        endpoints = self._endpoints({int(r[3]) for r in rows})
        return sorted(Claimed(int(r[0]), blob_key(r[1], r[2]), endpoints[int(r[3])]) for r in rows)

    def _endpoints(self, cells: set[int]) -> dict[int, str]:
        """The endpoint of each cell (cells never change: remembered)."""
        known: dict[int, str] = self.__dict__.setdefault("_endpoint_of", {})
        missing = [c for c in cells if c not in known]
        for at in range(0, len(missing), 500):
            part = missing[at : at + 500]
            known.update(
                (int(r[0]), r[1])
                for r in self.db.execute(
                    f"SELECT c.id, f.endpoint FROM cells c JOIN forms f ON f.id = {form_of('c')} "
                    f"WHERE c.id IN ({','.join('?' * len(part))})",
                    part,
                )
            )
        return known

    def renew(self) -> set[str]:
        """Extend the lease of every job still held and beat the heart; returns the keys still ours."""
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE job SET lease_until = {self.NOW} + ? WHERE owner = ? "
                f"AND lease_until > {self.NOW} RETURNING k, key_text",
                (self.lease, self.owner),
            ).fetchall()
            db.execute("UPDATE workers SET heartbeat = ? WHERE id = ?", (time.time(), self.owner))
        return {blob_key(r[0], r[1]) for r in rows}

    def release(self) -> None:
        """Give back every job this worker holds (a stop): others may claim them at once."""
        if self.owner is None:
            return
        with self._tx() as db:
            db.execute(
                "UPDATE job SET owner = NULL, lease_until = NULL WHERE owner = ?", (self.owner,)
            )

    def leave(self) -> None:
        """This worker's run ended (its jobs released): it is listed as finished, not live."""
        if self.owner is None:
            return
        with self._tx() as db:
            db.execute("UPDATE workers SET left_at = ? WHERE id = ?", (time.time(), self.owner))

    def workers(self) -> list[dict[str, Any]]:
        """Per worker: id, host, pid, last heartbeat (epoch s), the jobs it holds now, and when
        its run ended (`left`: None while it runs, or when it was killed)."""
        rows = self.db.execute(
            "SELECT w.id, w.host, w.pid, w.heartbeat, (SELECT COUNT(*) FROM job j WHERE j.owner = w.id "
            f"AND j.lease_until > {self.NOW}), w.left_at FROM workers w ORDER BY w.heartbeat DESC, w.id"
        ).fetchall()
        return [
            {
                "id": r[0],
                "host": r[1],
                "pid": r[2],
                "heartbeat": float(r[3]),
                "held": int(r[4]),
                "left": None if r[5] is None else float(r[5]),
            }
            for r in rows
        ]

    # ---------------------------------------------- account slots and rates shared by workers
    # Only a shared store (PostgreSQL) holds limits across workers; on SQLite one process runs a
    # run, its limits are in memory (runner/limits.py), and these are never called when
    # `shared` is False - except the two that have a plain answer (nothing to record, none held).

    def set_accounts(self, limits: dict[str, int]) -> None:
        """Record each account's concurrency for every worker to see (shared stores only)."""

    def accounts(self) -> list[dict[str, Any]]:
        """Per account: requests in flight across all workers and its limit ([] unless shared)."""
        return []

    def acquire_slot(self, account: str, job: str) -> int | None:
        """Lease one free slot of `account` for `job`; None when all are held (shared stores only)."""
        raise NotImplementedError(f"{type(self).__name__} holds no slots shared by workers")

    def release_slot(self, account: str, n: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} holds no slots shared by workers")

    def reserve(self, name: str, interval: float) -> float:
        """The seconds to wait for the next turn of a rate shared by all workers (shared stores only)."""
        raise NotImplementedError(f"{type(self).__name__} holds no rates shared by workers")
