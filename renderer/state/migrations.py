"""The state's schema: ordered migrations, applied on open, each once (both databases).

A migration is a function named mNNN_what; MIGRATIONS lists them in order and `migrate` applies the
ones a database has not recorded in _migrations, each in its own transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from renderer.state.buckets import (
    PG_BUCKET,
    SQLITE_BUCKET,
    bucketed_head,
    form_of,
    share_buckets,
)
from renderer.state.keys import make_key_index
from renderer.state.rows import OPEN, coded_id, file_columns_sql, key_blob, key_text

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


# The per-job table, the per-cell table and the view that joins them back into the old `jobs`,
# as m007 made them (pgstore's p003 says the same in PostgreSQL's words); m012 splits the cells.
CELLS_V7_DDL = """
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


def jobs_view_v7(key_sql: str, seed_text: str, extra: bool = True) -> str:
    """`jobs` as m007 made it (superseded by jobs_view in m012): every column, rebuilt.

    `extra`: with the cell's kept columns (m011; False for the migrations before it).
    """
    kept = ", c.extra AS extra" if extra else ""
    return f"""
    CREATE VIEW jobs AS SELECT j.id AS id, {key_sql} AS key, j.plan_index AS plan_index, j.in_plan AS in_plan,
        c.endpoint AS endpoint, c.model AS model, c.prompt_id AS prompt_id, c.prompt AS prompt, j.seed AS seed,
        c.axes AS axes, COALESCE(j.stem, c.stem_head || {seed_text}) AS stem,
        CASE WHEN c.input_tail IS NULL THEN c.input_head ELSE c.input_head || {seed_text} || c.input_tail END AS input,
        c.num_images AS num_images, c.tags AS tags, c.source AS source,
        {", ".join(f"j.{name} AS {name}" for name in JOB_COLUMNS.split(", "))}{kept}
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
    db.execute(CELLS_V7_DDL)
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
    db.execute(jobs_view_v7(SQLITE_KEY, "j.seed", extra=False))
    db.execute(JOBS_UPDATE)
    db.execute("DELETE FROM meta WHERE name = 'plan_digest'")


# Tools and old scripts that update `jobs` directly still can (slowly: by the view's rows).
JOBS_UPDATE = f"""CREATE TRIGGER jobs_update INSTEAD OF UPDATE ON jobs BEGIN
    UPDATE job SET plan_index = NEW.plan_index, in_plan = NEW.in_plan,
    stem = CASE WHEN NEW.stem IS OLD.stem THEN stem ELSE NEW.stem END,
    {", ".join(f"{name} = NEW.{name}" for name in JOB_COLUMNS.split(", "))} WHERE id = OLD.id; END"""


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


@migration
def m010_workers_left(db: sqlite3.Connection) -> None:
    """When a worker's run ended (NULL: still running, or killed): status tells live workers apart."""
    db.execute("ALTER TABLE workers ADD COLUMN left_at REAL")


@migration
def m011_cells_extra(db: sqlite3.Connection) -> None:
    """A prompt file's kept columns (`keep:`) per cell: one JSON object text, NULL when the
    prompt keeps nothing (every cell of an older state). `jobs` is rebuilt with it (dropping the
    view drops its trigger, made again). Nothing else changes: the plan's digest of a manifest
    without `keep:` is the same. (m012, next, forgets it anyway: its layout is recorded anew.)
    """
    db.execute("ALTER TABLE cells ADD COLUMN extra TEXT")
    db.execute("DROP VIEW jobs")
    db.execute(jobs_view_v7(SQLITE_KEY, "j.seed"))
    db.execute(JOBS_UPDATE)


# m012's layout (issue 22): what many cells share is a form, stored once; a cell keeps what is its
# own (the prompt id, the prompt text once, the source's line, a path that is not its form's).
FORMS_DDL = """
    CREATE TABLE forms (
        id {serial} PRIMARY KEY,
        digest {blob} UNIQUE,
        endpoint {text} NOT NULL,
        model {text} NOT NULL,
        axes {text} NOT NULL,
        input_head {text} NOT NULL,
        input_mid {text},
        input_tail {text},
        num_images {integer} NOT NULL,
        tags {text} NOT NULL,
        source_head {text} NOT NULL,
        stem_head {text},
        stem_mid {text}
    )"""


