"""The Python API from a notebook: inside a running event loop, a dict manifest, rows with paths."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

import renderer
from renderer.errors import ManifestError, UsageError

MANIFEST = {
    "name": "nb",
    "provider": "emulator",
    "prompts": [
        {"id": "cat", "text": "a cat", "tags": ["animal"]},
        {"id": "fuji", "text": "Mount Fuji"},
    ],
    "models": [{"endpoint": "fal-ai/flux-1/schnell", "label": "flux"}],
    "axes": {"aspect_ratio": ["1:1", "16:9"]},
    "seeds": [1],
}


def test_run_and_run_async_inside_a_running_loop(tmp_path: Path):
    """As in Jupyter: renderer.run (blocking) and await renderer.run_async both work inside a running loop."""
    events: list[str] = []

    async def cell() -> tuple[renderer.Summary, renderer.Summary, renderer.Summary]:
        asyncio.get_running_loop()  # a loop is running, as in a notebook kernel
        plan = renderer.load_manifest(MANIFEST, output=tmp_path)
        assert len(plan.jobs) == 4 and plan.run_dir == tmp_path / "nb"
        first = renderer.run(plan, max_jobs=2)  # blocking call from inside the loop
        second = await renderer.run_async(plan, on_event=lambda e: events.append(e["type"]))
        again = await renderer.run_async(plan)
        return first, second, again

    first, second, again = asyncio.run(cell())
    assert (first.outcome, first.images, first.exit_code) == ("partial", 2, 0)  # a trial
    assert (second.outcome, second.images) == ("done", 2)
    assert again.images == 0 and again.counts["downloaded"] == 4  # resumable: nothing is paid twice
    assert events[0] == "start" and "progress" in events and events[-1] == "finished"

    run = renderer.open_run(tmp_path / "nb")
    assert len(run) == 4 and run.failures == [] and run.summary and run.summary["outcome"] == "done"
    assert {(r["prompt_id"], r["aspect_ratio"]) for r in run} == {
        (p, a) for p in ("cat", "fuji") for a in ("1:1", "16:9")
    }
    for row in run:
        assert row["path"].is_absolute() and row["path"].is_relative_to(run.data_dir)
        with Image.open(row["path"]) as image:
            assert image.size == (row["width"], row["height"])
    assert next(r for r in run if r["prompt_id"] == "cat")["tags"] == ["animal"]


def test_run_without_a_loop_and_failures_listed(tmp_path: Path):
    """From a plain script renderer.run works too; open_run lists failed jobs with their axes."""
    manifest = {
        **MANIFEST,
        "models": [
            *MANIFEST["models"],
            # unchecked lets a value the model refuses through: the emulator answers 422
            {
                "endpoint": "fal-ai/flux-1/schnell",
                "label": "gone",
                "unchecked": True,
                "params": {"num_inference_steps": 0},
            },
        ],
    }
    summary = renderer.run(renderer.load_manifest(manifest, output=tmp_path))
    assert (summary.outcome, summary.exit_code, summary.images) == ("failed", 1, 4)
    run = renderer.open_run(tmp_path / "nb")
    assert len(run) == 4 and len(run.failures) == 4
    assert {f["model"] for f in run.failures} == {"gone"} and {
        f["axes"]["aspect_ratio"] for f in run.failures
    } == {"1:1", "16:9"}


def test_api_errors_are_exceptions(tmp_path: Path):
    """Bad input raises renderer's own errors (a manifest problem lists where); nothing is written."""
    with pytest.raises(ManifestError) as caught:
        renderer.load_manifest({**MANIFEST, "seeds": "many"})
    assert "seeds" in caught.value.problems[0].render()
    with pytest.raises(UsageError):
        renderer.open_run(tmp_path)
    with pytest.raises(UsageError, match="FAL_KEY"):
        renderer.run(
            renderer.load_manifest({**MANIFEST, "provider": "fal"}, output=tmp_path), env={}
        )
    assert list(tmp_path.iterdir()) == []


def test_run_arguments_are_range_checked_like_the_cli():
    """run(concurrency=0), rate=nan, timeout=-3 or max_jobs=-1 raise UsageError before anything is written."""
    import math

    plan = renderer.load_manifest(MANIFEST)
    for kwargs in (
        {"concurrency": 0},
        {"rate": math.nan},
        {"timeout": -3},
        {"max_jobs": -1},
        {"rate": "0/s"},
    ):
        with pytest.raises(UsageError):
            renderer.run(plan, output="/nonexistent-never-created", **kwargs)
    assert not Path("/nonexistent-never-created").exists()
