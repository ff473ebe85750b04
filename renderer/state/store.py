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
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from renderer.errors import RunLocked, StateError
from renderer.layout import DB_NAME, LOCK_NAME
from renderer.plan.planner import Fingerprints

STATES = ("planned", "submitted", "completed", "downloaded", "failed")
FINISHED = ("downloaded", "failed")
# The jobs a claim may take (a partial index holds exactly these; the text must match it).
OPEN = "in_plan = 1 AND state NOT IN ('downloaded', 'failed')"
SYNC_BATCH = 5000  # jobs per plan-sync transaction
# A first run records its plan while it renders (PlanRecorder): a short first batch lets the
# first submit go out sooner, and short background batches hold SQLite's one write lock briefly,
# so the runner's own commits (each submit's window) do not wait behind a long insert.
# Measured at 20,000 jobs (64 slots, 0.2 s): process start to first submit 2.1 s with 5,000-job
# batches, 1.2-1.5 s with these (bench/README.md, section 1).
RECORD_BATCH = 250
FIRST_BATCH = 500
PAGE = 2000  # rows per page when the runner reads pending work or finished files

DAMAGED_HINT = (
    f"if the file is damaged, move {DB_NAME} aside (and its -wal/-shm files) and rerun: the state is "
    "rebuilt from the images' sidecars, so finished jobs are not paid for again"
)

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []
migration = MIGRATIONS.append


