"""Garbage collection's share of a whole `renderer run` (issue 23), one or more trees alternated.

Each run is `renderer run` of N one-image jobs (the manifest of bench/concurrency.py: only
`limits: {concurrency: S}` set) against a fresh bench/slot_server.py (S slots, L s each), in a
child process whose every collection is timed by a `gc.callbacks` hook before the tree's
`renderer.cli.main` runs. Prints, per tree: the seconds spent collecting (a deterministic
share of the CPU: the collector runs on the loop's thread, holding the GIL), the collections
by generation, the whole process's CPU per job and its peak RSS. Medians of --runs. TREE is a
checkout of this repository (e.g. `git worktree add --detach /tmp/main main`); each runs its
own code.

Reproduce:  python bench/gc_share.py --jobs 10000 --runs 3 /tmp/main .
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
from _common import child_env, machine, median, table
from concurrency import certificate, server, write_manifest

# Runs in the child, the tree's code first on sys.path: times every collection, then the command.
CHILD = r"""
import gc, io, json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
spent, gens, started = [0.0], [0, 0, 0], [0.0]
def timed(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        spent[0] += time.perf_counter() - started[0]
        gens[info["generation"]] += 1
gc.callbacks.append(timed)
from renderer.cli import main
code = main(sys.argv[2:], stdout=io.StringIO(), stderr=io.StringIO())
r = resource.getrusage(resource.RUSAGE_SELF)
print("BENCH " + json.dumps({"code": code, "gc": spent[0], "gens": gens,
      "cpu": r.ru_utime + r.ru_stime, "rss_mb": r.ru_maxrss / 1024}), flush=True)
os._exit(0)
"""


def one_run(tree: Path, m: Path, url: str, out: Path) -> dict:
    cmd = [sys.executable, "-c", CHILD, str(tree.resolve()), "run", str(m), "--provider", url]
    cmd += ["--output", str(out), "--quiet"]
    env = child_env(FAL_KEY="bench")
    env["PYTHONPATH"] = str(tree.resolve())
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), "")
    if not line or json.loads(line[6:])["code"] != 0:
        raise RuntimeError(f"{tree}: the run failed: {done.stdout[-500:]} {done.stderr[-1500:]}")
    return dict(json.loads(line[6:]))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("trees", nargs="+", type=Path, help="checkouts of this repository")
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    got: list[list[dict]] = [[] for _ in args.trees]
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, certificate() as tls:
        m = write_manifest(Path(tmp), args.jobs, args.slots)
        for n in range(args.runs):
            for i, tree in enumerate(args.trees):
                loads.append(os.getloadavg()[0])
                with server(args.slots, args.latency, tls) as (http, _):
                    got[i].append(one_run(tree, m, http, Path(tmp) / f"o{n}-{i}"))
    rows = []
    for tree, runs in zip(args.trees, got, strict=True):
        gens = [median([r["gens"][g] for r in runs]) for g in range(3)]
        rows.append(
            [
                str(tree),
                f"{median([r['gc'] for r in runs]):.3f}",
                " / ".join(f"{g:g}" for g in gens),
                f"{1000 * median([r['gc'] for r in runs]) / args.jobs:.3f}",
                f"{1000 * median([r['cpu'] for r in runs]) / args.jobs:.2f}",
                f"{median([r['rss_mb'] for r in runs]):.0f}",
            ]
        )
    print(
        f"# garbage collection in a whole `renderer run` ({args.slots}, {args.latency:g} s, "
        f"{args.jobs}) against bench/slot_server.py; {machine()}; medians of {args.runs}"
    )
    print(f"# reproduce: python bench/gc_share.py --jobs {args.jobs} --runs {args.runs} TREE...")
    print(f"# load (1-minute average before each run): {min(loads):.1f}-{max(loads):.1f}")
    headers = ["tree", "GC s", "collections gen0 / 1 / 2", "GC ms/job", "CPU ms/job", "RSS MB"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