# `source` has no type in SQLite: a line number is kept as an integer (1-3 bytes, not its digits).
CELLS_DDL = """
    CREATE TABLE {name} (
        id {serial} PRIMARY KEY,
        form {bigint} NOT NULL,
        prompt_id {text} NOT NULL,
        prompt {text} NOT NULL,
        source {any} NOT NULL,
        stem_head {text},
        quoted {text},
        extra {text}
    )"""


SQLITE_TYPES = {
    "serial": "INTEGER",
    "blob": "BLOB",
    "text": "TEXT",
    "integer": "INTEGER",
    "bigint": "INTEGER",
    "any": "",
}


# A cell's stem head: its own, or its form's head || its prompt id || its form's middle.
STEM_HEAD_SQL = "COALESCE(c.stem_head, f.stem_head || c.prompt_id || f.stem_mid)"


# A cell's prompt id from m013 on (SQLite): its text, or (NULL there) the id derived from the prompt's
# text (table.text_id) rebuilt from cells.pid = slug length << 48 | the 48 bits of the text's hash
# (rows.coded_id, which stores it only where this gives the id back exactly). SQLite's lower() and
# substr() agree with Python's on the ASCII head it applies to.
SQLITE_PID = (
    "COALESCE(c.prompt_id, CASE WHEN c.pid >= 281474976710656 THEN "
    "replace(lower(substr(c.prompt, 1, c.pid >> 48)), ' ', '-') || '-' ELSE '' END || "
    "printf('%012x', c.pid & 281474976710655))"
)
# From m014 (p008) a cell's form may hold its bucket folder (state/buckets.py).
SQLITE_STEM_HEAD = STEM_HEAD_SQL.replace("c.prompt_id", SQLITE_PID).replace(
    "f.stem_head", bucketed_head("f.stem_head", SQLITE_BUCKET)
)
PG_STEM_HEAD = STEM_HEAD_SQL.replace("f.stem_head", bucketed_head("f.stem_head", PG_BUCKET))


def jobs_view(
    key_sql: str, seed_text: str, pid_sql: str = "c.prompt_id", bucket: str | None = None
) -> str:
    """`jobs` with the columns and values it has always had, rebuilt from job, cell and form.

    input = input_head [|| prompt as JSON text || input_mid] [|| seed || input_tail]: the prompt
    is cut out where the form has a middle (cells.quoted holds its JSON text when escaping changed
    it), the seed where it has a tail. stem = the job's own, or the cell's stem head || seed.
    extra = the cell's kept columns (m011), last as m011's view had it. `pid_sql`: the cell's
    prompt id (SQLITE_PID from m013). `bucket`: from m014, the SQL of a cell's bucket folder
    (buckets.SQLITE_BUCKET, PG_BUCKET): cells.form may then hold one (see state/buckets.py).
    """
    cell_input = (
        "CASE WHEN f.input_mid IS NULL THEN f.input_head "
        "ELSE f.input_head || COALESCE(c.quoted, c.prompt) || f.input_mid END || "
        f"CASE WHEN f.input_tail IS NULL THEN '' ELSE {seed_text} || f.input_tail END"
    )
    stem_head = STEM_HEAD_SQL.replace("c.prompt_id", pid_sql)
    form = "c.form"
    if bucket is not None:
        stem_head, form = (
            stem_head.replace("f.stem_head", bucketed_head("f.stem_head", bucket)),
            form_of("c"),
        )
    return f"""
    CREATE VIEW jobs AS SELECT j.id AS id, {key_sql} AS key, j.plan_index AS plan_index, j.in_plan AS in_plan,
        f.endpoint AS endpoint, f.model AS model, {pid_sql} AS prompt_id, c.prompt AS prompt, j.seed AS seed,
        f.axes AS axes, COALESCE(j.stem, {stem_head} || {seed_text}) AS stem,
        {cell_input} AS input,
        f.num_images AS num_images, f.tags AS tags, f.source_head || c.source AS source,
        {", ".join(f"j.{name} AS {name}" for name in JOB_COLUMNS.split(", "))}, c.extra AS extra
    FROM job j JOIN cells c ON c.id = j.cell JOIN forms f ON f.id = {form}"""


