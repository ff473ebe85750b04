"""A sharded layout's bucket folder kept in the cell (state/buckets.py, m014 / p008): stems read back
exactly on both databases, one form a model, and a state of m013's (p007's) layout migrated alike."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from renderer.manifest.load import load
from renderer.models.schemas import SchemaRegistry
from renderer.plan import planner as plan
from renderer.state.buckets import PG_BUCKET, SQLITE_BUCKET, coded_form, split
from renderer.state.migrations import jobs_view
from renderer.state.postgres import PG_KEY, PG_SEED, PostgresStore
from renderer.state.sqlite import SQLiteStore
from renderer.state.store import Store

from .test_migrations import PLANNED, _applied, _expected, _read_only, _unbucket, open_state

__all__ = ["open_state"]  # (the fixture, used by name)


@given(
    st.lists(
        st.sampled_from(["a", "/", "0", "f", "e0b/", "0ff/", "E0B/", "g1/", "é"]), max_size=8
    ).map("".join)
)
def test_a_stem_head_cut_before_its_bucket_folder_is_put_back_exactly(head: str):
    """Whatever a stem head before the prompt id holds, the form's part and the cell's bucket give it
    back, and only a last folder of exactly three lowercase hex digits is cut (one level: the rest
    never ends in such a folder itself)."""
    rest, bucket = split(head)
    if bucket is None:
        assert rest == head
    else:
        assert f"{rest}{bucket:03x}/" == head and split(rest)[1] is None
        assert coded_form(1, bucket) < 0 and coded_form(7, bucket) >= -32768  # SQLite's 2 bytes


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_every_bucket_reads_back_as_its_three_digits(database: str, request: pytest.FixtureRequest):
    """Each of the 4,096 buckets a cell's form can hold reads back as its folder, three lowercase hex
    digits, in SQLite's words and in PostgreSQL's (the stems a sharded run's files are found by)."""
    series = (
        "WITH RECURSIVE n(form) AS (SELECT -4096 UNION ALL SELECT form - 1 FROM n WHERE form > -8191) "
        "SELECT form, {bucket} FROM n c ORDER BY form DESC"
    )
    if database == "sqlite":
        rows = sqlite3.connect(":memory:").execute(series.format(bucket=SQLITE_BUCKET)).fetchall()
    else:
        import psycopg

        with psycopg.connect(request.getfixturevalue("postgres_url")) as conn:
            rows = conn.execute(series.format(bucket=PG_BUCKET)).fetchall()
    assert [(form, text) for form, text in rows] == [
        (coded_form(1, b), f"{b:03x}/") for b in range(4096)
    ]


def _sharded_plan(registry: SchemaRegistry, folder: Path) -> plan.Plan:
    """Sixty captions on two models, two seeds, the sharded layout, each row's kept columns."""
    rows = [{"text": f"a fox number {i}", "source_url": f"u{i}", "n": i} for i in range(60)]
    (folder / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "m.yaml").write_text(
        "name: t\nprovider: emulator\nlayout: sharded\n"
        "prompts: [{file: p.jsonl, text: text, keep: [source_url, n]}]\n"
        "models: [fal-ai/flux-1/schnell, fal-ai/hidream-i1-fast]\nseeds: [1, 2]\n"
    )
    return plan.build(load(folder / "m.yaml"), registry)


def test_a_state_of_m013s_layout_is_migrated_alike_on_both_databases(
    open_state: Callable[[], Store], registry: SchemaRegistry, tmp_path: Path
):
    """A sharded run recorded before m014/p008 (a form per bucket folder): read-only it reads as
    recorded; migrated, `jobs` gives back the same rows, kept values and finished job included, with
    one form a model; the next recording finds every job as recorded; read-only after, the same."""
    folder = tmp_path / "m"
    folder.mkdir()
    p = _sharded_plan(registry, folder)
    store = open_state()
    assert store.sync_plan(p.jobs, p.digest)
    store.downloaded(p.jobs[0].key, [{"path": "data/x-0.png", "size": 3}])
    before = store.rows()
    planned = [
        tuple(r) for r in store.db.execute(f"SELECT {PLANNED} FROM jobs ORDER BY plan_index")
    ]
    assert planned == [_expected(j) for j in p.jobs]
    assert store.db.execute("SELECT COUNT(*) FROM forms").fetchone()[0] == 2  # one a model
    postgres = isinstance(store, PostgresStore)
    with store._tx() as db:  # as m013 (p007) left it
        _unbucket(db, jobs_view(PG_KEY, PG_SEED) if postgres else "")
    forms = store.db.execute("SELECT COUNT(*) FROM forms").fetchone()[0]
    assert forms > 2
    store.close()
    old = _read_only(store)
    assert old.rows() == before and not _applied(old) & {"m014_buckets", "p008_buckets"}
    old.close()
    store = open_state()  # migrates
    assert _applied(store) & {"m014_buckets", "p008_buckets"}
    assert store.rows() == before and store.get(p.jobs[0].key).state == "downloaded"
    assert [
        tuple(r) for r in store.db.execute(f"SELECT {PLANNED} FROM jobs ORDER BY plan_index")
    ] == planned
    assert store.db.execute("SELECT COUNT(*) FROM forms").fetchone()[0] == 2
    assert store.db.execute("SELECT COUNT(*) FROM cells WHERE form > 0").fetchone()[0] == 0
    if not postgres:  # the deleted forms' pages went back to the disk (VACUUM)
        assert store.db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert not store.sync_plan(p.jobs, "e")  # found as recorded: nothing moves
    assert store.rows() == before
    store.close()
    again = _read_only(store)
    assert again.rows() == before
    again.close()
    assert isinstance(again, PostgresStore if postgres else SQLiteStore)
