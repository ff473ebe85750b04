"""Benchmark 5: the scale of state.

(a) A no-op rerun of a finished 100,000-job run: every file present, so the run only checks
    (size + mtime, no re-hash). Two shapes: the plan benchmark's (100 prompts x 10 models x
    100 seeds; the target) and a dataset's (100,000 distinct prompts from a JSONL file).
    Finished runs are synthesised through the store (the rows and files a real run leaves),
    because rendering 100k images first takes minutes.
(b) Peak RSS of the renderer during a real 20,000-job run against a zero-latency emulator.
(c) With --scale N (1,000,000 as users write it; 10,000,000 with --ten-million): a dataset
    builder's manifest, 1,000 prompts in a JSONL file x 10 models x N/10,000 seeds. Timed:
    validate, plan, `run --max-jobs 20` (and its time to the first submit, seen from the
    emulator), the state's size per planned job, and a no-op rerun of the finished run.
Targets: no-op rerun <= 5 s; peak RSS <= 300 MB. (Plan time: bench/plan_scale.py.)
Scale targets (issue 15): RSS <= 500 MB everywhere; first submit <= 3 s, plan <= 8 s,
no-op rerun <= 10 s, validate <= 5 s, state <= 150 bytes per job beyond the prompt text (1M).
    "wall" is timed inside the child around the command (bench/_run.py). With --only-plan:
    validate and plan only (seconds each, where the run rows take minutes), each also with the
    whole process's time (spawn to exit: start-up and imports) and the command's CPU seconds
    (user + sys, from the child's getrusage), less sensitive than wall time to a shared machine.
Reproduce:  python bench/state_scale.py [--jobs 100000] [--run-jobs 20000] [--runs 3]
            python bench/state_scale.py --only-scale --scale 1000000 --runs 1
            python bench/state_scale.py --only-scale --only-plan [--random-seeds] --scale 1000000 --runs 3
            python bench/state_scale.py --only-scale --ten-million --runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import plan_recording
from _common import HERE, machine, manifest, median, run_renderer, synthesise_finished_run, table
from _emu import emulator, stats
from plan_scale import MODELS, write_manifest

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d6a0a20000000049454e44ae426082"
)


def synthesise(path: Path, output: Path) -> Path:
    return synthesise_finished_run(path, output, lambda job: PNG)


def dataset_manifest(folder: Path, jobs: int, random_seeds: bool = False) -> Path:
    """1,000 prompts (JSONL) x 10 models x jobs/10,000 seeds: a dataset builder's manifest.

    With `random_seeds`, `seeds: {random: N}` (a different seed for every job) instead of 1…N.
    """
    import yaml

    prompts = 1000 if jobs >= 10_000 else max(1, jobs // 100)
    seeds = max(1, jobs // (prompts * len(MODELS)))
    (folder / "prompts.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "id": f"p{i:04d}",
                    "text": f"a test picture number {i} of a lighthouse in a storm, oil on canvas",
                }
            )
            + "\n"
            for i in range(prompts)
        )
    )
    path = folder / "scale.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "scale",
                "provider": "emulator",
                "prompts": [{"file": "prompts.jsonl"}],
                "models": MODELS,
                "seeds": {"random": seeds} if random_seeds else {"start": 1, "count": seeds},
                "defaults": {"aspect_ratio": "1:1"},
                "limits": {"concurrency": 16, "rate": 1000},
            },
            sort_keys=False,
        )
    )
    return path


def cli(*args: str, url: str | None = None) -> dict:
    """`renderer ARGS` in a child process; with `url`, also the time until the emulator saw a submit."""
    env = {**os.environ, "FAL_KEY": "bench"}
    cmd = [sys.executable, str(HERE / "_run.py"), *args]
    first: list[float] = []
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def watch() -> None:
        while proc.poll() is None and not first:
            try:
                if stats(url)["submits"] > 0:
                    first.append(time.perf_counter() - started)
                    return
            except OSError:
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    if url:
        watcher.start()
    out, err = proc.communicate()
    process = time.perf_counter() - started
    if url:
        watcher.join()
    line = next((x for x in out.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(err[-2000:])
    record = json.loads(line[6:])
    if record["code"] != 0:
        raise RuntimeError(f"renderer exited {record['code']}: {record['stderr']}")
    record["first_submit"] = first[0] if first else None
    record["process"] = process  # spawn to exit: interpreter start-up and imports included
    return record


def state_bytes(run_dir: Path) -> int:
    return sum(f.stat().st_size for f in run_dir.rglob("renderer.sqlite*"))


def scale_rows(
    folder: Path, jobs: int, runs: int, only_plan: bool = False, random_seeds: bool = False
) -> tuple[list[list[str]], float]:
    """validate, plan, a 20-job trial run, and a no-op rerun of the finished run at `jobs` jobs."""
    path = dataset_manifest(folder, jobs, random_seeds)
    text = sum(
        len(json.loads(x)["text"].encode())
        for x in (folder / "prompts.jsonl").read_text().splitlines()
    )
    rows = []

    def fmt(records: list[dict]) -> tuple[str, str]:
        wall = f"{median([r['wall'] for r in records]):.2f} s"
        if only_plan:  # the small figures: say what start-up adds, and the CPU the command used
            wall += (
                f" ({median([r['process'] for r in records]):.2f} s whole process, "
                f"CPU {median([r['cpu'] for r in records]):.2f} s)"
            )
        else:  # CPU (user + sys of the child) is less sensitive to the shared machine than wall time
            wall += f" (CPU {median([r['cpu'] for r in records]):.1f} s)"
        return wall, f"{median([r['rss_mb'] for r in records]):.0f} MB"

    wall, rss = fmt([cli("validate", str(path)) for _ in range(runs)])
    rows.append([f"validate, {jobs} jobs", wall, "", rss, "<= 5 s (1M), <= 500 MB"])
    wall, rss = fmt([cli("plan", str(path)) for _ in range(runs)])
    rows.append([f"plan, {jobs} jobs", wall, "", rss, "<= 8 s (1M), <= 500 MB"])
    if only_plan:
        return rows, 0.0
    trials = []
    with emulator("--workers", "16", "--latency", "0", "--max-side", "16") as (url, _):
        for n in range(runs):
            out = folder / f"trial{n}"
            record = cli(
                "run",
                str(path),
                "--provider",
                url,
                "--output",
                str(out),
                "--quiet",
                "--max-jobs",
                "20",
                url=url,
            )
            trials.append(record)
    wall, rss = fmt(trials)
    rows.append(
        [
            f"run --max-jobs 20, {jobs} jobs planned",
            wall,
            f"{median([r['first_submit'] for r in trials]):.2f} s",
            rss,
            "first submit <= 3 s (1M), <= 500 MB",
        ]
    )
    # The trial stops the recording once its jobs are done: the whole plan's state is measured by
    # recording it as a first run does, in a child (bench/plan_recording.py), with the bytes written.
    recorded = plan_recording.once(HERE.parent, path)
    rows.append(
        [
            f"state of the whole plan ({recorded['size'] / 1e6:.0f} MB; recorded in "
            f"{recorded['seconds']:.1f} s, {recorded['written'] / recorded['size']:.1f}x that written)",
            f"{recorded['size'] / jobs:.0f} bytes/job, {(recorded['size'] - text) / jobs:.0f} beyond the text",
            "",
            "",
            "<= 150 bytes beyond the text, <= 3x written",
        ]
    )
    started = time.perf_counter()
    synthesise(path, folder / "finished")
    setup = time.perf_counter() - started
    with emulator("--latency", "0") as (url, _):
        wall, rss = fmt(
            [
                cli(
                    "run",
                    str(path),
                    "--provider",
                    url,
                    "--output",
                    str(folder / "finished"),
                    "--quiet",
                )
                for _ in range(runs)
            ]
        )
    rows.append([f"no-op rerun, {jobs} finished jobs", wall, "", rss, "<= 10 s (1M), <= 500 MB"])
    return rows, setup


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--run-jobs", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--scale", type=int, default=0, help="also the dataset-builder table at this many jobs"
    )
    ap.add_argument(
        "--ten-million",
        action="store_true",
        help="--scale 10000000 (opt-in: ~10 GB of disk, an hour)",
    )
    ap.add_argument("--only-scale", action="store_true", help="skip the 100k/20k tables")
    ap.add_argument(
        "--only-plan", action="store_true", help="in the scale table, validate and plan only"
    )
    ap.add_argument(
        "--random-seeds", action="store_true", help="in the scale table, `seeds: {random: N}`"
    )
    args = ap.parse_args()
    if args.ten_million:
        args.scale = 10_000_000
    if args.scale:
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            scale, setup = scale_rows(
                Path(tmp), args.scale, args.runs, args.only_plan, args.random_seeds
            )
        print(
            f"# dataset scale; {machine()}; load {load:.1f} -> {os.getloadavg()[0]:.1f}; medians of {args.runs}"
            + (
                ""
                if args.only_plan
                else f"; synthesising the finished run took {setup:.0f} s (not measured)"
            )
        )
        print(
            f"# reproduce: python bench/state_scale.py --only-scale{' --only-plan' * args.only_plan}"
            f"{' --random-seeds' * args.random_seeds} "
            f"--scale {args.scale} --runs {args.runs}"
        )
        print(table(["case", "wall", "first submit", "peak RSS", "target"], scale))
        if args.only_scale:
            return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        (folder / "grid").mkdir()
        (folder / "dataset").mkdir()
        seeds = max(1, args.jobs // 1000)
        shapes = [
            (
                f"no-op rerun, 100 prompts x 10 models x {seeds} seeds",
                write_manifest(folder / "grid", 100, seeds),
                "<= 5 s",
            ),
            (
                f"no-op rerun, {args.jobs} distinct prompts (JSONL)",
                manifest(folder / "dataset", args.jobs, 64),
                "(info)",
            ),
        ]
        for _, path, _ in shapes:
            synthesise(path, path.parent / "out")
        setup = time.perf_counter() - started
        with emulator("--latency", "0") as (url, _):
            for label, path, target in shapes:
                noop = [run_renderer(path, url, path.parent / "out") for _ in range(args.runs)]
                rows.append(
                    [
                        label,
                        f"{median([r['wall'] for r in noop]):.2f} s",
                        f"{median([r['rss_mb'] for r in noop]):.0f} MB",
                        target,
                    ]
                )
        (folder / "run").mkdir()
        run_m = manifest(folder / "run", args.run_jobs, 64)
        with emulator("--workers", "256", "--latency", "0", "--max-side", "16") as (url, _):
            record = run_renderer(run_m, url, folder / "run" / "out")
        rows.append(
            [
                f"full run, {args.run_jobs} jobs",
                f"{record['wall']:.1f} s ({args.run_jobs / record['wall']:.0f} jobs/s)",
                f"{record['rss_mb']:.0f} MB",
                "<= 300 MB",
            ]
        )
    print(
        f"# scale of state; {machine()}; synthesising the finished run took {setup:.0f} s (not measured)"
    )
    print(
        f"# reproduce: python bench/state_scale.py --jobs {args.jobs} --run-jobs {args.run_jobs} --runs {args.runs}"
    )
    print(table(["case", "wall", "peak RSS", "target"], rows))


if __name__ == "__main__":
    main()
