"""The run's state: one interface (Store), two databases. This module and pgstore.py own the SQL.

`SQLiteStore` is the embedded default (a file in the run directory, one process at a time under
RunLock); `pgstore.PostgresStore` is shared by any number of workers (`--state postgresql://…`).
Both run the same statements (portable SQL, `?` placeholders) and pass one test suite; the few
dialect differences are class attributes and small overrides.

Invariants:
  * One row per job key. A job moves planned → submitted → completed → downloaded, or to
    failed; every move is one committed transaction.
  * `request_id` is committed before anything else happens after a submit. A submit whose
    outcome was not recorded leaves `submit_started` set with no request id: the rerun counts
    it as an ambiguous resubmission (the only way one input is ever paid twice).
  * Pending work is derived by query from the states; there is no separate to-do list.
  * Migrations are ordered, named and applied on open; a new and an old database behave alike.
  * WAL with synchronous=NORMAL: a killed process loses nothing committed; a power cut may lose
    the last commits (see README).
  * Leases: a worker works only on jobs it claimed (owner, lease_until by the database's clock),
    and every state change of a claimed job is fenced `WHERE owner = me AND lease_until > now`:
    a worker whose lease expired (killed, paused, partitioned) commits nothing (LeaseLost). A
    reclaimed job keeps its request id, so its new owner reattaches instead of paying again.
    Finished jobs release their lease and are never claimed again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

from renderer.errors import StateError
from renderer.plan.planner import Fingerprints
from renderer.state.migrations import SQLITE_KEY
from renderer.state.recording import PlanRecorder
from renderer.state.rows import (
    OPEN,
    STATES,
    Claimed,
    LeaseLost,
    Row,
    _dumps,
    blob_key,
    distinct_stem,
    key_blob,
    key_text,
)

SYNC_BATCH = 5000  # jobs per plan-sync transaction
# A first run records this many jobs before it starts submitting; the rest follow in the
# background in RECORD_BATCH rows a transaction (state/recording.py).
FIRST_BATCH = 500

PAGE = 2000  # rows per page when the runner reads pending work or finished files


class Store:
    """The run's state, whatever the database. Subclasses open the connection and set the dialect.

    `db` has sqlite3's `execute`/`executemany` (pgstore adapts psycopg to it); statements use `?`
    placeholders and SQL both databases run.
    """

    db: Any
    run_dir: Path
    where: str = ""  # the database, for messages (a file path, or a URL without its password)
    shared = (
        False  # several workers may hold jobs at once (PostgreSQL); SQLite has one, under RunLock
    )
    hint = "+"  # SQLite's "do not use an index for this column" (PostgreSQL has no unary + on text)
    seen_table = "temp.seen"
    skip_locked = ""  # PostgreSQL: FOR UPDATE SKIP LOCKED (SQLite has one writer at a time anyway)
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # the database's clock, epoch seconds
    blob = "BLOB"  # the type of a job's key as stored (key_blob)
    key_sql = SQLITE_KEY  # a `job j` row's key as text, in SQL
    seed_text = "j.seed"  # a `job j` row's seed as text, in SQL
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

    def close(self) -> None:
        self.db.close()

    def commit(self) -> None:
        """Commit the deferred changes in one transaction; StateError if they could not be (or were undone)."""

    @contextmanager
    def _tx(self, defer: bool = False) -> Iterator[Any]:
        raise NotImplementedError

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Held while one worker records the plan (others then find it recorded)."""
        yield

    def gone(self) -> bool:
        """Has the state been removed since it was opened (the run directory deleted)?"""
        return False

    # -------------------------------------------------- plan sync

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
        self.recorder = PlanRecorder(self, rest, digest, len(first), len(jobs))
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
        content = (
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
        cell = cells.get(content)
        if cell is None:
            digest = hashlib.sha256(_dumps(content).encode()).digest()[:16]
            row = self.db.execute("SELECT id FROM cells WHERE digest = ?", (digest,)).fetchone()
            if row is None:
                # ON CONFLICT: two workers recording one plan at once make each cell once.
                row = (
                    self.db.execute(
                        "INSERT INTO cells (digest, endpoint, model, prompt_id, prompt, axes, input_head, input_tail, "
                        "num_images, tags, source, stem_head) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
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

    # -------------------------------------------------- claims (leases)

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
                    f"SELECT id, endpoint FROM cells WHERE id IN ({','.join('?' * len(part))})",
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

    def unfinished(self, before: int | None = None, *, others: bool = False) -> int:
        """Jobs of the plan not finished yet, held or not: 0 means the run is complete.

        `others`: only those this worker does not hold (free, expired, or another worker's).
        """
        sql, args = (
            "SELECT COUNT(*) FROM job WHERE " + OPEN + " AND plan_index < ?",
            [before or 2**62],
        )
        if others and self.owner is not None:
            sql += f" AND (owner IS NULL OR owner <> ? OR lease_until <= {self.NOW})"
            args.append(self.owner)
        return int(self.db.execute(sql, args).fetchone()[0])

    def workers(self) -> list[dict[str, Any]]:
        """Per worker: id, host, pid, last heartbeat (epoch s) and the jobs it holds now."""
        rows = self.db.execute(
            "SELECT w.id, w.host, w.pid, w.heartbeat, (SELECT COUNT(*) FROM job j WHERE j.owner = w.id "
            f"AND j.lease_until > {self.NOW}) FROM workers w ORDER BY w.heartbeat DESC, w.id"
        ).fetchall()
        return [
            {"id": r[0], "host": r[1], "pid": r[2], "heartbeat": float(r[3]), "held": int(r[4])}
            for r in rows
        ]

    # -------------------------------------------------- state changes (one transaction each)

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
                f"UPDATE job SET {names} WHERE k = ?{fence}",
                (*fields.values(), key_blob(key), *args),
            )
            if fence and cur.rowcount != 1:
                raise self._lost(key)

    def _set_free(self, key: str, **fields: Any) -> None:
        """A change to a job nobody holds (before claiming: adopt, rerender, redownload)."""
        fields["updated_at"] = time.time()
        names = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(
                f"UPDATE job SET {names} WHERE k = ? AND (owner IS NULL OR lease_until <= {self.NOW})",
                (*fields.values(), key_blob(key)),
            )

    def submit_started(self, key: str) -> None:
        """The submit→commit window opens (fenced: a worker that lost the job sends nothing)."""
        now = time.time()
        fence, args = self._fence()
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE job SET submit_started = ?, attempts = attempts + 1, updated_at = ? "
                f"WHERE k = ?{fence}",
                (now, now, key_blob(key), *args),
            )
            if fence and cur.rowcount != 1:
                raise self._lost(key)

    def submit_refused(self, key: str) -> None:
        """A definite refusal (401/403/429, ingress 5xx, no connection): the submit→commit window
        closes and the attempt is not counted (only submits the server may have taken count)."""
        with self._tx() as db:
            db.execute(
                """UPDATE job SET submit_started = NULL,
                              attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = ?
                          WHERE k = ? AND submit_started IS NOT NULL""",
                (time.time(), key_blob(key)),
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
                f"SELECT 1 FROM job WHERE k = ?{fence}", (key_blob(key), *args)
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
                                 WHERE k = ?{fence}""",
                (reason, now, key_blob(key), *args),
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
        sql, args = "SELECT reason, COUNT(*) FROM resubmits", ()
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
                (after, PAGE * 5),
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

    # -------------------------------------------------- queries

    def get(self, key: str) -> Row:
        row = self.db.execute(
            "SELECT * FROM jobs WHERE id = (SELECT id FROM job WHERE k = ?)", (key_blob(key),)
        ).fetchone()
        if row is None:
            raise StateError(f"job {key} is not in {self.where}")
        return Row.from_sql(row)

    def pending(self) -> list[str]:
        """Keys of planned jobs that still need work, in plan order."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT key FROM jobs WHERE in_plan = 1 AND state NOT IN ('downloaded', 'failed') ORDER BY plan_index"
            )
        ]

    def pending_page(
        self, after: int, limit: int = PAGE, before: int | None = None
    ) -> list[tuple[int, str, str]]:
        """(plan_index, key, endpoint) of pending jobs after plan index `after`, in plan order.

        `before` bounds the plan index (a trial run's --max-jobs).
        """
        return [
            (int(r[0]), r[1], r[2])
            for r in self.db.execute(
                # OPEN as written in the partial index job_open: the page is read from it, in order.
                f"SELECT plan_index, key, endpoint FROM jobs WHERE {OPEN} "
                "AND plan_index > ? AND plan_index < ? ORDER BY plan_index LIMIT ?",
                (after, before if before is not None else 2**62, limit),
            )
        ]

    def pending_count(self, before: int | None = None) -> int:
        """Jobs still to do below `before`, counting those the background recording has not reached."""
        backlog = self.recorder.backlog(before) if self.recorder is not None else 0
        return self.unfinished(before) + backlog

    def rows(self, *, in_plan: bool | None = None, state: str | None = None) -> list[Row]:
        sql, args = "SELECT * FROM jobs WHERE 1 = 1", []
        if in_plan is not None:
            sql += " AND in_plan = ?"
            args.append(int(in_plan))
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        return [Row.from_sql(r) for r in self.db.execute(sql + " ORDER BY plan_index, key", args)]

    def downloaded_files(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """(key, files) of every finished job, in no particular order, read in pages by key."""
        after = -1
        while True:
            page = self.db.execute(
                f"SELECT j.id, {self.key_sql}, j.files FROM job j WHERE j.id > ? AND j.in_plan = 1 "
                "AND j.state = 'downloaded' ORDER BY j.id LIMIT ?",
                (after, PAGE * 5),
            ).fetchall()
            if not page:
                return
            yield from ((r[1], json.loads(r[2])) for r in page)
            after = page[-1][0]

    def file_stats(self) -> Iterator[list[tuple[Any, Any, Any, Any]]]:
        """Pages of (ref, path, size, mtime_ns): one per recorded file of each finished job of the plan.

        What a rerun checks against the disk, without decoding each job's file list in Python
        (SQLiteStore reads columns). `ref` names the job: key_of(ref) is its key. Pages are whole
        jobs; write between pages freely.
        """
        page: list[tuple[str, Any, Any, Any]] = []
        for key, entries in self.downloaded_files():
            page.extend((key, e.get("path"), e.get("size"), e.get("mtime_ns")) for e in entries)
            if len(page) >= PAGE * 5:
                yield page
                page = []
        if page:
            yield page

    def key_of(self, ref: Any) -> str:
        """The key of the job a file_stats row names."""
        return str(ref)

    nsfw_sql = "json_extract(result, '$.has_nsfw_concepts')"

    def export_rows(self, after: float | None = None) -> Iterator[dict[str, Any]]:
        """Finished jobs in plan order, with what the dataset needs (of the result, only the NSFW flags).

        `after`: only jobs downloaded later than that (epoch s): what an append to metadata.jsonl needs.
        """
        since, args = ("", ()) if after is None else (" AND downloaded_at > ?", (after,))
        for r in self.db.execute(
            "SELECT key, prompt, prompt_id, model, endpoint, seed, axes, input, tags, files, request_id, "
            f"{self.nsfw_sql} AS nsfw, provider, downloaded_at FROM jobs "
            f"WHERE in_plan = 1 AND state = 'downloaded'{since} ORDER BY plan_index",
            args,
        ):
            nsfw = r["nsfw"]
            yield {
                "key": r["key"],
                "prompt": r["prompt"],
                "prompt_id": r["prompt_id"],
                "model": r["model"],
                "endpoint": r["endpoint"],
                "seed": r["seed"],
                "axes": json.loads(r["axes"]),
                "input": json.loads(r["input"]),
                "tags": json.loads(r["tags"]),
                "files": json.loads(r["files"]),
                "request_id": r["request_id"],
                "provider": r["provider"],
                "downloaded_at": r["downloaded_at"],
                # the flags as JSON text: an array, or a bare scalar when the result had no list
                "has_nsfw_concepts": json.loads(nsfw)
                if isinstance(nsfw, str) and nsfw.startswith("[")
                else None,
            }

    def counts(self) -> dict[str, int]:
        found = {state: 0 for state in STATES}
        for state, n in self.db.execute(
            "SELECT state, COUNT(*) FROM job WHERE in_plan = 1 GROUP BY state"
        ):
            found[state] = int(n)
        found["no_longer_planned"] = int(
            self.db.execute("SELECT COUNT(*) FROM job WHERE in_plan = 0").fetchone()[0]
        )
        return found

    def ambiguous(self) -> int:
        """Jobs whose last submit has no recorded outcome (a crash between submit and commit)."""
        return int(
            self.db.execute(
                "SELECT COUNT(*) FROM job WHERE submit_started IS NOT NULL AND request_id IS NULL"
            ).fetchone()[0]
        )

    def unfinished_stems(self) -> Iterator[str]:
        """Stems of jobs whose files may be mid-write, planned or not.

        Only a job with a result writes files (state completed, or failed after one); a planned
        or submitted job has written nothing, and a million of them need not be listed.
        """
        for r in self.db.execute(
            "SELECT stem FROM jobs WHERE state != 'downloaded' AND "
            "(result IS NOT NULL OR state = 'completed')"
        ):
            yield r[0]

    def models_without_cost(self) -> list[str]:
        """Models of finished jobs with a file that has no recorded cost."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT model FROM cells WHERE id IN (SELECT cell FROM job WHERE +in_plan = 1 AND +state = 'downloaded' "
                "AND uncosted > 0) GROUP BY model ORDER BY model"
            )
        ]

    # The cost of every finished file, and whether some file has none: m008's columns, one scan.
    cost_sql = (
        "SELECT COALESCE(SUM(cost), 0), COALESCE(MAX(uncosted > 0), 0) "
        "FROM job WHERE +in_plan = 1 AND +state = 'downloaded'"
    )

    def cost(self) -> tuple[float, bool]:
        """(the recorded cost of every finished file of the plan, whether some file has no cost), summed in SQL."""
        total, uncosted = self.db.execute(self.cost_sql).fetchone()
        return float(total or 0.0), bool(uncosted)

    def done_by_model(self) -> dict[str, int]:
        """Downloaded jobs of the recorded plan, per model."""
        return {
            m: int(n)
            for m, n in self.db.execute(
                "SELECT model, COUNT(*) FROM jobs WHERE in_plan = 1 AND state = 'downloaded' GROUP BY model"
            ).fetchall()
        }

    def done_keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM jobs WHERE state = 'downloaded'")}

    # -------------------------------------------------- runs

    def start_run(self, ambiguous: int) -> int:
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO runs (started_at, ambiguous_resubmits) VALUES (?, ?) RETURNING id",
                (time.time(), ambiguous),
            ).fetchone()
            self.run_id = int(row[0])
            return self.run_id

    def finish_run(self, run_id: int, outcome: str, summary: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, outcome = ?, summary = ? WHERE id = ?",
                (time.time(), outcome, _dumps(summary), run_id),
            )

    def runs_started(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def total_ambiguous(self) -> int:
        return int(
            self.db.execute("SELECT COALESCE(SUM(ambiguous_resubmits), 0) FROM runs").fetchone()[0]
        )

    def last_summary(self) -> dict[str, Any] | None:
        """What the last finished run recorded (run.json's content), if any."""
        row = self.db.execute("SELECT summary FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return json.loads(row[0]) if row and row[0] else None
