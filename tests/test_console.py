"""renderer.console: what `run` prints at the end of a run."""

from __future__ import annotations

from pathlib import Path

from .conftest import cli, write_manifest


def test_emulator_runs_say_they_cost_nothing(tmp_path: Path):
    """On the emulator the cost line says $0.00 and shows fal's price for the same jobs apart."""
    m = write_manifest(
        tmp_path,
        output=str(tmp_path / "o"),
        prices={"fal-ai/flux-1/schnell": {"per_image": 0.5}},
        seeds=[1, 2],
    )
    code, out, err = cli("run", str(m))
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("cost:"))
    assert line.startswith("cost: $0.00 (the emulator's placeholder images are free")
    assert "$1.00 this run" in line


def test_a_max_jobs_trial_says_it_is_partial(tmp_path: Path):
    """`run --max-jobs 2` of a 4-job plan: outcome partial (exit 0), the line and run.json say so."""
    import json

    m = write_manifest(tmp_path, output=str(tmp_path / "o"), seeds=[1, 2, 3, 4])
    code, out, err = cli("run", str(m), "--max-jobs", "2")
    assert code == 0, err
    assert out.startswith("partial: 2/4 jobs downloaded")
    assert "note: a --max-jobs 2 trial; 2 jobs of the plan are left" in out
    assert json.loads((tmp_path / "o/t/run.json").read_text())["outcome"] == "partial"
    code, out, _ = cli("run", str(m))
    assert code == 0 and out.startswith("done: 4/4 jobs downloaded")


def test_an_interrupted_shared_run_says_where_its_state_is(tmp_path: Path):
    """Interrupted with shared state: the message names the database (password hidden), not a SQLite file."""
    import io

    from renderer import api, console
    from renderer.runner import Summary

    plan = api.load_manifest(write_manifest(tmp_path, output=str(tmp_path / "o"), seeds=[1, 2]))
    summary = Summary("interrupted", {"downloaded": 1, "failed": 0}, 0.0, 1.0, 1, 0, {})
    out, err = io.StringIO(), io.StringIO()
    url = "postgresql://bob:hunter2@db.example/renders"
    console.report(summary, plan, out, err, state=url)
    assert (
        "state saved in the shared state postgresql://bob:***@db.example/renders;" in err.getvalue()
    )
    assert "hunter2" not in out.getvalue() + err.getvalue()
    err = io.StringIO()
    console.report(summary, plan, io.StringIO(), err)
    assert f"state saved in {tmp_path / 'o' / 't' / 'renderer.sqlite'};" in err.getvalue()
