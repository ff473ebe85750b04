"""Lost state rebuilt from the files on disk: a deleted, emptied or damaged database never means paying again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from renderer.provider.emulator import ServiceTime
from renderer.state.sqlite import SQLiteStore

from .conftest import background_emulator, cli, write_manifest

FAST = ServiceTime("fixed", 0.01)
ENV = {"FAL_KEY": "k"}


def images(run_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in run_dir.rglob("*")
        if p.suffix in (".png", ".jpg", ".webp") and not p.name.startswith(".")
    )


def digests(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in images(run_dir)
    }


@pytest.mark.parametrize("loss", ["deleted", "emptied", "moved aside with its WAL"])
def test_lost_database_is_rebuilt_from_sidecars_without_paying_again(tmp_path: Path, loss: str):
    """Deleting or emptying renderer.sqlite: the rerun adopts the images on disk, submits nothing, and says so."""
    m = write_manifest(tmp_path, seeds=[1, 2, 3], defaults={"num_images": 2})
    run_dir = tmp_path / "o/t"
    with background_emulator(service=FAST) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"))
        assert cli(*base, "--quiet", env=ENV)[0] == 0
        before = digests(run_dir)
        db = run_dir / "renderer.sqlite"
        if loss == "deleted":
            db.unlink()
        elif loss == "emptied":
            db.write_bytes(b"")
        else:
            for path in run_dir.glob("renderer.sqlite*"):
                path.rename(path.with_name(path.name + ".damaged"))
        code, out, err = cli(*base, env=ENV)
        assert emu.stats()["submits"] == 3 and emu.stats()["duplicate_submits"] == 0
    assert code == 0, err
    assert "rebuilt the state of 3 finished job(s) from their sidecars" in err
    assert out.startswith("done: 3/3 jobs downloaded, 0 failed, 0 images written")
    assert digests(run_dir) == before
    rows = [json.loads(line) for line in (run_dir / "data/metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["request_id"] for r in rows)


@pytest.mark.slow
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    damage=st.sampled_from(
        ["image bytes", "sidecar key", "sidecar missing", "image missing", "sidecar json"]
    ),
    victim=st.integers(0, 3),
)
def test_only_intact_images_of_the_same_job_are_adopted(tmp_path_factory, damage: str, victim: int):
    """A damaged image, a missing or foreign sidecar: that job is rendered again; every other job is adopted."""
    folder = tmp_path_factory.mktemp("adopt")
    m = write_manifest(folder, seeds=[1, 2, 3, 4])
    run_dir = folder / "o/t"
    with background_emulator(service=FAST) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", str(folder / "o"), "--quiet")
        assert cli(*base, env=ENV)[0] == 0
        image = images(run_dir)[victim]
        sidecar = image.with_suffix(".json")
        if damage == "image bytes":
            image.write_bytes(image.read_bytes()[:-4] + b"XXXX")
        elif damage == "sidecar key":
            data = json.loads(sidecar.read_text())
            sidecar.write_text(json.dumps({**data, "job_key": "j1-" + "0" * 64}))
        elif damage == "sidecar missing":
            sidecar.unlink()
        elif damage == "image missing":
            image.unlink()
        else:
            sidecar.write_text("{not json")
        (run_dir / "renderer.sqlite").unlink()
        assert cli(*base, env=ENV)[0] == 0
        assert emu.stats()["submits"] == 5  # four, and the damaged one once more
    # A foreign sidecar marks its image as another job's: it is kept, and this job renders beside it.
    assert len(images(run_dir)) == (5 if damage == "sidecar key" else 4)


def test_a_path_held_by_another_job_is_never_overwritten(tmp_path: Path):
    """Changing a parameter that is not an axis: the new job gets its own path; the old image moves
    to superseded/ unchanged (data/ is the dataset) and its row stays true."""
    run_dir = tmp_path / "o/t"
    with background_emulator(service=FAST) as emu:
        m = write_manifest(tmp_path, seeds=[1])
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"), "--quiet")
        assert cli(*base, env=ENV)[0] == 0
        [old] = images(run_dir)
        old_bytes = old.read_bytes()
        write_manifest(tmp_path, seeds=[1], defaults={"aspect_ratio": "16:9"})
        assert cli(*base, env=ENV)[0] == 0
        assert emu.stats()["submits"] == 2
    kept = run_dir / "superseded" / old.relative_to(run_dir / "data")
    assert kept.read_bytes() == old_bytes and not old.exists()
    new = [p for p in images(run_dir) if p != kept]
    assert (
        len(new) == 1
        and new[0].parent == old.parent
        and new[0].stem.startswith(old.stem.rsplit("-", 1)[0] + "_")
    )
    store = SQLiteStore(run_dir, readonly=True)
    try:
        rows = store.rows()
    finally:
        store.close()
    owners = {f["path"]: (r.key, f["sha256"]) for r in rows for f in (r.files or [])}
    assert len(owners) == 2  # two jobs, two paths, each file what its row says
    for path, (key, sha) in owners.items():
        at = run_dir / path if (run_dir / path).exists() else kept.parent / Path(path).name
        assert hashlib.sha256(at.read_bytes()).hexdigest() == sha
        assert json.loads(at.with_suffix(".json").read_text())["job_key"] == key


def test_a_path_held_on_disk_only_is_never_overwritten(tmp_path: Path):
    """Same, with the database lost in between: the other job's file (known by its sidecar) is kept,
    moved out of data/ since its job is not in the plan."""
    run_dir = tmp_path / "o/t"
    with background_emulator(service=FAST) as emu:
        m = write_manifest(tmp_path, seeds=[1])
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"), "--quiet")
        assert cli(*base, env=ENV)[0] == 0
        [old] = images(run_dir)
        old_bytes = old.read_bytes()
        (run_dir / "renderer.sqlite").unlink()
        write_manifest(tmp_path, seeds=[1], defaults={"aspect_ratio": "16:9"})
        assert cli(*base, env=ENV)[0] == 0
        (run_dir / "renderer.sqlite").unlink()
        assert (
            cli(*base, env=ENV)[0] == 0
        )  # and once more: the new job's own file is found and adopted
        assert emu.stats()["submits"] == 2
    # The old job left the plan: its image is kept (moved out of the dataset), never overwritten.
    kept = run_dir / "superseded" / old.relative_to(run_dir / "data")
    assert kept.read_bytes() == old_bytes and not old.exists()
    assert len(images(run_dir)) == 2 and len(images(run_dir / "data")) == 1


def test_temporary_files_of_a_killed_export_are_removed(tmp_path: Path):
    """Leftover temporary files in the run root and the dataset folder are gone after the next run."""
    with background_emulator(service=FAST) as emu:
        m = write_manifest(tmp_path, seeds=[1])
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"), "--quiet")
        assert cli(*base, env=ENV)[0] == 0
        run_dir = tmp_path / "o/t"
        left = [
            run_dir / ".run.json.0123abcd4567.part",
            run_dir / "data/.metadata.jsonl.89ab01234567.part",
            run_dir / "data/.README.md.0123456789ab.part",
        ]
        for path in left:
            path.write_text("half")
        assert cli(*base, env=ENV)[0] == 0
    assert not [p for p in left if p.exists()]
    assert not list(run_dir.rglob("*.part"))


@pytest.mark.slow
def test_damaged_database_is_a_clear_error_and_moving_it_aside_recovers(tmp_path: Path):
    """A corrupt database page: exit 1 naming the file and what to do, no traceback; after that, nothing is paid twice."""
    m = write_manifest(tmp_path, seeds=list(range(1, 41)))
    run_dir = tmp_path / "o/t"
    with background_emulator(service=FAST, workers=8) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"), "--quiet")
        assert cli(*base, env=ENV)[0] == 0
        db = run_dir / "renderer.sqlite"
        raw = bytearray(db.read_bytes())
        page = 4096
        assert len(raw) > 3 * page
        raw[page:] = b"\xa5" * (len(raw) - page)  # every page after the header page
        db.write_bytes(bytes(raw))
        code, _, err = cli(*base, env=ENV)
        assert code == 1
        assert "Traceback" not in err
        assert f"error: {db}" in err and ("damaged" in err or "malformed" in err)
        assert "hint: if the file is damaged, move renderer.sqlite aside" in err
        code, _, err = cli("status", str(run_dir))
        assert code == 1 and "Traceback" not in err and "hint: if the file is damaged" in err
        db.rename(run_dir / "renderer.sqlite.damaged")
        code, _, err = cli(*base, env=ENV)
        assert code == 0, err
        assert emu.stats()["duplicate_submits"] == 0 and emu.stats()["submits"] == 40


# -------------------------------------------------- the output in a bucket


@pytest.mark.parametrize("state", ["sqlite", "postgresql"])
def test_lost_state_is_rebuilt_from_the_bucket_without_paying_again(
    tmp_path: Path, state: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
):
    """S3 output, the state lost (renderer.sqlite deleted, or the PostgreSQL schema dropped): the rerun adopts every job from the bucket, submits nothing, and says so."""
    import psycopg

    from renderer.output.storage import open_storage
    from renderer.state.postgres import schema_name

    _server, url, s3_env = request.getfixturevalue("s3")
    monkeypatch.chdir(tmp_path)
    m = write_manifest(tmp_path, seeds=[1, 2, 3, 4, 5], defaults={"num_images": 2})
    state_args: tuple[str, ...] = ()
    if state == "postgresql":
        state_args = ("--state", request.getfixturevalue("postgres_url"))
    env = {**ENV, **s3_env}
    with background_emulator(service=FAST) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", url, *state_args)
        assert cli(*base, "--quiet", env=env)[0] == 0
        assert emu.stats()["submits"] == 5
        if state == "postgresql":
            with psycopg.connect(state_args[1], autocommit=True) as admin:
                admin.execute(f'DROP SCHEMA "{schema_name("t")}" CASCADE')
        else:
            (tmp_path / "outputs/t/renderer.sqlite").unlink()
        code, out, err = cli(*base, env=env)
        assert emu.stats()["submits"] == 5 and emu.stats()["duplicate_submits"] == 0
    assert code == 0, err
    assert "rebuilt the state of 5 finished job(s) from their sidecars and images in s3://" in err
    assert "done: 5/5 jobs downloaded, 0 failed, 0 images written" in out
    storage = open_storage(url, "t", s3_env)
    record = json.loads(storage.read("run.json") or b"{}")
    assert record["outcome"] == "done" and record["paid_twice"]["this_run"] == 0
    rows = (storage.read("data/metadata.jsonl") or b"").decode().splitlines()
    assert len(rows) == 10 and all(json.loads(r)["request_id"] for r in rows)


def test_a_duplicate_after_a_lost_state_is_counted_as_paid_twice(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
):
    """A job the bucket holds but recovery cannot prove (its sidecar's hash is wrong): rendered again, and counted in paid_twice."""
    from renderer.output.storage import open_storage

    _server, url, s3_env = request.getfixturevalue("s3")
    monkeypatch.chdir(tmp_path)
    m = write_manifest(tmp_path, seeds=[1, 2, 3])
    env = {**ENV, **s3_env}
    storage = open_storage(url, "t", s3_env)
    with background_emulator(service=FAST) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", url)
        assert cli(*base, "--quiet", env=env)[0] == 0
        [first, *_] = [
            json.loads(line)
            for line in (storage.read("data/metadata.jsonl") or b"").decode().splitlines()
        ]
        side = "data/" + first["file_name"].removeprefix("data/").rsplit(".", 1)[0] + ".json"
        sidecar = json.loads(storage.read(side) or b"{}")
        storage.put_json(side, {**sidecar, "sha256": "0" * 64})
        (tmp_path / "outputs/t/renderer.sqlite").unlink()
        code, _out, err = cli(*base, env=env)
        assert emu.stats()["submits"] == 4
    assert code == 0, err
    assert "already held this job's image from an earlier request" in err
    record = json.loads(storage.read("run.json") or b"{}")
    assert record["paid_twice"]["this_run"] == 1


def test_kept_columns_survive_a_lost_database(tmp_path: Path):
    """A caption set's kept columns come from the plan, not the state: after the database is lost, the
    rerun adopts the images, pays for nothing, and metadata.jsonl carries the same kept values."""
    (tmp_path / "c.jsonl").write_text(
        "".join(
            json.dumps({"caption": f"a fox {i}", "source_url": f"u{i}", "original_id": i}) + "\n"
            for i in range(3)
        )
    )
    m = write_manifest(
        tmp_path,
        prompts=[{"file": "c.jsonl", "text": "caption", "keep": ["source_url", "original_id"]}],
    )
    run_dir = tmp_path / "o/t"
    metadata = run_dir / "data/metadata.jsonl"
    with background_emulator(service=FAST) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"))
        assert cli(*base, "--quiet", env=ENV)[0] == 0
        before = metadata.read_text()
        (run_dir / "renderer.sqlite").unlink()
        code, _, err = cli(*base, env=ENV)
        assert emu.stats()["submits"] == 3 and emu.stats()["duplicate_submits"] == 0
    assert code == 0, err
    rows = [json.loads(line) for line in metadata.read_text().splitlines()]
    assert {(r["prompt"], r["source_url"], r["original_id"]) for r in rows} == {
        (f"a fox {i}", f"u{i}", i) for i in range(3)
    }

    # Each image with the same kept values as before (the NSFW flags are not in a sidecar).
    def kept(text: str) -> set[tuple[str, str, int]]:
        rows = [json.loads(line) for line in text.splitlines()]
        return {(r["sha256"], r["source_url"], r["original_id"]) for r in rows}

    assert kept(metadata.read_text()) == kept(before) and len(kept(before)) == 3
