"""A job's state changes, one committed transaction each: submit_started → submitted → completed →
downloaded (or failed), resubmits, adoption of files found on disk, reruns of failed jobs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from renderer.state import queries
from renderer.state.core import StoreCore
from renderer.state.rows import (
    OPEN,
    LeaseLost,
    _dumps,
    key_blob,
)


class Transitions(StoreCore):
    """A job's state changes, one committed transaction each: submit_started → submitted → completed →"""

    def _fence(self) -> tuple[str, tuple[Any, ...]]:
        """The condition every change of a claimed job carries (none before join(): tools, tests)."""
        if self.owner is None:
            return "", ()
        return f" AND owner = ? AND lease_until > {self.NOW}", (self.owner,)

    def _lost(self, key: str) -> LeaseLost:
        return LeaseLost(
            f"job {key}: this worker ({self.owner}) no longer holds its lease; nothing was recorded",
            hint=f"the lease ({self.lease:g} s) expired, after a pause or a lost connection; another "
            "worker may own the job now",
        )

    def _set(self, key: str, *, release: bool = False, defer: bool = False, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        names = ", ".join(f"{k} = ?" for k in fields)
        if release:
            names += ", owner = NULL, lease_until = NULL"
        fence, args = self._fence()
        with self._tx(defer) as db:
            cur = db.execute(
                f"UPDATE job SET {names} WHERE {self.K}{fence}",
                (*fields.values(), *self._k(key_blob(key)), *args),
            )
            if fence and cur.rowcount != 1:
                raise self._lost(key)

    def _set_free(self, key: str, **fields: Any) -> None:
        """A change to a job nobody holds (before claiming: adopt, rerender, redownload)."""
        fields["updated_at"] = time.time()
        names = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(
                f"UPDATE job SET {names} WHERE {self.K} AND (owner IS NULL OR lease_until <= {self.NOW})",
                (*fields.values(), *self._k(key_blob(key))),
            )

    def submit_started(self, key: str) -> None:
        """The submit→commit window opens (fenced: a worker that lost the job sends nothing)."""
        now = time.time()
        fence, args = self._fence()
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE job SET submit_started = ?, attempts = attempts + 1, updated_at = ? "
                f"WHERE {self.K}{fence}",
                (now, now, *self._k(key_blob(key)), *args),
            )
            if fence and cur.rowcount != 1:
                raise self._lost(key)

    def submit_refused(self, key: str) -> None:
        """A definite refusal (401/403/429, ingress 5xx, no connection): the submit→commit window
        closes and the attempt is not counted (only submits the server may have taken count)."""
        with self._tx() as db:
            db.execute(
                f"""UPDATE job SET submit_started = NULL,
                              attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = ?
                          WHERE id = {self.BY_KEY} AND submit_started IS NOT NULL""",
                (time.time(), *self._k(key_blob(key)), *self._k(key_blob(key))),
            )

    def submitted(
        self,
        key: str,
        request_id: str,
        status_url: str,
        response_url: str,
        cancel_url: str,
        provider: str | None = None,
        account: str | None = None,
    ) -> None:
        # The account is committed with the request id (one transaction): a follow-up under any
        # other key would be refused, or worse, look like a lost request and be paid again.
        # Deferred while grouping: the runner awaits commit() before it follows the request.
        self._set(
            key,
            defer=True,
            state="submitted",
            request_id=request_id,
            status_url=status_url,
            response_url=response_url,
            cancel_url=cancel_url,
            submitted_at=time.time(),
            submit_started=None,
            error=None,
            error_kind=None,
            provider=provider,
            account=account,
        )

    def completed(self, key: str, result: dict[str, Any]) -> None:
        self._set(
            key, defer=True, state="completed", result=_dumps(result), completed_at=time.time()
        )

    def downloaded(self, key: str, files: list[dict[str, Any]]) -> None:
        self._set(
            key,
            release=True,
            defer=True,
            state="downloaded",
            files=_dumps(files),
            downloaded_at=time.time(),
            error=None,
            error_kind=None,
        )

    def failed(self, key: str, reason: str, kind: str) -> None:
        self._set(
            key, release=True, state="failed", error=reason, error_kind=kind, submit_started=None
        )

    def hold(self, key: str) -> None:
        """Check that this worker still holds `key` (before writing its files); LeaseLost if not."""
        fence, args = self._fence()
        if (
            fence
            and self.db.execute(
                f"SELECT 1 FROM job WHERE {self.K}{fence}", (*self._k(key_blob(key)), *args)
            ).fetchone()
            is None
        ):
            raise self._lost(key)

    def resubmit(self, key: str, reason: str, *, paid: bool = True) -> None:
        """Forget the request: the provider lost it or its runner failed. The next pass submits again.

        With `paid` (the default) the resubmission is recorded with its reason in the same
        transaction (see `record_resubmit`): the input will be paid for again.
        """
        now = time.time()
        fence, args = self._fence()
        with self._tx() as db:
            cur = db.execute(
                f"""UPDATE job SET state = 'planned', request_id = NULL, status_url = NULL,
                                     response_url = NULL, cancel_url = NULL, account = NULL, result = NULL,
                                     error = ?,
                                     error_kind = 'resubmit', submit_started = NULL, updated_at = ?
                                 WHERE {self.K}{fence}""",
                (reason, now, *self._k(key_blob(key)), *args),
            )
            if fence and cur.rowcount != 1:
                raise self._lost(key)
            if paid:
                db.execute(
                    "INSERT INTO resubmits (key, run_id, at, reason) VALUES (?, ?, ?, ?)",
                    (key, self.run_id, now, reason),
                )

    def record_resubmit(self, key: str, reason: str) -> None:
        """Record that `key` is about to be (or was) paid for again, and why (one transaction)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO resubmits (key, run_id, at, reason) VALUES (?, ?, ?, ?)",
                (key, self.run_id, time.time(), reason),
            )

    def resubmit_reasons(self, run_id: int | None = None) -> dict[str, int]:
        """Recorded resubmissions by reason: of one run, or of all runs (run_id None)."""
        sql, args = "SELECT reason, COUNT(*) FROM resubmits", tuple[Any, ...]()
        if run_id is not None:
            sql, args = sql + " WHERE run_id = ?", (run_id,)
        return {
            reason: int(n)
            for reason, n in self.db.execute(
                sql + " GROUP BY reason ORDER BY COUNT(*) DESC, reason", args
            )
        }

    def adopt(
        self,
        key: str,
        stem: str,
        request_id: str | None,
        provider: str | None,
        entries: list[dict[str, Any]],
    ) -> None:
        """Record a job as downloaded from files found on disk (rebuilding lost state from sidecars)."""
        self._set_free(
            key,
            state="downloaded",
            stem=stem,
            request_id=request_id,
            provider=provider,
            files=_dumps(entries),
            downloaded_at=time.time(),
            error=None,
            error_kind=None,
            submit_started=None,
        )

    def restem(self, key: str, stem: str) -> None:
        """Give a job that has not rendered yet another path (its own is held by another job's files)."""
        self._set_free(key, stem=stem)

    def rendered_by(self, provider: str) -> list[str]:
        """Keys of finished jobs in the plan that `provider` rendered."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT key FROM jobs WHERE in_plan = 1 AND state = 'downloaded' AND provider = ?",
                (provider,),
            )
        ]

    def rerender(self, key: str, reason: str) -> None:
        """A finished job to render again for another provider (its files stay until replaced)."""
        self._set_free(
            key,
            state="planned",
            request_id=None,
            status_url=None,
            response_url=None,
            cancel_url=None,
            account=None,
            result=None,
            files=None,
            error=reason,
            error_kind="other_provider",
            submit_started=None,
        )

    def fresh_keys(self) -> Iterator[tuple[str, str, int]]:
        """(key, stem, num_images) of planned jobs never submitted from this database, in plan order.

        Read in pages by plan position (the caller may adopt or restem rows between pages).
        """
        after = -1
        while True:
            page = self.db.execute(
                # OPEN as written in the partial index job_open, so the page is read from it.
                f"SELECT plan_index, key, stem, num_images FROM jobs WHERE plan_index > ? AND {OPEN} "
                "AND state = 'planned' AND request_id IS NULL AND submit_started IS NULL AND attempts = 0 "
                "ORDER BY plan_index LIMIT ?",
                (after, queries.PAGE * 5),
            ).fetchall()
            if not page:
                return
            yield from ((r[1], r[2], r[3]) for r in page)
            after = page[-1][0]

    def redownload(self, key: str, reason: str) -> None:
        self._set_free(key, state="completed", files=None, error=reason, error_kind="redownload")

    def retry_failed(self) -> int:
        with self._tx() as db:
            cur = db.execute("""UPDATE job SET state = CASE WHEN result IS NOT NULL THEN 'completed'
                                    WHEN request_id IS NOT NULL THEN 'submitted' ELSE 'planned' END,
                                    attempts = 0, error = NULL, error_kind = NULL
                                WHERE state = 'failed' AND in_plan = 1""")
            return int(cur.rowcount)
