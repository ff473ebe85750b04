"""Chaos trials: a distributed run's own services fail under it (issue 25).

Each trial is a fresh distributed run on this machine (the harness of bench/scale_out.py: a private
PostgreSQL cluster, SeaweedFS `weed mini`, the emulator with latency, faults and two accounts, and
--workers `renderer run` processes, each in its own directory) during which one kind of trouble
strikes at random moments:

  pg-restart   `pg_ctl restart -m fast` (every connection cut; the server back after ~1 s)
  s3-outage    SeaweedFS stopped for --s3-down seconds (a random length in that range), then started
  pg-stop      every PostgreSQL process SIGSTOPped for --pg-pause seconds, then SIGCONT

A worker that exits 75 (its service away longer than the outage window) is started again, as a
scheduler would; a worker still running --timeout seconds after the last disruption is a hang
(killed and counted). When every worker has ended and jobs remain, one more worker (a rerun)
finishes the run. Per trial the table gives the disruptions, every exit code, restarts, hangs,
images in the bucket (whole: sha256 = sidecar's), jobs lost, duplicate submits at the emulator
against those the run recorded as paid twice (unexplained must be 0), and the wall time.

    python bench/chaos_trials.py                      # 3 workers, 300 jobs, 10 trials of each kind
    python bench/chaos_trials.py --trials 2 --events 2 --jobs 300 --s3-down 20:30   # reduced

Exit code: 0 when every trial passed (0 hangs, 0 lost, 0 unexplained duplicates, the run complete),
1 when one failed, 3 when PostgreSQL or S3 could not be started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, table
from _emu import ROOT, emulator, stats
from scale_out import (
    ACCOUNTS,
    Setup,
    Unavailable,
    bucket_check,
    detect,
    explained,
    servers,
)

sys.path.insert(0, str(ROOT))
KINDS = ("pg-restart", "s3-outage", "pg-stop")
OUTAGE_EXIT = 75


def _postgres_pids(admin_url: str) -> list[int]:
    """The postmaster of the harness's own cluster (by its postmaster.pid) and its children (by /proc)."""
    folder = Path(admin_url.split("host=", 1)[1].split("&", 1)[0])
    postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry.name))
    return pids


def disrupt(kind: str, s: Setup, rng: random.Random, log: list[str]) -> None:
    """One disruption of `kind`, start to end (blocking)."""
    from tests import servers as real

    a = s.args
    if kind == "pg-restart":
        assert s.servers.pg is not None
        real.restart_postgres(s.servers.pg, "fast")
        log.append("restart")
    elif kind == "s3-outage":
        low, high = (float(x) for x in a.s3_down.split(":"))
        down = rng.uniform(low, high)
        endpoint = s.servers.s3_env["AWS_ENDPOINT_URL"]
        real.stop_s3(endpoint)
        time.sleep(down)
        real.start_s3(endpoint)
        log.append(f"s3 {down:.0f}s")
    else:
        assert s.servers.pg is not None
        pids = _postgres_pids(s.servers.pg)
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                    os.kill(pid, signal.SIGSTOP)
            time.sleep(a.pg_pause)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        log.append(f"stop {a.pg_pause:g}s")


