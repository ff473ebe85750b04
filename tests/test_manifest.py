"""Manifest loading: every broken manifest in the corpus gets its exact located message."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.cli import main
from renderer.errors import ManifestError
from renderer.manifest import load, load_yaml, parse

from .conftest import MANIFESTS, ROOT

BROKEN = sorted((ROOT / "tests/manifests/broken").glob("*.yaml"))


def _validate(path: Path, cwd: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["validate", str(path.relative_to(cwd))], stdout=out, stderr=err, environ={})
    return code, out.getvalue(), err.getvalue()


def test_corpus_is_large_enough():
    """The issue asks for at least 40 broken manifests."""
    assert len(BROKEN) >= 40


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_manifest_reports_its_exact_first_problem(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Each broken manifest exits 2 with the `# expect:` line first, writes nothing, never a traceback."""
    expected = path.read_text(encoding="utf-8").splitlines()[0].removeprefix("# expect: ")
    monkeypatch.chdir(path.parent)
    before = set(path.parent.iterdir())
    code, out, err = _validate(path, path.parent)
    assert code == 2
    assert out == ""
    assert err.splitlines()[0] == expected
    assert "Traceback" not in err
    assert err.rstrip().endswith("hint: fix the lines above and run `renderer validate` again")
    assert set(path.parent.iterdir()) == before


def test_all_problems_are_reported_together(tmp_path: Path):
    """Several mistakes in one manifest are listed in one run, in file order."""
    bad = tmp_path / "m.yaml"
    bad.write_text(
        "name: t\nprompts:\n  - id: a\n    text: x\n  - id: a\n    text: y\nmodels:\n  - fal-ai/flux/schnell\n"
        "  - endpoint: fal-ai/imagen4/preview\n    params: {num_images: 9, aspect_ratoi: '1:1'}\nseeds: [0]\n"
    )
    with pytest.raises(ManifestError) as info:
        from renderer import plan
        from renderer.schemas import SchemaRegistry
        plan.build(load(bad), SchemaRegistry(ROOT / "schemas"))
    lines = [(p.line, p.json_path) for p in info.value.problems]
    assert lines == [
        (5, "$.prompts[1]"),
        (8, "$.models[0]"),
        (10, "$.models[1].params.num_images"),  # same line: ordered by column
        (10, "$.models[1].params.aspect_ratoi"),
        (11, "$.seeds[0]"),
    ]


def test_unknown_key_suggests_the_right_one():
    """A misspelt key names the allowed keys and the closest one."""
    with pytest.raises(ManifestError) as info:
        parse("name: t\nprompts: [{id: a, text: b}]\nmodels: [x]\nseeds: [1]\nlimts: {}\n", Path("m.yaml"))
    (problem,) = info.value.problems
    assert problem.suggestion == "limits"
    assert "concurrency" not in (problem.allowed or "") and "limits" in (problem.allowed or "")


def test_yaml_locations_are_one_based():
    """Keys and values are located at their 1-based line and column."""
    doc = load_yaml("a:\n  b: [1, 2]\n", "f.yaml")
    assert doc.where(("a", "b", 1)) == (2, 10)
    assert doc.where(("a", "b"), key=True) == (2, 3)
    assert doc.where(("a", "missing")) == (2, 3)


def test_prompt_files_load_with_their_own_locations(tmp_path: Path):
    """Prompts from .jsonl, .csv and .txt files get ids, tags and params, and file:line locations."""
    text = (
        "name: t\nprompts:\n  - file: prompts/list.jsonl\n  - file: prompts/list.csv\n  - file: prompts/list.txt\n"
        "models: [fal-ai/flux-1/schnell]\nseeds: [1]\n"
    )
    manifest = parse(text, ROOT / "tests/manifests/inline.yaml")
    ids = [p.id for p in manifest.prompts]
    assert ids[:3] == ["lighthouse", "orchard", "bridge"]
    assert ids[3].startswith("a-fox-in-the-") and ids[4].startswith("a-heron-at-dawn-")
    assert manifest.prompts[1].params == {"num_inference_steps": 2}
    assert manifest.prompts[2].tags == ("architecture", "old")
    assert manifest.prompts[4].where[1] == 4


