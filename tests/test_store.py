"""The run's state on SQLite and PostgreSQL alike: one transaction per state change, pending work by query, leases."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.errors import RunLocked, StateError
from renderer.layout import DB_NAME
from renderer.manifest.load import load
from renderer.models.schemas import SchemaRegistry
from renderer.plan import planner as plan
from renderer.state.keys import drop_key_index
from renderer.state.lock import RunLock
from renderer.state.migrations import MIGRATIONS, migrate
from renderer.state.postgres import PostgresStore
from renderer.state.rows import LeaseLost
from renderer.state.sqlite import SQLiteStore
from renderer.state.store import Store

from .conftest import MANIFESTS


@pytest.fixture(params=["sqlite", "postgres"])
def open_state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens the run's state on each database: every test that takes it runs against both."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    opened: list[Store] = []

    def make() -> Store:
        opened.append(PostgresStore(url, tmp_path, "t") if url else SQLiteStore(tmp_path))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def _plan(registry: SchemaRegistry) -> plan.Plan:
    return plan.build(load(MANIFESTS / "quickstart.yaml"), registry)


def test_blank_and_old_databases_migrate_to_the_same_schema(tmp_path: Path):
    """A new database and one stopped at the first migration end up with the same tables."""
    fresh = sqlite3.connect(tmp_path / "fresh.db")
    assert migrate(fresh) == [m.__name__ for m in MIGRATIONS]
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    with old:
        MIGRATIONS[0](old)
        old.execute("INSERT INTO _migrations VALUES (?, 0)", (MIGRATIONS[0].__name__,))
    assert migrate(old) == [m.__name__ for m in MIGRATIONS[1:]]
    assert migrate(old) == []

    def tables(db: sqlite3.Connection) -> list[tuple[str, str]]:
        return db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index') ORDER BY name"
        ).fetchall()

    assert tables(fresh) == tables(old)


def test_state_moves_and_pending_is_derived(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """Pending work comes from states, in plan order; finished and failed jobs are not pending."""
    p = _plan(registry)
    store = open_state()
    store.sync_plan(p.jobs)
    keys = [j.key for j in p.jobs]
    assert store.pending() == keys
    store.submit_started(keys[0])
    assert store.ambiguous() == 1
    store.submitted(keys[0], "r1", "s", "r", "c")
    assert store.ambiguous() == 0 and store.get(keys[0]).attempts == 1
    store.completed(keys[0], {"images": []})
    store.downloaded(keys[0], [])
    store.failed(keys[1], "nope", "rejected")
    assert store.pending() == keys[2:]
    assert store.counts()["downloaded"] == 1 and store.counts()["failed"] == 1
    assert store.retry_failed() == 1
    assert store.pending() == keys[1:]


def test_jobs_leaving_the_plan_are_kept_and_marked(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """Syncing a smaller plan keeps the old rows (and their files) as no longer planned."""
    p = _plan(registry)
    store = open_state()
    store.sync_plan(p.jobs)
    store.sync_plan(p.jobs[:3])
    assert store.counts()["no_longer_planned"] == 5
    assert len(store.rows(in_plan=False)) == 5
    assert store.pending() == [j.key for j in p.jobs[:3]]


def test_database_is_wal_and_survives_reopen(tmp_path: Path, registry: SchemaRegistry):
    """The database uses WAL and keeps committed state across connections."""
    store = SQLiteStore(tmp_path)
    store.sync_plan(_plan(registry).jobs)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    again = SQLiteStore(tmp_path, readonly=True)
    assert len(again.pending()) == 8
    again.close()
    assert (tmp_path / DB_NAME).is_file()


def test_a_checkpoint_leaves_every_committed_change_in_the_database_file(
    tmp_path: Path, registry: SchemaRegistry
):
    """After checkpoint() the database file alone (its log set aside) holds what was committed,
    while the store stays open and usable; changes still waiting for their group commit are
    left for the commit (the checkpoint does nothing then)."""
    import shutil

    store = SQLiteStore(tmp_path / "run")
    keys = [j.key for j in _plan(registry).jobs]
    store.sync_plan(_plan(registry).jobs)
    store.submitted(keys[0], "r1", "s", "r", "c")
    store.grouping = True
    store.completed(keys[1], {"images": []})  # deferred: not committed yet
    store.checkpoint()
    store.commit()
    store.grouping = False
    store.checkpoint()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "run" / DB_NAME, copy / DB_NAME)  # the file alone, without -wal
    alone = SQLiteStore(copy, readonly=True)
    assert alone.get(keys[0]).request_id == "r1" and alone.get(keys[1]).state == "completed"
    alone.close()
    store.downloaded(keys[0], [])  # still open and writable
    assert store.counts()["downloaded"] == 1
    store.close()


def test_the_lock_refuses_a_second_holder(tmp_path: Path):
    """Two runs on one directory: the second is refused with the holder named."""
    with RunLock(tmp_path), pytest.raises(RunLocked) as info, RunLock(tmp_path):
        pass
    assert "pid" in info.value.message
    with RunLock(tmp_path):  # released after use
        pass


def test_resubmits_are_recorded_per_run_with_their_reason(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """Each paid resubmission is one row with its reason and run; a free one (paid=False) is not counted."""
    p = _plan(registry)
    store = open_state()
    store.sync_plan(p.jobs)
    keys = [j.key for j in p.jobs]
    first = store.start_run(0)
    store.submitted(keys[0], "r1", "s", "r", "c", "fal")
    assert store.get(keys[0]).provider == "fal"
    store.resubmit(keys[0], "runner failed")
    store.resubmit(keys[1], "emulator gone", paid=False)
    second = store.start_run(0)
    store.record_resubmit(keys[2], "runner failed")
    store.record_resubmit(keys[3], "result expired")
    assert store.get(keys[0]).state == "planned" and store.get(keys[0]).request_id is None
    assert store.resubmit_reasons(first) == {"runner failed": 1}
    assert store.resubmit_reasons(second) == {"result expired": 1, "runner failed": 1}
    assert store.resubmit_reasons() == {"runner failed": 2, "result expired": 1}
    store.close()


def test_a_new_job_never_takes_a_path_a_recorded_job_holds(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """Two keys with one stem (a non-axis parameter changed): the later one gets stem + '_' + its key's start."""
    p = _plan(registry)
    store = open_state()
    store.sync_plan(p.jobs[:1])
    job = p.jobs[0]
    other = dataclasses.replace(job, key="j1-" + "ab" * 32)
    store.sync_plan([other])
    assert store.get(job.key).stem == job.stem
    assert store.get(other.key).stem == f"{job.stem}_abababab"
    store.sync_plan([other])  # decided once: a rerun keeps it
    assert store.get(other.key).stem == f"{job.stem}_abababab"
    store.close()