def cells_v7_views(cells: str, extra: bool, key_sql: str, seed_text: str) -> list[str]:
    """A read-only look at a state from before m012 (m007's cells, not split into forms): temporary
    views giving the old table `cells` m012's names, so every read works unmigrated; nothing is
    written. Temporary objects are found first by this connection's own statements, while the
    state's own `jobs` view keeps reading its own cells. Before m011 (`extra` False) that `jobs` has
    no kept columns: a temporary `jobs` over these views reads them as null.
    (Both databases: CAST, not PostgreSQL's ::.)
    """
    null = "CAST(NULL AS TEXT)"
    views = [
        f"CREATE TEMP VIEW forms AS SELECT id, digest, endpoint, model, axes, input_head, {null} AS input_mid, "
        f"input_tail, num_images, tags, '' AS source_head, {null} AS stem_head, {null} AS stem_mid FROM {cells}",
        f"CREATE TEMP VIEW cells AS SELECT id, id AS form, prompt_id, prompt, source, stem_head, "
        f"{null} AS quoted, {'extra' if extra else f'{null} AS extra'} FROM {cells}",
    ]
    if not extra:
        views.append(jobs_view(key_sql, seed_text).replace("CREATE VIEW", "CREATE TEMP VIEW", 1))
    return views


def pg_cells_v7_views(db: Any, schema: str, key_sql: str, seed_text: str) -> list[str]:
    """PostgreSQL's read-only look at run `schema` from before p006 (m012), with or without p005's
    kept values: cells_v7_views' statements (temporary views are found before the run's schema);
    none for a run in m012's layout, or from before p003's cells."""
    columns = {
        r[0]
        for r in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? "
            "AND table_name = 'cells'",
            (schema,),
        )
    }
    forms = db.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = 'forms'",
        (schema,),
    ).fetchone()
    if not columns or forms is not None:
        return []
    return cells_v7_views(f'"{schema}".cells', "extra" in columns, key_sql, seed_text)


def split_cells_sql(types: dict[str, str]) -> list[str]:
    """m012's statements (both databases): the cells of m007 (renamed cells_v7) become a form each
    and a cell each, ids kept, exact (the view reads the same), kept values (m011's `extra`, which
    always runs first) carried; the next run's recording shares forms."""
    return [
        FORMS_DDL.format(**types),
        CELLS_DDL.format(name="cells", **types),
        "INSERT INTO forms (id, endpoint, model, axes, input_head, input_tail, num_images, tags, source_head) "
        "SELECT id, endpoint, model, axes, input_head, input_tail, num_images, tags, '' FROM cells_v7",
        "INSERT INTO cells (id, form, prompt_id, prompt, source, stem_head, extra) "
        "SELECT id, id, prompt_id, prompt, source, stem_head, extra FROM cells_v7",
        "DROP TABLE cells_v7",
        # The next run records the plan again (into shared forms); until then every row reads the same.
        "DELETE FROM meta WHERE name = 'plan_digest'",
    ]


@migration
def m012_forms(db: sqlite3.Connection) -> None:
    """The prompt text stored once, and nothing stored that the view can derive (issue 22: ~548 B a
    job to ~N B for a caption set, where every job is a cell of its own).

    A form holds what cells share: endpoint, model, axes, tags, num_images, the input with the
    prompt and the seed cut out, the source file (source = source_head || cells.source, its line
    number), and the stem head around the prompt id (stem_head || prompt_id || stem_mid). A cell
    keeps its prompt id, prompt and source line; its stem head or the prompt's JSON text only when
    they are not derivable. The 16-byte digest and its unique index are gone from cells (cells are
    found by their jobs, or made anew: see plansync); forms keep theirs (they are few). A cell's kept
    columns (m011's `extra`) stay the cell's.
    """
    db.execute("DROP VIEW jobs")  # (and its trigger)
    db.execute("ALTER TABLE cells RENAME TO cells_v7")
    for sql in split_cells_sql(SQLITE_TYPES):
        db.execute(sql)
    db.execute(jobs_view(SQLITE_KEY, "j.seed"))
    db.execute(JOBS_UPDATE)


