"""The dataset folder holds exactly the dataset (renderer/output/superseded.py): images of jobs that
left the plan move to superseded/, come back when the change is undone, and `plan` names the
path each job will really write."""

from __future__ import annotations

import json
from pathlib import Path

from renderer.provider.emulator import ServiceTime

from .conftest import background_emulator, cli, write_manifest

FAST = ServiceTime("fixed", 0.01)
IMAGES = {".png", ".jpg", ".jpeg", ".webp"}


def _images(folder: Path) -> set[str]:
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in IMAGES
    }


def _metadata(run: Path) -> set[str]:
    lines = (run / "data/metadata.jsonl").read_text().splitlines()
    return {json.loads(line)["file_name"] for line in lines}


def _planned(manifest: Path, out: Path) -> set[str]:
    code, text, err = cli("plan", str(manifest), "--json")
    assert code == 0, err
    paths = (Path(p) for line in text.splitlines() for p in json.loads(line)["paths"])
    return {p.relative_to(out / "t" / "data").as_posix() for p in paths}


def _manifest(tmp_path: Path, **defaults: object) -> Path:
    """The tests' manifest (seeds 1 and 2, output tmp_path/out, run folder out/t), with `defaults`."""
    extra = {"defaults": defaults} if defaults else {}
    return write_manifest(tmp_path, seeds=[1, 2], output=str(tmp_path / "out"), **extra)


def _render(tmp_path: Path, url: str, *flags: str) -> tuple[int, str, str]:
    """`renderer run m.yaml` on the test's emulator."""
    return cli("run", str(tmp_path / "m.yaml"), "--provider", url, *flags, env={"FAL_KEY": "k"})


def test_data_folder_is_the_metadata_after_a_parameter_change_and_back(tmp_path: Path):
    """After a parameter change data/ holds exactly metadata.jsonl's images (the old ones in
    superseded/, never deleted), `plan` names the new paths, and undoing the change pays nothing."""
    out = tmp_path / "out"
    run = out / "t"
    with background_emulator(service=FAST) as emu:
        m = _manifest(tmp_path)
        assert _render(tmp_path, emu.url, "--quiet")[0] == 0
        first = _images(run / "data")
        assert first == _metadata(run) == _planned(m, out) and len(first) == 2

        _manifest(tmp_path, num_inference_steps=2)
        planned = _planned(m, out)
        assert planned.isdisjoint(first)  # the old jobs own the old paths: new ones get their own
        assert _render(tmp_path, emu.url, "--quiet")[0] == 0
        assert emu.stats()["submits"] == 4
        assert _images(run / "data") == _metadata(run) == planned
        assert _images(run / "superseded") == first  # kept, at the same paths under superseded/
        assert {p.with_suffix(".json").name for p in (run / "superseded").rglob("*.png")} == {
            p.name for p in (run / "superseded").rglob("*.json")
        }

        _manifest(tmp_path)  # undone: the first jobs again
        assert _planned(m, out) == first
        assert _render(tmp_path, emu.url, "--quiet")[0] == 0
        assert emu.stats()["submits"] == 4  # nothing paid again: the images came back
        assert _images(run / "data") == _metadata(run) == first
        assert _images(run / "superseded") == planned
    code, text, _ = cli("status", str(run), "--json")
    assert code == 0 and json.loads(text)["missing_on_disk"] == []


def test_a_lost_state_adopts_images_that_a_change_had_moved_out(tmp_path: Path):
    """renderer.sqlite lost after a parameter change, then the change undone: the first jobs'
    images come back from superseded/ and are adopted; nothing is paid for again."""
    out = tmp_path / "out"
    run = out / "t"
    with background_emulator(service=FAST) as emu:
        m = _manifest(tmp_path)
        assert _render(tmp_path, emu.url, "--quiet")[0] == 0
        first = _images(run / "data")
        _manifest(tmp_path, num_inference_steps=2)
        changed = _planned(m, out)
        assert _render(tmp_path, emu.url, "--quiet")[0] == 0
        assert _images(run / "superseded") == first and emu.stats()["submits"] == 4
        (run / "renderer.sqlite").unlink()
        _manifest(tmp_path)  # undone, with the state lost
        code, _out, err = _render(tmp_path, emu.url)
        assert code == 0, err
        assert emu.stats()["submits"] == 4 and emu.stats()["duplicate_submits"] == 0
        assert "rebuilt the state of 2 finished job(s)" in err
    # data/ is the dataset again: the changed jobs' images (which the new state never knew)
    # went to superseded/ with their sidecars, not left beside the dataset's.
    assert _images(run / "data") == _metadata(run) == _planned(m, out) == first
    assert _images(run / "superseded") == changed
    assert len(list((run / "superseded").rglob("*.json"))) == len(changed)


