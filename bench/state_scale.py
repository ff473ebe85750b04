"""Benchmark 5: the scale of state.

(a) A no-op rerun of a finished 100,000-job run: every file present, so the run only checks
    (size + mtime, no re-hash). Two shapes: the plan benchmark's (100 prompts x 10 models x
    100 seeds; the target) and a dataset's (100,000 distinct prompts from a JSONL file).
    Finished runs are synthesised through the store (the rows and files a real run leaves),
    because rendering 100k images first takes minutes.
(b) Peak RSS of the renderer during a real 20,000-job run against a zero-latency emulator.
Targets: no-op rerun <= 5 s; peak RSS <= 300 MB. (Plan time: bench/plan_scale.py.)
Reproduce:  python bench/state_scale.py [--jobs 100000] [--run-jobs 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, manifest, median, run_renderer, synthesise_finished_run, table
from _emu import emulator
from plan_scale import write_manifest

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d6a0a20000000049454e44ae426082")


def synthesise(path: Path, output: Path) -> Path:
    return synthesise_finished_run(path, output, lambda job: PNG)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--run-jobs", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        (folder / "grid").mkdir()
        (folder / "dataset").mkdir()
        seeds = max(1, args.jobs // 1000)
        shapes = [
            (f"no-op rerun, 100 prompts x 10 models x {seeds} seeds", write_manifest(folder / "grid", 100, seeds), "<= 5 s"),
            (f"no-op rerun, {args.jobs} distinct prompts (JSONL)", manifest(folder / "dataset", args.jobs, 64), "(info)"),
        ]
        for _, path, _ in shapes:
            synthesise(path, path.parent / "out")
        setup = time.perf_counter() - started
        with emulator("--latency", "0") as (url, _):
            for label, path, target in shapes:
                noop = [run_renderer(path, url, path.parent / "out") for _ in range(args.runs)]
                rows.append([label, f"{median([r['wall'] for r in noop]):.2f} s",
                             f"{median([r['rss_mb'] for r in noop]):.0f} MB", target])
        (folder / "run").mkdir()
        run_m = manifest(folder / "run", args.run_jobs, 64)
        with emulator("--workers", "256", "--latency", "0", "--max-side", "16") as (url, _):
            record = run_renderer(run_m, url, folder / "run" / "out")
        rows.append([f"full run, {args.run_jobs} jobs", f"{record['wall']:.1f} s ({args.run_jobs / record['wall']:.0f} jobs/s)",
                     f"{record['rss_mb']:.0f} MB", "<= 300 MB"])
    print(f"# scale of state; {machine()}; synthesising the finished run took {setup:.0f} s (not measured)")
    print(f"# reproduce: python bench/state_scale.py --jobs {args.jobs} --run-jobs {args.run_jobs} --runs {args.runs}")
    print(table(["case", "wall", "peak RSS", "target"], rows))


if __name__ == "__main__":
    main()
