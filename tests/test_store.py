"""The run database: migrations, one transaction per state change, pending work by query, the lock."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from renderer import plan
from renderer.errors import RunLocked
from renderer.manifest import load
from renderer.schemas import SchemaRegistry
from renderer.store import DB_NAME, MIGRATIONS, RunLock, Store, migrate

from .conftest import MANIFESTS


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
        return db.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index') ORDER BY name").fetchall()
    assert tables(fresh) == tables(old)


def test_state_moves_and_pending_is_derived(tmp_path: Path, registry: SchemaRegistry):
    """Pending work comes from states, in plan order; finished and failed jobs are not pending."""
    p = _plan(registry)
    store = Store(tmp_path)
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


def test_jobs_leaving_the_plan_are_kept_and_marked(tmp_path: Path, registry: SchemaRegistry):
    """Syncing a smaller plan keeps the old rows (and their files) as no longer planned."""
    p = _plan(registry)
    store = Store(tmp_path)
    store.sync_plan(p.jobs)
    store.sync_plan(p.jobs[:3])
    assert store.counts()["no_longer_planned"] == 5
    assert len(store.rows(in_plan=False)) == 5
    assert store.pending() == [j.key for j in p.jobs[:3]]


def test_database_is_wal_and_survives_reopen(tmp_path: Path, registry: SchemaRegistry):
    """The database uses WAL and keeps committed state across connections."""
    store = Store(tmp_path)
    store.sync_plan(_plan(registry).jobs)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    again = Store(tmp_path, readonly=True)
    assert len(again.pending()) == 8
    again.close()
    assert (tmp_path / DB_NAME).is_file()


def test_the_lock_refuses_a_second_holder(tmp_path: Path):
    """Two runs on one directory: the second is refused with the holder named."""
    with RunLock(tmp_path), pytest.raises(RunLocked) as info, RunLock(tmp_path):
        pass
    assert "pid" in info.value.message
    with RunLock(tmp_path):  # released after use
        pass


def test_resubmits_are_recorded_per_run_with_their_reason(tmp_path: Path, registry: SchemaRegistry):
    """Each paid resubmission is one row with its reason and run; a free one (paid=False) is not counted."""
    p = _plan(registry)
    store = Store(tmp_path)
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


def test_a_new_job_never_takes_a_path_a_recorded_job_holds(tmp_path: Path, registry: SchemaRegistry):
    """Two keys with one stem (a non-axis parameter changed): the later one gets stem + '_' + its key's start."""
    p = _plan(registry)
    store = Store(tmp_path)
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

    from renderer.manifest import parse
    text = yaml.safe_dump({"name": "t", "prompts": [{"id": f"p{i}", "text": f"t{i}"} for i in range(5)],
                           "models": ["fal-ai/flux-1/schnell"], "seeds": {"start": 1, "count": seeds}})
    return plan.build(parse(text, tmp_path / name), registry)


def test_sync_streams_in_batches_and_keeps_the_plan_exact(tmp_path: Path, registry: SchemaRegistry,
                                                          monkeypatch: pytest.MonkeyPatch):
    """Synced in many small transactions, the rows match the plan; a shrunk plan marks the rest out."""
    import renderer.store as store_mod
    monkeypatch.setattr(store_mod, "SYNC_BATCH", 7)
    big, small = _many(registry, 20, tmp_path), _many(registry, 13, tmp_path)
    store = Store(tmp_path)
    assert store.sync_plan(big.jobs, big.digest)
    assert store.pending() == [j.key for j in big.jobs]
    assert not store.sync_plan(big.jobs, big.digest)  # same digest: nothing read, nothing written
    assert store.sync_plan(small.jobs, small.digest)
    assert store.pending() == [j.key for j in small.jobs]
    assert store.counts()["no_longer_planned"] == 35
    assert store.sync_plan(big.jobs, big.digest)  # back again: the rows return to the plan, in order
    assert store.pending() == [j.key for j in big.jobs] and store.counts()["no_longer_planned"] == 0


def test_pending_and_finished_files_are_read_in_pages(tmp_path: Path, registry: SchemaRegistry,
                                                      monkeypatch: pytest.MonkeyPatch):
    """Paging by plan position and rowid sees every row once, whatever the page size."""
    import renderer.store as store_mod
    monkeypatch.setattr(store_mod, "PAGE", 3)
    p = _many(registry, 10, tmp_path)
    store = Store(tmp_path)
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
    assert store.pending_page(-1, limit=100, before=5) == [(i, keys[i], "fal-ai/flux-1/schnell")
                                                           for i in range(5) if i % 4]
    assert store.pending_count() == 50 - 13 and store.pending_count(before=5) == 3
    assert sorted(store.downloaded_files()) == sorted((k, [{"path": k}]) for k in keys[::4])


def test_the_submitting_account_is_kept_with_the_request_and_forgotten_with_it(tmp_path: Path,
                                                                                registry: SchemaRegistry):
    """The account is stored with the request id, survives reopen and --retry-failed, and is cleared by a resubmit."""
    p = _plan(registry)
    store = Store(tmp_path)
    store.sync_plan(p.jobs)
    a, b = p.jobs[0].key, p.jobs[1].key
    store.submitted(a, "r1", "s", "r", "c", account="team-b")
    store.submitted(b, "r2", "s", "r", "c")
    store.failed(a, "deadline", "deadline")
    store.close()
    store = Store(tmp_path)
    assert store.get(a).account == "team-b" and store.get(b).account is None
    store.retry_failed()
    assert store.get(a).state == "submitted" and store.get(a).account == "team-b"
    store.resubmit(a, "the provider no longer knows the request")
    assert store.get(a).account is None and store.get(a).request_id is None
