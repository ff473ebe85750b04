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
machine's 2 cores are shared), and the table shows its range. Each run's rows also give its user and
system CPU apart and two probes taken just before it: the host's speed (a fixed Python loop, ms)
and the kernel's cost of one new file in the output's file system (us; see create_cost): the
same tree's CPU a job moves with both, so compare trees only within one A/B. `--tree DIR` (repeatable) runs
the renderer of other checkouts too (`git worktree add --detach DIR COMMIT`), each with its own
bench/_run.py and PYTHONPATH, alternating with this one run by run: an A/B under the same load.

Reproduce:  python bench/concurrency.py [--runs 3] [--configs 8:0.5:2000,64:0.2:2000,...]
            [--falclient-max-jobs 10000] [--skip-falclient] [--tree DIR ...]
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
IMAGE: list[str] = []  # --image FILE WIDTH HEIGHT: what the server returns instead of 64x64


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
    cmd += ["--image", *IMAGE] if IMAGE else []
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
FALCLIENT_RUNS: list[list[str]] = []  # one row per fal-client run

SPAWNED: list[
    float
] = []  # time.monotonic() of the last command's spawn and exit (system-wide clock)


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds spawn to exit, the child's CPU seconds, its stdout) of one command; its user
    and system seconds apart in LAST_CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    SPAWNED[:] = [time.monotonic()]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    SPAWNED.append(time.monotonic())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[1]} exited {done.returncode}: {done.stderr[-2000:]}")
    LAST_CPU[:] = [after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime]
    return wall, sum(LAST_CPU), done.stdout


LAST_CPU: list[float] = []  # user, system seconds of the last measured command


def host_speed() -> float:
    """Milliseconds this process takes for a fixed loop of Python: how fast the shared host runs
    now (~70 quiet here, 110 and more when other machines load it). Read before each run."""
    start = time.perf_counter()
    total = 0
    for i in range(1_500_000):
        total += i * i
    return 1000 * (time.perf_counter() - start)


def create_cost(folder: Path, files: int = 300) -> float:
    """Microseconds the kernel takes now to create (and rename) one file in `folder`'s file system.

    It moves a lot on this machine's disk (ext4 without a journal): 25-500 us a file from one
    minute to the next, and a perf profile of a slow run had ~27 % of the renderer's CPU samples
    in ext4's search for a free inode (find_inode_bit, which steps past inodes freed in the last
    ~30 s, one cached-block lookup each). A job makes three (its folder, image and sidecar);
    fal-client's bench makes one a job. The probe's files stay until the bench ends (deleting
    them mid-bench would add to the next run's cost). bench/README.md, session 14."""
    folder.mkdir(parents=True)
    start = time.perf_counter()
    for i in range(files):
        path = folder / f"f{i}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.replace(path, folder / f"g{i}")
    return 1e6 * (time.perf_counter() - start) / files


def run_cells(wall: float, probes: tuple[float, float]) -> list[str]:
    """What each run's row says of the last measured command, for the renderer's and fal-client's:
    wall s, CPU s, user / sys s (its CPU from LAST_CPU, the one source of both), host ms, create
    us (the columns RUN_COLUMNS names)."""
    return [
        f"{wall:.2f}",
        f"{sum(LAST_CPU):.2f}",
        f"{LAST_CPU[0]:.2f} / {LAST_CPU[1]:.2f}",
        f"{probes[0]:.0f}",
        f"{probes[1]:.0f}",
    ]


RUN_COLUMNS = ["wall s", "CPU s", "user / sys s", "host ms", "create us"]


