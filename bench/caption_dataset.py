"""A caption set end to end (issue 22's acceptance): Parquet captions → a run → a Parquet export → `datasets`.

A Parquet file of --captions distinct captions (12 random words and the row number) with three more
columns (source_url, license, original_id), named in the manifest as `{file: captions.parquet, text:
caption, keep: [source_url, license, original_id]}` on one model with one seed, rendered by the emulator in its own process (`renderer
emulator --workers S --latency L`, the run's `--concurrency S`: what a dataset builder's account
would allow, so the slice takes minutes, not hours):

  trial    `renderer run --max-jobs 20` (its 20 images, then whatever the command waits for)
  slice    `renderer run --max-jobs --slice` (the first SLICE jobs of the plan, the trial's kept)
  export   `renderer export RUN --format parquet`
  load     `datasets.load_dataset("parquet", data_files=…)` of the export, then checked row by row:
           every caption is one of the file's, each image's bytes hash to the sha256 its job's
           sidecar recorded for that caption (images and captions aligned), and each row's
           source_url / license / original_id are its caption's row's (a kept column missing
           from the export is a problem).

Wall time and peak RSS (GNU time) per command; one run (the slice takes minutes).
Reproduce:  python bench/caption_dataset.py --captions 1000000 --slice 100000
(--keep "" leaves the kept columns out of the manifest: the run before issue 22's `keep:`.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env, machine, table
from _emu import emulator
from captions import captions

ROOT = Path(__file__).resolve().parent.parent
EXTRA = ("source_url", "license", "original_id")


def timed(argv: list[str], folder: Path) -> tuple[float, float, str]:
    """(seconds, peak MiB, stdout) of one renderer command; exits on failure."""
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "renderer", *argv],
        cwd=folder,
        env=child_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"renderer {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    seconds, kib = done.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kib) / 1024, done.stdout


def check(
    folder: Path, export: Path, run: Path, n: int, keep: bool
) -> tuple[int, list[str], list[str]]:
    """(rows loaded, columns, problems) of the export as `datasets` loads it."""
    import datasets

    lines = (folder / "captions.txt").read_text().splitlines()
    shards = sorted(str(p) for p in export.rglob("*.parquet"))
    ds = datasets.load_dataset(
        "parquet", data_files=shards, split="train", cache_dir=str(folder / "hf-cache")
    ).cast_column("image", datasets.Image(decode=False))
    problems: list[str] = []
    # Each job's sidecar: what was asked (the caption) and the sha256 of the image it wrote.
    recorded: dict[str, str] = {}
    for side in (run / "data").rglob("*.json"):
        meta = json.loads(side.read_text())
        if isinstance(meta, dict) and "sha256" in meta:
            prompt = meta.get("prompt") or meta.get("input", {}).get("prompt")
            recorded[meta["sha256"]] = str(prompt)
    extra = [c for c in EXTRA if c in ds.column_names]
    if keep:
        problems += [f"the export has no {c!r} column" for c in EXTRA if c not in extra]
    for i, row in enumerate(ds):
        caption = row.get("prompt") or row.get("text") or row.get("caption")
        number = int(str(caption).rsplit(" ", 1)[-1])
        if not 0 <= number < n or lines[number] != caption:
            problems.append(f"row {i}: caption {caption!r} is not the file's row {number}")
        sha = hashlib.sha256(row["image"]["bytes"]).hexdigest()
        if recorded.get(sha) != caption:
            problems.append(f"row {i}: image {sha[:12]} was rendered for {recorded.get(sha)!r}")
        if "source_url" in extra and row["source_url"] != f"https://example.org/{number}":
            problems.append(f"row {i}: source_url {row['source_url']!r} is not row {number}'s")
        if "original_id" in extra and row["original_id"] != number:
            problems.append(f"row {i}: original_id {row['original_id']!r} is not {number}")
        if "license" in extra and row["license"] != "cc0-1.0":
            problems.append(f"row {i}: license {row['license']!r} is not the file's cc0-1.0")
        if len(problems) > 20:
            break
    return len(ds), list(ds.column_names), problems


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--captions", type=int, default=1_000_000)
    ap.add_argument("--slice", type=int, default=100_000)
    ap.add_argument("--slots", type=int, default=64, help="emulator slots = --concurrency")
    ap.add_argument("--latency", default="0.05", help="emulator service time")
    ap.add_argument(
        "--keep",
        default="keep",
        help="the manifest key naming the kept columns (default keep; empty: none kept)",
    )
    ap.add_argument(
        "--workdir", type=Path, help="keep the files here (default: a temporary folder)"
    )
    args = ap.parse_args()
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    folder = args.workdir or Path(tmp.name)  # type: ignore[union-attr]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.monotonic()
        captions(folder, args.captions)
        made = time.monotonic() - started
        entry = "{file: captions.parquet, text: caption"
        if args.keep:
            entry += f", {args.keep}: [{', '.join(EXTRA)}]"
        entry += "}"
        (folder / "m.yaml").write_text(
            f"name: captions\nprovider: emulator\noutput: out\nprompts: [{entry}]\n"
            "models: [fal-ai/flux-1/schnell]\nseeds: [1]\n"
        )
        shutil.rmtree(folder / "out", ignore_errors=True)
        rows = []
        emu = emulator("--workers", str(args.slots), "--latency", args.latency)
        url, _ = emu.__enter__()
        at = ["--provider", url, "--concurrency", str(args.slots)]
        for label, argv in (
            ("trial (--max-jobs 20)", ["run", "m.yaml", "--max-jobs", "20", "--quiet", *at]),
            (
                f"slice (--max-jobs {args.slice:,})",
                ["run", "m.yaml", "--max-jobs", str(args.slice), "--quiet", *at],
            ),
            (
                "export --format parquet",
                ["export", "out/captions", "--format", "parquet", "--out", "export"],
            ),
        ):
            seconds, mib, out = timed(argv, folder)
            rows.append([label, f"{seconds:.1f}", f"{mib:.0f}", out.strip().splitlines()[0][:90]])
        emu.__exit__(None, None, None)
        started = time.monotonic()
        loaded, columns, problems = check(
            folder, folder / "export", folder / "out" / "captions", args.captions, bool(args.keep)
        )
        rows.append(
            [
                "load_dataset + checks",
                f"{time.monotonic() - started:.1f}",
                "-",
                f"{loaded:,} rows; {len(problems)} problems",
            ]
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(
        f"# caption set end to end; {machine()}; {args.captions:,} captions (made in {made:.0f} s)"
    )
    print(
        f"# reproduce: python bench/caption_dataset.py --captions {args.captions} --slice {args.slice} "
        f"--slots {args.slots} --latency {args.latency}"
        + (" --keep " + (args.keep or "''") if args.keep != "keep" else "")
    )
    print(table(["step", "s", "peak MiB", "says"], rows))
    print(f"# columns: {', '.join(columns)}")
    extra = [c for c in EXTRA if c in columns]
    print(f"# the caption set's other columns in the export: {', '.join(extra) or 'none'}")
    for problem in problems[:20]:
        print(f"# problem: {problem}")
    ok = not problems and loaded == args.slice
    print(f"# result: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
