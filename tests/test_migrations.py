"""The state's layouts across migrations: m012's forms give back, byte for byte, the `jobs` rows of m007's cells
(with m011's kept values); older states read unmigrated (read-only) and migrated."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from renderer.manifest.load import load
from renderer.manifest.table import text_id
from renderer.models.schemas import SchemaRegistry
from renderer.plan import planner as plan
from renderer.plan.jobs import Job
from renderer.state.buckets import FORM_COLUMNS, form_of, split
from renderer.state.migrations import (
    CELLS_DDL,
    JOBS_UPDATE,
    MIGRATIONS,
    SQLITE_KEY,
    SQLITE_PID,
    SQLITE_TYPES,
    jobs_view,
    migrate,
)
from renderer.state.postgres import PostgresStore
from renderer.state.rows import Row, coded_id, key_blob, key_text
from renderer.state.sqlite import SQLiteStore
from renderer.state.store import Store

# Text a caption may hold: quotes, backslashes, control characters, non-ASCII, '"prompt":' itself.
_text = st.lists(
    st.sampled_from([*'ab "\\\n\t\x01\x1fé✓:/{}', '"prompt":"', '"seed":']), max_size=8
).map("".join)
_MODELS = ["fal-ai/flux-1/schnell", "acme/x"]
# A prompt's kept columns (`keep:`) as Prompt.extra holds them: None, or one compact JSON object text.
_extra = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["source_url", "license", "n", 'a"b']),
        st.one_of(_text, st.integers(-(2**53), 2**53), st.booleans(), st.none()),
        max_size=3,
    ).map(lambda kept: json.dumps(kept, ensure_ascii=False, separators=(",", ":"))),
)

_ids = st.sampled_from(["own", "text", "like"])


@st.composite
def _jobs(draw: st.DrawFn) -> list[Job]:
    """A plan's jobs as the planner hands them to the state: prompts shared by several seeds or not,
    inputs with the prompt and seed anywhere (or absent), stems and sources of every shape, kept
    values or none."""
    prompts = draw(st.lists(st.tuples(_text, _text, _extra, _ids), min_size=1, max_size=4))
    jobs: list[Job] = []
    used: set[str] = set()
    for n in range(draw(st.integers(1, 12))):
        pid, text, extra, how = draw(st.sampled_from(prompts))
        # An id of its own, derived from the text (m013 stores a number), or one that only looks so.
        pid = {"own": pid or "p", "text": text_id(text), "like": f"{text[:3]}-0123456789ab"}[how]
        model = draw(st.sampled_from(_MODELS))
        seed = draw(st.one_of(st.none(), st.integers(-5, 10**12), st.just(True)))
        params: list[tuple[str, Any]] = [("prompt", text)]
        if seed is not None and draw(st.booleans()):
            params.insert(draw(st.integers(0, 1)), ("seed", seed))
        if draw(st.booleans()):
            params.insert(draw(st.integers(0, len(params))), ("steps", draw(st.integers(1, 4))))
        if draw(st.booleans()):  # a nested "prompt" key, or the prompt text in another parameter
            params.append(("extra", draw(st.sampled_from([{"prompt": text}, text, [text]]))))
        if draw(st.booleans()):
            params = [(k, v) for k, v in params if k != "prompt"]
        slug = model.replace("/", "--")
        stem = draw(
            st.sampled_from(
                [
                    f"{slug}/{pid}/s{seed}",
                    f"{slug}/ab/{pid}/s{seed}",
                    # a sharded layout's bucket folder (m014 keeps it in the cell), and look-alikes
                    f"{slug}/{draw(st.sampled_from(['000', 'e0b', 'fff']))}/{pid}/s{seed}",
                    f"{slug}/0ff/0ee/{pid}/s{seed}",
                    f"{slug}/E0B/{pid}/s{seed}",
                    f"0a1/{pid}/s{seed}",
                    f"{slug}/{pid}/s{seed}_1f2e3d4c",
                    f"{slug}/{pid}{pid}/s{seed}",
                    f"x/{n}",
                ]
            )
        )
        if stem.lower() in used:  # the planner never gives two jobs of a plan one path
            stem = f"{stem}-{n}"
        used.add(stem.lower())
        where = draw(
            st.sampled_from(
                ["prompts.txt:7", "m.yaml:12:5", "data.jsonl:0", "a:007", "noline", ":3", "p.csv:"]
            )
        )
        jobs.append(
            Job(
                index=n,
                key="j1-" + hashlib.sha1(str(n).encode()).hexdigest(),
                endpoint=model,
                model=model,
                prompt_id=pid,
                seed=None if seed is True else seed,
                axes=draw(st.sampled_from([{}, {"steps": 2}, {"size": 'a"b'}])),
                input=dict(params),
                stem=stem,
                num_images=draw(st.integers(1, 2)),
                tags=tuple(draw(st.lists(st.sampled_from(["x", "é"]), max_size=2))),
                where=where,
                extra=extra,
            )
        )
    return jobs


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _record_as_m007(db: Any, jobs: list[Job], kept: bool = True) -> None:
    """The jobs written the way m007's plansync wrote them (the seed cut out of the input and the stem), each
    in a cell of its own; with `kept`, its kept values as m011's did. `db`: SQLite's or a store's (both)."""
    for j in jobs:
        text, seed = _dumps(j.input), j.seed
        head, tail, stem_head = text, None, None
        if isinstance(seed, int) and not isinstance(seed, bool):
            if text.count('"seed":') == 1:
                at = text.index('"seed":') + 7
                if text.startswith(str(seed), at) and text[at + len(str(seed))] in ",}":
                    head, tail = text[:at], text[at + len(str(seed)) :]
            if j.stem.endswith(f"/s{seed}"):
                stem_head = j.stem[: -len(str(seed))]
        (cell,) = db.execute(
            "INSERT INTO cells (endpoint, model, prompt_id, prompt, axes, input_head, input_tail, "
            f"num_images, tags, source, stem_head{', extra' if kept else ''}) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{', ?' if kept else ''}) RETURNING id",
            (
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
                *([j.extra] if kept else []),
            ),
        ).fetchone()
        natural = None if stem_head is None else f"{stem_head}{seed}"
        db.execute(
            "INSERT INTO job (k, key_text, cell, seed, plan_index, stem) VALUES (?, ?, ?, ?, ?, ?)",
            (
                key_blob(j.key),
                key_text(j.key),
                cell,
                j.seed,
                j.index,
                None if j.stem == natural else j.stem,
            ),
        )


