"""Lost state, images safe in the bucket: the rerun must adopt every job and submit nothing (issue 25).

Two cases on the harness of bench/scale_out.py (a private PostgreSQL cluster, SeaweedFS `weed mini`,
the emulator in its own process with latency, the kill_trials.py fault mix and two accounts):

  distributed   --workers `renderer run --state postgresql://… --output s3://…` finish --jobs jobs;
                then the run's PostgreSQL schema is dropped and one new worker (its own empty
                directory, as on a fresh machine) runs the same command.
  sqlite+s3     one `renderer run --output s3://…` (state in renderer.sqlite beside it) finishes
                --jobs jobs; then renderer.sqlite is deleted and the same command runs again.

Per case: jobs finished by the first run, submits the emulator saw during the rerun (must be 0),
inputs it saw twice against those the run recorded as paid twice (unexplained must be 0), jobs the
rerun said it adopted, images in the bucket (each one's sha256 its sidecar's), the rerun's exit code
and wall time.

    python bench/lost_state.py                      # 3 workers, 400 jobs, faults on

Exit code 0 when both cases passed, 1 when one failed, 3 when PostgreSQL or S3 could not be started.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table
from _emu import ROOT, emulator, stats
from scale_out import (
    ACCOUNTS,
    NAME,
    Run,
    Setup,
    Unavailable,
    bucket_check,
    detect,
    explained,
    servers,
)

sys.path.insert(0, str(ROOT))
ADOPTED = re.compile(r"rebuilt the state of (\d+) finished job")


def _adopted(run: Run, index: int) -> int:
    """What the rerun's event log says it adopted (the newest log of worker `index`)."""
    logs = sorted((run.folder / f"w{index}").glob("events*.jsonl"), key=lambda p: p.stat().st_mtime)
    found = ADOPTED.search(logs[-1].read_text(errors="replace")) if logs else None
    return int(found.group(1)) if found else 0


def _lose(case: str, s: Setup, run: Run) -> None:
    """Make the state vanish while the bucket keeps every image."""
    if case == "distributed":
        import psycopg

        from renderer.state.postgres import schema_name

        assert run.state is not None
        with psycopg.connect(run.state, autocommit=True) as db:
            db.execute(f'DROP SCHEMA "{schema_name(NAME)}" CASCADE')
    else:
        (run.folder / "w0" / "outputs" / NAME / "renderer.sqlite").unlink()


def one_case(s: Setup, case: str, url: str) -> tuple[bool, list[Any]]:
    a = s.args
    shared = case == "distributed"
    run = s.new_run(case, a.jobs, url, shared=shared)
    for i in range(a.workers if shared else 1):
        run.start(i)
    codes = run.wait(a.timeout)
    first = run.status()
    finished = int(first["counts"].get("downloaded", 0))
    before = stats(url)
    # The first run's own duplicates (the fault mix causes some) are judged against its record,
    # which goes with the state: the rerun must add no duplicate at all.
    first_dupes, first_recorded, first_unexplained = explained(before, first)
    _lose(case, s, run)
    again = len(run.workers) if shared else 0  # a fresh directory, or the same one for SQLite
    started = time.monotonic()
    proc = run.start(again)
    code = proc.wait(a.timeout)
    seconds = time.monotonic() - started
    after = stats(url)
    status = run.status()
    submits = int(after["submits"]) - int(before["submits"])
    dupes = int(after["duplicate_submits"]) - int(before["duplicate_submits"])
    found = bucket_check(s.servers.s3_env, s.servers.bucket, run.output.split("/", 3)[3])
    adopted = _adopted(run, again)
    done = int(status["counts"].get("downloaded", 0))
    ok = (
        all(c == 0 for c in codes)
        and code == 0
        and submits == 0
        and first_unexplained == 0
        and dupes == 0
        and adopted == finished
        and done == finished == a.jobs
        and found["images"] == a.jobs
        and found["bad_images"] == 0
    )
    row = [
        case,
        " ".join(map(str, codes)),
        f"{finished}/{a.jobs}",
        adopted,
        f"{first_dupes}/{first_recorded}/{first_unexplained}",
        submits,
        dupes,
        f"{found['images']}/{a.jobs}",
        code,
        f"{seconds:.1f}",
        "ok" if ok else "FAIL",
    ]
    if not ok:
        print(f"# {case} failed: {run.stderr_tail()}", file=sys.stderr)
    return ok, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--cases", default="distributed,sqlite+s3")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--latency", default="uniform:0.1:0.3", help="emulator service time")
    parser.add_argument("--seed", type=int, default=20261205)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take")
    parser.add_argument("--pg", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--s3-endpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--s3-bucket", default="renders", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for var, _ in ACCOUNTS:
        os.environ.setdefault(var, f"made-up-key-{var.lower()}")
    rows: list[list[Any]] = []
    all_ok = True
    with tempfile.TemporaryDirectory(prefix="lost-") as tmp:
        folder = Path(tmp)
        try:
            with servers(args, need_pg=True) as srv:
                setup = Setup(args, detect(folder), srv, folder)
                for case in [c for c in args.cases.split(",") if c]:
                    with emulator(*setup.emulator_args(faults=True)) as (url, _):
                        ok, row = one_case(setup, case, url)
                    rows.append(row)
                    all_ok &= ok
        except Unavailable as exc:
            print(f"lost_state: {exc}", file=sys.stderr)
            return 3
    print(
        f"# lost state, images in the bucket (issue 25); {machine()}; load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"# reproduce: python bench/lost_state.py --workers {args.workers} --jobs {args.jobs} "
        f"--cases {args.cases} --lease {args.lease:g} --latency {args.latency} --seed {args.seed}"
    )
    header = (
        "case",
        "first run's exit codes",
        "finished",
        "adopted by the rerun",
        "first run: seen twice/recorded/unexplained",
        "rerun's submits",
        "rerun's inputs seen twice",
        "in bucket",
        "rerun exit",
        "rerun s",
        "",
    )
    print(table(header, rows))
    print(f"# result: {'PASS' if all_ok else 'FAIL'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