def test_a_lost_state_leaves_files_that_are_not_a_jobs_alone(tmp_path: Path):
    """After a lost state only images whose sidecar names a job outside the plan leave data/:
    a user's own files, sidecars that are not ours, and planned jobs' images stay."""
    out = tmp_path / "out"
    run = out / "t"
    with background_emulator(service=FAST) as emu:
        m = _manifest(tmp_path)
        assert _render(tmp_path, emu.url, "--quiet")[0] == 0
        first = _images(run / "data")
        folder = run / "data" / Path(sorted(first)[0]).parent
        mine = {
            "notes.png": b"not a job's",
            "notes.json": json.dumps({"file": "notes.png"}).encode(),  # no job_key
            "list.png": b"x",
            "list.json": b"[1, 2]",
            "bad.png": b"x",
            "bad.json": b"{not json",
            "other.png": b"x",
            "other.json": json.dumps({"job_key": "j1-00", "file": "../other.png"}).encode(),
        }
        for name, body in mine.items():
            (folder / name).write_bytes(body)
        (run / "renderer.sqlite").unlink()
        assert _render(tmp_path, emu.url, "--quiet")[0] == 0
        assert emu.stats()["submits"] == 2
    assert {p.name for p in folder.iterdir()} >= set(mine)
    assert _metadata(run) == _planned(m, out) == first
    assert not (run / "superseded").exists()


def test_recovery_ignores_hostile_sidecars_in_superseded(tmp_path: Path):
    """Sidecars in superseded/ that are not objects, name another job, or point outside their
    folder move nothing and raise nothing."""
    from renderer.output.superseded import restore

    run = tmp_path / "run"
    folder = run / "superseded" / "m" / "cat"
    folder.mkdir(parents=True)
    (run / "data").mkdir()
    (folder / "secret.png").write_bytes(b"x")
    for body in ([1, 2], {"job_key": "other", "file": "s1-0.png"},
                 {"job_key": "k", "file": "../../../secret.png"}, {"job_key": "k", "file": ".."},
                 "not json"):  # fmt: skip
        (folder / "s1-0.json").write_text(body if isinstance(body, str) else json.dumps(body))
        assert restore(run, "m/cat/s1", "k") is False
    assert not any((run / "data").rglob("*")) and (folder / "secret.png").is_file()


def test_a_lost_state_finds_a_job_written_at_its_own_path(tmp_path: Path):
    """A changed job written at its own path (s1_<key8>, the natural one was the old job's) is
    adopted after a lost state, although the old job's images have left data/: nothing paid twice."""
    out = tmp_path / "out"
    run = out / "t"
    with background_emulator(service=FAST) as emu:
        _manifest(tmp_path)
        assert _render(tmp_path, emu.url, "--quiet")[0] == 0
        m = _manifest(tmp_path, num_inference_steps=2)
        assert _render(tmp_path, emu.url, "--quiet")[0] == 0
        changed = _images(run / "data")
        assert all("_" in Path(p).name for p in changed)  # at their own paths
        (run / "renderer.sqlite").unlink()
        code, _out, err = _render(tmp_path, emu.url)
        assert code == 0, err
        assert emu.stats()["submits"] == 4 and emu.stats()["duplicate_submits"] == 0
        assert "rebuilt the state of 2 finished job(s)" in err
    assert _images(run / "data") == _metadata(run) == _planned(m, out) == changed
