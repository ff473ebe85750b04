"""`renderer diff`: identical runs, a changed model, JPEG re-encoding, and cross-model pairs."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from renderer.provider.emulator import ServiceTime
from renderer.view.compare import measure

from .conftest import MANIFESTS, background_emulator, cli

FAST = ServiceTime("fixed", 0.01)


def _render(folder: Path, name: str, **emulator: object) -> Path:
    with background_emulator(service=FAST, **emulator) as emu:
        code, _, err = cli(
            "run",
            str(MANIFESTS / "regression.yaml"),
            "--provider",
            emu.url,
            "--output",
            str(folder / name),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
    assert code == 0, err
    return folder / name / "regression"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _render(tmp_path_factory.mktemp("diff"), "a")


def test_identical_runs_exit_0(baseline: Path, tmp_path: Path):
    """Two renders of the same manifest on the same emulator are byte-identical: exit 0."""
    other = _render(tmp_path, "b")
    code, out, _ = cli("diff", str(baseline), str(other), "--json")
    result = json.loads(out)
    assert code == 0
    assert result["counts"]["identical"] == 18 and result["counts"]["changed"] == 0


def test_a_changed_model_is_reported_exactly(baseline: Path, tmp_path: Path):
    """The emulator renders one model differently: exactly its jobs are changed; exit 1; HTML written."""
    other = _render(tmp_path, "b", variants=(("fal-ai/hidream-i1-fast", "v2"),))
    code, out, _ = cli(
        "diff", str(baseline), str(other), "--json", "--html", str(tmp_path / "d.html")
    )
    result = json.loads(out)
    assert code == 1
    changed = {p["label"].split(" / ")[1] for p in result["pairs"] if p["verdict"] == "changed"}
    assert changed == {"hidream-fast"}
    assert result["counts"] == {
        "identical": 9,
        "same": 0,
        "changed": 9,
        "missing": 0,
        "only_in_a": 0,
        "only_in_b": 0,
    }
    assert (
        len(list((tmp_path / "d-images").glob("d-*.png"))) == 9
        and "difference" in (tmp_path / "d.html").read_text()
    )


def test_jpeg_reencoding_is_within_threshold(baseline: Path, tmp_path: Path):
    """The same pictures re-encoded through JPEG (quality 75) count as 'same', not 'changed'."""
    copy = tmp_path / "jpeg"
    shutil.copytree(baseline, copy)
    for path in copy.rglob("*.png"):
        if "report" in path.parts:
            continue
        buffer = io.BytesIO()
        with Image.open(path) as im:
            im.convert("RGB").save(buffer, "JPEG", quality=75)
        with Image.open(io.BytesIO(buffer.getvalue())) as lossy:
            lossy.save(path, "PNG")
    # As if the provider had returned these bytes: the run records what it downloaded.
    db = sqlite3.connect(copy / "renderer.sqlite")
    with db:
        for key, files in db.execute(
            "SELECT key, files FROM jobs WHERE files IS NOT NULL"
        ).fetchall():
            entries = json.loads(files)
            for entry in entries:
                data = (copy / entry["path"]).read_bytes()
                entry["sha256"], entry["size"] = hashlib.sha256(data).hexdigest(), len(data)
            db.execute("UPDATE jobs SET files = ? WHERE key = ?", (json.dumps(entries), key))
    db.close()
    code, out, _ = cli("diff", str(baseline), str(copy), "--json")
    result = json.loads(out)
    assert code == 0 and result["counts"]["same"] == 18
    worst = max(p["rmse"] for p in result["pairs"])
    assert worst < 0.04


def test_cross_model_mapping(baseline: Path):
    """--map pairs the same prompt and seed across two models for a design review."""
    code, out, _ = cli(
        "diff", str(baseline), str(baseline), "--map", "hidream-full=hidream-fast", "--json"
    )
    result = json.loads(out)
    assert code == 1  # different models draw different pictures
    assert len(result["pairs"]) == 9 and result["counts"]["changed"] == 9
    assert all("hidream-full → hidream-fast" in p["label"] for p in result["pairs"])


def test_measure_is_zero_for_the_same_file(baseline: Path):
    """An image compared with itself has distance 0 and RMSE 0."""
    first = next(baseline.rglob("*.png"))
    assert measure((str(first), str(first))) == (0, 0.0)


def _images(run: Path) -> list[Path]:
    return sorted(p for p in run.rglob("*.png") if "report" not in p.parts)


def test_diff_judges_the_files_on_disk_not_the_recorded_hashes(baseline: Path, tmp_path: Path):
    """A blurred image is 'changed' and a deleted one 'missing' although SQLite still records the old hashes: exit 1."""
    from PIL import ImageFilter

    copy = tmp_path / "b"
    shutil.copytree(baseline, copy)
    blurred, deleted = _images(copy)[:2]
    with Image.open(blurred) as im:
        im.convert("RGB").filter(ImageFilter.GaussianBlur(8)).rotate(90).save(blurred, "PNG")
    deleted.unlink()
    code, out, _ = cli("diff", str(baseline), str(copy), "--json")
    result = json.loads(out)
    assert code == 1
    assert result["counts"]["changed"] == 1 and result["counts"]["missing"] == 1
    assert result["counts"]["identical"] == 16


def test_diff_fails_when_images_are_missing_on_either_side(baseline: Path, tmp_path: Path):
    """B lacking images exits 1 (a CI gate must not pass), and so does A lacking them."""
    copy = tmp_path / "b"
    shutil.copytree(baseline, copy)
    for path in _images(copy)[:5]:
        path.unlink()
    for a, b in ((baseline, copy), (copy, baseline)):
        code, out, _ = cli("diff", str(a), str(b), "--json")
        assert code == 1 and json.loads(out)["counts"]["missing"] == 5


def test_unknown_map_labels_are_refused(baseline: Path):
    """--map naming a model neither run has exits 2 with a did-you-mean, instead of comparing nothing."""
    code, out, err = cli("diff", str(baseline), str(baseline), "--map", "hidream-ful=hidream-fast")
    assert code == 2 and out == ""
    assert "run A has no model 'hidream-ful'" in err and "did you mean hidream-full?" in err


def test_html_into_a_missing_folder_is_refused(baseline: Path, tmp_path: Path):
    """--html into a folder that does not exist is exit 2, and the folder is not created."""
    code, _, err = cli(
        "diff", str(baseline), str(baseline), "--html", str(tmp_path / "nope/x.html")
    )
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "nope").exists()
