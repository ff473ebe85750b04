"""`renderer diff`: pairing by coordinates, what differs, bands, JPEG re-encoding, files on disk."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from renderer.provider.emulator import ServiceTime
from renderer.view.bands import Bands, measure

from .conftest import MANIFESTS, background_emulator, cli

FAST = ServiceTime("fixed", 0.01)


def render_regression(
    folder: Path,
    name: str,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **emulator: Any,
) -> Path:
    """manifests/regression.yaml (edited by `edit`) rendered on a fresh emulator into folder/name."""
    data = yaml.safe_load((MANIFESTS / "regression.yaml").read_text())
    if edit is not None:
        edit(data)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump(data))
    with background_emulator(service=FAST, **emulator) as emu:
        code, _, err = cli(
            "run",
            str(manifest),
            "--provider",
            emu.url,
            "--output",
            str(folder / name),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
    assert code == 0, err
    return folder / name / "regression"


def steps(value: int) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["defaults"]["num_inference_steps"] = value

    return edit


def _diff(*argv: str) -> tuple[int, dict[str, Any]]:
    code, out, err = cli("diff", *argv, "--json")
    assert out, err
    return code, json.loads(out)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_regression(tmp_path_factory.mktemp("diff"), "a")


def test_identical_runs_pass_exit_0(baseline: Path, tmp_path: Path):
    """Two renders of the same manifest on the same emulator are byte-identical: all pass, exit 0."""
    other = render_regression(tmp_path, "b")
    code, result = _diff(str(baseline), str(other))
    assert code == 0 and result["outcome"] == "pass"
    assert result["counts"] == {
        "pairs": 18,
        "pass": 18,
        "review": 0,
        "fail": 0,
        "only_in_a": 0,
        "only_in_b": 0,
        "not_rendered": 0,
    }
    assert all(p["identical"] and p["differs"] == {} for p in result["pairs"])


def test_a_one_parameter_change_pairs_by_coordinates(baseline: Path, tmp_path: Path):
    """Changing num_inference_steps pairs every job by coordinates (none only on one side), names the
    parameter in each pair, and bands each pair by its SSIM and pHash; the exit code follows."""
    other = render_regression(tmp_path, "b", steps(30))
    code, result = _diff(str(baseline), str(other))
    counts = result["counts"]
    assert counts["pairs"] == 18 and counts["only_in_a"] == counts["only_in_b"] == 0
    assert all(p["differs"] == {"num_inference_steps": [None, 30]} for p in result["pairs"])
    for p in result["pairs"]:
        assert not p["identical"] and p["band"] == Bands().judge(p["ssim"], p["phash"])
    # A small change: nothing is another picture, and some pairs need a look.
    assert counts["fail"] == 0 and counts["review"] > 0
    assert code == 4 and result["outcome"] == "review"


def test_a_changed_model_fails_exactly(baseline: Path, tmp_path: Path):
    """The emulator renders one model differently: exactly its pairs fail; exit 1; HTML written."""
    other = render_regression(tmp_path, "b", variants=(("fal-ai/hidream-i1-fast", "v2"),))
    code, out, _ = cli(
        "diff", str(baseline), str(other), "--json", "--html", str(tmp_path / "d.html")
    )
    result = json.loads(out)
    assert code == 1 and result["outcome"] == "fail"
    failed = {p["model"] for p in result["pairs"] if p["band"] == "fail"}
    assert failed == {"hidream-fast"}
    assert result["counts"]["fail"] == 9 and result["counts"]["pass"] == 9
    assert (
        len(list((tmp_path / "d-images").glob("d-*.png"))) == 9
        and "difference" in (tmp_path / "d.html").read_text()
    )


def test_an_endpoint_swap_under_the_same_label_pairs(baseline: Path, tmp_path: Path):
    """A label moved to another endpoint pairs with no flag, and each pair names the endpoint change."""

    def swap(data: dict[str, Any]) -> None:
        data["models"][1]["endpoint"] = "fal-ai/flux-1/schnell"

    other = render_regression(tmp_path, "b", swap)
    code, result = _diff(str(baseline), str(other))
    assert result["counts"]["pairs"] == 18 and result["counts"]["only_in_b"] == 0
    moved = [p for p in result["pairs"] if p["model"] == "hidream-fast"]
    assert len(moved) == 9 and all(
        p["differs"]["endpoint"] == ["fal-ai/hidream-i1-fast", "fal-ai/flux-1/schnell"]
        and p["band"] == "fail"
        for p in moved
    )
    assert code == 1


def test_cross_model_mapping(baseline: Path):
    """--map pairs the same prompt and seed across two labels; each pair names the endpoints."""
    code, result = _diff(str(baseline), str(baseline), "--map", "hidream-full=hidream-fast")
    assert code == 1  # different models draw different pictures
    assert result["counts"]["pairs"] == 9 and result["counts"]["fail"] == 9
    assert all("hidream-full → hidream-fast" in p["label"] for p in result["pairs"])
    assert all(
        p["differs"]["endpoint"] == ["fal-ai/hidream-i1-full", "fal-ai/hidream-i1-fast"]
        for p in result["pairs"]
    )


def test_coordinates_on_one_side(baseline: Path, tmp_path: Path):
    """A prompt dropped from B is only_in_a (fail, exit 1); a prompt added in B is only_in_b (review, exit 4)."""

    def drop(data: dict[str, Any]) -> None:
        data["prompts"] = data["prompts"][:2]

    fewer = render_regression(tmp_path, "fewer", drop)
    code, result = _diff(str(baseline), str(fewer))
    assert (code, result["counts"]["only_in_a"], result["counts"]["pass"]) == (1, 6, 12)
    code, result = _diff(str(fewer), str(baseline))
    assert (code, result["counts"]["only_in_b"], result["outcome"]) == (4, 6, "review")
    assert {o["prompt_id"] for o in result["only_in_b"]} == {"red-panda"}


def test_jpeg_reencoding_passes(baseline: Path, tmp_path: Path):
    """The same pictures re-encoded through JPEG (quality 75) pass under the default bands."""
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
    code, result = _diff(str(baseline), str(copy))
    assert code == 0 and result["counts"]["pass"] == 18
    assert not any(p["identical"] for p in result["pairs"])
    assert min(p["ssim"] for p in result["pairs"]) >= Bands().pass_ssim


def test_measure_is_exact_for_the_same_file(baseline: Path):
    """An image compared with itself has SSIM 1 and pHash distance 0."""
    first = next(baseline.rglob("*.png"))
    assert measure((str(first), str(first))) == (1.0, 0)


def _images(run: Path) -> list[Path]:
    return sorted(p for p in run.rglob("*.png") if "report" not in p.parts)


def test_diff_judges_the_files_on_disk_not_the_recorded_hashes(baseline: Path, tmp_path: Path):
    """A blurred, rotated image fails and a deleted one fails as missing, although SQLite still
    records the old hashes: exit 1."""
    from PIL import ImageFilter

    copy = tmp_path / "b"
    shutil.copytree(baseline, copy)
    blurred, deleted = _images(copy)[:2]
    with Image.open(blurred) as im:
        im.convert("RGB").filter(ImageFilter.GaussianBlur(8)).rotate(90).save(blurred, "PNG")
    deleted.unlink()
    code, result = _diff(str(baseline), str(copy))
    assert code == 1
    assert result["counts"]["fail"] == 2 and result["counts"]["pass"] == 16
    reasons = sorted(p["reason"] for p in result["pairs"] if p["band"] == "fail")
    assert reasons[1] == "image missing in B" and reasons[0].startswith("SSIM")


def test_diff_fails_when_b_lacks_images_and_asks_for_review_when_a_does(
    baseline: Path, tmp_path: Path
):
    """B (the candidate) lacking images A has exits 1 (a CI gate must not pass); A lacking images B has exits 4 (nothing to judge B's by)."""
    copy = tmp_path / "b"
    shutil.copytree(baseline, copy)
    for path in _images(copy)[:5]:
        path.unlink()
    code, result = _diff(str(baseline), str(copy))
    assert code == 1 and result["counts"]["fail"] == 5
    code, result = _diff(str(copy), str(baseline))
    assert code == 4 and result["counts"]["review"] == 5 and result["counts"]["fail"] == 0
    assert {p["reason"] for p in result["pairs"] if p["band"] == "review"} == {
        "image missing in A: nothing to judge B's by"
    }


def test_band_flags_move_the_edges(baseline: Path, tmp_path: Path):
    """--pass-ssim/--pass-phash widen the pass band: the steps change then passes (exit 0), and the
    report names the flags as the bands' source."""
    other = render_regression(tmp_path, "b", steps(30))
    code, result = _diff(
        str(baseline), str(other), "--pass-ssim", "0.3", "--pass-phash", "40", "--fail-ssim", "0.2"
    )
    assert code == 0 and result["counts"]["pass"] == 18
    assert result["bands"]["source"] == "flags (pass_ssim, pass_phash, fail_ssim) over defaults"


def test_the_manifest_sets_the_bands_and_flags_override_it(baseline: Path, tmp_path: Path):
    """`regression.bands` in the manifest B was rendered from sets the edges (the run keeps its
    own copy, so moving the manifest file does not matter); a flag given to diff overrides it."""

    def edit(data: dict[str, Any]) -> None:
        steps(30)(data)
        data["regression"] = {"bands": {"pass_ssim": 0.3, "pass_phash": 40, "fail_ssim": 0.2}}

    other = render_regression(tmp_path, "b", edit)
    (tmp_path / "b.yaml").unlink()
    code, result = _diff(str(baseline), str(other))
    assert code == 0 and result["counts"]["pass"] == 18
    assert result["bands"]["pass_ssim"] == 0.3 and result["bands"]["source"].startswith(
        "manifest regression.bands (pass_ssim, pass_phash, fail_ssim) over defaults"
    )
    code, result = _diff(str(baseline), str(other), "--pass-ssim", "0.99")
    assert result["bands"]["pass_ssim"] == 0.99 and result["bands"]["pass_phash"] == 40
    assert code == 4 and result["bands"]["source"].startswith("flags (pass_ssim) over manifest")


def test_a_damaged_card_means_no_manifest_bands(baseline: Path, tmp_path: Path):
    """A run whose dataset card is gone or holds no manifest block is judged by the defaults."""
    from renderer.view.compare import manifest_bands

    copy = tmp_path / "c"
    shutil.copytree(baseline, copy)
    card = copy / "data/README.md"
    assert "## Manifest" in card.read_text()
    card.write_text("# a card someone rewrote\n")
    assert manifest_bands(copy) == {}
    card.unlink()
    assert manifest_bands(copy) == {}


def test_unknown_map_labels_are_refused(baseline: Path):
    """--map naming a model neither run has exits 2 with a did-you-mean, instead of comparing nothing."""
    code, out, err = cli("diff", str(baseline), str(baseline), "--map", "hidream-ful=hidream-fast")
    assert code == 2 and out == ""
    assert "run A has no model 'hidream-ful'" in err and "did you mean hidream-full?" in err


def test_output_into_a_missing_folder_is_refused(baseline: Path, tmp_path: Path):
    """--html, --junit or --summary into a folder that does not exist is exit 2, nothing created."""
    for flag in ("--html", "--junit", "--summary"):
        code, _, err = cli("diff", str(baseline), str(baseline), flag, str(tmp_path / "nope/x.out"))
        assert code == 2 and "does not exist" in err
    assert not (tmp_path / "nope").exists()


def test_wrong_run_counts_are_refused(baseline: Path):
    """One run without --baseline, or two with it, is exit 2 with the usage in the hint."""
    code, _, err = cli("diff", str(baseline))
    assert code == 2 and "give two runs" in err
    code, _, err = cli("diff", "--baseline", "x", str(baseline), str(baseline))
    assert code == 2 and "give one run" in err


# ---------------------------------------------------------------- runs rendered in part


def render_seeds(folder: Path, seeds: int, *argv: str) -> Path:
    """manifests/regression.yaml with `seeds` seeds (6 jobs a seed), run with `argv` (e.g. --max-jobs)."""
    data = yaml.safe_load((MANIFESTS / "regression.yaml").read_text())
    data["seeds"] = list(range(1, seeds + 1))
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "m.yaml"
    manifest.write_text(yaml.safe_dump(data))
    with background_emulator(service=FAST) as emu:
        code, _, err = cli(
            "run",
            str(manifest),
            "--provider",
            emu.url,
            "--output",
            str(folder),
            "--quiet",
            *argv,
            env={"FAL_KEY": "k"},
        )
    assert code == 0, err
    return folder / "regression"


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same 180-job plan rendered whole, and rendered 10 jobs of (a --max-jobs trial)."""
    base = tmp_path_factory.mktemp("partial")
    return render_seeds(base / "full", 30), render_seeds(base / "part", 30, "--max-jobs", "10")


def test_a_partial_run_against_itself_passes_in_a_few_lines(partial: tuple[Path, Path]):
    """A run rendered in part compared with itself exits 0: the pairs rendered in neither are counted once, not a failure and not a line each; --json lists them all."""
    _, part = partial
    code, out, err = cli("diff", str(part), str(part))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("pass: pairs=10  pass=10") and "not_rendered=170" in lines[0]
    assert "not rendered in either run: 170 pairs, not compared" in lines
    assert len(lines) == 3
    code, result = _diff(str(part), str(part))
    assert code == 0 and result["counts"]["not_rendered"] == 170
    assert len(result["not_rendered"]) == 170 and len(result["pairs"]) == 10
    assert {p["reason"] for p in result["not_rendered"]} == {"not rendered in A or B"}


def test_b_missing_what_a_has_fails_and_the_listing_is_capped(partial: tuple[Path, Path]):
    """A whole run against its partial rerun exits 1 (B lost 170 images); the terminal lists DIFF_LISTED of them and says how many more, while --json holds every one."""
    from renderer.cli.views import DIFF_LISTED

    full, part = partial
    code, out, _ = cli("diff", str(full), str(part))
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("fail ")]
    assert len(failed) == DIFF_LISTED and all("image missing in B" in f for f in failed)
    assert f"fail: … and {170 - DIFF_LISTED:,} more: --json / --html for all" in out
    assert len(out.splitlines()) == DIFF_LISTED + 3
    code, result = _diff(str(full), str(part))
    assert code == 1 and result["counts"]["fail"] == 170 and result["counts"]["not_rendered"] == 0
    assert sum(p["band"] == "fail" for p in result["pairs"]) == 170
    # The other way round: A lacks them; nothing to judge B's images by, a person looks.
    code, out, _ = cli("diff", str(part), str(full))
    assert code == 4 and f"review: … and {170 - DIFF_LISTED:,} more" in out


# What each side holds at one coordinate: an image on disk, no image recorded (not rendered), or an
# image recorded whose file is gone.
HOLDS = ("image", "none", "gone")


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    folder = tmp_path_factory.mktemp("property")
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, "PNG")
    return folder, buffer.getvalue()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.sampled_from(HOLDS), st.sampled_from(HOLDS)), max_size=12))
def test_which_images_exist_decides_each_pair_and_the_outcome(
    picture: tuple[Path, bytes], holds: list[tuple[str, str]]
):
    """Absent in B only fails, absent in A only is review, absent in both is not compared (counted, never judged); the outcome is the worst band, and nothing rendered in either is a pass."""
    from renderer.view import compare
    from renderer.view.compare import Entry, Side

    root, png = picture
    sha = hashlib.sha256(png).hexdigest()

    def side(name: str, which: int) -> Side:
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        entries = []
        for n, pair in enumerate(holds):
            files = []
            if pair[which] != "none":
                (folder / f"{n}.png").write_bytes(png)
                files = [{"path": f"{n}.png", "sha256": sha, "size": len(png)}]
                if pair[which] == "gone":
                    (folder / f"{n}.png").unlink()
            entries.append(Entry(f"k{n}", f"p{n}", "m", 1, {}, "fal-ai/x", "t", {}, files))
        return Side(folder, entries, name=name)

    result = compare.compare(side("a", 0), side("b", 1))
    has = [(a == "image", b == "image") for a, b in holds]
    want = ["pass" if a and b else "fail" if a else "review" if b else "none" for a, b in has]
    bands = {p["prompt_id"]: p["band"] for p in result["pairs"]}
    unrendered = {p["prompt_id"] for p in result["not_rendered"]}
    for n, band in enumerate(want):
        if band == "none":
            assert f"p{n}" in unrendered and f"p{n}" not in bands
        else:
            assert bands[f"p{n}"] == band and f"p{n}" not in unrendered
    assert result["counts"]["not_rendered"] == want.count("none")
    assert result["counts"]["pairs"] == len(want) - want.count("none")
    expected = "fail" if "fail" in want else "review" if "review" in want else "pass"
    assert (
        result["outcome"] == expected
        and compare.EXIT[expected] == {"pass": 0, "review": 4, "fail": 1}[expected]
    )