def _many(registry: SchemaRegistry, seeds: int, tmp_path: Path, name: str = "m.yaml") -> plan.Plan:
    import yaml

    from renderer.manifest.load import parse

    text = yaml.safe_dump(
        {
            "name": "t",
            "prompts": [{"id": f"p{i}", "text": f"t{i}"} for i in range(5)],
            "models": ["fal-ai/flux-1/schnell"],
            "seeds": {"start": 1, "count": seeds},
        }
    )
    return plan.build(parse(text, tmp_path / name), registry)


def test_sync_streams_in_batches_and_keeps_the_plan_exact(
    open_state: Callable[[], Store],
    tmp_path: Path,
    registry: SchemaRegistry,
    monkeypatch: pytest.MonkeyPatch,
):
    """Synced in many small transactions, the rows match the plan; a shrunk plan marks the rest out."""
    import renderer.state.plansync as plansync_mod

    monkeypatch.setattr(plansync_mod, "SYNC_BATCH", 7)
    big, small = _many(registry, 20, tmp_path), _many(registry, 13, tmp_path)
    store = open_state()
    assert store.sync_plan(big.jobs, big.digest)
    assert store.pending() == [j.key for j in big.jobs]
    assert not store.sync_plan(big.jobs, big.digest)  # same digest: nothing read, nothing written
    assert store.sync_plan(small.jobs, small.digest)
    assert store.pending() == [j.key for j in small.jobs]
    assert store.counts()["no_longer_planned"] == 35
    assert store.sync_plan(
        big.jobs, big.digest
    )  # back again: the rows return to the plan, in order
    assert store.pending() == [j.key for j in big.jobs] and store.counts()["no_longer_planned"] == 0


def test_pending_and_finished_files_are_read_in_pages(
    open_state: Callable[[], Store],
    tmp_path: Path,
    registry: SchemaRegistry,
    monkeypatch: pytest.MonkeyPatch,
):
    """Paging by plan position and rowid sees every row once, whatever the page size."""
    import renderer.state.queries as queries_mod

    monkeypatch.setattr(queries_mod, "PAGE", 3)
    p = _many(registry, 10, tmp_path)
    store = open_state()
    store.sync_plan(p.jobs, p.digest)
    keys = [j.key for j in p.jobs]
    for key in keys[::4]:
        store.downloaded(key, [{"path": key}])
    seen: list[str] = []
    after = -1
    while page := store.pending_page(after, limit=4):
        seen.extend(k for _, k, _ in page)
        after = page[-1][0]
    assert seen == [k for k in keys if k not in keys[::4]]
    assert store.pending_page(-1, limit=100, before=5) == [
        (i, keys[i], "fal-ai/flux-1/schnell") for i in range(5) if i % 4
    ]
    assert store.pending_count() == 50 - 13 and store.pending_count(before=5) == 3
    assert sorted(store.downloaded_files()) == sorted((k, [{"path": k}]) for k in keys[::4])


def _two_workers(
    open_state: Callable[[], Store], p: plan.Plan, lease: float, names: tuple[str, str] = ("a", "b")
) -> tuple[Store, Store]:
    """Two workers on one state with the plan recorded: the first with `lease`, the second with 30 s."""
    first, second = open_state(), open_state()
    first.sync_plan(p.jobs, p.digest)
    first.join(names[0], lease)
    second.join(names[1], 30)
    return first, second


def _finish(store: Store, key: str) -> None:
    store.submit_started(key)
    store.submitted(key, f"r-{key[-6:]}", "s", "r", "c")
    store.completed(key, {"images": []})
    store.downloaded(key, [{"path": key}])


