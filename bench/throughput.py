"""Benchmark 1: throughput against the ideal S / L jobs per second.

The emulator (own process) has S worker slots and a fixed service time L; the renderer runs
N jobs with concurrency S x --overcommit (default 2: the extra jobs wait in the provider's queue,
so a slot never idles while the renderer downloads). Reports achieved / ideal (target >= 0.95),
median of --runs, each against a fresh emulator.
"ratio" times the command inside its process (bench/_run.py); "whole process" times spawn to
exit (the interpreter's start and imports too, ~0.3 s here).
Where the time goes, from the emulator's slot accounting: "provider span" is its first job's
start to its last job's end (at best ceil(N/S) x L); "emulator lag" is the time slots were held
beyond the asked-for L (its own event loop late on timers: the stand-in's cost, not the
client's), per job; "idle slots" is the share of S x span no job held (the client not keeping
the queue full, and the last partial round); "outside span" is the command's time minus the span
(start-up, the first submit, the last download, exit).
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
from _emu import emulator, stats


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--configs", default="8:0.5,64:0.2", help="S:L pairs")
    ap.add_argument("--overcommit", type=float, default=2.0, help="renderer concurrency = S x this")
    args = ap.parse_args()
    rows = []
    for pair in args.configs.split(","):
        slots, latency = int(pair.split(":")[0]), float(pair.split(":")[1])
        ideal = slots / latency
        rates, whole, cpus, users, syss = [], [], [], [], []
        spans, lags, idles, outside = [], [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            m = manifest(Path(tmp), args.jobs, max(slots, round(slots * args.overcommit)))
            for n in range(args.runs):
                with emulator(
                    "--workers", str(slots), "--latency", str(latency), "--max-side", "64"
                ) as (url, _):
                    record = run_renderer(m, url, Path(tmp) / f"out{n}")
                    slot = stats(url)["slots"]
                rates.append(args.jobs / record["wall"])
                whole.append(args.jobs / record["process"])
                cpus.append(record["cpu"])
                users.append(record["user"])
                syss.append(record["sys"])
                span = slot["last_end"] - slot["first_start"]
                spans.append(span)
                lags.append(1000 * (slot["held"] - slot["service"]) / args.jobs)
                idles.append(1 - slot["held"] / (slots * span))
                outside.append(record["wall"] - span)
        rows.append(
            [
                slots,
                f"{latency:g}",
                args.jobs,
                f"{ideal:.1f}",
                f"{median(rates):.1f}",
                f"{median(rates) / ideal:.3f}",
                f"{min(rates) / ideal:.3f}",
                f"{median(whole) / ideal:.3f}",
                f"{median(cpus):.2f}",
                f"{median(users):.2f}",
                f"{median(syss):.2f}",
                f"{1000 * median(cpus) / args.jobs:.2f}",
                f"{median(spans):.2f} s (best {-(-args.jobs // slots) * latency:.2f})",
                f"{median(lags):.2f} ms",
                f"{100 * median(idles):.1f}%",
                f"{median(outside):.2f} s",
                ">= 0.95",
            ]
        )
    print(
        f"# throughput vs ideal S/L; {machine()}; load {os.getloadavg()[0]:.1f}; wall time includes start-up "
        "and planning"
    )
    print(
        f"# reproduce: python bench/throughput.py --jobs {args.jobs} --runs {args.runs} --configs {args.configs} "
        f"--overcommit {args.overcommit:g}"
    )
    print(
        table(
            [
                "S",
                "L s",
                "jobs",
                "ideal jobs/s",
                "median jobs/s",
                "median ratio",
                "worst ratio",
                "ratio, whole process",
                "client CPU s",
                "user s",
                "sys s",
                "CPU ms/job",
                "provider span",
                "emulator lag/job",
                "idle slots",
                "outside span",
                "target",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
