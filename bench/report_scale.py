"""`renderer report` at scale: wall time, peak RSS and what it writes, cold and warm.

A finished run is synthesised through the store (bench/_common.synthesise_finished_run):
  --shape sweep   PROMPTS prompts × 4 models × SEEDS seeds of real emulator pictures (128x96 PNG);
                  the issue's 100k shape is --images 100000 (1,000 prompts × 4 models × 25 seeds)
  --shape captions  N distinct prompts × 1 model × 1 seed (a caption dataset), each image a
                  distinct tiny PNG made here (16x12): what scales is the report, not the drawing;
                  with --distinct D only the first D jobs get a file of their own and job n
                  reuses job n mod D's (one thumbnail per content: a million jobs without a
                  million files to write and thumbnail; thumbnail cost is per image, see 100k)
Then `renderer report RUN` runs in a child process (the real CLI, PYTHONPATH=--code, so an
older checkout can be measured on the same run): cold (no report/ folder: every thumbnail and
sheet made) and warm (a rerun with nothing new). Peak RSS is the child's ru_maxrss (os.wait4).
Reproduce:
  python bench/report_scale.py --shape sweep --images 100000 --runs 3 [--code /path/to/checkout]
  python bench/report_scale.py --shape captions --images 1000000 --runs 1 --keep /tmp/cap1m
(--keep DIR reuses a run synthesised there before, and keeps it for the next invocation.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import child_env, machine, median, synthesise_finished_run, table

ROOT = Path(__file__).resolve().parent.parent
MODELS = [
    {"endpoint": e, "label": e.split("/")[1]}
    for e in (
        "fal-ai/flux-1/schnell",
        "fal-ai/imagen4/preview",
        "fal-ai/ideogram/v2",
        "fal-ai/recraft/v2/text-to-image",
    )
]


def tiny_png(n: int) -> bytes:
    """A distinct 16x12 RGB PNG for job `n` (its colours encode n): ~20 µs, not 1.4 ms."""
    w, h = 16, 12
    r, g, b = n & 255, (n >> 8) & 255, (n >> 16) & 255
    raw = b"".join(b"\0" + bytes((r, g, (b + y * 16) & 255)) * w for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


def caption_spec(folder: Path, images: int) -> dict:
    """`images` distinct captions in folder/captions.jsonl, and a manifest of one model, one seed each."""
    import json

    (folder / "captions.jsonl").write_text(
        "".join(
            json.dumps({"id": f"c{i:07d}", "text": f"caption {i}"}) + "\n" for i in range(images)
        )
    )
    return {
        "name": "scale",
        "prompts": [{"file": "captions.jsonl"}],
        "models": MODELS[:1],
        "seeds": [1],
    }


def synthesise_reused(folder: Path, images: int, distinct: int) -> Path:
    """A caption run whose jobs beyond the first `distinct` reuse an earlier job's image.

    Resumable: jobs the state already records as downloaded are kept (a run killed midway
    goes on where it stopped).
    """
    import hashlib
    import json

    from renderer.layout import image_path
    from renderer.manifest import load as manifest_mod
    from renderer.models.schemas import SchemaRegistry, default_schema_dir
    from renderer.plan import planner as plan_mod
    from renderer.state.rows import key_blob
    from renderer.state.sqlite import SQLiteStore

    path = folder / "scale.yaml"
    db = folder / "out/scale/renderer.sqlite"
    if db.is_file():
        import sqlite3

        with contextlib.closing(sqlite3.connect(db)) as con:
            (have,) = con.execute("SELECT COUNT(*) FROM job WHERE state = 'downloaded'").fetchone()
        if have >= images:
            return db.parent  # made by an earlier invocation
    if not path.is_file():
        spec = caption_spec(folder, images)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    m = manifest_mod.load(path)
    m = manifest_mod.Manifest(**{**m.__dict__, "output": folder / "out"})
    plan = plan_mod.build(m, SchemaRegistry(default_schema_dir()))
    store = SQLiteStore(m.run_dir)
    if store.db.execute("SELECT COUNT(*) FROM job").fetchone()[0] < images:
        store.sync_plan(plan.jobs, plan.digest)
    done = {
        int(i): f
        for i, f in store.db.execute(
            "SELECT plan_index, files FROM job WHERE state = 'downloaded' AND plan_index < ?",
            (distinct,),
        )
    }
    first = store.db.execute(
        "SELECT MIN(plan_index) FROM job WHERE state <> 'downloaded'"
    ).fetchone()[0]
    entries: list[str] = []
    rows: list[tuple[str, str, bytes]] = []

    def flush() -> None:
        with store.db:
            store.db.executemany(
                "UPDATE job SET state = 'downloaded', files = ?, result = ?, request_id = 'r', "
                "downloaded_at = 0 WHERE k = ?",
                rows,
            )
        rows.clear()

    for n, job in enumerate(plan.jobs):
        if n < distinct:
            if n in done:
                entries.append(done[n])
                continue
            data = tiny_png(n)
            rel = image_path(job.stem, 0, "png")
            target = m.run_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            entry = {
                "path": rel,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "mtime_ns": target.stat().st_mtime_ns,
                "width": 16,
                "height": 12,
                "content_type": "image/png",
                "seed": job.seed,
            }
            entries.append(json.dumps([entry]))
        elif first is None or n < first:
            continue
        files = entries[n % distinct]
        rows.append(
            (files, json.dumps({"images": [{"url": "x"}], "seed": job.seed}), key_blob(job.key))
        )
        if len(rows) >= 10_000:
            flush()
    flush()
    store.close()
    return m.run_dir


def synthesise(folder: Path, shape: str, images: int, salt: str = "") -> Path:
    from renderer.plan import planner as plan_mod

    path = folder / f"scale{salt}.yaml"
    if shape == "captions":
        spec = caption_spec(folder, images)
        count = iter(range(10**9))

        def picture(job: plan_mod.Job) -> bytes:
            return tiny_png(next(count))

    else:
        seeds = max(1, images // (1000 * len(MODELS)))
        prompts = images // (len(MODELS) * seeds)
        spec = {
            "name": "scale",
            "prompts": [{"id": f"p{i:04d}", "text": f"picture {i}"} for i in range(prompts)],
            "models": MODELS,
            "seeds": list(range(1, seeds + 1)),
        }
        from renderer.provider.emulator.pictures import render

        def picture(job: plan_mod.Job) -> bytes:
            return render(
                job.endpoint, job.input["prompt"], job.seed or 0, 0, (128, 96), "png", salt
            )[0]

    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return synthesise_finished_run(path, folder / f"out{salt}", picture)


# The child reports its own peak (VmHWM of its address space): ru_maxrss from wait4 would count
# the pages of this process that the child held between fork and exec (~900 MiB after this
# script has synthesised a million-job run).
CHILD = """
import atexit, runpy, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("BENCH-HWM " + line.split()[1] + "\\n")
atexit.register(peak)
sys.argv = ["renderer", *sys.argv[1:]]
runpy.run_module("renderer", run_name="__main__")
"""


def report(code: Path, run: Path, *extra: str) -> tuple[float, float, str]:
    """`renderer report RUN` with the code at `code`: (seconds, its peak RSS MiB, its output)."""
    env = child_env(PYTHONPATH=str(code))
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, "report", str(run.resolve()), *extra],
        env=env,
        cwd=code,  # `-m` puts the working directory first on sys.path: make it the code measured
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout is not None
    out = child.stdout.read()
    code_ = child.wait()
    took = time.perf_counter() - start
    if code_ != 0:
        raise RuntimeError(out[-3000:])
    hwm = next(int(x.split()[1]) for x in out.splitlines() if x.startswith("BENCH-HWM "))
    return took, hwm / 1024, out


def files_under(folder: Path) -> tuple[int, int, int]:
    """(thumbnails, sheets, data files) under report/."""
    thumbs = sum(len(files) for _, _, files in os.walk(folder / "thumbs"))
    sheets = len(list(folder.glob("sheet-*.png")))
    data = len(list((folder / "data").glob("*"))) if (folder / "data").is_dir() else 0
    return thumbs, sheets, data


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", choices=("sweep", "captions"), default="sweep")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout to measure")
    ap.add_argument("--keep", type=Path, help="synthesise the run here once and reuse it")
    ap.add_argument(
        "--diff",
        action="store_true",
        help="also time `diff` against the run rendered with another salt (sweep shape)",
    )
    ap.add_argument("--diff-only", action="store_true", help="time the diff alone")
    ap.add_argument("--no-sheets", action="store_true", help="pass --no-sheets to `report`")
    ap.add_argument(
        "--distinct", type=int, help="captions: only this many image files (jobs reuse them)"
    )
    args = ap.parse_args()
    flags = ("--no-sheets",) if args.no_sheets else ()
    if args.diff_only:
        args.diff = True
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name)
    else:
        folder = args.keep
        folder.mkdir(parents=True, exist_ok=True)
    run = folder / "out/scale"
    if args.distinct and args.shape == "captions":
        start = time.perf_counter()
        synthesise_reused(folder, args.images, args.distinct)
        print(f"# synthesised in {time.perf_counter() - start:.0f} s", flush=True)
    elif not (run / "renderer.sqlite").is_file():
        start = time.perf_counter()
        synthesise(folder, args.shape, args.images)
        print(f"# synthesised in {time.perf_counter() - start:.0f} s", flush=True)
    if args.runs == 0:
        return  # --runs 0 --keep DIR: synthesise only
    other = folder / "outv2/scale"
    if args.diff and not (other / "renderer.sqlite").is_file():
        synthesise(folder, "sweep", args.images, "v2")
    cold, cold_rss, warm, warm_rss, diffs = [], [], [], [], []
    for _ in range(args.runs):
        if args.diff:
            from renderer.view import compare

            start = time.perf_counter()
            result = compare.compare(run, other)
            diffs.append(time.perf_counter() - start)
            # Every pair is measured (none byte-identical).
            assert len(result["pairs"]) == args.images, result["counts"]
            assert not any(p["identical"] for p in result["pairs"]), result["counts"]
        if args.diff_only:
            continue
        shutil.rmtree(run / "report", ignore_errors=True)
        took, rss, _ = report(args.code, run, *flags)
        cold.append(took)
        cold_rss.append(rss)
        took, rss, _ = report(args.code, run, *flags)
        warm.append(took)
        warm_rss.append(rss)
    load = os.getloadavg()
    reproduce = (
        f"# reproduce: python bench/report_scale.py --shape {args.shape} --images {args.images} "
        f"--runs {args.runs}"
        + (f" --distinct {args.distinct}" if args.distinct else "")
        + (" --no-sheets" if args.no_sheets else "")
        + (" --diff-only" if args.diff_only else " --diff" if args.diff else "")
    )
    diff_row = [
        "diff, every pair measured",
        f"{median(diffs):.2f}" if diffs else "",
        f"{args.images / median(diffs):.0f}" if diffs else "",
        "",
    ]
    if args.diff_only:
        print(f"# diff on {args.images} images (128x96 PNG); {machine()}; medians of {args.runs}")
        print(reproduce)
        print(table(["step", "median s", "images/s", "peak RSS MiB"], [diff_row]))
        return
    page = (run / "report/index.html").stat().st_size / 1e6
    thumbs, sheets, data = files_under(run / "report")
    if tmp is not None:
        tmp.cleanup()
    print(
        f"# renderer report, {args.images} images ({args.shape}); code {args.code}; {machine()}; "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; medians of {args.runs}"
    )
    print(reproduce)
    print(f"# index.html {page:.2f} MB; {thumbs} thumbnails, {sheets} sheets, {data} data files")
    print(
        table(
            ["step", "median s", "images/s", "peak RSS MiB"],
            [
                [
                    "report, cold (every thumbnail and sheet made)",
                    f"{median(cold):.1f}",
                    f"{args.images / median(cold):.0f}",
                    f"{median(cold_rss):.0f}",
                ],
                [
                    "report, warm (nothing new)",
                    f"{median(warm):.1f}",
                    f"{args.images / median(warm):.0f}",
                    f"{median(warm_rss):.0f}",
                ],
                *([diff_row] if diffs else []),
            ],
        )
    )


if __name__ == "__main__":
    main()