def test_claims_split_the_plan_and_every_job_is_finished_once(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """Two workers claiming in turns get disjoint jobs in plan order; finished jobs are never claimed again."""
    p = _many(registry, 6, tmp_path)
    a, b = _two_workers(open_state, p, 30)
    got: dict[str, str] = {}
    while True:
        batches = [(a, a.claim(4)), (b, b.claim(3))]
        if not any(batch for _, batch in batches):
            break
        for worker, batch in batches:
            assert [c.plan_index for c in batch] == sorted(c.plan_index for c in batch)
            for c in batch:
                assert c.key not in got, "a job was claimed twice"
                got[c.key] = str(worker.owner)
                _finish(worker, c.key)  # fenced: succeeds only for the holder
    assert sorted(got) == sorted(j.key for j in p.jobs)
    assert set(got.values()) == {"a", "b"}
    assert a.unfinished() == 0 and a.counts()["downloaded"] == 30
    assert {w["id"]: w["held"] for w in a.workers()} == {"a": 0, "b": 0}


def test_a_worker_that_lost_its_lease_commits_nothing(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """Fencing: after the lease expires and another worker takes the job, every change by the first is refused."""
    import time

    p = _plan(registry)
    first, second = _two_workers(open_state, p, 0.3, names=("first", "second"))
    key = first.claim(1)[0].key
    first.submit_started(key)
    first.submitted(key, "req-1", "s", "r", "c")
    time.sleep(0.45)  # the first worker pauses past its lease
    taken = second.claim(8)
    assert key in {c.key for c in taken}
    row = second.get(key)
    assert row.request_id == "req-1" and row.state == "submitted"  # reattach, never resubmit
    for change in (
        lambda: first.completed(key, {"images": []}),
        lambda: first.downloaded(key, []),
        lambda: first.failed(key, "x", "rejected"),
        lambda: first.resubmit(key, "x"),
        lambda: first.submit_started(key),
        lambda: first.hold(key),
    ):
        with pytest.raises(LeaseLost):
            change()
    assert second.get(key).state == "submitted" and second.resubmit_reasons() == {}
    assert first.renew() == set()
    second.completed(key, {"images": []})
    second.downloaded(key, [])
    assert second.get(key).state == "downloaded"


def test_an_expired_lease_cannot_commit_even_before_anyone_takes_it(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """A lease past its time is void for its holder (a paused worker waking up), taken or not."""
    import time

    p = _plan(registry)
    store = open_state()
    store.sync_plan(p.jobs, p.digest)
    store.join("w", 0.2)
    key = store.claim(1)[0].key
    time.sleep(0.3)
    with pytest.raises(LeaseLost):
        store.submit_started(key)
    assert store.get(key).attempts == 0


def test_renewal_keeps_jobs_and_release_hands_them_back(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """A renewed lease outlives its first term; released jobs are claimable at once; a trial bound is kept."""
    import time

    p = _plan(registry)
    a, b = _two_workers(open_state, p, 0.4)
    held = {c.key for c in a.claim(3, before=5)}
    assert len(held) == 3 and {c.plan_index for c in b.claim(10, before=5)} == {3, 4}
    for _ in range(3):
        time.sleep(0.2)
        assert a.renew() == held
    assert b.claim(10, before=5) == []  # still a's, after three times its first lease
    a.release()
    assert {c.key for c in b.claim(10, before=5)} == held
    assert b.unfinished(before=5) == 5 and b.unfinished() == 8


def test_two_workers_recording_one_plan_insert_each_job_once(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """Workers starting together each sync the plan: the rows are the plan's, once."""
    p = _many(registry, 4, tmp_path)
    a, b = open_state(), open_state()
    a.sync_plan(p.jobs, "")
    assert not b.sync_plan(p.jobs, "")  # nothing new for the second
    assert b.pending() == [j.key for j in p.jobs]
    assert a.set_meta_once("finalized", "x") and not b.set_meta_once("finalized", "x")
    assert b.set_meta_once("finalized", "y")


def test_account_slots_are_global_and_leased(
    postgres_url: str, tmp_path: Path, request: pytest.FixtureRequest
):
    """N workers never hold more slots of an account than its limit; a dead worker's slots return after its lease."""
    import time

    a, b = PostgresStore(postgres_url, tmp_path, "t"), PostgresStore(postgres_url, tmp_path, "t")
    request.addfinalizer(a.close)
    request.addfinalizer(b.close)
    a.join("a", 0.3)
    b.join("b", 30)
    a.set_accounts({"A": 3, "B": 1})
    got = [a.acquire_slot("A", "j1"), b.acquire_slot("A", "j2"), a.acquire_slot("A", "j3")]
    assert sorted(got) == [0, 1, 2] and b.acquire_slot("A", "j4") is None
    assert b.acquire_slot("B", "j5") == 0 and a.acquire_slot("B", "j6") is None
    assert {x["name"]: (x["in_flight"], x["limit"]) for x in a.accounts()} == {
        "A": (3, 3),
        "B": (1, 1),
    }
    b.release_slot("A", got[1])
    assert b.acquire_slot("A", "j4") == got[1]
    time.sleep(0.4)  # a stops renewing: its two slots of A are free again
    assert sorted([b.acquire_slot("A", "j7"), b.acquire_slot("A", "j8")]) == sorted(
        [got[0], got[2]]
    )
    a.set_accounts({"A": 1, "B": 1})  # a lower limit: slots above it are never handed out
    b.release()
    assert b.acquire_slot("A", "j9") == 0 and b.acquire_slot("A", "j10") is None


def test_the_submitting_account_is_kept_with_the_request_and_forgotten_with_it(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """The account is stored with the request id, survives reopen and --retry-failed, and is cleared by a resubmit."""
    p = _plan(registry)
    store = open_state()
    store.sync_plan(p.jobs)
    a, b = p.jobs[0].key, p.jobs[1].key
    store.submitted(a, "r1", "s", "r", "c", account="team-b")
    store.submitted(b, "r2", "s", "r", "c")
    store.failed(a, "deadline", "deadline")
    store.close()
    store = open_state()
    assert store.get(a).account == "team-b" and store.get(b).account is None
    store.retry_failed()
    assert store.get(a).state == "submitted" and store.get(a).account == "team-b"
    store.resubmit(a, "the provider no longer knows the request")
    assert store.get(a).account is None and store.get(a).request_id is None


def test_cost_is_summed_in_the_database(
    open_state: Callable[[], Store], tmp_path: Path, registry: SchemaRegistry
):
    """The cost of the plan's finished files is their recorded costs' sum; a file without one is flagged."""
    p = _plan(registry)
    store = open_state()
    store.sync_plan(p.jobs)
    keys = [j.key for j in p.jobs]
    assert store.cost() == (0.0, False)
    store.downloaded(keys[0], [{"path": "a", "cost": 0.25}, {"path": "b", "cost": 0.5}])
    store.downloaded(keys[1], [{"path": "c", "cost": 1.0}])
    store.failed(keys[2], "no", "rejected")
    assert store.cost() == (1.75, False)
    store.downloaded(keys[3], [{"path": "d"}])
    assert store.cost() == (1.75, True)
    store.sync_plan(p.jobs[1:])  # a job no longer planned no longer counts
    assert store.cost() == (1.0, True)


_cost = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.integers(-(10**6), 10**6),
    st.floats(-1e6, 1e6, allow_nan=False),
)
# A path never holds NUL (no file system takes one; SQLite's JSON cuts text there).
# A path the runner writes is made of a safe prompt id, an endpoint id and seeds: never a NUL or a
# lone surrogate (which no UTF-8 JSON text can carry into SQLite's json functions).
_path = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8
)
_entry = st.fixed_dictionaries(
    {},
    optional={
        "path": _path,
        "size": st.integers(0, 2**63 - 1),
        "mtime_ns": st.integers(0, 2**63 - 1),
        "cost": _cost,
    },
)


class _Raw(str):
    """Text written to `files` as it is (JSON or not): what a hand-edited database may hold."""


def _expected_columns(files: Any) -> tuple:
    """What m008's columns mean, spelled out: (fpath, fsize, fmtime, cost, uncosted)."""
    if isinstance(files, _Raw):
        try:
            files = json.loads(files)
        except ValueError:
            files = None
    if not isinstance(files, list) or not files:
        return None, None, None, None, 0
    one = files[0] if len(files) == 1 and isinstance(files[0], dict) else {}
    priced = [
        e["cost"] for e in files if isinstance(e, dict) and type(e.get("cost")) in (int, float)
    ]
    return (
        one.get("path"),
        one.get("size"),
        one.get("mtime_ns"),
        sum(priced) if priced else None,
        len(files) - len(priced),
    )


_schema = sqlite3.connect(":memory:", check_same_thread=False)  # every migration, triggers included
migrate(_schema)
_schema.execute(
    "INSERT INTO forms (id, endpoint, model, axes, input_head, num_images, tags, source_head) "
    "VALUES (1, 'e', 'm', '{}', '{}', 1, '[]', 'm.yaml:')"
)
_schema.execute(
    "INSERT INTO cells (id, form, prompt_id, prompt, source) VALUES (1, 1, 'p', 'x', 1)"
)
_schema.execute("INSERT INTO job (id, k, cell) VALUES (1, x'00', 1)")
_files = st.one_of(
    st.none(),
    st.lists(_entry, max_size=4),
    st.lists(st.one_of(_entry, _path, st.integers()), max_size=3),
    st.dictionaries(_path, st.integers(), max_size=2),
    st.builds(
        _Raw,
        st.sampled_from(
            # (not NaN: SQLite versions differ on JSON5)
            ["not json", "[1, 2", '[{"cost": 1}', "", "null", '"a.png"', "[[]]"]
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(files=_files, via_view=st.booleans())
def test_file_columns_always_follow_files(files: Any, via_view: bool):
    """Whoever writes a job's files (the store, plain SQL on `job`, the `jobs` view), the database derives the
    columns the rerun's file check and the cost read, as their meaning says; odd text derives NULLs, never an error."""
    table = "jobs" if via_view else "job"
    text = files if isinstance(files, _Raw) or files is None else json.dumps(files)
    _schema.execute(f"UPDATE {table} SET files = ? WHERE id = 1", (text,))
    found = _schema.execute(
        "SELECT fpath, fsize, fmtime, cost, uncosted FROM job WHERE id = 1"
    ).fetchone()
    expected = _expected_columns(files)
    assert found[:3] + found[4:] == expected[:3] + expected[4:]
    assert (
        found[3] == pytest.approx(expected[3], rel=1e-9, abs=1e-9)
        if expected[3] is not None
        else found[3] is None
    )


def test_a_database_whose_file_columns_went_stale_is_derived_again(tmp_path: Path):
    """m009 on a database an earlier m008 left without the trigger (columns stale) or with odd `files` text:
    it opens, and every row's columns say what its files say."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for step in MIGRATIONS:
        if step.__name__ < "m009":
            with db:
                step(db)
                db.execute("INSERT INTO _migrations VALUES (?, 0)", (step.__name__,))
    db.execute(
        "INSERT INTO cells (id, endpoint, model, prompt_id, prompt, axes, input_head, num_images, tags, "
        "source) VALUES (1, 'e', 'm', 'p', 'x', '{}', '{}', 1, '[]', 'm.yaml:1')"
    )
    written = [
        '[{"path": "a.png", "size": 999, "mtime_ns": 9, "cost": 2.0}]',
        "not json",
        '["a.png"]',
        None,
    ]
    with db:
        for n, text in enumerate(written, 1):
            # As the first m008 left them: files rewritten, the columns from before (no trigger kept them).
            db.execute(
                "INSERT INTO job (id, k, cell, files, fpath, fsize, fmtime, cost, uncosted) "
                "VALUES (?, ?, 1, ?, 'a.png', 10, 1, 0.5, 0)",
                (n, bytes([n]), text),
            )
    db.close()
    later = [m.__name__ for m in MIGRATIONS if m.__name__ >= "m009"]
    assert later[:2] == ["m009_job_files_trigger", "m010_workers_left"]
    db = sqlite3.connect(path)
    assert migrate(db) == later
    rows = db.execute("SELECT fpath, fsize, fmtime, cost, uncosted FROM job ORDER BY id").fetchall()
    assert rows == [
        ("a.png", 999, 9, 2.0, 0),
        (None, None, None, None, 0),
        (None, None, None, None, 1),
        (None, None, None, None, 0),
    ]
    db.execute(
        'UPDATE job SET files = \'[{"path": "b.png", "size": 1, "mtime_ns": 2}]\' WHERE id = 2'
    )
    assert db.execute("SELECT fpath, fsize, uncosted FROM job WHERE id = 2").fetchone() == (
        "b.png",
        1,
        1,
    )


def test_finished_jobs_of_an_older_database_get_their_file_columns(
    tmp_path: Path, registry: SchemaRegistry, monkeypatch: pytest.MonkeyPatch
):
    """A run finished before m008: after migrating, the rerun's file check and the cost read what was recorded."""
    import renderer.state.migrations as migrations_mod

    p = _plan(registry)
    keys = [j.key for j in p.jobs]
    written = [
        [{"path": "data/a-0.png", "size": 10, "mtime_ns": 123, "cost": 0.25}],
        [
            {"path": "data/b-0.png", "size": 11, "mtime_ns": 124, "cost": 0.5},
            {"path": "data/b-1.png", "size": 12, "mtime_ns": 125},
        ],
        [{"path": "data/c-0.png", "size": 13, "mtime_ns": 126}],
    ]
    with monkeypatch.context() as old_schema:
        # (with m011's kept values and m012's forms, which this store's recording writes; they do
        # not touch m008's columns)
        old_schema.setattr(
            migrations_mod,
            "MIGRATIONS",
            [m for m in MIGRATIONS if m.__name__ < "m008" or m.__name__ >= "m011"],
        )
        store = SQLiteStore(tmp_path)
        store.sync_plan(p.jobs)
        for key, entries in zip(keys, written, strict=False):
            store.downloaded(key, entries)
        store.close()
    store = SQLiteStore(tmp_path)  # migrates
    rows = sorted(
        (store.key_of(ref), path, size, mtime)
        for page in store.file_stats()
        for ref, path, size, mtime in page
    )
    assert rows == sorted(
        (key, e["path"], e["size"], e["mtime_ns"])
        for key, entries in zip(keys, written, strict=False)
        for e in entries
    )
    assert store.cost() == (0.75, True)
    assert store.models_without_cost() == sorted({p.jobs[1].model, p.jobs[2].model})
    store.redownload(keys[1], "changed")  # the columns follow `files` from here on
    assert store.cost() == (0.25, True)
    store.downloaded(keys[1], [{"path": "data/b-0.png", "size": 1, "mtime_ns": 1, "cost": 1.0}])
    assert store.cost() == (1.25, True)
    store.sync_plan([j for j in p.jobs if j.key != keys[2]])
    assert store.cost() == (1.25, False) and store.models_without_cost() == []
    store.close()


def test_grouped_step_changes_are_durable_only_at_commit(tmp_path: Path, registry: SchemaRegistry):
    """While grouping, step changes wait in one transaction: another reader sees them only after commit()."""
    p = _plan(registry)
    store = SQLiteStore(tmp_path)
    store.sync_plan(p.jobs)
    keys = [j.key for j in p.jobs]
    other = sqlite3.connect(tmp_path / DB_NAME)

    def state(key: str) -> str:
        return other.execute("SELECT state FROM jobs WHERE key = ?", (key,)).fetchone()[0]

    store.grouping = True
    store.submitted(keys[0], "r0", "s", "r", "c")
    store.submitted(keys[1], "r1", "s", "r", "c")
    assert store.get(keys[0]).request_id == "r0"  # this connection reads its own changes
    assert state(keys[0]) == state(keys[1]) == "planned"
    store.commit()
    assert state(keys[0]) == state(keys[1]) == "submitted"
    store.completed(keys[0], {"images": []})
    store.submit_started(
        keys[2]
    )  # not a step change: commits at once, and the deferred one with it
    assert (
        state(keys[0]) == "completed"
        and other.execute(
            "SELECT submit_started IS NOT NULL FROM jobs WHERE key = ?", (keys[2],)
        ).fetchone()[0]
        == 1
    )
    other.close()
    store.close()


def test_a_failed_change_undoes_the_group_and_commit_says_so(
    tmp_path: Path, registry: SchemaRegistry
):
    """A change that fails rolls back the deferred ones with it; commit() then raises instead of pretending."""
    p = _plan(registry)
    store = SQLiteStore(tmp_path)
    store.sync_plan(p.jobs)
    keys = [j.key for j in p.jobs]
    store.grouping = True
    store.submitted(keys[0], "r0", "s", "r", "c")
    with pytest.raises(StateError):
        store._set(keys[1], defer=True, state="no such state")  # the CHECK constraint refuses it
    with pytest.raises(StateError):
        store.commit()
    assert store.get(keys[0]).state == "planned"  # undone, and said so: the job did not go on
    store.commit()  # the error is reported once; the store works on
    store.submitted(keys[0], "r0", "s", "r", "c")
    store.commit()
    reader = SQLiteStore(tmp_path, readonly=True)
    assert reader.get(keys[0]).request_id == "r0"
    reader.close()
    store.close()


def test_a_shared_rate_spaces_turns_across_workers(
    postgres_url: str, tmp_path: Path, request: pytest.FixtureRequest
):
    """Turns of one shared rate, taken by two workers in any mix, are spaced one interval apart; idle time is no credit."""
    import itertools
    import time

    a, b = PostgresStore(postgres_url, tmp_path, "t"), PostgresStore(postgres_url, tmp_path, "t")
    request.addfinalizer(a.close)
    request.addfinalizer(b.close)
    waits = [(a if i % 3 else b).reserve("acct", 0.1) for i in range(6)]
    assert waits[0] <= 0.01
    for before, after in itertools.pairwise(waits):
        assert (
            abs((after - before) - 0.1) < 0.02
        )  # each turn a tenth of a second after the one before
    time.sleep(1.0)  # past every turn taken, and then some
    assert (
        b.reserve("acct", 0.1) <= 0.01 and 0.08 < a.reserve("acct", 0.1) <= 0.1
    )  # no burst saved up
    assert a.reserve("other", 0.1) <= 0.01  # another rate is independent


OLD_COLUMNS = (
    "key, plan_index, endpoint, model, prompt_id, prompt, seed, axes, stem, input, num_images, tags, "
    "source, updated_at"
)


def test_a_database_from_before_the_cells_migrates_with_every_row_intact(
    open_state: Callable[[], Store], registry: SchemaRegistry, monkeypatch: pytest.MonkeyPatch
):
    """An old one-row-per-job database (finished, submitted, failed, odd keys) reads back the same after the
    cells migration; recording the plan again shares cells, keeps each job's path, and the work goes on."""
    import json

    import renderer.state.migrations as migrations_mod
    import renderer.state.postgres as pg_mod

    p = _plan(registry)
    with monkeypatch.context() as old_schema:  # the schema as it was before the cells
        old_schema.setattr(
            migrations_mod, "MIGRATIONS", [m for m in MIGRATIONS if m.__name__ < "m007"]
        )
        old_schema.setattr(
            pg_mod, "SCHEMA_VERSION", [s for s in pg_mod.SCHEMA_VERSION if s[0] < "p003"]
        )
        store = open_state()
        rows = [
            (
                j.key,
                j.index,
                j.endpoint,
                j.model,
                j.prompt_id,
                j.input["prompt"],
                j.seed,
                json.dumps(j.axes),
                j.stem,
                json.dumps(j.input),
                j.num_images,
                json.dumps(list(j.tags)),
                j.where,
                1.0,
            )
            for j in p.jobs
        ]
        rows.append(
            (
                "key-</script>'\"ü",
                None,
                "acme/x",
                "acme/x",
                "p",
                "odd",
                None,
                "{}",
                "acme/p/s-auto",
                '{"prompt":"odd"}',
                2,
                "[]",
                "m.yaml:9",
                2.0,
            )
        )  # a key renderer would not make, out of plan
        rows.append(
            (
                "j1-" + "ab" * 32,
                None,
                "acme/x",
                "acme/x",
                "p",
                "old key",
                7,
                "{}",
                "acme/p/s7_abababab",
                '{"prompt":"old key","seed":7}',
                1,
                "[]",
                "m.yaml:9",
                2.0,
            )
        )  # 64 hex digits, a distinct stem
        with store._tx() as db:
            db.executemany(f"INSERT INTO jobs ({OLD_COLUMNS}) VALUES ({','.join('?' * 14)})", rows)
            db.execute("UPDATE jobs SET in_plan = 0 WHERE plan_index IS NULL")
            keys = [j.key for j in p.jobs]  # the old store's writes, in its own columns
            db.execute(
                "UPDATE jobs SET state = 'downloaded', request_id = 'r0', status_url = 's0', provider = 'fal', "
                "account = 'team', attempts = 1, result = ?, files = ?, downloaded_at = 5.0 WHERE key = ?",
                (
                    '{"images":[{"url":"u"}],"has_nsfw_concepts":[false]}',
                    '[{"path":"data/x-0.png"}]',
                    keys[0],
                ),
            )
            db.execute(
                "UPDATE jobs SET state = 'submitted', request_id = 'r1', status_url = 's1', response_url = 'r1', "
                "cancel_url = 'c1', attempts = 1, submitted_at = 4.0 WHERE key = ?",
                (keys[1],),
            )
            db.execute(
                "UPDATE jobs SET state = 'failed', error = 'refused', error_kind = 'rejected' WHERE key = ?",
                (keys[2],),
            )
            db.execute(
                "UPDATE jobs SET state = 'downloaded', files = '[]' WHERE key = ?", (rows[-1][0],)
            )
        before = store.rows()
        assert len(before) == 10
        store.close()
    store = open_state()  # migrates
    assert store.rows() == before
    assert store.get(rows[-2][0]) == next(r for r in before if r.key == rows[-2][0])
    assert store.ambiguous() == 0 and store.counts()["no_longer_planned"] == 2
    assert store.sync_plan(
        p.jobs, p.digest
    )  # the next run records the plan again: cells are shared
    assert store.rows() == before
    assert store.db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 4 + 2
    assert store.db.execute("SELECT COUNT(*) FROM job WHERE stem IS NOT NULL").fetchone()[0] == 2
    assert store.pending() == keys[1:2] + keys[3:]
    store.join("w", 30)
    assert [c.key for c in store.claim(2)] == [keys[1], keys[3]]
    _finish_claimed = store.get(keys[1])
    assert _finish_claimed.request_id == "r1" and _finish_claimed.state == "submitted"
    store.completed(keys[1], {"images": []})
    store.downloaded(keys[1], [{"path": "p1"}])
    assert sorted(k for k, _ in store.downloaded_files()) == sorted(keys[:2])


def test_an_old_database_opened_read_only_is_read_without_migrating(
    tmp_path: Path, registry: SchemaRegistry
):
    """status, report and diff open a run read-only: a database from before the cells reads the same, unchanged."""
    import json

    p = _plan(registry)
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    with db:
        for step in MIGRATIONS[:4]:  # as far as an older release went: no account, no leases
            step(db)
            db.execute("INSERT INTO _migrations VALUES (?, 0)", (step.__name__,))
        db.executemany(
            f"INSERT INTO jobs ({OLD_COLUMNS}) VALUES ({','.join('?' * 14)})",
            [
                (
                    j.key,
                    j.index,
                    j.endpoint,
                    j.model,
                    j.prompt_id,
                    j.input["prompt"],
                    j.seed,
                    json.dumps(j.axes),
                    j.stem,
                    json.dumps(j.input),
                    j.num_images,
                    json.dumps(list(j.tags)),
                    j.where,
                    1.0,
                )
                for j in p.jobs
            ],
        )
        db.execute("UPDATE jobs SET state = 'downloaded', files = '[]' WHERE plan_index < 3")
    db.close()
    store = SQLiteStore(tmp_path, readonly=True)
    assert store.counts()["downloaded"] == 3 and len(store.pending()) == 5
    assert (
        store.get(p.jobs[4].key).stem == p.jobs[4].stem
        and store.get(p.jobs[4].key).input == p.jobs[4].input
    )
    assert sorted(k for k, _ in store.downloaded_files()) == sorted(j.key for j in p.jobs[:3])
    assert store.done_by_model() and store.workers() == []
    store.close()
    assert [
        r[0] for r in sqlite3.connect(tmp_path / DB_NAME).execute("SELECT name FROM _migrations")
    ] == [m.__name__ for m in MIGRATIONS[:4]]


def test_evolve_is_dataclasses_replace(tmp_path: Path, registry: SchemaRegistry):
    """Row.evolve (the runner's cheap copy) gives what dataclasses.replace gives, and refuses unknown fields."""
    p = _plan(registry)
    store = SQLiteStore(tmp_path)
    store.sync_plan(p.jobs)
    row = store.get(p.jobs[0].key)
    changes = {
        "state": "completed",
        "attempts": 3,
        "result": {"images": [{"url": "u"}]},
        "account": "a",
    }
    assert row.evolve(**changes) == dataclasses.replace(row, **changes) != row
    assert row.evolve().state == row.state and row.state == "planned"  # the original is untouched
    with pytest.raises(TypeError):
        row.evolve(no_such_field=1)
    store.close()


class _Gated(list):  # type: ignore[type-arg]
    """A plan whose iteration waits at position `at` until `gate` is set, or fails there (gate None)."""

    def __init__(self, jobs: list, at: int, gate: object) -> None:
        super().__init__(jobs)
        self.at, self.gate = at, gate

    def __iter__(self):  # type: ignore[no-untyped-def]
        for i, job in enumerate(list.__iter__(self)):
            if i == self.at:
                if self.gate is None:
                    raise RuntimeError("the process died here")
                assert self.gate.wait(10)  # type: ignore[attr-defined]
            yield job


def test_a_plan_recorded_in_the_background_is_claimable_as_it_grows(
    tmp_path: Path, registry: SchemaRegistry, monkeypatch: pytest.MonkeyPatch
):
    """The first batch is claimable at once, only recorded jobs are claimed, pending counts the rest, and the
    digest is written only when the whole plan is recorded."""
    import threading

    import renderer.state.plansync as plansync_mod
    import renderer.state.recording as recording_mod

    monkeypatch.setattr(plansync_mod, "FIRST_BATCH", 7)
    monkeypatch.setattr(recording_mod, "RECORD_BATCH", 7)
    p = _many(registry, 20, tmp_path)
    gate = threading.Event()
    store = SQLiteStore(tmp_path)
    recorder = store.record_plan(_Gated(list(p.jobs), 10, gate), p.digest)
    assert (
        recorder is not None and store.record_plan(p.jobs, p.digest) is None
    )  # not on a state with jobs
    store.join("w", 30)
    assert store.pending_count() == 100 and store.pending_count(before=50) == 50
    assert [c.plan_index for c in store.claim(50)] == list(
        range(7)
    )  # what is recorded, nothing more
    assert store.meta("plan_digest") is None and not recorder.finished.is_set()
    gate.set()
    recorder.thread.join(10)
    assert (
        recorder.error is None
        and recorder.recorded == 100
        and store.meta("plan_digest") == p.digest
    )
    assert [c.plan_index for c in store.claim(500)] == list(range(7, 100))
    assert [r.key for r in store.rows()] == [j.key for j in p.jobs] and store.pending_count() == 100
    assert not store.sync_plan(p.jobs, p.digest)
    store.close()


def test_a_first_recording_stores_what_jobs_share_once(tmp_path: Path, registry: SchemaRegistry):
    """5 prompts x 4 seeds on one model, recorded as a first run does: one form, one cell per prompt, the prompt
    text once per prompt; and the key index is back once the recording is over."""
    p = _many(registry, 4, tmp_path)
    store = SQLiteStore(tmp_path)
    recorder = store.record_plan(p.jobs, p.digest)
    assert recorder is not None
    recorder.thread.join(10)
    assert recorder.error is None and len(store.rows()) == 20
    count = lambda table: store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: E731
    assert (count("forms"), count("cells"), count("job")) == (1, 5, 20)
    assert store.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'job_key'").fetchone()
    store.close()


def test_a_trial_records_only_what_it_needs(
    tmp_path: Path, registry: SchemaRegistry, monkeypatch: pytest.MonkeyPatch
):
    """A --max-jobs trial's recording stops once its jobs (and the first batch) are in, with no digest; the next
    run records the rest, in order, and a no-op rerun after that reads nothing."""
    import renderer.state.plansync as plansync_mod
    import renderer.state.recording as recording_mod

    monkeypatch.setattr(plansync_mod, "FIRST_BATCH", 7)
    monkeypatch.setattr(recording_mod, "RECORD_BATCH", 7)
    p = _many(registry, 20, tmp_path)
    for upto, recorded in ((3, 7), (10, 14)):
        store = SQLiteStore(tmp_path / str(upto))
        recorder = store.record_plan(p.jobs, p.digest, upto=upto)
        assert recorder is not None
        recorder.thread.join(10)
        assert recorder.error is None and recorder.recorded == recorded
        assert len(store.rows()) == recorded and store.meta("plan_digest") is None
        assert store.pending_count() == 100 and store.pending_count(before=upto) == upto
        assert store.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'job_key'").fetchone()
        assert store.sync_plan(p.jobs, p.digest) and not store.sync_plan(p.jobs, p.digest)
        assert [r.key for r in store.rows()] == [j.key for j in p.jobs]
        store.close()


def test_a_recording_cut_short_leaves_a_state_the_next_run_completes(
    tmp_path: Path, registry: SchemaRegistry, monkeypatch: pytest.MonkeyPatch
):
    """A crash mid-recording keeps whole batches and no digest; the next sync records the rest, once, in order,
    sharing the cells the first part made."""
    import renderer.state.plansync as plansync_mod
    import renderer.state.recording as recording_mod

    monkeypatch.setattr(plansync_mod, "FIRST_BATCH", 7)
    monkeypatch.setattr(recording_mod, "RECORD_BATCH", 7)
    p = _many(registry, 20, tmp_path)
    store = SQLiteStore(tmp_path)
    recorder = store.record_plan(_Gated(list(p.jobs), 30, None), p.digest)
    assert recorder is not None
    recorder.thread.join(10)
    assert recorder.error is not None and "the process died here" in recorder.error.message
    assert recorder.recorded == 28 and len(store.rows()) == 28 and store.meta("plan_digest") is None
    store.downloaded(p.jobs[3].key, [{"path": "x"}])
    with store._tx() as db:
        drop_key_index(db)  # as a process killed before the recorder built them
    store.close()
    again = SQLiteStore(tmp_path)
    assert _key_objects(again.db) == KEY_OBJECTS
    # The rest is recorded as a first run records (appended, the key index built after it).
    assert again.record_plan(p.jobs, p.digest) is None and again.sync_plan(p.jobs, p.digest)
    assert [r.key for r in again.rows()] == [j.key for j in p.jobs] and again.meta(
        "plan_digest"
    ) == p.digest
    assert again.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'job_key'").fetchone()
    assert again.db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 5
    assert (
        again.pending() == [j.key for j in p.jobs if j.index != 3]
        and again.counts()["no_longer_planned"] == 0
    )
    again.close()


def test_file_stats_list_every_finished_file_in_whole_jobs(
    open_state: Callable[[], Store],
    tmp_path: Path,
    registry: SchemaRegistry,
    monkeypatch: pytest.MonkeyPatch,
):
    """What a rerun checks on disk: (job, path, size, mtime_ns) of each file of each finished job, pages never
    splitting a job; jobs not finished or out of the plan are not listed."""
    import renderer.state.queries as queries_mod

    monkeypatch.setattr(queries_mod, "PAGE", 1)
    p = _many(registry, 4, tmp_path)
    store = open_state()
    store.sync_plan(p.jobs, p.digest)
    keys = [j.key for j in p.jobs]
    for n, key in enumerate(keys[:12]):
        store.downloaded(
            key,
            [{"path": f"data/{n}-{i}.png", "size": i, "mtime_ns": 10**18 + n} for i in range(n % 3)]
            + [{"path": f"data/{n}-x.png"}],
        )
    store.failed(keys[12], "no", "rejected")
    store.sync_plan(p.jobs[1:], "")  # the first job leaves the plan
    pages = list(store.file_stats())
    listed = [(store.key_of(ref), *rest) for page in pages for ref, *rest in page]
    assert sorted(listed, key=str) == sorted(
        [(keys[n], f"data/{n}-{i}.png", i, 10**18 + n) for n in range(1, 12) for i in range(n % 3)]
        + [(keys[n], f"data/{n}-x.png", None, None) for n in range(1, 12)],
        key=str,
    )
    for page in pages:  # whole jobs: a job's files are all in one page
        assert not {k for k, *_ in page} & {
            k for other in pages if other is not page for k, *_ in other
        }


def test_jobs_whose_keys_share_their_first_bytes_are_told_apart(
    open_state: Callable[[], Store], registry: SchemaRegistry
):
    """SQLite indexes a key's first 4 bytes only (m013): jobs whose keys begin alike are each found,
    changed and recorded as themselves, and a rerun of the same plan moves none of them."""
    jobs = [
        dataclasses.replace(j, key=f"j1-deadbeef{n:032x}")
        for n, j in enumerate(_plan(registry).jobs[:4])
    ]
    store = open_state()
    assert store.sync_plan(jobs, "d")
    store.join("w", 30)
    claimed = store.claim(4)
    assert [c.key for c in claimed] == [j.key for j in jobs]
    store.submit_started(jobs[1].key)
    store.submitted(jobs[1].key, "r1", "s", "r", "c")
    store.downloaded(jobs[2].key, [{"path": "a.png"}])
    store.hold(jobs[3].key)
    assert [(r.key, r.state, r.request_id, r.seed) for r in store.rows()] == [
        (jobs[0].key, "planned", None, jobs[0].seed),
        (jobs[1].key, "submitted", "r1", jobs[1].seed),
        (jobs[2].key, "downloaded", None, jobs[2].seed),
        (jobs[3].key, "planned", None, jobs[3].seed),
    ]
    assert store.get(jobs[1].key).request_id == "r1" and store.get(jobs[0].key).attempts == 0
    assert not store.sync_plan(jobs, "e")
    assert store.db.execute("SELECT COUNT(*) FROM job").fetchone()[0] == 4


KEY_OBJECTS = ["job_key", "job_key_insert", "job_key_update"]


def _key_objects(db: sqlite3.Connection) -> list[str]:
    return [
        r[0]
        for r in db.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE 'job_key%' ORDER BY name"
        )
    ]


def _refuses_a_second_row(path: Path) -> None:
    """Through a connection of its own, raw SQL cannot give a stored job key a second row."""
    db = sqlite3.connect(path)
    try:
        (first, k), (second, _) = db.execute("SELECT id, k FROM job ORDER BY id LIMIT 2").fetchall()
        with pytest.raises(sqlite3.IntegrityError, match=r"UNIQUE constraint failed: job\.k"):
            db.execute("INSERT INTO job (k, cell) SELECT k, cell FROM job WHERE id = ?", (first,))
        with pytest.raises(sqlite3.IntegrityError, match=r"UNIQUE constraint failed: job\.k"):
            db.execute("UPDATE job SET k = ? WHERE id = ?", (k, second))
        db.rollback()
        assert db.execute("SELECT COUNT(*) FROM job WHERE k = ?", (k,)).fetchone()[0] == 1
    finally:
        db.close()


@pytest.mark.parametrize("path", ["synced", "recorded", "killed before the key index"])
def test_the_database_refuses_a_second_row_for_a_job_key(
    tmp_path: Path, registry: SchemaRegistry, path: str
):
    """Whichever way a state's jobs were stored (synced, bulk-recorded, or a recording killed before its key index
    was built, then reopened), SQLite itself refuses a second row for a job key, as a unique index did."""
    p = _many(registry, 4, tmp_path)
    store = SQLiteStore(tmp_path)
    if path == "synced":
        assert store.sync_plan(p.jobs, p.digest)
    else:
        recorder = store.record_plan(p.jobs, p.digest)
        assert recorder is not None
        recorder.thread.join(10)
        assert recorder.error is None and len(store.rows()) == 20
        if path != "recorded":
            with store._tx() as db:
                drop_key_index(db)
            assert _key_objects(store.db) == []
            store.close()
            store = SQLiteStore(tmp_path)
    assert _key_objects(store.db) == KEY_OBJECTS
    _refuses_a_second_row(store.path)
    assert [r.key for r in store.rows()] == [j.key for j in p.jobs]
    store.close()


def test_a_key_stored_twice_while_the_key_index_was_down_fails_the_open_loudly(
    tmp_path: Path, registry: SchemaRegistry
):
    """A state given a duplicate job key while its key index was down (a bulk load) is refused on open with the
    key named; neither the index nor its triggers are left half made, and the next open says the same."""
    p = _many(registry, 2, tmp_path)
    store = SQLiteStore(tmp_path)
    assert store.sync_plan(p.jobs, p.digest)
    with store._tx() as db:
        drop_key_index(db)
        db.execute("INSERT INTO job (k, cell) SELECT k, cell FROM job WHERE plan_index = 3")
    store.close()
    for _ in range(2):
        with pytest.raises(StateError, match=f"holds job {p.jobs[3].key} twice"):
            SQLiteStore(tmp_path)
        db = sqlite3.connect(tmp_path / DB_NAME)
        assert _key_objects(db) == []
        db.close()


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(
        st.tuples(
            st.sampled_from([b"\0\0\0\0", b"abcd", b"\xff\xfe\xfd\xfc"]),
            st.binary(min_size=0, max_size=2),
        ),
        max_size=30,
    ),
    moves=st.lists(st.tuples(st.integers(0, 29), st.integers(0, 29)), max_size=10),
)
def test_job_keys_sharing_their_first_bytes_are_stored_once_each(
    keys: list[tuple[bytes, bytes]], moves: list[tuple[int, int]]
):
    """Whatever keys are inserted (many sharing the 4 bytes the key index holds), a migrated state keeps a row for
    each distinct key and refuses every repeat; changing a row's key to another row's is refused, to its own is not."""
    db = sqlite3.connect(":memory:")
    migrate(db)
    stored: list[bytes] = []
    for head, tail in keys:
        k = head + tail
        try:
            db.execute("INSERT INTO job (k, cell) VALUES (?, 1)", (k,))
            assert k not in stored
            stored.append(k)
        except sqlite3.IntegrityError:
            assert k in stored
    for a, b in moves:
        if a < len(stored) and b < len(stored):
            try:
                db.execute("UPDATE job SET k = ? WHERE k = ?", (stored[b], stored[a]))
                assert a == b
            except sqlite3.IntegrityError:
                assert a != b
    assert sorted(r[0] for r in db.execute("SELECT k FROM job")) == sorted(stored)
    db.close()


_KILLED_MID_RECORDING = """
import sys, time
from pathlib import Path
import yaml
import renderer.state.plansync as plansync_mod
import renderer.state.recording as recording_mod
from renderer.manifest.load import parse
from renderer.models.schemas import SchemaRegistry
from renderer.plan import planner
from renderer.state.sqlite import SQLiteStore

plansync_mod.FIRST_BATCH = recording_mod.RECORD_BATCH = 7
folder, schemas = Path(sys.argv[1]), Path(sys.argv[2])
text = yaml.safe_dump({"name": "t", "prompts": [{"id": f"p{i}", "text": f"t{i}"} for i in range(5)],
                       "models": ["fal-ai/flux-1/schnell"], "seeds": {"start": 1, "count": 4}})
p = planner.build(parse(text, folder / "m.yaml"), SchemaRegistry(schemas))

class Gated(list):
    def __iter__(self):
        for n, job in enumerate(list.__iter__(self)):
            if n == 14:  # two batches committed, no key index yet: the parent kills the process here
                print("loaded", flush=True)
                time.sleep(60)
            yield job

store = SQLiteStore(folder)
store.record_plan(Gated(p.jobs), p.digest)
time.sleep(60)
"""


def test_a_process_killed_between_the_load_and_the_key_index_leaves_a_state_the_next_open_completes(
    tmp_path: Path, registry: SchemaRegistry
):
    """kill -9 while the recorder has loaded jobs but not yet built the key index: the state holds whole batches
    and neither the index nor its triggers; the next writable open builds both, and a second row for a key is
    then refused."""
    import os
    import signal
    import subprocess
    import sys

    from .conftest import SCHEMAS

    with subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_RECORDING, str(tmp_path), str(SCHEMAS)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "loaded\n"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("SELECT COUNT(*) FROM job").fetchone()[0] == 14 and _key_objects(db) == []
    db.close()
    store = SQLiteStore(tmp_path)
    assert _key_objects(store.db) == KEY_OBJECTS
    _refuses_a_second_row(store.path)
    p = _many(registry, 4, tmp_path)
    assert store.sync_plan(p.jobs, p.digest) and [r.key for r in store.rows()] == [
        j.key for j in p.jobs
    ]
    store.close()
