"""Benchmark: whole `renderer run` commands against a fal-protocol server with S slots (issue 23).

The server is bench/slot_server.py, written apart from the emulator (aiohttp and the standard
library only), in its own process: one account, S slots, a fixed service time L, requests beyond
S wait IN_QUEUE. Each repetition starts a fresh server for each client and runs:

  * renderer: `renderer run` (bench/_run.py, a child process) of N one-image jobs with a manifest
    that sets only `limits: {concurrency: S}` (no rate, every other setting its default), over
    plain HTTP;
  * fal-client 1.0.3 as a user writes it (bench/falclient_async.py: AsyncClient, a semaphore of S,
    one httpx client for the downloads), over HTTPS (fal-client speaks nothing else).

Figures per client: the whole command's wall time, spawn to exit (interpreter start, imports,
planning and the last write included), as a ratio of the ideal N·L/S; the client's CPU time, the
whole process (from the parent's RUSAGE_CHILDREN), per job; the server's peak of requests running
and queued at once; where the renderer's time went (spawn to the first request running, the span
of running requests with the share of its slot time left idle, the last completion to exit).
Medians of --runs; the 1-minute load average is read before each run (the
machine's 2 cores are shared), and the table shows its range.

Reproduce:  python bench/concurrency.py [--runs 3] [--configs 8:0.5:2000,64:0.2:2000,...]
            [--falclient-max-jobs 10000] [--skip-falclient]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env, machine, median, table

HERE = Path(__file__).resolve().parent
CONFIGS = "8:0.5:2000,64:0.2:2000,64:0.2:10000,256:1.0:2000,256:1.0:10000"


def write_manifest(folder: Path, jobs: int, slots: int) -> Path:
    """N one-image jobs (a prompt file, as at scale), setting nothing but the concurrency."""
    (folder / "prompts.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i:06d}", "text": f"picture {i}"}) + "\n" for i in range(jobs))
    )
    path = folder / "bench.yaml"
    path.write_text(
        "name: bench\n"
        "prompts: [{file: prompts.jsonl}]\n"
        "models: [fal-ai/flux-1/schnell]\n"
        "seeds: [1]\n"
        f"limits: {{concurrency: {slots}}}\n"
    )
    return path


@contextmanager
def certificate() -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes"),
                *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"),
                *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
        )
        yield str(cert), str(key)


@contextmanager
def server(slots: int, seconds: float, tls: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """(http URL, https URL) of a fresh slot server in its own process."""
    cmd = [sys.executable, str(HERE / "slot_server.py"), str(slots), str(seconds), "--tls", *tls]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if not line or line[0] != "READY":
                raise RuntimeError("the slot server did not start")
            yield line[1], line[2]
        finally:
            proc.terminate()


def server_stats(url: str, ca: str) -> dict[str, Any]:
    import ssl

    context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
    with urllib.request.urlopen(f"{url}/_stats", context=context) as resp:
        return dict(json.loads(resp.read()))


BREAKDOWN: list[list[str]] = []  # one row per renderer run: where its wall time went

SPAWNED: list[
    float
] = []  # time.monotonic() of the last command's spawn and exit (system-wide clock)


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds spawn to exit, the child's CPU seconds, its stdout) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    SPAWNED[:] = [time.monotonic()]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    SPAWNED.append(time.monotonic())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[1]} exited {done.returncode}: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def run_renderer(m: Path, url: str, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, str(HERE / "_run.py"), "run", str(m), "--provider", url]
    cmd += ["--output", str(out), "--quiet"]
    wall, cpu, stdout = measured(cmd, child_env(FAL_KEY="bench"))
    line = next((x for x in stdout.splitlines() if x.startswith("BENCH ")), "")
    record = json.loads(line[6:]) if line else {"code": -1, "stderr": stdout[-500:]}
    if record["code"] != 0:
        raise RuntimeError(f"renderer exited {record['code']}: {record.get('stderr')}")
    return wall, cpu


def run_falclient(url: str, jobs: int, slots: int, out: Path, ca: str) -> tuple[float, float]:
    host = url.split("://", 1)[1]
    env = child_env(FAL_KEY="bench", FAL_QUEUE_RUN_HOST=host, FAL_RUN_HOST=host, SSL_CERT_FILE=ca)
    cmd = [sys.executable, str(HERE / "falclient_async.py"), str(jobs), str(slots), str(out)]
    wall, cpu, _ = measured(cmd, env)
    return wall, cpu


def one_config(
    slots: int, seconds: float, jobs: int, runs: int, falclient: bool, tls: tuple[str, str]
) -> list[str]:
    ideal = jobs * seconds / slots
    got: dict[str, list[float]] = {k: [] for k in ("r_wall", "r_cpu", "f_wall", "f_cpu", "load")}
    peaks: list[tuple[int, int]] = []
    # Where the renderer's time went, from the server's slot accounting (CLOCK_MONOTONIC is one
    # clock for every process): spawn → first request running, the span of running requests,
    # the share of S x span the slots stood idle, and the last completion → exit.
    phases: dict[str, list[float]] = {
        k: [] for k in ("first", "span", "idle", "tail", "submit", "ramp", "gaps", "p90", "max")
    }
    with tempfile.TemporaryDirectory() as tmp:
        m = write_manifest(Path(tmp), jobs, slots)
        for n in range(runs):
            got["load"].append(os.getloadavg()[0])
            with server(slots, seconds, tls) as (http, _):
                wall, cpu = run_renderer(m, http, Path(tmp) / f"r{n}")
                stats = server_stats(http, tls[0])
            got["r_wall"].append(wall)
            got["r_cpu"].append(cpu)
            span = stats["last_end"] - stats["first_start"]
            phases["first"].append(stats["first_start"] - SPAWNED[0])
            phases["span"].append(span)
            phases["idle"].append(1 - stats["busy"] / (slots * span))
            phases["tail"].append(SPAWNED[1] - stats["last_end"])
            # The breakdown: spawn → first submit, first running → all S running, and the refill
            # gaps (a slot idle because nothing was queued when it freed) as wall seconds (÷ S).
            phases["submit"].append(stats["first_submit"] - SPAWNED[0])
            phases["ramp"].append((stats["full"] or stats["first_start"]) - stats["first_start"])
            phases["gaps"].append(stats["gaps"]["sum"] / slots)
            phases["p90"].append(stats["gaps"]["p90"])
            phases["max"].append(stats["gaps"]["max"])
            BREAKDOWN.append(
                [
                    f"{slots}:{seconds:g}:{jobs}",
                    str(n + 1),
                    f"{wall:.2f}",
                    f"{cpu:.2f}",
                    f"{phases['submit'][-1]:.2f}",
                    f"{phases['first'][-1]:.2f}",
                    f"{phases['ramp'][-1]:.2f}",
                    f"{span - ideal:.2f}",
                    f"{phases['gaps'][-1]:.2f}",
                    f"{1000 * stats['gaps']['p50']:.0f} / {1000 * phases['p90'][-1]:.0f} / "
                    f"{1000 * phases['max'][-1]:.0f}",
                    f"{phases['tail'][-1]:.2f}",
                    f"{got['load'][-1]:.2f}",
                ]
            )
            peaks.append((stats["peak_running"], stats["peak_queued"]))
            if falclient:
                got["load"].append(os.getloadavg()[0])
                with server(slots, seconds, tls) as (_, https):
                    wall, cpu = run_falclient(https, jobs, slots, Path(tmp) / f"f{n}", tls[0])
                got["f_wall"].append(wall)
                got["f_cpu"].append(cpu)
            print(
                f"# {slots}:{seconds:g}:{jobs} run {n + 1}: renderer {got['r_wall'][-1]:.2f} s "
                + (f"fal-client {got['f_wall'][-1]:.2f} s " if falclient else "")
                + f"load {got['load'][-1]:.2f}",
                file=sys.stderr,
                flush=True,
            )
    r_wall, r_cpu = median(got["r_wall"]), median(got["r_cpu"])
    row = [
        str(slots),
        f"{seconds:g}",
        str(jobs),
        f"{ideal:.2f}",
        f"{r_wall:.2f}",
        f"{ideal / r_wall:.3f}",
        f"{ideal / max(got['r_wall']):.3f}",
        f"{1000 * r_cpu / jobs:.2f}",
        f"{max(p for p, _ in peaks)}/{max(q for _, q in peaks)}",
        f"{median(phases['first']):.2f} / {median(phases['span']):.2f} "
        f"({100 * median(phases['idle']):.1f} %) / {median(phases['tail']):.2f}",
    ]
    if falclient:
        f_wall, f_cpu = median(got["f_wall"]), median(got["f_cpu"])
        row += [
            f"{f_wall:.2f}",
            f"{ideal / f_wall:.3f}",
            f"{1000 * f_cpu / jobs:.2f}",
            f"{r_cpu / f_cpu:.3f}",
        ]
    else:
        row += ["-", "-", "-", "-"]
    row.append(f"{min(got['load']):.1f}-{max(got['load']):.1f}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--configs", default=CONFIGS, help="S:L:N triples")
    ap.add_argument(
        "--falclient-max-jobs",
        type=int,
        default=10_000,
        help="run fal-client only where N is at most this",
    )
    ap.add_argument("--skip-falclient", action="store_true")
    args = ap.parse_args()
    rows = []
    with certificate() as tls:
        for triple in args.configs.split(","):
            s, l_, n = triple.split(":")
            falclient = not args.skip_falclient and int(n) <= args.falclient_max_jobs
            rows.append(one_config(int(s), float(l_), int(n), args.runs, falclient, tls))
            # Each row as it is done (a long run interrupted keeps what it measured).
            print("# row: " + " | ".join(rows[-1]), file=sys.stderr, flush=True)
    print(
        f"# whole `renderer run` vs ideal N*L/S against bench/slot_server.py (S slots, L s each); "
        f"{machine()}; medians of {args.runs}"
    )
    print(
        f"# reproduce: python bench/concurrency.py --runs {args.runs} --configs {args.configs}"
        + (f" --falclient-max-jobs {args.falclient_max_jobs}" if not args.skip_falclient else "")
        + (" --skip-falclient" if args.skip_falclient else "")
    )
    print(
        table(
            [
                "S",
                "L s",
                "N",
                "ideal s",
                "renderer s",
                "ratio",
                "worst",
                "CPU ms/job",
                "peak running/queued",
                "first s / span s (idle) / tail s",
                "fal-client s",
                "ratio",
                "CPU ms/job",
                "CPU renderer/fal-client",
                "load",
            ],
            rows,
        )
    )
    print(
        "\n# where each renderer run's time went: spawn → first submit, → first running; ramp = first "
        "running → S running; span - ideal; refill gaps = slot-seconds idle with nothing queued ÷ S "
        "(p50/p90/max of one gap, ms); last completion → exit"
    )
    print(
        table(
            [
                "S:L:N",
                "run",
                "wall s",
                "CPU s",
                "first submit s",
                "first running s",
                "ramp s",
                "span - ideal s",
                "refill gaps s",
                "gap p50/p90/max ms",
                "tail s",
                "load",
            ],
            BREAKDOWN,
        )
    )


if __name__ == "__main__":
    main()
