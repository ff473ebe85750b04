"""Baselines: set with calibration from a repeated render, the gate against them, approval of reviewed pairs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from renderer.view.bands import Bands

from .conftest import cli
from .test_compare import render_regression, steps

NOISE = 1.0  # the emulator's run-to-run noise, as a hosted model's
LOUD = 4.0  # noisier than the default bands allow


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The regression manifest rendered three times with noise, and once with a changed parameter."""
    folder = tmp_path_factory.mktemp("baseline")
    return {
        "first": render_regression(folder, "first", noise=NOISE),
        "again": render_regression(folder, "again", noise=NOISE),
        "third": render_regression(folder, "third", noise=NOISE),
        "steps": render_regression(folder, "steps", steps(30), noise=NOISE),
    }


def _set(base: Path, run: Path, *more: str) -> dict[str, Any]:
    code, out, err = cli("baseline", "set", str(run), "--baselines", str(base), "--json", *more)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def _gate(base: Path, name: str, run: Path, *more: str) -> tuple[int, dict[str, Any]]:
    code, out, err = cli(
        "diff", "--baseline", name, str(run), "--baselines", str(base), "--json", *more
    )
    assert out, err
    return code, json.loads(out)


def test_calibrated_baseline_passes_a_noisy_rerender(noisy: dict[str, Path], tmp_path: Path):
    """Rendered twice with noise: the calibration is recorded with the baseline and the bands come
    from it; a third noisy render of the same manifest passes every pair (exit 0), although no pair
    is byte-identical."""
    made = _set(tmp_path, noisy["first"], "--repeat", str(noisy["again"]), "--name", "reg")
    cal = made["calibration"]
    assert cal["pairs"] == 18 and cal["ssim_min"] < 1.0 and cal["runs"][1] == str(noisy["again"])
    stored = json.loads((tmp_path / "reg/baseline.json").read_text())
    assert stored["calibration"] == cal and stored["bands"]["source"].startswith("calibrated")
    code, result = _gate(tmp_path, "reg", noisy["third"])
    assert code == 0 and result["counts"]["pass"] == 18 and result["baseline"] == "reg"
    assert not any(p["identical"] for p in result["pairs"])
    assert result["calibration"] == cal and result["bands"] == stored["bands"]


@pytest.mark.slow
def test_a_noisier_provider_needs_calibration(tmp_path: Path):
    """A noisier provider's re-render against an uncalibrated baseline (default bands) is flagged
    for review, the flakiness calibration exists for; calibrated on two renders, a third passes."""
    runs = [render_regression(tmp_path, f"loud{n}", noise=LOUD) for n in range(3)]
    _set(tmp_path / "b", runs[0], "--name", "raw")
    code, result = _gate(tmp_path / "b", "raw", runs[2])
    assert result["bands"]["source"] == "defaults"
    assert result["counts"]["pass"] < 18 and code in (1, 4)
    _set(tmp_path / "b", runs[0], "--repeat", str(runs[1]), "--name", "cal")
    code, result = _gate(tmp_path / "b", "cal", runs[2])
    assert code == 0 and result["counts"]["pass"] == 18


def test_a_parameter_change_is_banded_and_approval_makes_it_pass(
    noisy: dict[str, Path], tmp_path: Path
):
    """A one-parameter change: every pair formed by coordinates, each naming the parameter and
    judged by the calibrated bands; accepting the reviewed pairs (a decisions file as the page
    exports it) makes the next diff of that run pass, with nothing rendered."""
    _set(tmp_path, noisy["first"], "--repeat", str(noisy["again"]), "--name", "reg")
    code, result = _gate(tmp_path, "reg", noisy["steps"])
    bands = Bands.from_json(result["bands"])
    assert result["counts"]["pairs"] == 18 and result["counts"]["only_in_b"] == 0
    assert all(p["differs"] == {"num_inference_steps": [None, 30]} for p in result["pairs"])
    assert all(p["band"] == bands.judge(p["ssim"], p["phash"]) for p in result["pairs"])
    review = [p["id"] for p in result["pairs"] if p["band"] == "review"]
    assert review and code == {"pass": 0, "review": 4, "fail": 1}[result["outcome"]]
    decisions = tmp_path / "decisions.json"
    decisions.write_text(
        json.dumps(
            {
                "format": "renderer-decisions/1",
                "baseline": "reg",
                "run_b": str(noisy["steps"]),
                "accept": review,
                "reject": [],
            }
        )
    )
    code, out, err = cli(
        "baseline",
        "approve",
        str(noisy["steps"]),
        "--decisions",
        str(decisions),
        "--baselines",
        str(tmp_path),
    )
    assert code == 0 and f"accepted {len(review)} pair(s)" in out, err
    code, after = _gate(tmp_path, "reg", noisy["steps"])
    by_id = {p["id"]: p for p in after["pairs"]}
    assert all(by_id[i]["identical"] and by_id[i]["differs"] == {} for i in review)
    assert after["counts"]["review"] == 0 and after["counts"]["fail"] == 0 and code == 0
    stored = json.loads((tmp_path / "reg/baseline.json").read_text())
    assert stored["approvals"][-1]["pairs"] == review