CELLS_V13_DDL = """
    CREATE TABLE cells (
        id INTEGER PRIMARY KEY,
        form INTEGER NOT NULL,
        prompt_id TEXT,
        prompt TEXT NOT NULL,
        source NOT NULL,
        stem_head TEXT,
        quoted TEXT,
        extra TEXT,
        pid INTEGER
    )"""


@migration
def m013_compact(db: sqlite3.Connection) -> None:
    """Issue 22: a caption set's state at 146 B a job beyond the text at 1M, from 187 (bench/README.md).

    A prompt id derived from the text (`slug-<12 hex>`, 33 bytes) is stored as an 8-byte number
    (cells.pid, prompt_id NULL; see SQLITE_PID), where it reads back exactly; any other id stays
    text. The unique index on the 20-byte job keys becomes an index on their first 4 bytes and two
    triggers that refuse a second row for a key (state/keys.py). The
    cells are copied (prompt_id may now be NULL), ids and values kept: `jobs` reads the same
    (SQLiteStore then VACUUMs once, returning the old cells' pages).
    """
    db.create_function("renderer_coded_id", 2, coded_id, deterministic=True)
    db.execute("DROP VIEW jobs")  # (and its trigger)
    db.execute("ALTER TABLE cells RENAME TO cells_v12")
    db.execute(CELLS_V13_DDL)
    db.execute(
        "INSERT INTO cells (id, form, prompt_id, prompt, source, stem_head, quoted, extra, pid) "
        "SELECT id, form, CASE WHEN pid IS NULL THEN prompt_id END, prompt, source, stem_head, quoted, "
        "extra, pid FROM (SELECT *, renderer_coded_id(prompt_id, prompt) AS pid FROM cells_v12)"
    )
    db.execute("DROP TABLE cells_v12")
    db.execute("DROP INDEX IF EXISTS job_key")
    make_key_index(db)  # (each key held once: the unique index did until the line above)
    db.execute(jobs_view(SQLITE_KEY, "j.seed", SQLITE_PID))
    db.execute(JOBS_UPDATE)


@migration
def m014_buckets(db: sqlite3.Connection) -> None:
    """Issue 22: a sharded layout's bucket folder in the cell's `form`, one form a model where there
    were 4,096 (state/buckets.py); ids, values and every `jobs` row kept."""
    db.execute("DROP VIEW jobs")  # (and its trigger)
    share_buckets(db)
    db.execute(jobs_view(SQLITE_KEY, "j.seed", SQLITE_PID, SQLITE_BUCKET))
    db.execute(JOBS_UPDATE)


PG_TYPES = {
    "serial": "bigserial",
    "blob": "bytea",
    "text": "text",
    "integer": "integer",
    "bigint": "bigint",
    "any": "text",
}


def pg_split_cells(view: str) -> str:
    """postgres' p006_forms (m012 in PostgreSQL's words): its statements, `view` the new `jobs`."""
    return ";\n".join(
        [
            "DROP VIEW jobs",
            "ALTER TABLE cells RENAME TO cells_v7",
            # the old table's constraint name would clash with the new table's
            "ALTER TABLE cells_v7 RENAME CONSTRAINT cells_pkey TO cells_v7_pkey",
            *split_cells_sql(PG_TYPES),
            "SELECT setval(pg_get_serial_sequence('forms', 'id'), "
            "(SELECT COALESCE(MAX(id), 0) + 1 FROM forms), false)",
            "SELECT setval(pg_get_serial_sequence('cells', 'id'), "
            "(SELECT COALESCE(MAX(id), 0) + 1 FROM cells), false)",
            view,
        ]
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
            # Opened here, not by sqlite3 at the first INSERT: a step's DDL (DROP VIEW, ALTER
            # TABLE, CREATE TABLE) is then undone with the rest if the step fails (a full disk).
            db.execute("BEGIN")
            step(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", (step.__name__, time.time()))
        applied.append(step.__name__)
    return applied
