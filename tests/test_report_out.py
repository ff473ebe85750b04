"""Where a report goes and what a rerun makes again: thumbnails and sheets recorded in the
report's manifest (only new images and changed sheets are made), a report of a distributed run
(PostgreSQL state, images in SeaweedFS) written to a folder or to the bucket."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from renderer.output.storage import open_storage
from renderer.provider.emulator import ServiceTime
from renderer.view import report

from .conftest import background_emulator, cli, write_manifest

FAST = ServiceTime("fixed", 0.005)


def _run(
    folder: Path,
    prompts: list[str],
    *extra: str,
    env: dict[str, str] | None = None,
    seeds: tuple[int, ...] = (1,),
) -> str:
    manifest = write_manifest(
        folder, prompts=[{"id": p, "text": f"a {p}"} for p in prompts], seeds=list(seeds)
    )
    with background_emulator(service=FAST) as emu:
        code, out, err = cli(
            "run",
            str(manifest),
            "--provider",
            emu.url,
            *extra,
            "--quiet",
            env={"FAL_KEY": "k", **(env or {})},
        )
    assert code == 0, err
    return out


def _thumbs(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("thumbs/*/*.jpg")}


def test_a_rerun_makes_only_new_thumbnails_and_changed_sheets(tmp_path: Path):
    """A second report writes no thumbnail and draws no sheet; after one more prompt is rendered,
    the next report makes that image's thumbnail and redraws the one sheet it lands on."""
    _run(tmp_path, ["cat", "dog"], "--output", str(tmp_path / "out"))
    run = tmp_path / "out/t"
    first = report.build(run)
    assert (first["thumbnails_made"], first["sheets_drawn"]) == (2, 1)
    before = _thumbs(run / "report")
    sheet_mtime = (run / "report/sheet-1.png").stat().st_mtime_ns
    again = report.build(run)
    assert (again["thumbnails_made"], again["sheets_drawn"]) == (0, 0)
    assert _thumbs(run / "report") == before
    assert (run / "report/sheet-1.png").stat().st_mtime_ns == sheet_mtime
    _run(tmp_path, ["cat", "dog", "owl"], "--output", str(tmp_path / "out"))
    grown = report.build(run)
    assert (grown["thumbnails_made"], grown["sheets_drawn"], grown["cells"]) == (1, 1, 3)
    after = _thumbs(run / "report")
    assert len(after) == 3 and all(after[name] == mtime for name, mtime in before.items())
    # A thumbnail deleted by hand is made again; the others are not touched.
    gone = next(iter((run / "report/thumbs").glob("*/*.jpg")))
    gone.unlink()
    assert report.build(run)["thumbnails_made"] == 1 and gone.is_file()


def test_a_smaller_report_leaves_no_chunk_of_a_larger_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """With one job a chunk, a report of seed 1 only after one of both seeds leaves exactly its own
    data files (no chunk the new index.html does not name)."""
    monkeypatch.setattr(report, "CHUNK", 1)
    _run(tmp_path, ["cat", "dog"], "--output", str(tmp_path / "out"), seeds=(1, 2))
    run = tmp_path / "out/t"
    report.build(run)
    assert len(list((run / "report/data").glob("i-*.js"))) == 4
    assert report.build(run, seeds={1})["cells"] == 2
    names = sorted(p.name for p in (run / "report/data").iterdir())
    assert names == ["d-00000.js", "d-00001.js", "i-00000.js", "i-00001.js"]


def test_thumbnails_of_an_older_report_are_adopted(tmp_path: Path):
    """A report folder from before the manifest (thumbs/<hash>.jpg) is reused: its thumbnails move
    into their folders and none is made again."""
    _run(tmp_path, ["cat", "dog"], "--output", str(tmp_path / "out"))
    run = tmp_path / "out/t"
    report.build(run)
    thumbs = run / "report/thumbs"
    for path in list(thumbs.glob("*/*.jpg")):
        os.replace(path, thumbs / path.name)
        path.parent.rmdir()
    (run / "report/manifest.sqlite").unlink()
    assert report.build(run)["thumbnails_made"] == 0
    assert len(list(thumbs.glob("*/*.jpg"))) == 2 and not list(thumbs.glob("*.jpg"))


def test_report_to_another_folder_links_the_run_images(tmp_path: Path):
    """--out DIR writes the report there, and the large view's image paths lead back to the run;
    --no-sheets draws no PNG sheet."""
    _run(tmp_path, ["cat"], "--output", str(tmp_path / "out"))
    code, out, err = cli(
        "report", str(tmp_path / "out/t"), "--out", str(tmp_path / "elsewhere/r"), "--no-sheets"
    )
    assert code == 0, err
    assert "0 sheets of which 0 drawn" in out and not list((tmp_path / "elsewhere/r").glob("*.png"))
    assert f"report: {tmp_path / 'elsewhere/r/index.html'}" in out
    assert not (tmp_path / "out/t/report").exists()
    detail = (tmp_path / "elsewhere/r/data/d-00000.js").read_text()
    rel = detail.split('"path":"', 1)[1].split('"', 1)[0]
    assert (tmp_path / "elsewhere/r" / rel).resolve().is_file()


def test_report_of_a_distributed_run_into_its_bucket(
    tmp_path: Path,
    postgres_url: str,
    s3: tuple[Any, str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
):
    """From a machine that ran no worker, with --state and the AWS variables only: the report of a
    PostgreSQL + S3 run goes into the bucket beside the run (served types, nothing written here),
    and a second report uploads no thumbnail and no sheet."""
    _server, url, aws = s3
    _run(tmp_path, ["cat", "dog"], "--state", postgres_url, "--output", url, env=aws)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    run_url = f"{url}/t"
    code, out, err = cli(
        "report", run_url, "--state", postgres_url, "--out", f"{run_url}/report/", env=aws
    )
    assert code == 0, err
    assert f"report: {run_url}/report/index.html" in out and "2 new thumbnails" in out
    assert list(fresh.iterdir()) == []
    bucket = open_storage(url, "t", aws)
    page = bucket.read("report/index.html")
    assert page is not None and b'"chunks"' in page
    import obstore

    head = obstore.head(bucket.store, "report/index.html")  # type: ignore[attr-defined]
    assert head["size"] == len(page)
    got = obstore.get(bucket.store, "report/data/i-00000.js")  # type: ignore[attr-defined]
    assert got.attributes.get("Content-Type", "").startswith("text/javascript")
    detail = (bucket.read("report/data/d-00000.js") or b"").decode()
    assert '"path":"../data/' in detail  # the run's images, beside the report in the bucket
    thumbs = {
        str(m["path"])
        for batch in obstore.list(bucket.store, "report/thumbs/")  # type: ignore[attr-defined]
        for m in batch
    }
    assert (
        len(thumbs) == 2
        and bucket.read("report/sheet-1.png")
        and bucket.read("report/manifest.sqlite")
    )
    code, out, err = cli(
        "report", run_url, "--state", postgres_url, "--out", f"{run_url}/report/", env=aws
    )
    assert code == 0, err
    assert "0 new thumbnails, 1 sheets of which 0 drawn" in out
    # The same run's report written to a local folder instead.
    code, out, err = cli("report", run_url, "--state", postgres_url, "--out", "r", env=aws)
    assert code == 0, err
    assert (
        len(list((fresh / "r/thumbs").glob("*/*.jpg"))) == 2 and (fresh / "r/sheet-1.png").is_file()
    )
