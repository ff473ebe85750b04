"""Benchmark 2 (+ baseline): HTTP requests the emulator receives per single-image job.

Counts every request (submit, status, stream, result, download, retries) at the emulator, for
the renderer and for the official fal-client written as a user would (bench/baseline_falclient.py),
at service times 0.1 s and 5 s. Both talk TLS to the same emulator (fal-client needs https).
Targets: renderer <= 4.5 at both; <= 1/5 of the baseline's at 5 s.
Reproduce:  python bench/requests_per_job.py [--jobs 64] [--latencies 0.1,5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, manifest, run_baseline, run_renderer, table
from _emu import emulator, requests_total


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--latencies", default="0.1,5")
    args = ap.parse_args()
    rows = []
    for latency in (float(x) for x in args.latencies.split(",")):
        with (
            emulator(
                "--workers", str(args.jobs), "--latency", str(latency), "--max-side", "32", tls=True
            ) as (url, env),
            tempfile.TemporaryDirectory() as tmp,
        ):
            ca = env["SSL_CERT_FILE"]
            m = manifest(Path(tmp), args.jobs, args.jobs)
            before = requests_total(url, ca)
            run_renderer(m, url, Path(tmp) / "r", env)
            mid = requests_total(url, ca)
            run_baseline(url, args.jobs, args.jobs, Path(tmp) / "b", env)
            after = requests_total(url, ca)
        ours = (mid - before - 1) / args.jobs  # minus the stats call itself
        theirs = (after - mid - 1) / args.jobs
        rows.append(
            [
                f"{latency:g}",
                args.jobs,
                f"{ours:.2f}",
                f"{theirs:.2f}",
                f"{ours / theirs:.3f}",
                "<= 4.5; <= 0.2 of baseline at 5 s",
            ]
        )
    print(f"# requests per single-image job at the emulator; {machine()}")
    print(
        f"# reproduce: python bench/requests_per_job.py --jobs {args.jobs} --latencies {args.latencies}"
    )
    print(table(["L s", "jobs", "renderer req/job", "fal-client req/job", "ratio", "target"], rows))


if __name__ == "__main__":
    main()
