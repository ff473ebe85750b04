"""A caption set as dataset builders bring it, through `validate`, `plan` and a `--max-jobs` trial.

N distinct captions (12 random words and a number, ~75 bytes) on one model with one seed each,
in a .txt file; as a .parquet file with a `caption` column and three more columns the renderer
does not read (source `keep`: the same file keeping them, `keep: [source_url, license,
original_id]`); as .jsonl ({"caption": …} a line) and .csv (caption,n) files read with `text:
caption`; and (sources `jsonl-keep`, `csv-keep`) as .jsonl and .csv files with the same three
more columns, kept. Per tree (a checkout of this repository, run with PYTHONPATH=TREE) and case, the whole
command's wall time, CPU time (user + sys) and peak RSS (GNU time), medians of --runs alternated
runs; for the trial also the first submit: seconds from spawning the command to its first
`submitted` event (`--log`), the number the issue's "first submit ≤ 3 s" is about, and the CPU
seconds the process had used by then (process_time at that event, all threads: what the wall
time would be on an idle core, whatever the load).
  validate   `renderer validate` (load the prompts, plan, check every job)
  plan       `renderer plan` (the same, and the summary it prints)
  trial      `renderer run --max-jobs 20 --quiet` on the built-in emulator, from a fresh output
             folder (its 20 images, then whatever the command waits for before it exits)
The load average is printed before and after: on a shared machine wall times follow it; CPU
seconds and ratios say more.
Reproduce:  python bench/captions.py --captions 100000 --runs 3 TREE_A TREE_B
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
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
    with open(folder / "captions.jsonl", "w") as handle:
        handle.writelines(json.dumps({"caption": line}) + "\n" for line in lines)
    with open(folder / "captions.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["caption", "n"])
        out.writerows([line, i] for i, line in enumerate(lines))
    extra = [(f"https://example.org/{i}", "cc0-1.0", i) for i in range(n)]
    with open(folder / "kept.jsonl", "w") as handle:
        handle.writelines(
            json.dumps({"caption": line, "source_url": u, "license": lic, "original_id": i}) + "\n"
            for line, (u, lic, i) in zip(lines, extra, strict=True)
        )
    with open(folder / "kept.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["caption", "source_url", "license", "original_id"])
        out.writerows([line, *e] for line, e in zip(lines, extra, strict=True))
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
    """txt, jsonl, csv, parquet, or keep (the parquet file keeping its three other columns as
    dataset columns), jsonl-keep or csv-keep (the same columns kept from a .jsonl or .csv)."""
    kept = "keep: [source_url, license, original_id]"
    entry = (
        f"{{file: kept.{source.split('-')[0]}, text: caption, {kept}}}"
        if source.endswith("-keep")
        else "{file: captions.txt}"
        if source == "txt"
        else "{file: captions.parquet, text: caption, keep: [source_url, license, original_id]}"
        if source == "keep"
        else f"{{file: captions.{source}, text: caption}}"
    )
    path = folder / f"{source}.yaml"
    path.write_text(
        f"name: {source}\nprovider: emulator\noutput: out\nprompts: [{entry}]\n"
        "models: [fal-ai/flux-1/schnell]\nseeds: [1]\n"
    )
    return path


SOURCES = "txt,parquet,jsonl,csv"  # and keep, jsonl-keep, csv-keep: files keeping 3 columns
CASES = "validate,plan,trial"


# The trial runs `renderer` with its event log's writer wrapped to note the process's CPU time
# at the first `submitted` event (into the file named by CAPTIONS_CPU_AT_SUBMIT).
_TRIAL = """
import os, sys, time
from renderer import console
from renderer.cli import entrypoint
write = console.EventLog.__call__
def noted(self, event):
    if event.get("type") == "submitted" and not os.path.exists(os.environ["CAPTIONS_CPU_AT_SUBMIT"]):
        with open(os.environ["CAPTIONS_CPU_AT_SUBMIT"], "w") as out:
            out.write(str(time.process_time()))
    write(self, event)
console.EventLog.__call__ = noted
sys.argv[0] = "renderer"
entrypoint()
"""


def once(
    tree: Path, argv: list[str], folder: Path
) -> tuple[float, float, float, float | None, float | None]:
    """(seconds, CPU seconds, peak MiB, seconds and CPU seconds to the first submit, or None)."""
    shutil.rmtree(folder / "out", ignore_errors=True)
    log, cpu_at = folder / "events.jsonl", folder / "cpu-at-submit"
    log.unlink(missing_ok=True)
    cpu_at.unlink(missing_ok=True)
    trial = argv[0] == "run"
    command = ["-c", _TRIAL, *argv, "--log", str(log)] if trial else ["-m", "renderer", *argv]
    spawned = time.time()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %U %S %M", sys.executable, *command],
        cwd=folder,
        env=child_env(PYTHONPATH=str(tree), CAPTIONS_CPU_AT_SUBMIT=str(cpu_at)),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"{tree}: renderer {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    seconds, user, system, kib = done.stderr.strip().splitlines()[-1].split()
    first = first_cpu = None
    if trial:
        events = (json.loads(line) for line in log.read_text().splitlines())
        first = next(e["time"] for e in events if e["type"] == "submitted") - spawned
        first_cpu = float(cpu_at.read_text())
    return float(seconds), float(user) + float(system), int(kib) / 1024, first, first_cpu


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("trees", nargs="+", type=Path)
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sources", default=SOURCES)
    ap.add_argument("--cases", default=CASES)
    args = ap.parse_args()
    trees = [t.resolve() for t in args.trees]
    every = {
        "validate": lambda m: ["validate", m.name],
        "plan": lambda m: ["plan", m.name],
        "trial": lambda m: ["run", m.name, "--max-jobs", "20", "--quiet"],
    }
    cases = {c: every[c] for c in args.cases.split(",")}
    results: dict[
        tuple[str, str, int], list[tuple[float, float, float, float | None, float | None]]
    ] = {}
    started = load()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        captions(folder, args.captions)
        sources = [
            s
            for s in args.sources.split(",")
            if s.endswith("-keep")
            or (folder / f"captions.{'parquet' if s == 'keep' else s}").exists()
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
        cpu = median([v[1] for v in values])
        ratio = f"{cpu / median([v[1] for v in base]):.2f}" if base else "-"
        firsts = [v[3] for v in values if v[3] is not None]
        first_cpus = [v[4] for v in values if v[4] is not None]
        rows.append(
            [
                source,
                case,
                f"{i}: {trees[i].name}",
                f"{median([v[0] for v in values]):.1f}",
                f"{cpu:.1f}",
                f"{median(firsts):.1f}" if firsts else "-",
                f"{median(first_cpus):.1f}" if first_cpus else "-",
                f"{median([v[2] for v in values]):.0f}",
                ratio,
            ]
        )
    print(
        f"{machine()}; {args.captions:,} captions; medians of {args.runs} alternated runs; "
        f"load average {started} before, {load()} after"
    )
    headers = [
        "source",
        "case",
        "tree",
        "wall s",
        "CPU s",
        "first submit s",
        "its CPU s",
        "peak MiB",
    ]
    print(table([*headers, "CPU ratio to tree 0"], rows))
    print(
        f"reproduce: python bench/captions.py --captions {args.captions} --runs {args.runs}"
        + (f" --sources {args.sources}" if args.sources != SOURCES else "")
        + (f" --cases {args.cases}" if args.cases != CASES else "")
        + " "
        + " ".join(map(str, trees))
    )


if __name__ == "__main__":
    main()
