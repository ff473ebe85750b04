"""Benchmark 3 (+ baseline): the client as the bottleneck.

A zero-latency emulator with 16-pixel images and many slots, so the client limits the rate.
Reports jobs per second end to end and client CPU seconds per 1,000 jobs, median of --runs:
the renderer over plain HTTP (target >= 300 jobs/s), and the renderer and fal-client over TLS
to the same emulator (target: renderer >= 1.5x the baseline's throughput).
Reproduce:  python bench/client_cost.py [--jobs 2000] [--runs 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, manifest, median, run_baseline, run_renderer, table
from _emu import emulator


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    emu_args = ("--workers", "256", "--latency", "0", "--max-side", "16")
    results: dict[str, list[dict]] = {"renderer http": [], "renderer tls": [], "fal-client tls": []}
    with tempfile.TemporaryDirectory() as tmp:
        m = manifest(Path(tmp), args.jobs, args.concurrency)
        with emulator(*emu_args) as (url, _):
            for n in range(args.runs):
                results["renderer http"].append(run_renderer(m, url, Path(tmp) / f"h{n}"))
        with emulator(*emu_args, tls=True) as (url, env):
            for n in range(args.runs):  # interleaved, so drift on a noisy machine hits both alike
                results["renderer tls"].append(run_renderer(m, url, Path(tmp) / f"t{n}", env))
                results["fal-client tls"].append(
                    run_baseline(url, args.jobs, args.concurrency, Path(tmp) / f"b{n}", env)
                )
    rows, rate, cpu, whole = [], {}, {}, {}
    for name, records in results.items():
        rate[name] = median([args.jobs / r["wall"] for r in records])
        cpu[name] = median([r["cpu"] for r in records]) * 1000 / args.jobs
        # Whole process (interpreter start and imports too): how the baseline measures itself.
        whole[name] = median([r.get("cpu_process", r["cpu"]) for r in records]) * 1000 / args.jobs
        user = median([r["user"] for r in records]) * 1000 / args.jobs
        sys_ = median([r["sys"] for r in records]) * 1000 / args.jobs
        rss = median([r["rss_mb"] for r in records])
        rows.append(
            [
                name,
                args.jobs,
                f"{rate[name]:.0f}",
                f"{cpu[name]:.2f}",
                f"{user:.2f}",
                f"{sys_:.2f}",
                f"{rss:.0f}",
            ]
        )
    print(
        f"# client cost at zero latency; {machine()}; load {os.getloadavg()[0]:.1f}; medians of {args.runs} runs"
    )
    print(
        f"# reproduce: python bench/client_cost.py --jobs {args.jobs} --runs {args.runs} --concurrency {args.concurrency}"
    )
    print(
        table(
            ["client", "jobs", "jobs/s", "CPU s per 1000 jobs", "user", "sys", "peak RSS MB"], rows
        )
    )
    print(
        f"renderer/fal-client CPU per job over TLS: {cpu['renderer tls'] / cpu['fal-client tls']:.3f} "
        f"(target <= 0.25); both whole processes: {whole['renderer tls'] / whole['fal-client tls']:.3f} "
        f"(renderer {whole['renderer tls']:.2f} ms a job with its start and imports)"
    )
    print(
        f"renderer/fal-client throughput over TLS: {rate['renderer tls'] / rate['fal-client tls']:.2f}x "
        "(target >= 1.5x); renderer over HTTP target >= 300 jobs/s"
    )


if __name__ == "__main__":
    main()
