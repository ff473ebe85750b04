"""The run's state in PostgreSQL, shared by every worker of a distributed run (`--state postgresql://…`).

The same statements as the SQLite store (store.Store), adapted here: psycopg's `%s` placeholders,
its rows given sqlite3.Row's access by name and position, its errors translated into StateError.
Each run (manifest `name`) lives in its own schema, so one database can hold many runs.

Invariants (beyond store.py's):
  * The database's clock decides leases (`clock_timestamp()`), never a worker's: workers on
    machines whose clocks disagree still agree on who holds a job.
  * Claims take `FOR UPDATE SKIP LOCKED`: concurrent claimers never get the same job and never
    wait for each other.
  * Account slots (`acquire_slot`) are leased rows too: a worker that dies holds no slot past
    its lease, so N workers never have more requests in flight for an account than it allows.
  * psycopg's exceptions are translated here and in pgconn.py only; messages never carry a password.
  * Outages are ridden out: a call that finds the connection broken (a restart, a failover)
    reconnects with backoff and runs again, whole (each is one transaction or one query), for
    up to `outage` seconds from the first failure; then OutageError (exit 75), and every later
    call fails at once. Leases are by the database's clock and survive a restart: a lease that
    expired meanwhile is lost (the fences refuse its changes), one that did not is still held.
    A call is retried only at the outermost level (never inside another call's transaction).
    (A COMMIT cut by the failure may have been applied: every change here sets the values it
    means, so running it again is harmless; a claim run again may leave its first batch held
    by this worker unused until its lease ends.)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from renderer.errors import OutageError, StateError, UsageError
from renderer.state.buckets import PG_BUCKET, rebucket
from renderer.state.migrations import (
    JOB_COLUMNS,
    JOB_INDEXES,
    jobs_view,
    jobs_view_v7,
    pg_cells_v7_views,
    pg_split_cells,
)
from renderer.state.outage import OUTAGE_HINT, ConnectionLost, ride_out
from renderer.state.pgconn import Connection, records, redact, schema_name, state_error
from renderer.state.store import Store

PG_KEY = "COALESCE(j.key_text, 'j1-' || encode(j.k, 'hex'))"
PG_SEED = "j.seed::text"

SCHEMA_VERSION: list[tuple[str, str | Callable[[Any], None]]] = [
    (
        "p001_schema",
        """
        CREATE TABLE jobs (
            key text PRIMARY KEY,
            plan_index bigint,
            in_plan integer NOT NULL DEFAULT 1,
            endpoint text NOT NULL,
            model text NOT NULL,
            prompt_id text NOT NULL,
            prompt text NOT NULL,
            seed bigint,
            axes text NOT NULL,
            stem text NOT NULL,
            input text NOT NULL,
            num_images integer NOT NULL,
            tags text NOT NULL,
            source text NOT NULL,
            state text NOT NULL DEFAULT 'planned'
                CHECK (state IN ('planned', 'submitted', 'completed', 'downloaded', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            submit_started double precision,
            request_id text,
            status_url text,
            response_url text,
            cancel_url text,
            submitted_at double precision,
            completed_at double precision,
            downloaded_at double precision,
            result text,
            files text,
            error text,
            error_kind text,
            updated_at double precision NOT NULL,
            provider text,
            account text,
            owner text,
            lease_until double precision,
            claims integer NOT NULL DEFAULT 0
        );
        CREATE INDEX jobs_order ON jobs (plan_index);
        CREATE INDEX jobs_open ON jobs (plan_index) WHERE in_plan = 1 AND state NOT IN ('downloaded', 'failed');
        CREATE INDEX jobs_held ON jobs (owner) WHERE owner IS NOT NULL;
        CREATE INDEX jobs_stem ON jobs (lower(stem));
        CREATE TABLE runs (
            id bigserial PRIMARY KEY,
            started_at double precision NOT NULL,
            finished_at double precision,
            outcome text,
            ambiguous_resubmits integer NOT NULL DEFAULT 0,
            summary text
        );
        CREATE TABLE resubmits (
            id bigserial PRIMARY KEY,
            key text NOT NULL,
            run_id bigint,
            at double precision NOT NULL,
            reason text NOT NULL
        );
        CREATE TABLE meta (name text PRIMARY KEY, value text NOT NULL);
        CREATE TABLE workers (
            id text PRIMARY KEY,
            host text NOT NULL,
            pid integer,
            started double precision NOT NULL,
            heartbeat double precision NOT NULL
        );
        CREATE TABLE slots (
            account text NOT NULL,
            n integer NOT NULL,
            owner text,
            lease_until double precision,
            job text,
            PRIMARY KEY (account, n)
        );
        CREATE TABLE accounts (name text PRIMARY KEY, concurrency integer NOT NULL);
    """,
    ),
    # Rates shared by all workers (`reserve`): the theoretical arrival time of the next turn.
    ("p002_rates", "CREATE TABLE rates (name text PRIMARY KEY, tat double precision NOT NULL)"),
    # store.m007_cells in PostgreSQL: what the jobs of one cell share is stored once; `jobs` is a view.
    (
        "p003_cells",
        f"""
        CREATE TABLE cells (
            id bigserial PRIMARY KEY,
            digest bytea UNIQUE,
            endpoint text NOT NULL,
            model text NOT NULL,
            prompt_id text NOT NULL,
            prompt text NOT NULL,
            axes text NOT NULL,
            input_head text NOT NULL,
            input_tail text,
            num_images integer NOT NULL,
            tags text NOT NULL,
            source text NOT NULL,
            stem_head text
        );
        CREATE TABLE job (
            id bigserial PRIMARY KEY,
            k bytea NOT NULL,
            key_text text,
            cell bigint NOT NULL,
            seed bigint,
            plan_index bigint,
            in_plan integer NOT NULL DEFAULT 1,
            stem text,
            state text NOT NULL DEFAULT 'planned'
                CHECK (state IN ('planned', 'submitted', 'completed', 'downloaded', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            submit_started double precision,
            request_id text,
            status_url text,
            response_url text,
            cancel_url text,
            submitted_at double precision,
            completed_at double precision,
            downloaded_at double precision,
            result text,
            files text,
            error text,
            error_kind text,
            updated_at double precision,
            provider text,
            account text,
            owner text,
            lease_until double precision,
            claims integer NOT NULL DEFAULT 0
        );
        ALTER TABLE jobs ADD COLUMN migrated_id bigserial;
        INSERT INTO cells (id, endpoint, model, prompt_id, prompt, axes, input_head, num_images, tags, source)
            SELECT migrated_id, endpoint, model, prompt_id, prompt, axes, input, num_images, tags, source FROM jobs;
        INSERT INTO job (id, k, key_text, cell, seed, plan_index, in_plan, stem, {JOB_COLUMNS})
            SELECT migrated_id,
                   CASE WHEN key ~ '^j1-([0-9a-f]{{2}})+$' THEN decode(substr(key, 4), 'hex')
                        ELSE sha256(convert_to('renderer-key:' || key, 'UTF8')) END,
                   CASE WHEN key ~ '^j1-([0-9a-f]{{2}})+$' THEN NULL ELSE key END,
                   migrated_id, seed, plan_index, in_plan, stem, {JOB_COLUMNS} FROM jobs;
        SELECT setval(pg_get_serial_sequence('cells', 'id'), (SELECT COALESCE(MAX(id), 0) + 1 FROM cells), false);
        SELECT setval(pg_get_serial_sequence('job', 'id'), (SELECT COALESCE(MAX(id), 0) + 1 FROM job), false);
        DROP TABLE jobs;
        {";".join(JOB_INDEXES)};
        {jobs_view_v7(PG_KEY, PG_SEED, extra=False)};
        DELETE FROM meta WHERE name = 'plan_digest';
    """,
    ),
    # store.m010_workers_left: when a worker's run ended (status tells live workers apart).
    ("p004_workers_left", "ALTER TABLE workers ADD COLUMN left_at double precision"),
    # store.m011_cells_extra: a prompt file's kept columns per cell; `jobs` rebuilt with them.
    (
        "p005_cells_extra",
        f"""
        ALTER TABLE cells ADD COLUMN extra text;
        DROP VIEW jobs;
        {jobs_view_v7(PG_KEY, PG_SEED)};
    """,
    ),
    # store.m012_forms: the prompt stored once, forms shared by cells, kept values carried.
    ("p006_forms", pg_split_cells(jobs_view(PG_KEY, PG_SEED))),
    # store.m013_compact: the column of a prompt id stored as a number (always NULL here: PostgreSQL
    # keeps ids as text, and its unique index on keys), so both run one plan sync.
    ("p007_compact", "ALTER TABLE cells ADD COLUMN pid bigint"),
    # store.m014_buckets: a sharded layout's bucket folder in the cell's form, one form a model.
    ("p008_buckets", rebucket(jobs_view(PG_KEY, PG_SEED, bucket=PG_BUCKET))),
]

ADVISORY_SCHEMA = 7403112  # serialises schema creation across workers starting at once
ADVISORY_SYNC = 7403113  # one worker records the plan; the others then find its digest


class PostgresStore(Store):
    shared = True
    hint = ""
    seen_table = "seen"
    blob = "bytea"
    key_sql = PG_KEY
    seed_text = PG_SEED
    int_source = False
    skip_locked = "FOR UPDATE SKIP LOCKED"
    NOW = "extract(epoch from clock_timestamp())"
    nsfw_sql = "(result::jsonb -> 'has_nsfw_concepts')::text"
    files_sql = "json_array_length(files::json)"
    kept_sql = (
        "SELECT e.key, CASE json_typeof(e.value) WHEN 'number' THEN CASE WHEN e.value::text ~ '^-{0,1}[0-9]+$' "
        "THEN 'integer' ELSE 'real' END WHEN 'boolean' THEN 'true' WHEN 'string' THEN 'text' "
        "ELSE json_typeof(e.value) END, MIN(c.id), MIN(e.n) "
        "FROM cells c CROSS JOIN LATERAL json_each(c.extra::json) WITH ORDINALITY AS e(key, value, n) "
        "WHERE c.extra IS NOT NULL AND c.id IN "
        "(SELECT cell FROM job WHERE in_plan = 1 AND state = 'downloaded') GROUP BY 1, 2"
    )

    outage = 0.0  # seconds to ride out a lost connection (set by open_store)
    down: OutageError | None = None  # set once an outage outlasted the window: calls fail at once
    on_outage: Callable[[str], None] | None = None  # told when an outage starts and ends
    _depth = 0  # calls in progress (only the outermost is retried)

    def __init__(
        self, url: str, run_dir: Path, run: str, *, readonly: bool = False, outage: float = 0.0
    ) -> None:
        try:
            import psycopg  # noqa: F401  (here: its absence is a clear error before anything else)
        except ImportError as exc:
            raise StateError(
                "shared state in PostgreSQL needs the psycopg package",
                hint="pip install 'renderer[postgres]'",
            ) from exc
        self.run_dir = run_dir
        self.url = url
        self.run = run
        self.schema = schema_name(run)
        self.where = f"{redact(url)} schema {self.schema}"
        self.outage = outage
        deadline = time.monotonic() + outage
        self.db = Connection(self._first_connection(deadline), self.where)
        while True:
            try:
                self._set_up(readonly)
                return
            except ConnectionLost as lost:
                # A restart while this worker sets up (its schema, its migrations: each in one
                # transaction, so doing it again is safe) is ridden out like one later on.
                if time.monotonic() >= deadline:
                    raise OutageError(
                        f"the shared state ({self.where}) stayed unreachable for the outage "
                        f"window ({outage:g} s): {lost.message}",
                        hint=OUTAGE_HINT,
                    ) from lost
                with contextlib.suppress(Exception):  # (a broken connection may refuse even this)
                    self.db.conn.close()
                self.db.conn = self._first_connection(deadline)

    def _first_connection(self, deadline: float) -> Any:
        """A connection, retried until `deadline` while the server is down or not yet up."""
        import psycopg

        while True:
            try:
                return self._connect(deadline)
            except psycopg.Error as exc:
                # libpq's message names host and database, never a password given in the URL.
                first = (str(exc).strip().splitlines() or ["?"])[0][:300]
                if isinstance(exc, psycopg.OperationalError) and time.monotonic() < deadline:
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                    continue  # not up yet (a restart, a failover): within the outage window
                error = (
                    OutageError
                    if isinstance(exc, psycopg.OperationalError) and self.outage
                    else StateError
                )
                raise error(
                    f"cannot connect to the shared state {redact(self.url)}: {first}",
                    hint=OUTAGE_HINT
                    if error is OutageError
                    else "check the postgresql://… URL (--state, RENDERER_STATE) and that the server is up",
                ) from exc

    def _set_up(self, readonly: bool) -> None:
        """The run's schema, migrated (a writer), and this connection's search path."""
        exists = self.db.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = ?", (self.schema,)
        ).fetchone()
        if readonly and not exists:
            self.db.conn.close()
            raise UsageError(
                f"no run {self.run!r} in the shared state {redact(self.url)}",
                hint="give the manifest's name (the run directory's last part) of a run started "
                "with this --state",
            )
        if not readonly:
            with self._tx() as db:
                db.execute(f"SELECT pg_advisory_xact_lock({ADVISORY_SCHEMA})")
                db.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                db.execute(f'SET LOCAL search_path TO "{self.schema}"')
                db.execute(
                    "CREATE TABLE IF NOT EXISTS _migrations (name text PRIMARY KEY, "
                    "applied_at double precision NOT NULL)"
                )
                done = {r[0] for r in db.execute("SELECT name FROM _migrations")}
                for name, ddl in SCHEMA_VERSION:
                    if name not in done:
                        ddl(db) if callable(ddl) else db.execute(ddl)
                        db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
        self.db.execute(f'SET search_path TO "{self.schema}"')
        if readonly:  # a run from before p006 read as it is (temporary views; see the function)
            for sql in pg_cells_v7_views(self.db, self.schema, PG_KEY, PG_SEED):
                self.db.execute(sql)

    def reopen(self, keyless: bool = False) -> PostgresStore:
        return PostgresStore(self.url, self.run_dir, self.run, outage=self.outage)

    def _connect(self, deadline: float) -> Any:
        import psycopg

        left = max(1, min(10, int(deadline - time.monotonic())))
        return psycopg.connect(self.url, autocommit=True, row_factory=records, connect_timeout=left)

    def _reconnect(self, lost: StateError) -> None:
        """Connect again within the outage window that began at the first failure; OutageError past it."""
        import psycopg

        started = time.monotonic()
        deadline = started + self.outage
        if self.on_outage is not None:
            self.on_outage(f"{lost.message}; retrying for up to {self.outage:g} s")
        pause = 0.1
        while time.monotonic() < deadline:
            try:
                conn = self._connect(deadline)
                conn.execute(f'SET search_path TO "{self.schema}"')
            except psycopg.Error:
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 2.0)
                continue
            old, self.db.conn = self.db.conn, conn
            with contextlib.suppress(Exception):  # (a broken connection may refuse even this)
                old.close()
            if self.on_outage is not None:
                self.on_outage(
                    f"the shared state ({self.where}) is back after {time.monotonic() - started:.1f} s"
                )
            return
        self.down = OutageError(
            f"the shared state ({self.where}) stayed unreachable for the outage window "
            f"({self.outage:g} s): {lost.message}",
            hint=OUTAGE_HINT,
        )
        raise self.down

    @contextmanager
    def _tx(self, defer: bool = False) -> Iterator[Connection]:
        import psycopg  # (every change commits at once: no grouping)

        self.db.watchdog.busy(self.db.socket())  # BEGIN and COMMIT are watched too
        try:
            with self.db.conn.transaction():
                yield self.db
        except psycopg.Error as exc:
            raise state_error(self.where, exc, self.db.conn) from exc
        finally:
            self.db.watchdog.idle()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.db.execute(f"SELECT pg_advisory_lock({ADVISORY_SYNC})")
        try:
            yield
        finally:
            self.db.execute(f"SELECT pg_advisory_unlock({ADVISORY_SYNC})")

    cost_sql = (
        "SELECT COALESCE(SUM((f.value ->> 'cost')::double precision), 0), "
        "COALESCE(BOOL_OR(COALESCE(jsonb_typeof(f.value -> 'cost'), 'null') = 'null'), false) "
        "FROM job, jsonb_array_elements(job.files::jsonb) AS f(value) "
        "WHERE job.in_plan = 1 AND job.state = 'downloaded'"
    )

    def models_without_cost(self) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT DISTINCT model FROM jobs WHERE in_plan = 1 AND state = 'downloaded' AND EXISTS "
                "(SELECT 1 FROM jsonb_array_elements(jobs.files::jsonb) AS f(value) "
                "WHERE jsonb_typeof(f.value -> 'cost') IS NULL OR jsonb_typeof(f.value -> 'cost') = 'null')"
            )
        ]

    # -------------------------------------------------- account slots (global across workers)

    def set_accounts(self, limits: dict[str, int]) -> None:
        """Record each account's concurrency and make sure it has that many slot rows."""
        with self._tx() as db:
            for name, limit in limits.items():
                db.execute(
                    "INSERT INTO accounts VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "concurrency = excluded.concurrency",
                    (name, int(limit)),
                )
                db.execute(
                    "INSERT INTO slots (account, n) SELECT ?, g FROM generate_series(0, ? - 1) AS g "
                    "ON CONFLICT DO NOTHING",
                    (name, int(limit)),
                )

    def acquire_slot(self, account: str, job: str) -> int | None:
        """Lease one free slot of `account` for `job`; None when all its slots are held."""
        with self._tx() as db:
            row = db.execute(
                f"UPDATE slots SET owner = ?, job = ?, lease_until = {self.NOW} + ? WHERE (account, n) IN ("
                "SELECT s.account, s.n FROM slots s JOIN accounts a ON a.name = s.account "
                f"WHERE s.account = ? AND s.n < a.concurrency AND (s.owner IS NULL OR s.lease_until <= {self.NOW}) "
                f"ORDER BY s.n LIMIT 1 {self.skip_locked}) RETURNING n",
                (self.owner, job, self.lease, account),
            ).fetchone()
        return None if row is None else int(row[0])

    def release_slot(self, account: str, n: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE slots SET owner = NULL, job = NULL, lease_until = NULL "
                "WHERE account = ? AND n = ? AND owner = ?",
                (account, n, self.owner),
            )

    def renew(self) -> set[str]:
        held = super().renew()
        with self._tx() as db:
            db.execute(
                f"UPDATE slots SET lease_until = {self.NOW} + ? WHERE owner = ? AND lease_until > {self.NOW}",
                (self.lease, self.owner),
            )
        return held

    def release(self) -> None:
        super().release()
        if self.owner is not None:
            with self._tx() as db:
                db.execute(
                    "UPDATE slots SET owner = NULL, job = NULL, lease_until = NULL WHERE owner = ?",
                    (self.owner,),
                )

    def reserve(self, name: str, interval: float) -> float:
        """Take the next turn of a rate shared by all workers; returns the seconds to wait for it.

        GCRA: `tat` is when the turn after the last one taken begins; each turn moves it on by
        `interval`, from now when it lags (no credit piles up while nobody submits).
        """
        with self._tx() as db:
            row = db.execute(
                f"INSERT INTO rates VALUES (?, {self.NOW} + ?) ON CONFLICT (name) DO UPDATE SET "
                f"tat = GREATEST(rates.tat, {self.NOW}) + ? RETURNING tat - {self.NOW}",
                (name, interval, interval),
            ).fetchone()
        return float(row[0]) - interval

    def accounts(self) -> list[dict[str, Any]]:
        """Per account: requests in flight across all workers (live slot leases) and its limit."""
        rows = self.db.execute(
            "SELECT a.name, a.concurrency, (SELECT COUNT(*) FROM slots s WHERE s.account = a.name AND "
            f"s.owner IS NOT NULL AND s.lease_until > {self.NOW}) FROM accounts a ORDER BY a.name"
        ).fetchall()
        return [{"name": r[0], "limit": int(r[1]), "in_flight": int(r[2])} for r in rows]


ride_out(PostgresStore)