def run_renderer(m: Path, url: str, out: Path, tree: Path) -> tuple[float, float]:
    """`renderer run` of the checkout `tree` (its bench/_run.py puts it first on the path)."""
    cmd = [sys.executable, str(tree / "bench" / "_run.py"), "run", str(m), "--provider", url]
    cmd += ["--output", str(out), "--quiet"]
    wall, cpu, stdout = measured(cmd, child_env(FAL_KEY="bench", PYTHONPATH=str(tree)))
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
    slots: int,
    seconds: float,
    jobs: int,
    runs: int,
    falclient: bool,
    tls: tuple[str, str],
    trees: list[Path],
) -> list[list[str]]:
    """One table row per tree (the trees alternating run by run, fal-client once a repetition)."""
    ideal = jobs * seconds / slots
    got: dict[Path, dict[str, list[float]]] = {
        t: {k: [] for k in ("r_wall", "r_cpu", "load")} for t in trees
    }
    falc: dict[str, list[float]] = {k: [] for k in ("f_wall", "f_cpu", "load")}
    peaks: dict[Path, list[tuple[int, int]]] = {t: [] for t in trees}
    # Where the renderer's time went, from the server's slot accounting (CLOCK_MONOTONIC is one
    # clock for every process): spawn → first request running, the span of running requests,
    # the share of S x span the slots stood idle, and the last completion → exit.
    keys = ("first", "span", "idle", "tail", "submit", "ramp", "gaps", "p90", "max")
    phases: dict[Path, dict[str, list[float]]] = {t: {k: [] for k in keys} for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        m = write_manifest(Path(tmp), jobs, slots)
        for n in range(runs):
            for ti, tree in enumerate(trees):
                mine, ph = got[tree], phases[tree]
                mine["load"].append(os.getloadavg()[0])
                probes = (host_speed(), create_cost(Path(tmp) / f"probe-r{n}-{ti}"))
                with server(slots, seconds, tls) as (http, _):
                    wall, cpu = run_renderer(m, http, Path(tmp) / f"r{n}-{ti}", tree)
                    stats = server_stats(http, tls[0])
                mine["r_wall"].append(wall)
                mine["r_cpu"].append(cpu)
                span = stats["last_end"] - stats["first_start"]
                ph["first"].append(stats["first_start"] - SPAWNED[0])
                ph["span"].append(span)
                ph["idle"].append(1 - stats["busy"] / (slots * span))
                ph["tail"].append(SPAWNED[1] - stats["last_end"])
                # The breakdown: spawn → first submit, first running → all S running, and the
                # refill gaps (a slot idle because nothing was queued when it freed) as wall
                # seconds (÷ S).
                ph["submit"].append(stats["first_submit"] - SPAWNED[0])
                ph["ramp"].append((stats["full"] or stats["first_start"]) - stats["first_start"])
                ph["gaps"].append(stats["gaps"]["sum"] / slots)
                ph["p90"].append(stats["gaps"]["p90"])
                ph["max"].append(stats["gaps"]["max"])
                BREAKDOWN.append(
                    [
                        f"{slots}:{seconds:g}:{jobs}",
                        *([label(tree)] if len(trees) > 1 else []),
                        str(n + 1),
                        *run_cells(wall, probes),
                        f"{ph['submit'][-1]:.2f}",
                        f"{ph['first'][-1]:.2f}",
                        f"{ph['ramp'][-1]:.2f}",
                        f"{span - ideal:.2f}",
                        f"{ph['gaps'][-1]:.2f}",
                        f"{1000 * stats['gaps']['p50']:.0f} / {1000 * ph['p90'][-1]:.0f} / "
                        f"{1000 * ph['max'][-1]:.0f}",
                        f"{ph['tail'][-1]:.2f}",
                        f"{stats['peak_running']}/{stats['peak_queued']}",
                        f"{mine['load'][-1]:.2f}",
                    ]
                )
                peaks[tree].append((stats["peak_running"], stats["peak_queued"]))
                print(
                    f"# {slots}:{seconds:g}:{jobs} run {n + 1}: {label(tree)} {wall:.2f} s "
                    f"load {mine['load'][-1]:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
            if falclient:
                falc["load"].append(os.getloadavg()[0])
                probes = (host_speed(), create_cost(Path(tmp) / f"probe-f{n}"))
                with server(slots, seconds, tls) as (_, https):
                    wall, cpu = run_falclient(https, jobs, slots, Path(tmp) / f"f{n}", tls[0])
                FALCLIENT_RUNS.append(
                    [
                        f"{slots}:{seconds:g}:{jobs}",
                        str(n + 1),
                        *run_cells(wall, probes),
                        f"{falc['load'][-1]:.2f}",
                    ]
                )
                falc["f_wall"].append(wall)
                falc["f_cpu"].append(cpu)
                print(f"# fal-client {wall:.2f} s", file=sys.stderr, flush=True)
    rows = []
    for tree in trees:
        mine, ph = got[tree], phases[tree]
        r_wall, r_cpu = median(mine["r_wall"]), median(mine["r_cpu"])
        row = [
            *([label(tree)] if len(trees) > 1 else []),
            str(slots),
            f"{seconds:g}",
            str(jobs),
            f"{ideal:.2f}",
            f"{r_wall:.2f}",
            f"{ideal / r_wall:.3f}",
            f"{ideal / max(mine['r_wall']):.3f}",
            f"{1000 * r_cpu / jobs:.2f}",
            f"{max(p for p, _ in peaks[tree])}/{max(q for _, q in peaks[tree])}",
            f"{median(ph['first']):.2f} / {median(ph['span']):.2f} "
            f"({100 * median(ph['idle']):.1f} %) / {median(ph['tail']):.2f}",
        ]
        if falclient:
            f_wall, f_cpu = median(falc["f_wall"]), median(falc["f_cpu"])
            row += [
                f"{f_wall:.2f}",
                f"{ideal / f_wall:.3f}",
                f"{1000 * f_cpu / jobs:.2f}",
                f"{r_cpu / f_cpu:.3f}",
            ]
        else:
            row += ["-", "-", "-", "-"]
        loads = mine["load"] + falc["load"]
        row.append(f"{min(loads):.1f}-{max(loads):.1f}")
        rows.append(row)
    return rows


def label(tree: Path) -> str:
    """A tree as the tables name it: its folder and its commit."""
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{tree.name}@{head or '?'}"


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
    ap.add_argument(
        "--image",
        nargs=3,
        metavar=("FILE", "WIDTH", "HEIGHT"),
        help="the picture every request returns (default: a 64x64 PNG), e.g. a full-size one",
    )
    ap.add_argument(
        "--tree",
        action="append",
        type=Path,
        default=[],
        help="another checkout to run alternately with this one (repeatable)",
    )
    args = ap.parse_args()
    IMAGE[:] = [str(Path(args.image[0]).resolve()), *args.image[1:]] if args.image else []
    trees = [HERE.parent, *(t.resolve() for t in args.tree)]
    rows = []
    with certificate() as tls:
        for triple in args.configs.split(","):
            s, l_, n = triple.split(":")
            falclient = not args.skip_falclient and int(n) <= args.falclient_max_jobs
            for row in one_config(int(s), float(l_), int(n), args.runs, falclient, tls, trees):
                rows.append(row)
                # Each row as it is done (a long run interrupted keeps what it measured).
                print("# row: " + " | ".join(row), file=sys.stderr, flush=True)
    print(
        f"# whole `renderer run` vs ideal N*L/S against bench/slot_server.py (S slots, L s each); "
        f"{machine()}; medians of {args.runs}"
    )
    print(
        f"# reproduce: python bench/concurrency.py --runs {args.runs} --configs {args.configs}"
        + (f" --falclient-max-jobs {args.falclient_max_jobs}" if not args.skip_falclient else "")
        + (" --skip-falclient" if args.skip_falclient else "")
        + "".join(f" --tree {t}" for t in args.tree)
        + (" --image " + " ".join(args.image) if args.image else "")
    )
    print(
        table(
            [
                *(["tree"] if len(trees) > 1 else []),
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
        "(p50/p90/max of one gap, ms); last completion → exit; host ms = a fixed Python loop timed "
        "before the run (how fast the shared host was); create us = one file created and renamed "
        "in the output's file system just before (create_cost)"
    )
    print(
        table(
            [
                "S:L:N",
                *(["tree"] if len(trees) > 1 else []),
                "run",
                *RUN_COLUMNS,
                "first submit s",
                "first running s",
                "ramp s",
                "span - ideal s",
                "refill gaps s",
                "gap p50/p90/max ms",
                "tail s",
                "running/queued peak",
                "load",
            ],
            BREAKDOWN,
        )
    )
    if FALCLIENT_RUNS:
        print("\n# each fal-client run")
        print(
            table(
                ["S:L:N", "run", *RUN_COLUMNS, "load"],
                FALCLIENT_RUNS,
            )
        )


if __name__ == "__main__":
    main()
