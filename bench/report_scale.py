"""Report and diff on a 5,000-image run: thumbnailing is the cost, spread over all cores.

A finished run is synthesised through the store with real emulator pictures (256 px), then:
report (cold: makes every thumbnail), report again (warm: reuses them), and diff against a
copy rendered with another salt (so every pair is measured, none byte-identical).
Reproduce:  python bench/report_scale.py [--images 5000] [--runs 3] [--diff-only]
(--diff-only skips the reports: the diff row alone, e.g. to compare two versions of the diff.)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, manifest, median, synthesise_finished_run, table

from renderer.plan import planner as plan_mod
from renderer.provider.emulator.pictures import render
from renderer.view import compare, report


def synthesise(folder: Path, images: int, salt: str) -> Path:
    """A finished run of real emulator pictures (256x192); `salt` renders them differently."""

    def picture(job: plan_mod.Job) -> bytes:
        return render(job.endpoint, job.input["prompt"], job.seed or 0, 0, (256, 192), "png", salt)[
            0
        ]

    return synthesise_finished_run(
        manifest(folder, images, 64), folder / f"out-{salt or 'a'}", picture
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--diff-only", action="store_true", help="time the diff alone")
    args = ap.parse_args()
    cold, warm, diffs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_a = synthesise(folder, args.images, "")
        run_b = synthesise(folder, args.images, "v2")
        for _ in range(args.runs):
            if not args.diff_only:
                shutil.rmtree(run_a / "report", ignore_errors=True)
                start = time.perf_counter()
                report.build(run_a)
                cold.append(time.perf_counter() - start)
                start = time.perf_counter()
                report.build(run_a)
                warm.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = compare.compare(run_a, run_b)
            diffs.append(time.perf_counter() - start)
        # Every pair is measured (none byte-identical); a few random pictures may land close.
        assert len(result["pairs"]) == args.images, result["counts"]
        assert not any(p["identical"] for p in result["pairs"]), result["counts"]
    print(
        f"# report and diff on {args.images} images (256x192 PNG); {machine()}; medians of {args.runs}"
    )
    print(
        f"# reproduce: python bench/report_scale.py --images {args.images} --runs {args.runs}"
        + (" --diff-only" if args.diff_only else "")
    )
    rows = []
    if not args.diff_only:
        rows += [
            [
                "report, cold (all thumbnails made)",
                f"{median(cold):.2f}",
                f"{args.images / median(cold):.0f}",
            ],
            [
                "report, warm (thumbnails reused)",
                f"{median(warm):.2f}",
                f"{args.images / median(warm):.0f}",
            ],
        ]
    rows.append(
        ["diff, every pair measured", f"{median(diffs):.2f}", f"{args.images / median(diffs):.0f}"]
    )
    print(table(["step", "median s", "images/s"], rows))


if __name__ == "__main__":
    main()
