"""Start-up of two (or more) checkouts, alternated run by run: what a user waits for before work.

Three measures per tree, each a fresh process with compiled bytecode (as an installed package):
  --version     `python -m renderer --version`
  validate      `renderer validate manifests/quickstart.yaml` (manifest, schemas, plan)
  quickstart    `renderer run manifests/quickstart.yaml` on the built-in emulator, to the end
                (8 jobs; start-up, first submit, writes and exit)
Each TREE is a checkout of this repository (e.g. `git worktree add --detach DIR COMMIT`); it runs
with PYTHONPATH=TREE so each tree runs its own code. Alternating puts both under the same drift.
Medians of --runs, in milliseconds; the last column is the ratio to the first tree.
Reproduce:  python bench/startup_ab.py --runs 15 TREE_A TREE_B
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env, machine, median, table

CASES = {
    "--version": ["--version"],
    "validate": ["validate", "manifests/quickstart.yaml"],
    "quickstart": ["run", "manifests/quickstart.yaml", "--output", "{out}", "--quiet"],
}


def once(tree: Path, case: str, scratch: Path) -> float:
    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    argv = [a.replace("{out}", str(out)) for a in CASES[case]]
    env = child_env(PYTHONPATH=str(tree))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "renderer", *argv],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("trees", nargs="+", type=Path, help="checkouts of this repository")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    trees = [t.resolve() for t in args.trees]
    times: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for tree in trees:  # warm: bytecode compiled, files cached
            for case in CASES:
                once(tree, case, scratch)
        for _ in range(args.runs):
            for case in CASES:
                for i, tree in enumerate(trees):
                    times.setdefault((i, case), []).append(once(tree, case, scratch))
    rows = []
    for case in CASES:
        base = median(times[(0, case)])
        for i, tree in enumerate(trees):
            m = median(times[(i, case)])
            rows.append([case, f"{i}: {tree.name}", f"{m * 1000:.0f}", f"{m / base:.3f}"])
    print(f"{machine()}; medians of {args.runs} alternated runs")
    print(table(["case", "tree", "ms", "ratio to tree 0"], rows))
    print(f"reproduce: python bench/startup_ab.py --runs {args.runs} " + " ".join(map(str, trees)))


if __name__ == "__main__":
    main()
