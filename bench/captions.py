"""A caption set as dataset builders bring it, through `validate` and a `--max-jobs` trial.

N distinct captions (12 random words and a number, ~75 bytes) on one model with one seed each,
in a .txt file, and as a .parquet file with a `caption` column and three more columns the
renderer does not read (source `keep`: the same file keeping them, `keep: [source_url, license,
original_id]`). Per tree (a checkout of this repository, run with PYTHONPATH=TREE) and
case, the whole command's wall time and peak RSS (GNU time), medians of --runs alternated runs:
  validate   `renderer validate` (load the prompts, plan, check every job)
  trial      `renderer run --max-jobs 20` on the built-in emulator, from a fresh output folder
             (its 20 images, then whatever the command waits for before it exits)
Reproduce:  python bench/captions.py --captions 100000 --runs 3 TREE_A TREE_B
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env, machine, median, table

WORDS = [
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "house",
    "tree",
    "river",
    "mountain",
    "city",
    "night",
    "day",
    "sun",
    "moon",
    "star",
    "sea",
    "boat",
    "car",
    "bird",
    "fish",
    "old",
    "new",
    "small",
    "large",
    "quiet",
    "busy",
    "misty",
    "golden",
]


def captions(folder: Path, n: int) -> None:
    rng = random.Random(1)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + f" {i}" for i in range(n)]
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    table_ = pa.table(
        {
            "caption": lines,
            "source_url": [f"https://example.org/{i}" for i in range(n)],
            "license": ["cc0-1.0"] * n,
            "original_id": list(range(n)),
        }
    )
    pq.write_table(table_, folder / "captions.parquet")


def manifest(folder: Path, source: str) -> Path:
    """txt, parquet, or keep (the parquet file keeping its three other columns as dataset columns)."""
    entry = "{file: captions.txt}" if source == "txt" else "{file: captions.parquet, text: caption"
    entry += (
        ", keep: [source_url, license, original_id]}"
        if source == "keep"
        else "}" * (source != "txt")
    )
    path = folder / f"{source}.yaml"
    path.write_text(
        f"name: {source}\nprovider: emulator\noutput: out\nprompts: [{entry}]\n"
        "models: [fal-ai/flux-1/schnell]\nseeds: [1]\n"
    )
    return path


def once(tree: Path, argv: list[str], folder: Path) -> tuple[float, float]:
    """(seconds, peak MiB) of one command."""
    shutil.rmtree(folder / "out", ignore_errors=True)
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "renderer", *argv],
        cwd=folder,
        env=child_env(PYTHONPATH=str(tree)),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"{tree}: renderer {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    seconds, kib = done.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kib) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("trees", nargs="+", type=Path)
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sources", default="txt,parquet")
    args = ap.parse_args()
    trees = [t.resolve() for t in args.trees]
    cases = {
        "validate": lambda m: ["validate", m.name],
        "trial": lambda m: ["run", m.name, "--max-jobs", "20", "--quiet"],
    }
    results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        captions(folder, args.captions)
        sources = [
            s
            for s in args.sources.split(",")
            if (folder / f"captions.{'parquet' if s == 'keep' else s}").exists()
        ]
        for _ in range(args.runs):
            for source in sources:
                m = manifest(folder, source)
                for case, argv in cases.items():
                    for i, tree in enumerate(trees):
                        try:
                            got = once(tree, argv(m), folder)
                        except SystemExit as exc:  # e.g. an older tree without .parquet sources
                            print(f"skipped: {exc}"[:300], file=sys.stderr)
                            continue
                        results.setdefault((source, case, i), []).append(got)
    rows = []
    for (source, case, i), values in sorted(results.items()):
        base = results.get((source, case, 0))
        seconds = median([v[0] for v in values])
        ratio = f"{seconds / median([v[0] for v in base]):.2f}" if base else "-"
        rows.append(
            [
                source,
                case,
                f"{i}: {trees[i].name}",
                f"{seconds:.1f}",
                f"{median([v[1] for v in values]):.0f}",
                ratio,
            ]
        )
    print(f"{machine()}; {args.captions:,} captions; medians of {args.runs} alternated runs")
    print(table(["source", "case", "tree", "s", "peak MiB", "time ratio to tree 0"], rows))
    print(
        f"reproduce: python bench/captions.py --captions {args.captions} --runs {args.runs} "
        + (f" --sources {args.sources}" if args.sources != "txt,parquet" else "")
        + " "
        + " ".join(map(str, trees))
    )


if __name__ == "__main__":
    main()
