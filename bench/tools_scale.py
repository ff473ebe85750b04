"""The tools after a run at dataset scale: `export` (Parquet, WebDataset), `diff RUN RUN` and
`status` on a finished run of N images (issue 22: <= 500 MB peak RSS at 1M images, time linear;
export >= 20k images/s when the images are already in the right format; diff of a 1M run
against itself <= 2 min).

The finished run is synthesised through the store (bench/_common.py: the plan recorded, every
job downloaded, one small PNG per job on disk, metadata.jsonl and the card written), because
rendering a million images first takes hours; the tools only read what a run leaves. Each
command runs in a child process (bench/_run.py: wall time around the command, peak RSS of the
child) once per code tree given: `--tree DIR` names a checkout (e.g. /work/main for "before"),
the default is this one. `--linked` synthesises in SQL with hard-linked images (what 10M needs,
synthesise_linked); `--keep DIR` keeps the run for the next invocation. `diff PART PART` is the
same run rendered in part (`--rendered PCT` of its jobs; the rest planned, not rendered: what a
100k slice of a 1M plan leaves) diffed against itself.
Reproduce:  python bench/tools_scale.py --images 100000 --runs 3 --tree /work/main --tree .
            python bench/tools_scale.py --images 100000 --runs 3 --only "diff PART PART" --rendered 10
            python bench/tools_scale.py --images 1000000 --runs 3 --shape dataset --linked --tree .
            python bench/tools_scale.py --images 10000000 --runs 1 --shape dataset --linked --keep DIR
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import child_env, machine, manifest, median, synthesise_finished_run, table

COMMANDS = ("export parquet", "export webdataset", "diff RUN RUN", "diff PART PART", "status")


def small_png() -> bytes:
    """One small real PNG (64x48): what `export` copies and `diff` hashes, every job the same bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 140, 200)).save(buffer, "PNG")
    return buffer.getvalue()


LINKS_PER_FILE = 50_000  # hard links to one image file: ext4 allows 65,000 per inode


