"""Benchmark: every broken or hostile input meets a bounded `renderer validate`.

Each manifest in tests/manifests/broken/ (the issue's 169-input survey boiled down to one file
per kind: alias bombs, 5,000-deep nesting, 10**8-job seed ranges, 10**10 axis products,
python tags, NUL bytes, other encodings …) plus a few hostile paths (a directory, /dev/zero,
/dev/null) is validated in a fresh process. The table gives each one's exit code, wall time
and peak RSS; the acceptance bound is exit 2, no traceback, under 10 s and 1 GB.

Reproduce:  python bench/hostile_inputs.py [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, table

ROOT = Path(__file__).resolve().parent.parent
BROKEN = ROOT / "tests/manifests/broken"


def measure(argv: list[str], cwd: Path) -> tuple[int, float, float, bool]:
    """(exit code, seconds, peak RSS in MB, traceback seen) of one `renderer` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "renderer", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.perf_counter() - start
    # ru_maxrss of children is the largest child so far; each input runs in a new child, so a
    # figure only grows when this input needed more than every earlier one.
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    return done.returncode, seconds, peak, "Traceback" in done.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="only inputs whose name contains this")
    args = ap.parse_args()
    cases = [([p.name], BROKEN) for p in sorted(BROKEN.glob("*.yaml"))]
    cases += [(["/etc"], ROOT), (["/dev/zero"], ROOT), (["/dev/null"], ROOT)]
    rows, worst_time, worst_rss, bad = [], 0.0, 0.0, 0
    for argv, cwd in cases:
        if args.only not in argv[0]:
            continue
        code, seconds, peak, traceback = measure(["validate", *argv], cwd)
        worst_time, worst_rss = max(worst_time, seconds), max(worst_rss, peak)
        ok = code == 2 and not traceback and seconds < 10 and peak < 1024
        bad += not ok
        rows.append([argv[0], code, f"{seconds:.2f}", f"{peak:.0f}", "ok" if ok else "FAIL"])
    print(f"# renderer validate on {len(rows)} broken or hostile inputs; {machine()}")
    print(
        f"# reproduce: python bench/hostile_inputs.py{' --only ' + args.only if args.only else ''}"
    )
    print(table(["input", "exit", "seconds", "peak RSS MB (running max)", "bound"], rows))
    print(
        f"slowest {worst_time:.2f} s, largest peak RSS {worst_rss:.0f} MB, {bad} outside the bound "
        "(exit 2, no traceback, < 10 s, < 1 GB)"
    )


if __name__ == "__main__":
    main()