def _unbucket(db: Any, view: str = "") -> None:
    """The state's cells and forms as m013 (p007) left them: a bucket folder in the form's stem head (a
    form per bucket, with the digest a recording gave it then), not in the cell's `form`; m013's `jobs`
    (`view`: p007's, on PostgreSQL). `db`: SQLite's or a store's (both)."""
    db.execute("DROP VIEW jobs")
    for (coded,) in db.execute("SELECT DISTINCT form FROM cells WHERE form < 0").fetchall():
        row = db.execute(
            f"SELECT {FORM_COLUMNS} FROM forms WHERE id = ?", (-coded >> 12,)
        ).fetchone()
        content = (*row[:9], f"{row[9]}{-coded & 4095:03x}/", row[10])
        digest = hashlib.sha256(_dumps(content).encode()).digest()[:16]
        (form,) = db.execute(
            f"INSERT INTO forms (digest, {FORM_COLUMNS}) VALUES ({', '.join('?' * 12)}) RETURNING id",
            (digest, *content),
        ).fetchone()
        db.execute("UPDATE cells SET form = ? WHERE form = ?", (form, coded))
    db.execute("DELETE FROM forms WHERE id NOT IN (SELECT form FROM cells)")
    if view:
        db.execute(view)
    else:
        db.execute(jobs_view(SQLITE_KEY, "j.seed", SQLITE_PID))
        db.execute(JOBS_UPDATE)
    db.execute("DELETE FROM _migrations WHERE name IN ('m014_buckets', 'p008_buckets')")


def _as_m013(store: SQLiteStore, folder: Path) -> None:
    """A copy of the store's state in `folder` as m013 left it (see _unbucket)."""
    folder.mkdir()
    db = sqlite3.connect(folder / "renderer.sqlite")
    store.db.backup(db)
    with db:
        _unbucket(db)
    db.close()