def test_all_review_accepts_new_coordinates_too(noisy: dict[str, Path], tmp_path: Path):
    """A baseline of two prompts gated against three: the third prompt's jobs are new (review, exit
    4); --all-review takes them into the baseline and the gate then passes."""
    two = tmp_path / "two"
    shutil.copytree(noisy["first"], two)
    _set(tmp_path, two, "--name", "base")
    stored = json.loads((tmp_path / "base/baseline.json").read_text())
    stored["entries"] = [e for e in stored["entries"] if e["prompt_id"] != "red-panda"]
    (tmp_path / "base/baseline.json").write_text(json.dumps(stored))
    code, result = _gate(tmp_path, "base", noisy["first"])
    assert (code, result["counts"]["only_in_b"], result["counts"]["pass"]) == (4, 6, 12)
    code, _, err = cli(
        "baseline",
        "approve",
        str(noisy["first"]),
        "--name",
        "base",
        "--all-review",
        "--baselines",
        str(tmp_path),
    )
    assert code == 0, err
    code, result = _gate(tmp_path, "base", noisy["first"])
    assert code == 0 and result["counts"]["pass"] == 18


def test_a_baseline_outlives_its_run(noisy: dict[str, Path], tmp_path: Path):
    """The baseline keeps copies: deleting the run it came from leaves the gate working."""
    copy = tmp_path / "regression"
    shutil.copytree(noisy["first"], copy)
    made = _set(tmp_path / "b", copy)
    assert made["name"] == "regression" and made["images"] == 18
    shutil.rmtree(copy)
    code, result = _gate(tmp_path / "b", "regression", noisy["first"])
    assert code == 0 and all(p["identical"] for p in result["pairs"])
    code, out, _ = cli("baseline", "list", "--baselines", str(tmp_path / "b"))
    assert code == 0 and out.split() == ["regression"]


def test_mistakes_are_exit_2(noisy: dict[str, Path], tmp_path: Path):
    """An unknown baseline (did-you-mean), an unknown pair id, a file that is not a review, nothing
    to accept, and a repeat that is not the same jobs are each refused with exit 2."""
    _set(tmp_path, noisy["first"], "--name", "reg")
    code, _, err = cli(
        "diff", "--baseline", "rag", str(noisy["first"]), "--baselines", str(tmp_path)
    )
    assert code == 2 and "did you mean reg?" in err
    base = ("--name", "reg", "--baselines", str(tmp_path))
    code, _, err = cli("baseline", "approve", str(noisy["first"]), "--pair", "nope.0", *base)
    assert code == 2 and "'nope.0' is not in the comparison" in err
    bogus = tmp_path / "bogus.json"
    bogus.write_text("{}")
    code, _, err = cli("baseline", "approve", str(noisy["first"]), "--decisions", str(bogus), *base)
    assert code == 2 and "not a review file" in err
    code, _, err = cli("baseline", "approve", str(noisy["first"]), *base)
    assert code == 2 and "nothing to accept" in err
    fewer = tmp_path / "fewer"
    shutil.copytree(noisy["first"], fewer)
    code, _, err = cli(
        "baseline",
        "set",
        str(noisy["first"]),
        "--repeat",
        str(tmp_path),
        "--baselines",
        str(tmp_path),
    )
    assert code == 2 and "no run here" in err
    code, _, err = cli(
        "baseline", "set", str(noisy["first"]), "--name", "../x", "--baselines", str(tmp_path)
    )
    assert code == 2 and "not allowed" in err
