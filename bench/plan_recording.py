"""Recording a plan into a fresh SQLite state, as a first run does, what it costs, and a trial on it.

Two shapes: `captions` (N distinct captions, bench/captions.py's .txt file, one model, one seed
each: every job a cell of its own) and `seeds` (bench/state_scale.py's dataset builder: 1,000
prompts in a JSONL file x 10 models x N/10,000 seeds). Per tree (a checkout, run with
PYTHONPATH=TREE) a child process plans the manifest, then records the plan the way a first
`renderer run` does (`record_plan`: the first batch, then the background recorder to the end),
and reports:
  record s     recording alone (planning excluded)
  written MB   bytes the process wrote to the disk while recording (/proc/self/io write_bytes:
               the database, its WAL and checkpoints)
  state MB     the state's size once closed (renderer.sqlite with its WAL checkpointed)
  B/job        state bytes per job, and beyond the prompt text (the UTF-8 length of each distinct
               prompt, once)
  written/state  the ratio issue 22 bounds at 3
  trial s      `renderer run M --max-jobs 20 --quiet` on the built-in emulator from a fresh output
               folder, the whole command (process start to exit; --trial to include it)
  rest after a trial  (--rest) a state where only the first batch was recorded (a trial stops the
               recording), then the next run's `sync_plan` of the whole plan: its seconds, and the
               bytes it wrote against the state's final size
  claim / change µs  (--changes) on the recorded state, 4,000 jobs (or all) claimed 64 at a time, each then
               moved submit_started → submitted → completed → downloaded, one commit each (no
               group commit): CPU µs (this thread's, where SQLite works) of claiming per job, and per
               state change
Reproduce:  python bench/plan_recording.py --captions 100000 --runs 1 TREE_A TREE_B
            python bench/plan_recording.py --shape seeds --captions 1000000 --trial --runs 1 TREE_A TREE_B
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env, machine, median, table
from captions import captions, manifest

CHILD = r"""
import json, os, shutil, sys, time
from pathlib import Path
from renderer.manifest import load as manifest_mod
from renderer.models.schemas import SchemaRegistry, default_schema_dir
from renderer.plan import planner as plan_mod
from renderer.state.sqlite import SQLiteStore

def written():
    for line in open("/proc/self/io"):
        if line.startswith("write_bytes:"):
            return int(line.split()[1])

m = manifest_mod.load(Path(sys.argv[1]))
plan = plan_mod.build(m, SchemaRegistry(default_schema_dir()))
text = sum(len(p.encode()) for p in {j.input["prompt"] for j in plan.jobs})
shutil.rmtree(m.run_dir, ignore_errors=True)  # a fresh state (the manifest may name no `out`)
store = SQLiteStore(m.run_dir)
os.sync()
before, start = written(), time.perf_counter()
recorder = store.record_plan(plan.jobs, plan.digest)
if recorder is None:
    store.sync_plan(plan.jobs, plan.digest)
else:
    recorder.thread.join()
seconds = time.perf_counter() - start
store.close()
os.sync()
after = written()
size = sum(p.stat().st_size for p in m.run_dir.glob("renderer.sqlite*"))
result = {"seconds": seconds, "written": after - before, "size": size, "jobs": len(plan.jobs), "text": text}
if "changes" in sys.argv[2:]:  # claims and a job's state changes on the recorded state, as a run makes them
    store = SQLiteStore(m.run_dir)
    store.join("bench", 300)
    claim = change = 0.0
    done = 0
    while done < 4000:
        t0 = time.thread_time()  # CPU of this thread (SQLite works in it): steadier than wall on a shared machine
        page = store.claim(64)
        t1 = time.thread_time()
        if not page:  # a plan of fewer jobs: all of them
            break
        for c in page:
            store.submit_started(c.key)
            store.submitted(c.key, "r" + c.key[3:], "s", "r", "c")
            store.completed(c.key, {"images": [{"url": "u"}]})
            store.downloaded(c.key, [{"path": "p.png", "size": 1}])
        claim, change = claim + t1 - t0, change + time.thread_time() - t1
        done += len(page)
    store.close()
    result["claim_us"] = claim / done * 1e6
    result["change_us"] = change / done / 4 * 1e6