def _as_m012(store: SQLiteStore, folder: Path) -> None:
    """A copy of the store's state in `folder` as m012 left it: every prompt id as text in cells that
    cannot hold a number, a unique index on whole keys, m012's `jobs`."""
    folder.mkdir()
    db = sqlite3.connect(folder / "renderer.sqlite")
    store.db.backup(db)
    with db:
        _unbucket(db)
        db.execute("DROP VIEW jobs")
        db.execute("ALTER TABLE cells RENAME TO cells_v13")
        db.execute(CELLS_DDL.format(name="cells", **SQLITE_TYPES))
        db.execute(
            "INSERT INTO cells (id, form, prompt_id, prompt, source, stem_head, quoted, extra) "
            f"SELECT id, form, {SQLITE_PID}, prompt, source, stem_head, quoted, extra FROM cells_v13 c"
        )
        db.execute("DROP TABLE cells_v13")
        db.execute("DROP INDEX job_key")
        db.execute("CREATE UNIQUE INDEX job_key ON job (k)")
        db.execute(jobs_view(SQLITE_KEY, "j.seed"))
        db.execute(JOBS_UPDATE)
        db.execute("DELETE FROM _migrations WHERE name = 'm013_compact'")
    db.close()


def _old_database(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous = OFF")  # a scratch file: no fsync per migration
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for step in MIGRATIONS:
        if step.__name__ < "m012":
            with db:
                step(db)
                db.execute("INSERT INTO _migrations VALUES (?, 0)", (step.__name__,))
    return db


def _expected(j: Job) -> tuple[Any, ...]:
    """A job's `jobs` row as the planner meant it (the columns the plan decides, text as stored)."""
    return (
        j.key,
        j.index,
        j.endpoint,
        j.model,
        j.prompt_id,
        j.input.get("prompt", ""),
        j.seed,
        _dumps(j.axes),
        j.stem,
        _dumps(j.input),
        j.num_images,
        _dumps(list(j.tags)),
        j.where,
        j.extra,
    )


PLANNED = (
    "key, plan_index, endpoint, model, prompt_id, prompt, seed, axes, stem, input, num_images, tags, "
    "source, extra"
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(jobs=_jobs())
def test_every_layout_reads_back_the_plan_byte_for_byte(
    tmp_path_factory: pytest.TempPathFactory, jobs: list[Job]
):
    """Whatever the prompts, inputs, stems, sources and kept values, the `jobs` rows of a plan recorded in
    m012's forms are those of m007's cells (with m011's kept values), every column; an m011 state migrated
    to m012 reads the same, and so does it once the next run has recorded the plan into shared forms; so
    do m012's and m013's layouts migrated, before and after the next recording."""
    folder = tmp_path_factory.mktemp("layouts")
    old = _old_database(folder / "old.db")
    with old:
        _record_as_m007(old, jobs)
    everything = "SELECT * FROM jobs ORDER BY id"
    before = old.execute(everything).fetchall()
    assert [r[1:] for r in old.execute(f"SELECT id, {PLANNED} FROM jobs ORDER BY id")] == [
        _expected(j) for j in jobs
    ]
    new = SQLiteStore(folder / "new")
    assert new.sync_plan(jobs, "d")
    assert [tuple(r) for r in new.db.execute(everything)] == before
    m012, m013 = folder / "m012", folder / "m013"
    _as_m012(new, m012)
    _as_m013(new, m013)
    new.close()
    assert migrate(old) == ["m012_forms", "m013_compact", "m014_buckets"]
    assert old.execute(everything).fetchall() == before
    old.close()
    # m012's layout (shared forms, every id as text) migrated by m013: the same rows, the ids derived
    # from the text stored as numbers, and the next recording finds every job as recorded.
    twelve = SQLiteStore(m012)
    assert [tuple(r) for r in twelve.db.execute(everything)] == before
    for text, number, prompt in twelve.db.execute("SELECT prompt_id, pid, prompt FROM cells"):
        assert (text is None) != (number is None)  # an id derived from the text is a number
        assert text is None or coded_id(text, prompt) is None
    assert not twelve.sync_plan(jobs, "e")
    assert [tuple(r) for r in twelve.db.execute(everything)] == before
    twelve.close()
    # m013's layout (a form per bucket folder) migrated by m014: the same rows, no form whose stem head
    # ends in a bucket folder of its own, and the next recording finds every job as recorded.
    thirteen = SQLiteStore(m013)
    assert [tuple(r) for r in thirteen.db.execute(everything)] == before
    for (head,) in thirteen.db.execute("SELECT stem_head FROM forms WHERE stem_head IS NOT NULL"):
        assert split(head)[1] is None
    assert not thirteen.sync_plan(jobs, "e")
    assert [tuple(r) for r in thirteen.db.execute(everything)] == before
    thirteen.close()
    (folder / "run").mkdir()
    (folder / "old.db").rename(folder / "run" / "renderer.sqlite")
    again = SQLiteStore(folder / "run")
    assert again.sync_plan(
        jobs, "d"
    )  # every job moves into the new layout's forms (old ones have no digest)
    assert [tuple(r) for r in again.db.execute(everything)] == before
    assert (
        again.db.execute(
            "SELECT COUNT(*) FROM cells WHERE id NOT IN (SELECT cell FROM job)"
        ).fetchone()[0]
        == 0
    )
    assert (
        again.db.execute(
            f"SELECT COUNT(*) FROM forms WHERE id NOT IN (SELECT {form_of('cells')} FROM cells)"
        ).fetchone()[0]
        == 0
    )
    again.close()


_HOSTILE = [
    ({"prompt": 'a "quoted" \\ caption\n', "seed": 1}, "fal-ai--flux-1--schnell/p0/s1", "c.txt:1"),
    ({"seed": 22, "prompt": "seed first ✓"}, "fal-ai--flux-1--schnell/ab/p1/s22", "c.txt:2"),
    ({"prompt": "\x01\x1f", "loras": [{"prompt": "x"}], "seed": 3}, "x/p2", "m.yaml:4:7"),
    ({"image_size": "square"}, "fal-ai--flux-1--schnell/p3/s-auto", "noline"),
    ({"prompt": "same", "seed": 4}, "fal-ai--flux-1--schnell/p4/s4_0a1b2c3d", "c.txt:007"),
    ({"prompt": "same", "seed": 5}, "fal-ai--flux-1--schnell/p4/s5", "c.txt:5"),
]
# Each job's kept values (`keep:`): the two jobs of one prompt text may keep different ones.
_HOSTILE_KEPT = [
    {"license": "cc-by", "n": 1},
    None,
    {"q": 'a "quoted" ✓\n', "none": None, "ok": True},
    None,
    {"n": 4},
    {"n": 5.5},
]


@pytest.fixture(params=["sqlite", "postgres"])
def open_state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens the run's state on each database: the test runs against both."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    opened: list[Store] = []

    def make() -> Store:
        opened.append(PostgresStore(url, tmp_path, "layouts") if url else SQLiteStore(tmp_path))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def test_both_databases_read_back_hostile_jobs_exactly(open_state: Callable[[], Store]):
    """Prompts with quotes, escapes and control characters, the seed before the prompt, no prompt at all,
    a nested "prompt", sharded and distinct paths, kept values or none: each job's `jobs` row is the plan's,
    text for text, in PostgreSQL as in SQLite, and stays so when the next run records the same plan."""
    jobs = [
        Job(
            index=n,
            key="j1-" + hashlib.sha1(str(n).encode()).hexdigest(),
            endpoint="fal-ai/flux-1/schnell",
            model="fal-ai/flux-1/schnell",
            prompt_id=f"p{min(n, 4)}",
            seed=params.get("seed"),
            axes={},
            input=params,
            stem=stem,
            num_images=1,
            tags=(),
            where=where,
            extra=None if _HOSTILE_KEPT[n] is None else _dumps(_HOSTILE_KEPT[n]),
        )
        for n, (params, stem, where) in enumerate(_HOSTILE)
    ]
    store = open_state()
    assert store.sync_plan(jobs, "d")
    read = [tuple(r) for r in store.db.execute(f"SELECT {PLANNED} FROM jobs ORDER BY plan_index")]
    assert read == [_expected(j) for j in jobs]
    assert [store.get(j.key).input for j in jobs] == [j.input for j in jobs]
    assert [store.get(j.key).extra for j in jobs] == [j.extra for j in jobs]
    assert not store.sync_plan(jobs, "e")  # found as recorded: nothing moves
    assert [
        tuple(r) for r in store.db.execute(f"SELECT {PLANNED} FROM jobs ORDER BY plan_index")
    ] == read
    forms = [
        r[0]
        for r in store.db.execute(
            "SELECT c.form FROM job j JOIN cells c ON c.id = j.cell ORDER BY j.plan_index"
        )
    ]
    # The first and last share their form (the prompt and seed cut out); the others cannot be cut so.
    assert forms[0] == forms[5] and len(set(forms)) == 5


def test_a_state_from_before_the_forms_is_read_as_it_is_when_opened_read_only(tmp_path: Path):
    """status, report and diff open a run read-only: a state of m007's cells (and m011's kept values) reads the
    same through the new names (forms and cells over the old table), and is left as it was."""
    jobs = [
        Job(
            index=n,
            key="j1-" + hashlib.sha1(str(n).encode()).hexdigest(),
            endpoint=model,
            model=model,
            prompt_id=f"p{n % 3}",
            seed=n,
            axes={},
            input={"prompt": f"caption {n % 3}", "seed": n},
            stem=f"{model.replace('/', '--')}/p{n % 3}/s{n}",
            num_images=1,
            tags=(),
            where=f"c.txt:{n % 3 + 1}",
            extra=_dumps({"n": n}) if n % 2 else None,
        )
        for n in range(6)
        for model in [_MODELS[n % 2]]
    ]
    old = _old_database(tmp_path / "renderer.sqlite")
    with old:
        _record_as_m007(old, jobs)
        old.execute(
            "UPDATE jobs SET state = 'downloaded', files = '[{\"path\": \"a.png\"}]' WHERE plan_index < 2"
        )
    old.close()
    store = SQLiteStore(tmp_path, readonly=True)
    assert [(r.key, r.input, r.stem, r.source, r.extra) for r in store.rows()] == [
        (j.key, j.input, j.stem, j.where, j.extra) for j in jobs
    ]
    assert store.models_without_cost() == sorted(_MODELS)
    assert store.counts()["downloaded"] == 2
    store.close()
    names = sqlite3.connect(tmp_path / "renderer.sqlite").execute("SELECT name FROM _migrations")
    assert "m012_forms" not in {r[0] for r in names}


def _store_before(
    open_state: Callable[[], Store], monkeypatch: pytest.MonkeyPatch, step: str, jobs: list[Job]
) -> tuple[Store, list[Row]]:
    """A state as the run before `step` (m011: no kept values; m012: no forms; m013: ids as text) left it,
    on either database: `jobs` recorded in m007's cells (migrated to m012's forms for m013), the first one
    finished. The store (closed) and its rows as read then."""
    import renderer.state.migrations as migrations_mod
    import renderer.state.postgres as pg_mod

    twin = {"m011": "p005", "m012": "p006", "m013": "p007"}[step]

    def schema(upto: str, pg_upto: str) -> None:
        old_schema.setattr(
            migrations_mod, "MIGRATIONS", [m for m in MIGRATIONS if m.__name__ < upto]
        )
        old_schema.setattr(
            pg_mod, "SCHEMA_VERSION", [s for s in pg_mod.SCHEMA_VERSION if s[0] < pg_upto]
        )

    with monkeypatch.context() as old_schema:
        schema(min(step, "m012"), min(twin, "p006"))
        store = open_state()
        with store._tx() as db:
            _record_as_m007(db, jobs, kept=step > "m011")
        if step > "m012":  # (m007's cells, then m012's forms)
            store.close()
            schema(step, twin)
            store = open_state()
        store.downloaded(jobs[0].key, [{"path": "data/x-0.png", "size": 3}])
        rows = store.rows()
        store.close()
    return store, rows


def _read_only(store: Store) -> Store:
    """The same state opened as status, report and diff open it (not migrated)."""
    if isinstance(store, PostgresStore):
        return PostgresStore(store.url, store.run_dir, store.run, readonly=True)
    return SQLiteStore(store.run_dir, readonly=True)


def _applied(store: Store) -> set[str]:
    return {r[0] for r in store.db.execute("SELECT name FROM _migrations")}


def test_kept_values_of_a_state_from_before_the_forms_are_read_and_carried_by_m012(
    open_state: Callable[[], Store], monkeypatch: pytest.MonkeyPatch
):
    """A run that kept columns (m011/p005) before the forms: opened read-only its kept values read as
    recorded; m012/p006 carries them into the new cells, `jobs` and the export give them back, and the
    next run's recording into shared forms keeps them, on PostgreSQL as on SQLite."""
    kept = [{"source_url": 'u "0" ✓', "original_id": 0}, None, {"original_id": 2, "ok": True}]
    jobs = [
        Job(
            index=n,
            key="j1-" + hashlib.sha1(str(n).encode()).hexdigest(),
            endpoint=_MODELS[0],
            model=_MODELS[0],
            prompt_id=f"p{n // 2}",
            seed=n,
            axes={},
            input={"prompt": f"caption ✓ {n // 2}", "seed": n},
            stem=f"fal-ai--flux-1--schnell/p{n // 2}/s{n}",
            num_images=1,
            tags=(),
            where=f"c.jsonl:{n // 2 + 1}",
            extra=None if kept[n // 2] is None else _dumps(kept[n // 2]),
        )
        for n in range(6)
    ]
    old, before = _store_before(open_state, monkeypatch, "m012", jobs)
    assert [(r.key, r.extra) for r in before] == [(j.key, j.extra) for j in jobs]
    unmigrated = _read_only(old)
    assert unmigrated.rows() == before
    assert [r["extra"] for r in unmigrated.export_rows()] == [kept[0]]
    assert unmigrated.kept_kinds() == {"source_url": {"string"}, "original_id": {"int64"}}
    assert not _applied(unmigrated) & {"m012_forms", "p006_forms"}
    unmigrated.close()
    store = open_state()  # migrates
    assert _applied(store) & {"m012_forms", "p006_forms"}
    assert store.rows() == before
    assert [tuple(r) for r in store.db.execute(f"SELECT {PLANNED} FROM jobs ORDER BY id")] == [
        _expected(j) for j in jobs
    ]
    assert [r["extra"] for r in store.export_rows()] == [kept[0]]
    assert store.sync_plan(jobs, "d")  # m012 forgot the digest: the plan moves into shared forms
    assert store.rows() == before
    assert not store.sync_plan(jobs, "d")
    assert store.db.execute("SELECT COUNT(*) FROM forms").fetchone()[0] == 1
    store.close()
    again = _read_only(store)  # migrated, read-only: the same
    assert again.rows() == before
    again.close()


def _kept_plan(registry: SchemaRegistry, folder: Path, keep: bool) -> plan.Plan:
    """Three captions on one model, two seeds; with `keep`, each row's source_url and original_id."""
    rows = [
        {"text": f"a fox number {i}", "source_url": f"u{i}", "original_id": i} for i in range(3)
    ]
    (folder / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    keeping = ", keep: [source_url, original_id]" if keep else ""
    (folder / "m.yaml").write_text(
        f"name: t\nprovider: emulator\nprompts: [{{file: p.jsonl, text: text{keeping}}}]\n"
        "models: [fal-ai/flux-1/schnell]\nseeds: [1, 2]\n"
    )
    return plan.build(load(folder / "m.yaml"), registry)


def test_a_state_from_before_kept_columns_opens_and_works(
    open_state: Callable[[], Store],
    registry: SchemaRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
):
    """A state written before m011/p005 reads back unchanged, read-only (kept columns null) and migrated; the
    same run with `keep:` then records each job's kept values, its finished jobs staying finished."""
    folder = tmp_path / "m"
    folder.mkdir()
    plain, kept = _kept_plan(registry, folder, False), _kept_plan(registry, folder, True)
    store, before = _store_before(open_state, monkeypatch, "m011", plain.jobs)
    first = plain.jobs[0].key
    old = _read_only(store)  # not migrated: the kept columns read as null
    assert old.rows() == before and all(r.extra is None for r in before)
    assert [r["extra"] for r in old.export_rows()] == [None] and old.kept_kinds() == {}
    old.close()
    store = open_state()  # migrates (m011, then m012's forms)
    assert store.rows() == before
    # m012 forgets the plan's digest: the same plan is recorded once more (into shared forms), reading
    # the same; after that it is not read again.
    assert store.sync_plan(plain.jobs, plain.digest)
    assert store.rows() == before
    assert not store.sync_plan(plain.jobs, plain.digest)
    assert kept.digest != plain.digest
    assert store.sync_plan(kept.jobs, kept.digest)
    rows = {r.key: r for r in store.rows()}
    assert set(rows) == {j.key for j in kept.jobs} == {r.key for r in before}
    for job in kept.jobs:
        assert rows[job.key].extra == job.extra and rows[job.key].stem == job.stem
        assert json.loads(job.extra or "")["original_id"] == int(job.input["prompt"][-1])
    assert rows[first].state == "downloaded"
    (finished,) = store.export_rows()
    assert finished["key"] == first and finished["extra"] == {"source_url": "u0", "original_id": 0}
    assert store.kept_kinds() == {"source_url": {"string"}, "original_id": {"int64"}}
    store.close()
    again = _read_only(store)  # migrated, read-only: the same
    assert {r.key: r.extra for r in again.rows()} == {k: r.extra for k, r in rows.items()}
    again.close()


def test_a_state_from_before_m013_is_read_unmigrated_and_migrated_alike(
    open_state: Callable[[], Store], monkeypatch: pytest.MonkeyPatch
):
    """A run recorded before m013/p007 (ids derived from the text stored as text, a unique index on whole
    keys): read-only it reads as recorded; migrated, `jobs` gives back the same rows (SQLite's derived ids now
    numbers, the file without free pages, a second row for a key refused), a finished job stays finished, and the next recording reads the same."""
    texts = ["A red fox 1", "a red fox 2", 'a "red" fox 3']
    jobs = [
        Job(
            index=n,
            key="j1-" + hashlib.sha1(str(n).encode()).hexdigest(),
            endpoint=_MODELS[0],
            model=_MODELS[0],
            prompt_id=text_id(text),
            seed=7,
            axes={},
            input={"prompt": text, "seed": 7},
            stem=f"fal-ai--flux-1--schnell/{text_id(text)}/s7",
            num_images=1,
            tags=(),
            where=f"c.txt:{n + 1}",
        )
        for n, text in enumerate(texts)
    ]
    old, before = _store_before(open_state, monkeypatch, "m013", jobs)
    assert [(r.key, r.prompt_id, r.stem) for r in before] == [
        (j.key, j.prompt_id, j.stem) for j in jobs
    ]
    unmigrated = _read_only(old)
    assert unmigrated.rows() == before
    assert not _applied(unmigrated) & {"m013_compact", "p007_compact"}
    unmigrated.close()
    store = open_state()  # migrates
    assert _applied(store) & {"m013_compact", "p007_compact"}
    assert store.rows() == before and store.get(jobs[0].key).state == "downloaded"
    numbers = store.db.execute("SELECT COUNT(*) FROM cells WHERE pid IS NOT NULL").fetchone()[0]
    assert numbers == (0 if isinstance(store, PostgresStore) else 2)  # the quoted one stays text
    if isinstance(store, SQLiteStore):  # the old cells' pages went back to the disk (VACUUM)
        assert store.db.execute("PRAGMA freelist_count").fetchone()[0] == 0
        # the prefix key index still refuses a second row for a key, as the unique index did
        with pytest.raises(sqlite3.IntegrityError, match=r"UNIQUE constraint failed: job\.k"):
            store.db.execute("INSERT INTO job (k, cell) SELECT k, cell FROM job LIMIT 1")
        store.db.rollback()
    assert store.sync_plan(jobs, "d")  # (m007's cells had no digest) into shared forms
    assert store.rows() == before
    assert not store.sync_plan(jobs, "d")
    store.close()
    again = _read_only(store)  # migrated, read-only: the same
    assert again.rows() == before
    again.close()


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(),
        st.lists(st.sampled_from(["A", "b", "Zz9", " ", "  ", "-", "é", "\x00", "İ"])).map("".join),
    )
)
def test_a_derived_id_stored_as_a_number_reads_back_exactly(text: str):
    """Whatever the caption, the id derived from its text reads back from SQLite as text_id made it, when
    m013 stores it as a number; a caption of plain words always is stored so."""
    pid = text_id(text)
    number = coded_id(pid, text)
    # (plain words: one space between them, none before the first, which the slug would not hold)
    plain = all(c.isascii() and (c.isalnum() or c == " ") for c in text)
    if plain and "  " not in text and text.strip() == text:
        assert number is not None
    if number is not None:
        db = sqlite3.connect(":memory:")
        (read,) = db.execute(
            f"SELECT {SQLITE_PID} FROM (SELECT NULL AS prompt_id, ? AS pid, ? AS prompt) c",
            (number, text),
        ).fetchone()
        db.close()
        assert read == pid