def test_txt_prompt_ids_survive_insertions(tmp_path: Path):
    """Inserting a line in a .txt prompt file renames no other prompt."""
    def ids(lines: list[str]) -> list[str]:
        (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
        m = parse("name: t\nprompts: [{file: p.txt}]\nmodels: [m]\nseeds: [1]\n", tmp_path / "m.yaml")
        return [p.id for p in m.prompts]
    before = ids(["a fox", "a heron"])
    after = ids(["a cat", "a fox", "a heron"])
    assert after[1:] == before


def test_defaults_are_visible_and_resolved():
    """An emulator manifest without limits gets the documented defaults."""
    m = load(MANIFESTS / "quickstart.yaml")
    assert m.provider.kind == "emulator"
    assert m.limits.concurrency == 2 and m.limits.rate == 10.0
    assert m.retries.attempts == 6
    assert m.run_dir == Path("outputs/quickstart")


def test_missing_manifest_file_is_a_user_error():
    """A path that does not exist is exit 2 with a hint, not a traceback."""
    err = io.StringIO()
    assert main(["validate", "nope.yaml"], stdout=io.StringIO(), stderr=err, environ={}) == 2
    assert err.getvalue().startswith("nope.yaml:1:1: $: no such manifest file")


PROMPTS_BAD = ROOT / "tests/manifests/prompts/bad"


def _one_file_manifest(tmp_path: Path, prompt_file: Path) -> Path:
    m = tmp_path / "m.yaml"
    m.write_text(f"name: t\nprovider: emulator\nprompts: [{{file: {prompt_file}}}]\n"
                 "models: [fal-ai/flux-1/schnell]\nseeds: [1]\n")
    return m


def test_excel_bom_csv_reads_its_ids(tmp_path: Path):
    """A UTF-8 BOM (Excel's CSV) does not turn the first column into 'prompt id None'."""
    (prompt,) = load(_one_file_manifest(tmp_path, PROMPTS_BAD / "bom.csv")).prompts
    assert (prompt.id, prompt.text, prompt.tags) == ("bom", "excel wrote a BOM", ("x",))


def test_quoted_csv_field_keeps_its_line_break(tmp_path: Path):
    """A quoted field spanning two lines keeps the line break (the csv module reads the raw file)."""
    (prompt,) = load(_one_file_manifest(tmp_path, PROMPTS_BAD / "multiline.csv")).prompts
    assert prompt.text == "line one\nline two"


def test_yaml_merge_key_with_override_is_legal():
    """`<<: *base` followed by an overriding key is standard YAML, not a duplicate key."""
    doc = load_yaml("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  x: 3\n", "f.yaml")
    assert doc.data["m"] == {"x": 3, "y": 2}
    assert doc.where(("m", "x")) == (4, 6) and doc.where(("m", "y")) == (1, 20)


def test_duplicate_prompt_text_is_reported_once_with_its_rows(tmp_path: Path):
    """Three copies of one text in a CSV give one problem at the CSV row, naming every row."""
    with pytest.raises(ManifestError) as info:
        load(_one_file_manifest(tmp_path, PROMPTS_BAD / "duplicate-text.csv"))
    (problem,) = info.value.problems
    assert problem.file.endswith("duplicate-text.csv") and problem.line == 3
    assert "listed 3 times" in problem.message and "duplicate-text.csv:4" in problem.message


@pytest.mark.parametrize("path", ["/dev/null", "/", "no\0where.yaml"])
def test_paths_that_are_not_manifest_files_are_located_errors(path: str):
    """A device, a directory or a NUL in the path: exit 2 with `path:1:1`, never a traceback or a hang."""
    err = io.StringIO()
    assert main(["validate", path], stdout=io.StringIO(), stderr=err, environ={}) == 2
    assert ":1:1: $: " in err.getvalue() and "Traceback" not in err.getvalue()


def test_unreadable_manifest_is_a_located_error(tmp_path: Path):
    """A manifest without read permission is exit 2 naming it (skipped when running as root)."""
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    m = tmp_path / "m.yaml"
    m.write_text("name: t\n")
    m.chmod(0)
    err = io.StringIO()
    assert main(["validate", str(m)], stdout=io.StringIO(), stderr=err, environ={}) == 2
    assert err.getvalue().startswith(f"{m}:1:1: $: cannot read the manifest")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(prompts=st.integers(1, 3), seeds=st.integers(1, 4), steps=st.lists(st.integers(1, 8), min_size=1, max_size=3,
                                                                           unique=True),
       images=st.lists(st.integers(1, 4), min_size=1, max_size=2, unique=True), exclude=st.booleans())
def test_plan_size_bounds_the_expanded_plan(prompts: int, seeds: int, steps: list[int], images: list[int],
                                            exclude: bool):
    """The arithmetic plan size equals the job count without exclude, and bounds it with exclude."""
    from renderer import plan
    from renderer.manifest import plan_size
    from renderer.schemas import SchemaRegistry

    text = ("name: t\nprompts: [" + ", ".join(f"{{id: p{i}, text: prompt {i}}}" for i in range(prompts)) + "]\n"
            f"models: [{{endpoint: fal-ai/flux-1/schnell, axes: {{num_inference_steps: {steps}}}}}, "
            "fal-ai/imagen4/preview]\n"
            f"seeds: {{start: 1, count: {seeds}}}\naxes: {{num_images: {images}}}\n"
            + ("exclude: [{prompt: p0}]\n" if exclude and prompts > 1 else ""))
    m = parse(text, Path("m.yaml"))
    jobs = len(plan.build(m, SchemaRegistry(ROOT / "schemas")).jobs)
    assert plan_size(m) == prompts * len(images) * (len(steps) + 1) * seeds
    assert jobs <= plan_size(m) and (jobs == plan_size(m)) == (not m.exclude)