def trial(s: Setup, kind: str, number: int, url: str) -> tuple[bool, list[Any]]:
    a = s.args
    rng = random.Random(a.seed * 1000 + number * 10 + KINDS.index(kind))
    run = s.new_run(f"{kind}-{number}", a.jobs, url, shared=True)
    run.env["RENDERER_OUTAGE"] = f"{a.outage:g}"
    started = time.monotonic()
    for i in range(a.workers):
        run.start(i)
    expected = a.jobs / max(1.0, a.rate_estimate)
    moments = sorted(rng.uniform(0.1, 0.8) * expected for _ in range(a.events))
    events: list[str] = []

    def strike() -> None:
        for moment in moments:
            time.sleep(max(0.0, started + moment - time.monotonic()))
            disrupt(kind, s, rng, events)

    chaos = threading.Thread(target=strike, daemon=True)
    chaos.start()
    codes: list[int] = []
    restarts = hangs = 0
    live = list(enumerate(run.workers))
    while live:
        time.sleep(0.2)
        for index, proc in list(live):
            code = proc.poll()
            if code is None:
                if not chaos.is_alive() and time.monotonic() - started > a.timeout + expected:
                    proc.kill()
                    proc.wait()
                    hangs += 1
                    live.remove((index, proc))
                    codes.append(-9)
                continue
            live.remove((index, proc))
            codes.append(code)
            if code == OUTAGE_EXIT and restarts < 10 * a.workers:
                restarts += 1  # a scheduler starts it again (after its service came back)
                chaos.join(0)
                live.append((index, run.start(index)))
    chaos.join()
    status = run.status()
    rerun = False
    if int(status["counts"].get("downloaded", 0)) + int(status["counts"].get("failed", 0)) < a.jobs:
        rerun = True
        proc = run.start(a.workers)
        try:
            codes.append(proc.wait(a.timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            hangs += 1
            codes.append(-9)
        status = run.status()
    seconds = time.monotonic() - started
    emu = stats(url)
    found = bucket_check(s.servers.s3_env, s.servers.bucket, run.output.split("/", 3)[3])
    dupes, recorded, unexplained = explained(emu, status)
    failed = int(status["counts"].get("failed", 0))
    lost = a.jobs - int(status["counts"].get("downloaded", 0)) - failed
    ok = (
        hangs == 0
        and lost == 0
        and unexplained == 0
        and found["bad_images"] == 0
        and found["images"] == a.jobs - failed
        and all(c in (0, 1, OUTAGE_EXIT) for c in codes)
    )
    row = [
        kind,
        number,
        ", ".join(events) or "-",
        " ".join(map(str, codes)),
        restarts,
        "yes" if rerun else "no",
        hangs,
        f"{found['images']}/{a.jobs}",
        failed,
        lost,
        dupes,
        recorded,
        unexplained,
        f"{seconds:.0f}",
        "ok" if ok else "FAIL",
    ]
    if not ok:
        print(f"# {kind} #{number} failed: {run.stderr_tail()}", file=sys.stderr)
    return ok, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--trials", type=int, default=10, help="trials of each kind")
    parser.add_argument("--events", type=int, default=1, help="disruptions per trial")
    parser.add_argument("--kinds", default=",".join(KINDS), help="which kinds, comma-separated")
    parser.add_argument("--s3-down", default="20:60", help="seconds SeaweedFS stays down: LOW:HIGH")
    parser.add_argument(
        "--pg-pause", type=float, default=10.0, help="seconds PostgreSQL is stopped"
    )
    parser.add_argument("--outage", type=float, default=90.0, help="the workers' outage window")
    parser.add_argument("--lease", type=float, default=30.0, help="the workers' lease")
    parser.add_argument("--latency", default="uniform:0.3:0.9", help="emulator service time")
    parser.add_argument(
        "--rate-estimate",
        type=float,
        default=8.0,
        help="jobs/s the run makes undisturbed (places the disruptions inside the run)",
    )
    parser.add_argument("--seed", type=int, default=20261205)
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds after the last disruption = a hang"
    )
    parser.add_argument("--pg", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--s3-endpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--s3-bucket", default="renders", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(unknown)} (use {', '.join(KINDS)})")
    for var, _ in ACCOUNTS:
        os.environ.setdefault(var, f"made-up-key-{var.lower()}")
    rows: list[list[Any]] = []
    all_ok = True
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        folder = Path(tmp)
        features = detect(folder)
        try:
            with servers(args, need_pg=True) as srv:
                setup = Setup(args, features, srv, folder)
                emulator_args = setup.emulator_args(faults=True)
                for kind in kinds:
                    for number in range(1, args.trials + 1):
                        with emulator(*emulator_args) as (url, _):
                            ok, row = trial(setup, kind, number, url)
                        rows.append(row)
                        all_ok &= ok
                        print(json.dumps({"trial": row}), file=sys.stderr, flush=True)
        except Unavailable as exc:
            print(f"chaos_trials: {exc}", file=sys.stderr)
            return 3
    print(f"# chaos trials (issue 25); {machine()}; shared machine, timings noisy")
    print(
        f"# reproduce: python bench/chaos_trials.py --workers {args.workers} --jobs {args.jobs} "
        f"--trials {args.trials} --events {args.events} --kinds {','.join(kinds)} "
        f"--s3-down {args.s3_down} --pg-pause {args.pg_pause:g} --outage {args.outage:g} "
        f"--lease {args.lease:g} --latency {args.latency} --seed {args.seed}"
    )
    print(
        table(
            (
                "kind",
                "trial",
                "disruptions",
                "exit codes",
                "restarted (75)",
                "rerun",
                "hangs",
                "in bucket",
                "failed",
                "lost",
                "dupes",
                "recorded paid twice",
                "unexplained",
                "s",
                "",
            ),
            rows,
        )
    )
    for kind in kinds:
        times = [float(r[13]) for r in rows if r[0] == kind]
        if times:
            print(f"# {kind}: median wall {median(times):.0f} s over {len(times)} trial(s)")
    print(f"# result: {'PASS' if all_ok else 'FAIL'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