@migration
def m001_jobs(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE jobs (
            key TEXT PRIMARY KEY,
            plan_index INTEGER,
            in_plan INTEGER NOT NULL DEFAULT 1,
            endpoint TEXT NOT NULL,
            model TEXT NOT NULL,
            prompt_id TEXT NOT NULL,
            prompt TEXT NOT NULL,
            seed INTEGER,
            axes TEXT NOT NULL,
            stem TEXT NOT NULL,
            input TEXT NOT NULL,
            num_images INTEGER NOT NULL,
            tags TEXT NOT NULL,
            source TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'planned'
                CHECK (state IN ('planned', 'submitted', 'completed', 'downloaded', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            submit_started REAL,
            request_id TEXT,
            status_url TEXT,
            response_url TEXT,
            cancel_url TEXT,
            submitted_at REAL,
            completed_at REAL,
            downloaded_at REAL,
            result TEXT,
            files TEXT,
            error TEXT,
            error_kind TEXT,
            updated_at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX jobs_pending ON jobs (in_plan, state, plan_index)")


@migration
def m002_runs(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            started_at REAL NOT NULL,
            finished_at REAL,
            outcome TEXT,
            ambiguous_resubmits INTEGER NOT NULL DEFAULT 0,
            summary TEXT
        )""")


@migration
def m003_provider_and_resubmits(db: sqlite3.Connection) -> None:
    # Who rendered a job (emulator, fal, a custom origin): a placeholder from the emulator is
    # not a finished job for a real provider. NULL for rows written before this migration.
    db.execute("ALTER TABLE jobs ADD COLUMN provider TEXT")
    # One row per submission that paid (or may have paid) for an input a second time, and why:
    # run.json, the summary line and `status` count them.
    db.execute("""
        CREATE TABLE resubmits (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,
            run_id INTEGER,
            at REAL NOT NULL,
            reason TEXT NOT NULL
        )""")


@migration
def m004_meta(db: sqlite3.Connection) -> None:
    """Facts about the run as a whole (the digest of the plan last recorded in full)."""
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    # Pending work is read in pages in plan order; (in_plan, state, plan_index) would make
    # every page sort all pending rows.
    db.execute("CREATE INDEX jobs_order ON jobs (plan_index)")


@migration
def m005_account(db: sqlite3.Connection) -> None:
    """The account (by name, never its key) that submitted a job's request: a request is only
    ever followed, read and cancelled with the key that paid for it. NULL: the single account."""
    db.execute("ALTER TABLE jobs ADD COLUMN account TEXT")


@migration
def m006_leases(db: sqlite3.Connection) -> None:
    """Claims: who works on a job and until when (see `Store.claim`); the workers that ran."""
    db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN lease_until REAL")
    db.execute("ALTER TABLE jobs ADD COLUMN claims INTEGER NOT NULL DEFAULT 0")
    # Only unfinished jobs are in it: claiming reads the next ones without passing finished rows.
    db.execute(f"CREATE INDEX jobs_open ON jobs (plan_index) WHERE {OPEN}")
    # Only held jobs are in it: renewal and release find a worker's jobs at once.
    db.execute("CREATE INDEX jobs_held ON jobs (owner) WHERE owner IS NOT NULL")
    db.execute("""
        CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER,
            started REAL NOT NULL,
            heartbeat REAL NOT NULL
        )""")


# The per-job table, the per-cell table and the view that joins them back into the old `jobs`.
# Shared by the migration below (SQLite); pgstore's p003 says the same in PostgreSQL's words.
CELLS_DDL = """
    CREATE TABLE cells (
        id INTEGER PRIMARY KEY,
        digest BLOB UNIQUE,
        endpoint TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_id TEXT NOT NULL,
        prompt TEXT NOT NULL,
        axes TEXT NOT NULL,
        input_head TEXT NOT NULL,
        input_tail TEXT,
        num_images INTEGER NOT NULL,
        tags TEXT NOT NULL,
        source TEXT NOT NULL,
        stem_head TEXT
    )"""
JOB_COLUMNS = (
    "state, attempts, submit_started, request_id, status_url, response_url, cancel_url, submitted_at, "
    "completed_at, downloaded_at, result, files, error, error_kind, updated_at, provider, account, owner, "
    "lease_until, claims"
)
JOB_DDL = """
    CREATE TABLE job (
        id INTEGER PRIMARY KEY,
        k BLOB NOT NULL,
        key_text TEXT,
        cell INTEGER NOT NULL,
        seed INTEGER,
        plan_index INTEGER,
        in_plan INTEGER NOT NULL DEFAULT 1,
        stem TEXT,
        state TEXT NOT NULL DEFAULT 'planned'
            CHECK (state IN ('planned', 'submitted', 'completed', 'downloaded', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        submit_started REAL,
        request_id TEXT,
        status_url TEXT,
        response_url TEXT,
        cancel_url TEXT,
        submitted_at REAL,
        completed_at REAL,
        downloaded_at REAL,
        result TEXT,
        files TEXT,
        error TEXT,
        error_kind TEXT,
        updated_at REAL,
        provider TEXT,
        account TEXT,
        owner TEXT,
        lease_until REAL,
        claims INTEGER NOT NULL DEFAULT 0
    )"""
JOB_INDEXES = (
    "CREATE UNIQUE INDEX job_key ON job (k)",
    "CREATE INDEX job_order ON job (plan_index)",
    f"CREATE INDEX job_open ON job (plan_index) WHERE {OPEN}",
    "CREATE INDEX job_held ON job (owner) WHERE owner IS NOT NULL",
)


def jobs_view(key_sql: str, seed_text: str) -> str:
    """`jobs` as it was before the cells: every column, rebuilt (stem and input from the cell and the seed)."""
    return f"""
    CREATE VIEW jobs AS SELECT j.id AS id, {key_sql} AS key, j.plan_index AS plan_index, j.in_plan AS in_plan,
        c.endpoint AS endpoint, c.model AS model, c.prompt_id AS prompt_id, c.prompt AS prompt, j.seed AS seed,
        c.axes AS axes, COALESCE(j.stem, c.stem_head || {seed_text}) AS stem,
        CASE WHEN c.input_tail IS NULL THEN c.input_head ELSE c.input_head || {seed_text} || c.input_tail END AS input,
        c.num_images AS num_images, c.tags AS tags, c.source AS source,
        {", ".join(f"j.{name} AS {name}" for name in JOB_COLUMNS.split(", "))}
    FROM job j JOIN cells c ON c.id = j.cell"""


SQLITE_KEY = "COALESCE(j.key_text, 'j1-' || lower(hex(j.k)))"


@migration
def m007_cells(db: sqlite3.Connection) -> None:
    """What jobs of one cell share is stored once: ~130 bytes a job instead of ~530 (issue 15).

    A cell is what the plan repeats for every seed: endpoint, model, prompt, axes, tags, source,
    the input with the seed cut out (input = input_head || seed || input_tail) and the folder
    part of the stem (stem = stem_head || seed). A job row keeps its key as 20 bytes, its seed,
    its place in the plan, its state, and a stem only when it is not the cell's (distinct_stem).
    The view `jobs` gives back the old columns, so reads (and tools that read the file) are
    unchanged. Rows of an older database each get a cell of their own here (exact, not compact);
    the plan's digest is forgotten so the next run records the plan again, sharing cells.
    """
    db.create_function("renderer_key", 1, key_blob, deterministic=True)
    db.create_function("renderer_key_text", 1, key_text, deterministic=True)
    db.execute(CELLS_DDL)
    db.execute(JOB_DDL)
    db.execute(
        "INSERT INTO cells (id, endpoint, model, prompt_id, prompt, axes, input_head, num_images, tags, source) "
        "SELECT rowid, endpoint, model, prompt_id, prompt, axes, input, num_images, tags, source FROM jobs"
    )
    db.execute(
        f"INSERT INTO job (id, k, key_text, cell, seed, plan_index, in_plan, stem, {JOB_COLUMNS}) "
        f"SELECT rowid, renderer_key(key), renderer_key_text(key), rowid, seed, plan_index, in_plan, stem, "
        f"{JOB_COLUMNS} FROM jobs"
    )
    db.execute("DROP TABLE jobs")
    for ddl in JOB_INDEXES:
        db.execute(ddl)
    db.execute(jobs_view(SQLITE_KEY, "j.seed"))
    # Tools and old scripts that update `jobs` directly still can (slowly: by the view's rows).
    db.execute(f"""CREATE TRIGGER jobs_update INSTEAD OF UPDATE ON jobs BEGIN
        UPDATE job SET plan_index = NEW.plan_index, in_plan = NEW.in_plan,
        stem = CASE WHEN NEW.stem IS OLD.stem THEN stem ELSE NEW.stem END,
        {", ".join(f"{name} = NEW.{name}" for name in JOB_COLUMNS.split(", "))} WHERE id = OLD.id; END""")
    db.execute("DELETE FROM meta WHERE name = 'plan_digest'")


def file_columns_sql(files: str) -> str:
    """SET clauses deriving a job's file columns (see m008_file_columns) from the JSON `files`.

    Text that is not a JSON array (never written by renderer; a hand-edited database) and
    entries that are not objects derive NULLs and count as uncosted instead of raising: a
    migration that raised would lock the user out of their run.
    """
    f = f"CASE WHEN json_valid({files}) THEN CASE WHEN json_type({files}) = 'array' THEN {files} END END"
    one = f"CASE WHEN json_array_length({f}) = 1 THEN json_extract({f}, '$[0].%s') END"
    number = "CASE WHEN type = 'object' THEN json_type(value, '$.cost') IN ('integer', 'real') ELSE 0 END"
    return (
        f"fpath = {one % 'path'}, fsize = {one % 'size'}, fmtime = {one % 'mtime_ns'}, "
        f"cost = (SELECT SUM(json_extract(value, '$.cost')) FROM json_each({f}) WHERE {number}), "
        f"uncosted = (SELECT COUNT(*) FROM json_each({f}) WHERE NOT COALESCE({number}, 0))"
    )


@migration
def m008_file_columns(db: sqlite3.Connection) -> None:
    """A finished job's file check and cost in columns of its own (issue 15: no-op rerun of 1M jobs).

    A rerun stats every finished file against its recorded size and mtime, and sums the cost
    of every finished file; reading those out of each job's `files` JSON took ~6 s of a 10 s
    no-op rerun at 1M jobs. fpath/fsize/fmtime are those of a job's only file (NULL for a job
    with several files: those are read from `files`); cost is the sum of its files' costs
    (NULL if none has one); uncosted is how many of its files have no cost. Filled, and kept in
    step with `files`, by m009 (which derives every row: doing it here too was a second pass).
    """
    for column in (
        "fpath TEXT",
        "fsize INTEGER",
        "fmtime INTEGER",
        "cost REAL",
        "uncosted INTEGER NOT NULL DEFAULT 0",
    ):
        db.execute(f"ALTER TABLE job ADD COLUMN {column}")


@migration
def m009_job_files_trigger(db: sqlite3.Connection) -> None:
    """m008's columns are derived by the database: `job_files` rewrites them whenever `files` is written.

    By the store or by anything else (the `jobs` view's trigger, a tool, a benchmark's
    synthesiser), so they cannot disagree with `files`. A first version of m008 wrote them
    from Python instead (and another one made this trigger, unguarded): the trigger is made
    anew and every row derived again, so a database either version touched is right from here.
    Rows are inserted without files (the plan), so no insert trigger is needed.
    """
    db.execute("DROP TRIGGER IF EXISTS job_files")
    db.execute(
        f"CREATE TRIGGER job_files AFTER UPDATE OF files ON job BEGIN "
        f"UPDATE job SET {file_columns_sql('NEW.files')} WHERE id = NEW.id; END"
    )
    db.execute(
        f"UPDATE job SET {file_columns_sql('files')} WHERE files IS NOT NULL OR fpath IS NOT NULL "
        "OR cost IS NOT NULL OR uncosted != 0"
    )


def migrate(db: sqlite3.Connection) -> list[str]:
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for step in MIGRATIONS:
        if step.__name__ in done:
            continue
        with db:
            step(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", (step.__name__, time.time()))
        applied.append(step.__name__)
    return applied


@dataclass(frozen=True)
class Row:
    """A job as stored."""

    key: str
    plan_index: int | None
    in_plan: bool
    endpoint: str
    model: str
    prompt_id: str
    prompt: str
    seed: int | None
    axes: dict[str, Any]
    stem: str
    input: dict[str, Any]
    num_images: int
    tags: list[str]
    source: str
    state: str
    attempts: int
    submit_started: float | None
    request_id: str | None
    status_url: str | None
    response_url: str | None
    cancel_url: str | None
    submitted_at: float | None
    completed_at: float | None
    downloaded_at: float | None
    result: dict[str, Any] | None
    files: list[dict[str, Any]] | None
    error: str | None
    error_kind: str | None
    provider: str | None = None
    account: str | None = (
        None  # the account name that submitted request_id (None: the single account)
    )

    def evolve(self, **changes: Any) -> Row:
        """A copy with `changes` (fields by name): dataclasses.replace without re-running __init__ (hot path)."""
        unknown = changes.keys() - self.__dict__.keys()
        if unknown:
            raise TypeError(f"Row has no field(s) {sorted(unknown)}")
        new = object.__new__(Row)
        new.__dict__.update(self.__dict__, **changes)
        return new

    @classmethod
    def from_sql(cls, r: sqlite3.Row) -> Row:
        def load(v: str | None) -> Any:
            return json.loads(v) if v is not None else None

        return cls(
            r["key"],
            r["plan_index"],
            bool(r["in_plan"]),
            r["endpoint"],
            r["model"],
            r["prompt_id"],
            r["prompt"],
            r["seed"],
            load(r["axes"]),
            r["stem"],
            load(r["input"]),
            r["num_images"],
            load(r["tags"]),
            r["source"],
            r["state"],
            r["attempts"],
            r["submit_started"],
            r["request_id"],
            r["status_url"],
            r["response_url"],
            r["cancel_url"],
            r["submitted_at"],
            r["completed_at"],
            r["downloaded_at"],
            load(r["result"]),
            load(r["files"]),
            r["error"],
            r["error_kind"],
            r["provider"],
            r["account"],
        )


def sql_error(path: Path, exc: sqlite3.Error) -> StateError:
    """An SQLite failure as the person running renderer needs it: what, where, what to do."""
    text = str(exc)
    if "full" in text:
        return StateError(
            f"{path}: cannot write the run database: the disk is full ({text})",
            hint="free space on that disk, then rerun the same command: nothing recorded is lost "
            "and nothing is paid twice",
        )
    if "readonly" in text or "read-only" in text:
        return StateError(
            f"{path}: cannot write the run database ({text})",
            hint="make the run folder writable, then rerun the same command",
        )
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return StateError(f"{path}: the run database is damaged ({text})", hint=DAMAGED_HINT)
    return StateError(
        f"{path}: the run database failed: {text}",
        hint="rerun the same command; if it fails again, " + DAMAGED_HINT,
    )


def distinct_stem(stem: str, key: str) -> str:
    """A job's own path when its natural one belongs to another job: the stem plus part of its key."""
    return f"{stem}_{key.removeprefix('j1-')[:8]}"


_KEY = re.compile(r"j1-(?:[0-9a-f]{2})+")


def key_blob(key: str) -> bytes:
    """A job key as stored (column `k`): the bytes of its hex digest (20 for `j1-` + 40 hex).

    Any other text (tools and tests may name jobs freely) is kept whole in `key_text`, and `k`
    is then the sha256 of it, so `k` alone still finds every job."""
    if _KEY.fullmatch(key):
        return bytes.fromhex(key[3:])
    return hashlib.sha256(f"renderer-key:{key}".encode()).digest()


def key_text(key: str) -> str | None:
    """What column `key_text` keeps: None for the keys renderer makes."""
    return None if _KEY.fullmatch(key) else key


def blob_key(blob: bytes, text: str | None) -> str:
    return text if text is not None else "j1-" + bytes(blob).hex()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class LeaseLost(StateError):
    """This worker no longer holds the job's lease: another worker may own it now; nothing was recorded."""


@dataclass(frozen=True, order=True)
class Claimed:
    """A job now leased to this worker."""

    plan_index: int
    key: str
    endpoint: str


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
                cells: dict[tuple[Any, ...], int] = {}
                stems = (
                    Fingerprints()
                )  # the state was empty: only the plan's own paths, which never clash
                batch: list[Any] = []
                for job in self._rest:
                    batch.append(job)
                    if len(batch) >= RECORD_BATCH:
                        if self._stop.is_set():
                            return
                        store._sync_batch(batch, cells, True, stems)
                        self.recorded += len(batch)
                        batch = []
                if batch and not self._stop.is_set():
                    store._sync_batch(batch, cells, True, stems)
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


class SQLiteStore(Store):
    """The embedded default: renderer.sqlite in the run directory, used by one process at a time."""

    def __init__(self, run_dir: Path, *, readonly: bool = False) -> None:
        self.run_dir = run_dir
        self.path = run_dir / DB_NAME
        self.where = str(self.path)
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path)
            self.db.row_factory = sqlite3.Row
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.execute("PRAGMA busy_timeout=5000")
                migrate(self.db)
            elif self.db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'jobs' AND type = 'table'"
            ).fetchone():
                _old_schema_views(self.db)
        except sqlite3.Error as exc:
            raise sql_error(self.path, exc) from exc
        self._deferred = 0  # changes waiting in the open transaction for commit()
        self._undone: StateError | None = (
            None  # why deferred changes were rolled back (commit() raises it)
        )
        stat = os.stat(self.path) if self.path.exists() else None
        self._identity = (stat.st_dev, stat.st_ino) if stat else (0, 0)

    group_commit = True

    def reopen(self) -> SQLiteStore:
        return SQLiteStore(self.run_dir)

    @contextmanager
    def _tx(self, defer: bool = False) -> Iterator[sqlite3.Connection]:
        deferred = defer and self.grouping
        try:
            yield self.db
            if deferred:
                self._deferred += 1
            else:
                self.db.commit()  # and with it every change deferred before this one
                self._deferred = 0
        except LeaseLost:
            # The fenced statement changed nothing; other jobs' deferred changes stay for commit().
            if not self._deferred:
                self.db.rollback()
            raise
        except sqlite3.Error as exc:
            error = sql_error(self.path, exc)
            self._undo(error)
            raise error from exc
        except BaseException:
            self._undo(
                StateError(
                    f"{self.path}: a state change was interrupted; recent changes were undone",
                    hint="rerun the same command: nothing committed is lost",
                )
            )
            raise

    def _undo(self, error: StateError) -> None:
        """Roll the open transaction back; deferred changes went with it, so their commit() must fail."""
        if self._deferred:
            self._undone = self._undone or error
        self._deferred = 0
        with suppress(sqlite3.Error):
            self.db.rollback()

    def commit(self) -> None:
        if self._deferred:
            with self._tx():
                pass
        undone, self._undone = self._undone, None
        if undone is not None:
            raise undone

    def meta(self, name: str) -> str | None:
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
            return None  # a read-only open of a database from before migration 4
        return super().meta(name)

    def workers(self) -> list[dict[str, Any]]:
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'workers'").fetchone() is None:
            return []  # a read-only open of a database from before migration 6
        return super().workers()

    def gone(self) -> bool:
        """Has the database file been deleted or replaced since it was opened (the run directory removed)?"""
        try:
            stat = os.stat(self.path)
        except OSError:
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def downloaded_files(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """(key, files) of every finished job, in no particular order, read in pages.

        Each page is one JSON document built by SQLite and decoded once: on a rerun of 100,000
        finished jobs this is several times faster than decoding each row's column on its own.
        Pages go by rowid, so rows changed while the caller works are neither skipped nor repeated.
        """
        after = 0
        while True:
            last, blob = self.db.execute(
                "SELECT MAX(r), '[' || COALESCE(group_concat('[' || json_quote(key) || ',' || files || ']', ','), '')"
                f" || ']' FROM (SELECT j.id AS r, {self.key_sql} AS key, j.files AS files FROM job j WHERE j.id > ? "
                "AND +j.in_plan = 1 AND +j.state = 'downloaded' ORDER BY j.id LIMIT ?)",
                (after, PAGE * 5),
            ).fetchone()
            if last is None:
                return
            yield from ((key, entries) for key, entries in json.loads(blob))
            after = last

    def file_stats(self) -> Iterator[list[tuple[Any, Any, Any, Any]]]:
        # Plain columns for a job with one file (m008); only a job with several reads its JSON.
        # Rows carry the job's id, not its key: key_of() makes a key only for the few that changed.
        finished = "+j.in_plan = 1 AND +j.state = 'downloaded'"
        after = 0
        while (upto := _page_bound(self.db, after, finished)) is not None:
            yield self.db.execute(
                f"SELECT j.id, j.fpath, j.fsize, j.fmtime FROM job j WHERE j.id > ? AND j.id <= ? AND {finished} "
                "AND j.fpath IS NOT NULL UNION ALL SELECT j.id, json_extract(f.value, '$.path'), "
                "json_extract(f.value, '$.size'), json_extract(f.value, '$.mtime_ns') FROM job j, json_each(j.files) f "
                f"WHERE j.id > ? AND j.id <= ? AND {finished} AND j.fpath IS NULL",
                (after, upto, after, upto),
            ).fetchall()
            after = upto

    def key_of(self, ref: Any) -> str:
        row = self.db.execute(f"SELECT {self.key_sql} FROM job j WHERE j.id = ?", (ref,)).fetchone()
        return str(row[0])


def _page_bound(db: Any, after: int, where: str) -> int | None:
    """The last job id of the next page of finished jobs after `after` (None: no more)."""
    row = db.execute(
        f"SELECT MAX(id) FROM (SELECT id FROM job j WHERE id > ? AND {where} ORDER BY id LIMIT ?)",
        (after, PAGE * 5),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _old_schema_views(db: sqlite3.Connection) -> None:
    """A read-only look at a database from before m007_cells (status, report, diff of an old run):
    temporary views give its one table the new names (temp shadows main); nothing is written."""
    have = {r[1] for r in db.execute("PRAGMA main.table_info(jobs)")}

    def col(name: str) -> str:
        return name if name in have else "0" if name == "claims" else "NULL"

    db.create_function("renderer_key", 1, key_blob, deterministic=True)
    db.create_function("renderer_key_text", 1, key_text, deterministic=True)
    db.execute(
        "CREATE TEMP VIEW cells AS SELECT rowid AS id, NULL AS digest, endpoint, model, prompt_id, prompt, axes, "
        "input AS input_head, NULL AS input_tail, num_images, tags, source, NULL AS stem_head FROM main.jobs"
    )
    per_job = ", ".join(f"{col(c)} AS {c}" for c in JOB_COLUMNS.split(", "))
    db.execute(
        "CREATE TEMP VIEW job AS SELECT rowid AS id, renderer_key(key) AS k, renderer_key_text(key) AS key_text, "
        f"rowid AS cell, seed, plan_index, in_plan, stem, {per_job} FROM main.jobs"
    )
    db.execute(
        "CREATE TEMP VIEW jobs AS SELECT rowid AS id, key, plan_index, in_plan, endpoint, model, prompt_id, "
        f"prompt, seed, axes, stem, input, num_images, tags, source, {per_job} FROM main.jobs"
    )


def open_store(state: str | None, run_dir: Path, name: str, *, readonly: bool = False) -> Store:
    """The run's state: SQLite in the run directory (state None), or shared PostgreSQL (a postgresql:// URL)."""
    if not state:
        return SQLiteStore(run_dir, readonly=readonly)
    from renderer.state.postgres import PostgresStore, is_postgres

    if not is_postgres(state):
        from renderer.errors import UsageError

        raise UsageError(
            f"--state {state.split('://')[0]}://…: not a state URL renderer knows",
            hint="give postgresql://USER@HOST/DB for state shared by several workers, or leave --state "
            "(RENDERER_STATE, manifest state:) unset for the SQLite file in the run directory",
        )
    return PostgresStore(state, run_dir, name, readonly=readonly)


class RunLock:
    """An exclusive lock on a run directory for the length of a run (advisory, per file system)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(
                f"{self.path.parent}: cannot use this folder for a run: {exc.strerror or exc}",
                hint="give the run a writable folder (--output), or make this one writable",
            ) from exc
        try:
            _lock(fd)
        except OSError as exc:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is in use by another renderer run ({holder})",
                hint="wait for it to finish, or give this run another output directory",
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
