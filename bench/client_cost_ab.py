"""Client CPU per job of two (or more) checkouts, alternated run by run against one emulator.

On a shared machine one table per tree, taken minutes apart, mostly measures the neighbours;
alternating the trees against the same TLS emulator (zero latency, 16-pixel images) puts both
under the same drift. Each TREE is a checkout of this repository (e.g. a `git worktree add
--detach` of each commit); its own bench/_run.py runs its own renderer. Medians of --runs.
Reproduce:  python bench/client_cost_ab.py --jobs 2000 --runs 5 TREE_A TREE_B
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env, machine, manifest, median, table
from _emu import emulator


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("trees", nargs="+", type=Path, help="checkouts of this repository")
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    records: list[list[dict]] = [[] for _ in args.trees]  # by position: a tree may be given twice
    with tempfile.TemporaryDirectory() as tmp:
        m = manifest(Path(tmp), args.jobs, args.concurrency)
        with emulator("--workers", "256", "--latency", "0", "--max-side", "16", tls=True) as (
            url,
            extra,
        ):
            for n in range(args.runs):
                for i, tree in enumerate(args.trees):
                    done = subprocess.run(
                        [
                            sys.executable,
                            str(tree / "bench/_run.py"),
                            "run",
                            str(m),
                            "--provider",
                            url,
                            "--output",
                            str(Path(tmp) / f"o{n}-{i}"),
                            "--quiet",
                        ],
                        env=child_env(FAL_KEY="bench", **extra),
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    line = next(
                        (x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None
                    )
                    if line is None or json.loads(line[6:])["code"] != 0:
                        raise RuntimeError(f"{tree}: {(line or done.stderr)[-2000:]}")
                    records[i].append(json.loads(line[6:]))
    rows = []
    for tree, runs in zip(args.trees, records, strict=True):
        per_job = [1000 * r["cpu"] / args.jobs for r in runs]
        rows.append(
            [
                str(tree),
                f"{median(per_job):.3f}",
                f"{min(per_job):.3f}-{max(per_job):.3f}",
                f"{median([1000 * r['user'] / args.jobs for r in runs]):.3f}",
                f"{median([1000 * r['sys'] / args.jobs for r in runs]):.3f}",
            ]
        )
    print(
        f"# client CPU per job over TLS, trees alternated; {machine()}; load {os.getloadavg()[0]:.1f}; "
        f"medians of {args.runs}"
    )
    print(
        f"# reproduce: python bench/client_cost_ab.py --jobs {args.jobs} --runs {args.runs} "
        + " ".join(str(t) for t in args.trees)
    )
    print(table(["tree", "CPU ms per job", "range", "user", "sys"], rows))


if __name__ == "__main__":
    main()
