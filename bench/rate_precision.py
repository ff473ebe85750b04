"""Benchmark 6: rate-limit precision. Submissions per second seen by the emulator vs configured,
and the largest number in any one-second window (the burst), median of --runs.
Target: observed within +-5 % of R; no one-second window above R + bucket (renderer.runner.limits.bucket_size).
Reproduce:  python bench/rate_precision.py [--rates 10,50] [--seconds 20] [--runs 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, manifest, median, run_renderer, table
from _emu import emulator, stats

from renderer.runner.limits import bucket_size


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rates", default="10,50")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for rate in (float(r) for r in args.rates.split(",")):
        jobs = int(rate * args.seconds) + 1
        observed, bursts = [], []
        for _ in range(args.runs):
            with (
                emulator("--workers", "256", "--latency", "0.01", "--max-side", "16") as (url, _),
                tempfile.TemporaryDirectory() as tmp,
            ):
                run_renderer(manifest(Path(tmp), jobs, 256, rate), url, Path(tmp) / "o")
                times = stats(url)["submit_times"]
            observed.append((len(times) - 1) / (times[-1] - times[0]))
            bursts.append(max(sum(1 for t in times if s <= t < s + 1.0) for s in times))
        rows.append(
            [
                f"{rate:g}",
                jobs,
                f"{median(observed):.2f}",
                f"{(median(observed) / rate - 1) * 100:+.1f}%",
                max(bursts),
                f"<= {rate + bucket_size(rate):g}",
            ]
        )
    print(f"# rate-limit precision over ~{args.seconds:g} s; {machine()}")
    print(
        f"# reproduce: python bench/rate_precision.py --rates {args.rates} --seconds {args.seconds:g} --runs {args.runs}"
    )
    print(
        table(["R /s", "jobs", "observed /s", "error", "largest 1 s burst", "burst target"], rows)
    )


if __name__ == "__main__":
    main()
