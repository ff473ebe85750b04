"""CI output of `renderer diff`: JUnit XML read back with a JUnit parser, and the Markdown summary."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from junitparser import Failure, JUnitXml, Skipped

from .conftest import cli
from .test_compare import render_regression


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A, and a B with one parameter changed, one model redrawn and one prompt dropped."""
    folder = tmp_path_factory.mktemp("ciout")

    def edit(data: dict[str, Any]) -> None:
        data["defaults"]["num_inference_steps"] = 30
        data["prompts"] = data["prompts"][:2]

    a = render_regression(folder, "a")
    b = render_regression(folder, "b", edit, variants=(("fal-ai/hidream-i1-fast", "v2"),))
    return a, b


def _run(mixed: tuple[Path, Path], tmp_path: Path, *more: str) -> tuple[int, dict[str, Any]]:
    code, out, err = cli(
        "diff",
        str(mixed[0]),
        str(mixed[1]),
        "--json",
        "--junit",
        str(tmp_path / "junit.xml"),
        "--summary",
        str(tmp_path / "summary.md"),
        *more,
    )
    assert out, err
    return code, json.loads(out)


def test_junit_has_one_case_per_pair_with_its_band(mixed: tuple[Path, Path], tmp_path: Path):
    """junitparser reads the file; one test case per pair and per lost coordinate; fail pairs are
    failures, review pairs skipped, pass pairs plain; the counts agree with --json and the exit code."""
    code, result = _run(mixed, tmp_path)
    counts = result["counts"]
    assert code == 1 and counts["fail"] >= 6 and counts["only_in_a"] == 6
    xml = JUnitXml.fromfile(str(tmp_path / "junit.xml"))
    suites = list(xml)
    assert len(suites) == 1 and suites[0].name == "renderer diff"
    suite = suites[0]
    cases = list(suite)
    assert len(cases) == suite.tests == counts["pairs"] + counts["only_in_a"] + counts["only_in_b"]
    assert len({(c.classname, c.name) for c in cases}) == len(cases)
    kinds = {"fail": 0, "review": 0, "pass": 0}
    for case in cases:
        results = case.result
        if any(isinstance(r, Failure) for r in results):
            kinds["fail"] += 1
        elif any(isinstance(r, Skipped) for r in results):
            kinds["review"] += 1
        else:
            kinds["pass"] += 1
    assert kinds == {
        "fail": counts["fail"] + counts["only_in_a"],
        "review": counts["review"] + counts["only_in_b"],
        "pass": counts["pass"],
    }
    assert suite.failures == kinds["fail"] and suite.skipped == kinds["review"]
    by_name = {c.name: c for c in cases}
    for pair in result["pairs"]:
        case = next(c for n, c in by_name.items() if f"[{pair['id']}]" in n)
        assert case.classname == pair["model"]
        assert "num_inference_steps" in (case.system_out or "")


def test_markdown_summary_lists_what_needs_a_decision(mixed: tuple[Path, Path], tmp_path: Path):
    """The summary states the outcome and counts, the bands, and one table row for every pair not
    passing and every lost coordinate, each naming what differs; image links resolve to files."""
    _, result = _run(mixed, tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("## renderer diff: FAIL")
    c = result["counts"]
    assert (
        f"{c['pairs']} pairs: **{c['pass']} pass**, **{c['review']} review**, **{c['fail']} fail**"
        in text
    )
    assert "Bands: pass: SSIM ≥ 0.9200" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == c["review"] + c["fail"] + c["only_in_a"]
    for pair in result["pairs"]:
        assert (pair["id"] in text) == (pair["band"] != "pass")
    assert all("num_inference_steps: (not set) → 30" in r for r in rows if "only in" not in r)
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all((tmp_path / link).is_file() for link in links)


def test_summary_with_the_page_shows_thumbnails_and_links_it(
    mixed: tuple[Path, Path], tmp_path: Path
):
    """With --html the summary links the viewer and shows A and B thumbnails that exist beside it."""
    (tmp_path / "page").mkdir()
    _run(mixed, tmp_path, "--html", str(tmp_path / "page/diff.html"))
    text = (tmp_path / "summary.md").read_text()
    assert "Viewer: [diff.html](page/diff.html)" in text
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert sources and all((tmp_path / s).is_file() for s in sources)


def test_a_passing_gate_writes_a_passing_report(mixed: tuple[Path, Path], tmp_path: Path):
    """A run against itself: JUnit without failures or skips, the summary says PASS and has no table."""
    code, out, _ = cli(
        "diff",
        str(mixed[0]),
        str(mixed[0]),
        "--junit",
        str(tmp_path / "j.xml"),
        "--summary",
        str(tmp_path / "s.md"),
    )
    assert code == 0 and out.startswith("pass:")
    suite = next(iter(JUnitXml.fromfile(str(tmp_path / "j.xml"))))
    assert suite.tests == 18 and suite.failures == 0 and suite.skipped == 0
    text = (tmp_path / "s.md").read_text()
    assert text.startswith("## renderer diff: PASS") and "| band |" not in text


def test_text_from_a_manifest_stays_text(tmp_path: Path):
    """A prompt with markup and pipes in `differs` neither becomes HTML in the summary nor splits
    its table row, and the JUnit file still parses."""
    from renderer.view import ciout
    from renderer.view.bands import Bands

    hostile = "<img src=x onerror=alert(1)> | a\nb"
    pair = {
        "id": "0123456789abcdef.0",
        "label": "p / m / seed 1",
        "index": 0,
        "prompt_id": "p",
        "model": "m",
        "seed": 1,
        "axes": {},
        "differs": {"prompt": ["a cat", hostile]},
        "a": None,
        "b": None,
        "ssim": 0.5,
        "phash": 30,
        "band": "fail",
        "reason": "SSIM 0.5000, pHash 30",
    }
    result = {
        "run_a": str(tmp_path / "a"),
        "run_b": str(tmp_path / "b"),
        "baseline": None,
        "bands": Bands().to_json(),
        "calibration": None,
        "outcome": "fail",
        "counts": {"pairs": 1, "pass": 0, "review": 0, "fail": 1, "only_in_a": 0, "only_in_b": 0},
        "pairs": [pair],
        "only_in_a": [],
        "only_in_b": [],
    }
    text = ciout.summary(result, tmp_path / "s.md").read_text()
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    row = next(line for line in text.splitlines() if line.startswith("| fail"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 8  # seven cells
    suite = next(iter(JUnitXml.fromfile(str(ciout.junit(result, tmp_path / "j.xml")))))
    assert suite.failures == 1 and hostile.replace("\n", " ") not in (tmp_path / "s.md").read_text()


def test_pairs_rendered_in_neither_run_are_counted_not_cases(tmp_path: Path):
    """A partial run against itself: JUnit has a case per compared pair only and the unrendered count as a property; the summary says how many were not compared; the gate passes."""
    from .test_compare import render_seeds

    part = render_seeds(tmp_path / "part", 3, "--max-jobs", "4")
    code, result = _run((part, part), tmp_path)
    assert code == 0 and result["counts"]["not_rendered"] == 14
    suite = next(iter(JUnitXml.fromfile(str(tmp_path / "junit.xml"))))
    assert suite.tests == 4 and len(list(suite)) == 4
    properties = {p.name: p.value for p in suite.properties()}
    assert properties["not_rendered"] == "14" and properties["outcome"] == "pass"
    summary = (tmp_path / "summary.md").read_text()
    assert "Not rendered in either run: 14 pairs, not compared." in summary
    assert "| band |" not in summary  # no table: nothing needs a decision