if "rest" in sys.argv[2:]:  # the rest after a trial: the first batch recorded, then the next run's sync
    shutil.rmtree(m.run_dir)
    store = SQLiteStore(m.run_dir)
    recorder = store.record_plan(plan.jobs, plan.digest)
    if recorder is not None:
        recorder.halt()
        recorder.thread.join()
    store.close()
    os.sync()
    before, start = written(), time.perf_counter()
    store = SQLiteStore(m.run_dir)
    store.sync_plan(plan.jobs, plan.digest)
    result["rest"] = time.perf_counter() - start
    store.close()
    os.sync()
    result["rest_written"] = written() - before
    result["rest_size"] = sum(p.stat().st_size for p in m.run_dir.glob("renderer.sqlite*"))
print(json.dumps(result))
"""


def once(
    tree: Path, yaml_path: Path, rest: bool = False, changes: bool = False
) -> dict[str, float]:
    out = yaml_path.parent / "out"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(yaml_path), *(["rest"] * rest), *(["changes"] * changes)],
        cwd=yaml_path.parent,
        env=child_env(PYTHONPATH=str(tree)),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{tree}: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


TRIAL = ["--max-jobs", "20", "--quiet", "--provider", "emulator"]


def trial(tree: Path, yaml_path: Path) -> float:
    """Seconds of `renderer run --max-jobs 20` from a fresh output folder, process start to exit."""
    out = yaml_path.parent / "trial"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "renderer", "run", str(yaml_path), "--output", str(out), *TRIAL],
        cwd=yaml_path.parent,
        env=child_env(PYTHONPATH=str(tree), FAL_KEY="bench"),
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{tree}: trial exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("trees", nargs="+", type=Path)
    ap.add_argument("--captions", type=int, default=100_000, help="jobs in the plan")
    ap.add_argument("--shape", choices=["captions", "seeds"], default="captions")
    ap.add_argument("--trial", action="store_true", help="also time a --max-jobs 20 trial")
    ap.add_argument(
        "--rest",
        action="store_true",
        help="also time the next run's sync of the rest after a trial's first batch",
    )
    ap.add_argument(
        "--changes",
        action="store_true",
        help="also time claims (64 a call) and state changes of 4,000 jobs on the recorded state",
    )
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    trees = [t.resolve() for t in args.trees]
    results: dict[int, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.shape == "captions":
            captions(folder, args.captions)
            path = manifest(folder, "txt")
        else:
            from state_scale import dataset_manifest  # (which imports this module)

            path = dataset_manifest(folder, args.captions)
        for _ in range(args.runs):
            for i, tree in enumerate(trees):
                result = once(tree, path, args.rest, args.changes)
                if args.trial:
                    result["trial"] = trial(tree, path)
                results.setdefault(i, []).append(result)
    rows = []
    for i, values in sorted(results.items()):

        def m(key: str, values: list[dict[str, float]] = values) -> float:
            return median([v[key] for v in values])

        jobs = m("jobs")
        rows.append(
            [
                f"{i}: {trees[i].name}",
                f"{jobs:,.0f}",
                f"{m('seconds'):.1f}",
                f"{m('written') / 1e6:,.0f}",
                f"{m('size') / 1e6:,.1f}",
                f"{m('size') / jobs:,.0f}",
                f"{(m('size') - m('text')) / jobs:,.0f}",
                f"{m('written') / m('size'):.1f}",
                f"{m('trial'):.1f}" if args.trial else "",
                f"{m('rest'):.1f} s, {m('rest_written') / m('rest_size'):.1f}x"
                if args.rest
                else "",
                f"{m('claim_us'):.0f} / {m('change_us'):.0f}" if args.changes else "",
            ]
        )
    shape = (
        f"{args.captions:,} captions (one model, one seed)"
        if args.shape == "captions"
        else f"{args.captions:,} jobs (1,000 prompts x 10 models x seeds)"
    )
    print(
        f"{machine()}; {shape}; load {os.getloadavg()[0]:.1f}; medians of {args.runs} alternated runs"
    )
    print(
        table(
            [
                "tree",
                "jobs",
                "record s",
                "written MB",
                "state MB",
                "B/job",
                "B/job beyond text",
                "written/state",
                "trial s",
                "rest after a trial",
                "claim / change CPU µs",
            ],
            rows,
        )
    )
    print(
        f"reproduce: python bench/plan_recording.py --shape {args.shape} --captions {args.captions} "
        f"{'--trial ' * args.trial}{'--rest ' * args.rest}{'--changes ' * args.changes}--runs {args.runs} "
        + " ".join(map(str, trees))
    )


if __name__ == "__main__":
    main()
