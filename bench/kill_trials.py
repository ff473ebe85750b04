"""kill -9 at random moments during a run against a faulty provider: is anything lost, partial, orphaned or paid twice?

Each trial starts `renderer run` in a child process and SIGKILLs it at a random moment after its
first submission; a final run then finishes the work. Submissions are rate-limited (--rate), so
however fast the machine is, the trials together cannot finish the plan (at most
kills x (rate x max-life + 1) jobs): every kill lands mid-run. Afterwards:

  lost      jobs not downloaded after the final run (must be 0)
  partial   files at a final path that do not decode or do not match their sidecar (must be 0)
  orphaned  temporary (*.part) files anywhere in the run after the final run (must be 0)
  dupes     inputs the emulator received more than once, against what the store recorded:
            submits without a recorded outcome (a kill between a submit and its commit) plus
            resubmissions with a reason (runner errors, expired results). Unexplained must be 0.

The last line is a JSON record (for tests/test_runner.py, which runs a few kills).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table
from _emu import ROOT, emulator, stats

FAULTS = {
    "--fault-429": 0.05,
    "--fault-ingress": 0.03,
    "--fault-runner": 0.03,
    "--fault-drop": 0.03,
    "--fault-truncate": 0.02,
    "--fault-corrupt": 0.02,
}


def write_manifest(folder: Path, jobs: int, rate: float) -> Path:
    import yaml

    prompts = [{"id": f"p{i:04d}", "text": f"picture {i}"} for i in range(jobs)]
    path = folder / "kill.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "kill",
                "prompts": prompts,
                "models": ["fal-ai/flux-1/schnell"],
                "seeds": [1],
                "limits": {"concurrency": 8, "rate": rate},
                "retries": {"attempts": 8, "backoff": 0.01, "max_backoff": 0.1},
            },
            sort_keys=False,
        )
    )
    return path


def start(manifest: Path, url: str, output: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FAL_KEY": "k", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "renderer",
            "run",
            str(manifest),
            "--provider",
            url,
            "--output",
            str(output),
            "--quiet",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def partial_files(run_dir: Path, *, sidecars: bool) -> int:
    """Files at a final image path that do not decode (with sidecars: or do not match their sidecar).

    Right after a kill an image may lack its sidecar (it is written second, and the job is not yet
    recorded as finished, so the next run writes both again): only decoding is checked then.
    """
    from PIL import Image

    bad = 0
    for path in run_dir.rglob("*"):
        if path.suffix not in (".png", ".jpg", ".webp") or path.name.startswith("."):
            continue
        try:
            with Image.open(path) as image:
                image.load()
            if sidecars:
                sidecar = json.loads(path.with_suffix(".json").read_text())
                if sidecar["sha256"] != hashlib.sha256(path.read_bytes()).hexdigest():
                    bad += 1
        except Exception:  # anything that is not a whole (described) image counts
            bad += 1
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument(
        "--rate", type=float, default=2.0, help="submissions per second (bounds work per trial)"
    )
    parser.add_argument(
        "--max-life",
        type=float,
        default=1.0,
        help="longest time a trial lives after its first submission, seconds",
    )
    parser.add_argument("--seed", type=int, default=20261123)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    fault_args = [str(x) for kv in FAULTS.items() for x in kv]
    with (
        tempfile.TemporaryDirectory() as tmp,
        emulator("--latency", "0.2", "--workers", "8", "--seed", str(args.seed), *fault_args) as (
            url,
            _,
        ),
    ):
        folder = Path(tmp)
        manifest = write_manifest(folder, args.jobs, args.rate)
        output = folder / "out"
        run_dir = output / "kill"
        kills = mid_run = partial_seen = temp_seen = 0
        started = time.monotonic()
        for _ in range(args.kills):
            before = stats(url)["submit_attempts"]
            proc = start(manifest, url, output)
            # The random moment is counted from the trial's first submission (start-up time on
            # a loaded machine varies by seconds, and a kill before any work proves little).
            deadline = time.monotonic() + 60
            while (
                stats(url)["submit_attempts"] == before
                and proc.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, args.max_life))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(60)
            mid_run += stats(url)["submit_attempts"] > before
            partial_seen += partial_files(run_dir, sidecars=False)
            temp_seen += sum(1 for _ in run_dir.rglob("*.part"))
        final = start(manifest, url, output)
        code = final.wait(600)
        seconds = time.monotonic() - started
        emu = stats(url)
        db = sqlite3.connect(run_dir / "renderer.sqlite")
        downloaded = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'downloaded'").fetchone()[
            0
        ]
        ambiguous = db.execute("SELECT COALESCE(SUM(ambiguous_resubmits), 0) FROM runs").fetchone()[
            0
        ]
        resubmits = db.execute("SELECT COUNT(*) FROM resubmits").fetchone()[0]
        db.close()
        record = {
            "jobs": args.jobs,
            "kills": kills,
            "kills_mid_run": mid_run,
            "final_exit": code,
            "lost": args.jobs - downloaded,
            "partial": partial_files(run_dir, sidecars=True),
            "partial_seen_after_kills": partial_seen,
            "orphaned_temp": sum(1 for _ in run_dir.rglob("*.part")),
            "temp_seen_after_kills": temp_seen,
            "submits": emu["submits"],
            "duplicates": emu["duplicate_submits"],
            "recorded_ambiguous": ambiguous,
            "recorded_resubmits": resubmits,
            "unexplained_duplicates": max(0, emu["duplicate_submits"] - ambiguous - resubmits),
            "faults": emu["faults"],
            "seconds": round(seconds, 1),
        }
    print(f"# kill -9 trials against a faulty emulator; {machine()}; shared machine, timings noisy")
    print(
        f"# reproduce: python bench/kill_trials.py --jobs {args.jobs} --kills {args.kills} --rate {args.rate:g} "
        f"--seed {args.seed}"
    )
    print(
        table(
            (
                "jobs",
                "kills",
                "mid-run",
                "lost",
                "partial",
                "orphaned tmp",
                "submits",
                "dupes",
                "ambiguous",
                "resubmits",
                "unexplained",
                "final exit",
                "s",
            ),
            [
                (
                    record["jobs"],
                    kills,
                    mid_run,
                    record["lost"],
                    record["partial"],
                    record["orphaned_temp"],
                    record["submits"],
                    record["duplicates"],
                    ambiguous,
                    resubmits,
                    record["unexplained_duplicates"],
                    code,
                    record["seconds"],
                )
            ],
        )
    )
    print(f"# faults injected: {json.dumps(emu['faults'], sort_keys=True)}")
    print(json.dumps(record, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