def synthesise_linked(manifest_path: Path, output: Path, png: bytes) -> Path:
    """A finished run as synthesise_finished_run leaves it, at 10M scale: every job's files and
    result set by one SQL statement (not a Python update per job) and every image a hard link to
    one of a few files with the same bytes (10M files of their own would need 10M inodes and
    hours). The tools read exactly what they read after a real run: the state, the images.
    SQLite state only: the `job` table's state columns, each job's stem read from the `jobs` view."""
    import hashlib

    from renderer.layout import DATA_DIR
    from renderer.manifest import load as manifest_mod
    from renderer.models.schemas import SchemaRegistry, default_schema_dir
    from renderer.output.storage import LocalStorage
    from renderer.plan import planner as plan_mod
    from renderer.runner.deliver import write_dataset
    from renderer.state.sqlite import SQLiteStore

    m = manifest_mod.load(manifest_path)
    m = manifest_mod.Manifest(**{**m.__dict__, "output": output})
    plan = plan_mod.build(m, SchemaRegistry(default_schema_dir()))
    store = SQLiteStore(m.run_dir)
    started = time.perf_counter()
    store.sync_plan(plan.jobs, plan.digest)
    print(f"  plan recorded in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    sources = m.run_dir / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    first = sources / "0.png"
    first.write_bytes(png)
    mtime = first.stat().st_mtime_ns  # every link shares the inode's mtime
    started = time.perf_counter()
    with store.db:
        store.db.execute(
            "UPDATE job SET state = 'downloaded', request_id = 'r', downloaded_at = 0, "
            "result = json_object('images', json_array(json_object('url', 'x')), 'seed', seed), "
            "files = json_array(json_object('path', ? || "
            "(SELECT v.stem FROM jobs v WHERE v.id = job.id) || '-0.png', "
            "'sha256', ?, 'size', ?, 'mtime_ns', ?, 'width', 0, 'height', 0, "
            "'content_type', 'image/png', 'seed', seed))",
            (DATA_DIR + "/", hashlib.sha256(png).hexdigest(), len(png), mtime),
        )
    print(f"  jobs finished in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    started = time.perf_counter()
    made: set[str] = set()
    source = first
    for n, row in enumerate(
        store.stream("json_extract(files, '$[0].path') AS path", "state = 'downloaded'")
    ):
        path = row["path"]
        if n and n % LINKS_PER_FILE == 0:
            source = sources / f"{n // LINKS_PER_FILE}.png"
            source.write_bytes(png)
            os.utime(source, ns=(mtime, mtime))
        folder = path.rsplit("/", 1)[0]
        if folder not in made:
            (m.run_dir / folder).mkdir(parents=True, exist_ok=True)
            made.add(folder)
        os.link(source, m.run_dir / path)
    print(f"  images linked in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    started = time.perf_counter()
    write_dataset(plan, store, LocalStorage(m.run_dir), None)
    print(f"  dataset written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    store.close()
    shutil.rmtree(sources)
    return m.run_dir


def partial_copy(run: Path, rendered: int) -> Path:
    """The run as if only about `rendered` % of its jobs had been rendered, spread evenly through
    the plan: its state copied beside it with the other jobs put back to `planned` (no files, no
    result), and its `data` folder a link to the run's (the images of the jobs left rendered are
    where the state says)."""
    import sqlite3

    part = run.parent / "partial"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir()
    with (
        sqlite3.connect(run / "renderer.sqlite") as source,
        sqlite3.connect(part / "renderer.sqlite") as target,
    ):
        source.backup(target)
        with target:
            target.execute(
                "UPDATE job SET state = 'planned', files = NULL, result = NULL, request_id = NULL, "
                "downloaded_at = NULL WHERE id * ? % 100 >= ?",
                (rendered, rendered),
            )
    (part / "data").symlink_to(run / "data")
    return part


def yaml_name(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("name:"))


def argv(command: str, run: Path, scratch: Path) -> list[str]:
    if command.startswith("export"):
        fmt = command.split()[1]
        return ["export", str(run), "--format", fmt, "--out", str(scratch / fmt)]
    if command == "diff PART PART":
        part = str(run.parent / "partial")
        return ["diff", part, part]
    if command.startswith("diff"):
        return ["diff", str(run), str(run)]
    return ["status", str(run)]


def measure(tree: Path, args: list[str], cwd: Path, codes: tuple[int, ...] = (0, 4)) -> dict:
    """One command in a child process of `tree`'s code: its BENCH record (wall, rss_mb, code)."""
    done = subprocess.run(
        [sys.executable, str(tree / "bench" / "_run.py"), *args],
        capture_output=True,
        text=True,
        env=child_env(PYTHONPATH=str(tree)),
        cwd=cwd,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"{tree}: {' '.join(args)}: {done.stderr[-2000:]}")
    record = json.loads(line[6:])
    if record["code"] not in codes:  # diff of a run against itself passes (0)
        raise RuntimeError(f"{tree}: {' '.join(args)} exited {record['code']}: {record['stderr']}")
    return record


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--tree",
        action="append",
        default=None,
        help="a checkout whose code runs the commands (repeat: before/after); default this one",
    )
    ap.add_argument("--only", action="append", choices=COMMANDS, help="time only these commands")
    ap.add_argument("--keep", type=Path, help="synthesise into (or reuse) this folder")
    ap.add_argument(
        "--rendered",
        type=int,
        default=10,
        choices=range(1, 100),
        metavar="PCT",
        help="diff PART PART: the percentage of the run's jobs left rendered (default 10)",
    )
    ap.add_argument(
        "--shape",
        choices=("captions", "dataset"),
        default="captions",
        help="captions: N distinct prompts x 1 model x 1 seed (issue 22's); dataset: 1,000 "
        "prompts x 10 models x N/10,000 seeds (bench/state_scale.py's; far quicker to synthesise)",
    )
    ap.add_argument(
        "--linked",
        action="store_true",
        help="synthesise fast: jobs finished in one SQL statement, images hard links to a few "
        "files (what 10M needs: the disk's inodes and hours otherwise)",
    )
    args = ap.parse_args()
    trees = [Path(t).resolve() for t in (args.tree or [str(Path(__file__).parent.parent)])]
    commands = args.only or list(COMMANDS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        run = folder / "out" / "bench"
        start = time.perf_counter()
        if not (run / "renderer.sqlite").is_file():
            png = small_png()
            if args.shape == "captions":
                path = manifest(folder, args.images, 16)
            else:
                from state_scale import dataset_manifest

                path = dataset_manifest(folder, args.images)
                text = path.read_text()  # the run's folder is found by the name "bench"
                path.write_text(text.replace(yaml_name(text), "name: bench", 1))
            if args.linked:
                synthesise_linked(path, folder / "out", png)
            else:
                synthesise_finished_run(path, folder / "out", lambda job: png)
        if "diff PART PART" in commands:
            partial_copy(run, args.rendered)
        made = time.perf_counter() - start
        print(f"synthesised {args.images:,} images in {made:.0f} s: {run}", file=sys.stderr)
        rows = []
        for command in commands:
            found: dict[Path, list[dict]] = {tree: [] for tree in trees}
            for _ in range(args.runs):
                for tree in trees:  # alternating, so a change in the machine's load hits both
                    scratch = folder / "scratch"
                    shutil.rmtree(scratch, ignore_errors=True)
                    scratch.mkdir()
                    # A partial run against itself failed (1) before not-rendered pairs were
                    # counted apart (issue 22): timed all the same, as the before figure.
                    codes = (0, 1) if command == "diff PART PART" else (0, 4)
                    record = measure(tree, argv(command, run, scratch), folder, codes)
                    found[tree].append(record)
                    print(
                        f"  {tree.name} {command}: {record['wall']:.1f} s, CPU {record['cpu']:.1f} s, "
                        f"{record['rss_mb']:.0f} MiB (load {os.getloadavg()[0]:.1f})",
                        file=sys.stderr,
                    )
            for tree in trees:
                records = found[tree]
                wall = median([r["wall"] for r in records])
                cpu = median([r["cpu"] for r in records])
                counted = command.startswith(("export", "diff"))
                rate = f"{args.images / wall:,.0f}/s" if counted else ""
                cpu_rate = f"{args.images / cpu:,.0f}/s" if counted else ""
                rss = median([r["rss_mb"] for r in records])
                rows.append(
                    [
                        tree.name,
                        command,
                        f"{wall:.1f}",
                        f"{cpu:.1f}",
                        rate,
                        cpu_rate,
                        f"{rss:.0f}",
                        len(records),
                    ]
                )
    trees_args = " ".join(f"--tree {t}" for t in (args.tree or []))
    print(
        f"# tools after a run of {args.images:,} images; {machine()}; load "
        f"{os.getloadavg()[0]:.1f} at the end; medians of {args.runs}"
    )
    print(
        f"# reproduce: python bench/tools_scale.py --images {args.images} --runs {args.runs} "
        f"--shape {args.shape} "
        + ("--linked " if args.linked else "")
        + (f"--rendered {args.rendered} " if "diff PART PART" in commands else "")
        + " ".join(f'--only "{c}"' for c in args.only or [])
        + (" " if args.only else "")
        + trees_args
    )
    print(
        table(
            [
                "tree",
                "command",
                "wall s",
                "CPU s",
                "images/s (wall)",
                "images/s (CPU)",
                "peak RSS MiB",
                "runs",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
