"""Benchmark 1: throughput against the ideal S / L jobs per second.

The emulator (own process) has S worker slots and a fixed service time L; the renderer runs
N jobs with concurrency S x --overcommit (default 2: the extra jobs wait in the provider's queue,
so a slot never idles while the renderer downloads). Reports achieved / ideal (target >= 0.9),
median of --runs.
Reproduce:  python bench/throughput.py [--jobs 2000] [--runs 3] [--configs 8:0.5,64:0.2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, manifest, median, run_renderer, table
from _emu import emulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--configs", default="8:0.5,64:0.2", help="S:L pairs")
    ap.add_argument("--overcommit", type=float, default=2.0, help="renderer concurrency = S x this")
    args = ap.parse_args()
    rows = []
    for pair in args.configs.split(","):
        slots, latency = int(pair.split(":")[0]), float(pair.split(":")[1])
        ideal = slots / latency
        rates, cpus, users, syss = [], [], [], []
        with emulator("--workers", str(slots), "--latency", str(latency), "--max-side", "64") as (url, _), \
                tempfile.TemporaryDirectory() as tmp:
            m = manifest(Path(tmp), args.jobs, max(slots, round(slots * args.overcommit)))
            for n in range(args.runs):
                record = run_renderer(m, url, Path(tmp) / f"out{n}")
                rates.append(args.jobs / record["wall"])
                cpus.append(record["cpu"])
                users.append(record["user"])
                syss.append(record["sys"])
        rows.append([slots, f"{latency:g}", args.jobs, f"{ideal:.1f}", f"{median(rates):.1f}",
                     f"{median(rates) / ideal:.3f}", f"{min(rates) / ideal:.3f}", f"{median(cpus):.2f}", f"{median(users):.2f}",
                     f"{median(syss):.2f}", f"{1000 * median(cpus) / args.jobs:.2f}", ">= 0.95"])
    print(f"# throughput vs ideal S/L; {machine()}; load {os.getloadavg()[0]:.1f}; wall time includes start-up "
          "and planning")
    print(f"# reproduce: python bench/throughput.py --jobs {args.jobs} --runs {args.runs} --configs {args.configs} "
          f"--overcommit {args.overcommit:g}")
    print(table(["S", "L s", "jobs", "ideal jobs/s", "median jobs/s", "median ratio", "worst ratio",
                 "client CPU s", "user s", "sys s", "CPU ms/job", "target"], rows))


if __name__ == "__main__":
    main()
