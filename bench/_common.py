"""Helpers shared by the benchmark scripts: medians, tables, and the machine line."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def machine() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def manifest(folder: Path, jobs: int, concurrency: int, rate: float = 100000.0) -> Path:
    """A one-model manifest with exactly `jobs` jobs (distinct prompts, one seed each)."""
    import yaml  # only the benchmarks that write manifests need it

    path = folder / "bench.yaml"
    prompts: list = [{"id": f"p{i:06d}", "text": f"picture {i}"} for i in range(jobs)]
    if jobs > 500:  # dataset-scale lists belong in a prompt file, as users would write them
        (folder / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
        prompts = [{"file": "prompts.jsonl"}]
    path.write_text(
        yaml.safe_dump(
            {
                "name": "bench",
                "prompts": prompts,
                "models": ["fal-ai/flux-1/schnell"],
                "seeds": [1],
                "limits": {"concurrency": concurrency, "rate": rate},
            },
            sort_keys=False,
        )
    )
    return path


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a measured child process: as a user's, with compiled bytecode.

    An installed package has its .pyc files; without them (PYTHONDONTWRITEBYTECODE, set in
    some sandboxes) every start compiles ~180 modules again: ~0.4 s of a 6 s run at N = 2,000.
    """
    env = {**os.environ, **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_renderer(
    manifest_path: Path, url: str, output: Path, extra_env: dict | None = None, *args: str
) -> dict:
    """`renderer run` against `url` in a child process; returns its BENCH record."""
    here = HERE
    env = child_env(FAL_KEY="bench", **(extra_env or {}))
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            str(here / "_run.py"),
            "run",
            str(manifest_path),
            "--provider",
            url,
            "--output",
            str(output),
            "--quiet",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    process = (
        time.perf_counter() - started
    )  # spawn to exit: the interpreter's start and imports too
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(done.stderr[-2000:])
    record = json.loads(line[6:])
    if record["code"] != 0:
        raise RuntimeError(f"renderer exited {record['code']}: {record['stderr']}")
    record["process"] = process
    return record


def run_baseline(url: str, jobs: int, concurrency: int, output: Path, extra_env: dict) -> dict:
    here = HERE
    host = url.split("://", 1)[1]
    env = child_env(FAL_KEY="bench", FAL_QUEUE_RUN_HOST=host, FAL_RUN_HOST=host, **extra_env)
    done = subprocess.run(
        [
            sys.executable,
            str(here / "baseline_falclient.py"),
            str(jobs),
            str(concurrency),
            str(output),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(line[6:])


def synthesise_finished_run(manifest_path: Path, output: Path, image: Any) -> Path:
    """Plan a manifest and record every job as downloaded, as a real run would leave it.

    `image(job)` gives each job's PNG bytes. Used where rendering the run first would take
    minutes and the benchmark measures what comes after (reruns, reports, diffs).
    """
    import hashlib

    from renderer.layout import image_path
    from renderer.manifest import load as manifest_mod
    from renderer.models.schemas import SchemaRegistry, default_schema_dir
    from renderer.plan import planner as plan_mod
    from renderer.state.rows import key_blob
    from renderer.state.sqlite import SQLiteStore

    m = manifest_mod.load(manifest_path)
    m = manifest_mod.Manifest(**{**m.__dict__, "output": output})
    plan = plan_mod.build(m, SchemaRegistry(default_schema_dir()))
    store = SQLiteStore(m.run_dir)
    store.sync_plan(plan.jobs, plan.digest)
    rows = []

    def flush() -> None:
        with store.db:
            store.db.executemany(
                "UPDATE job SET state = 'downloaded', files = ?, result = ?, request_id = 'r', "
                "downloaded_at = 0 WHERE k = ?",
                rows,
            )
        rows.clear()

    for job in plan.jobs:  # streamed: a 10M-job plan is never held
        data = image(job)
        rel = image_path(job.stem, 0, "png")
        target = m.run_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        entry = {
            "path": rel,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "mtime_ns": target.stat().st_mtime_ns,
            "width": 0,
            "height": 0,
            "content_type": "image/png",
            "seed": job.seed,
        }
        rows.append(
            (
                json.dumps([entry]),
                json.dumps({"images": [{"url": "x"}], "seed": job.seed}),
                key_blob(job.key),
            )
        )
        if len(rows) >= 10_000:
            flush()
    flush()
    # What a finished run leaves besides its images: the dataset's metadata and card (a rerun
    # that finds them current does not write them again).
    from renderer.output.storage import LocalStorage
    from renderer.runner.deliver import write_dataset

    write_dataset(plan, store, LocalStorage(m.run_dir), None)
    store.close()
    return m.run_dir
