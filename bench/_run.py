"""Run `renderer ARGS…` in this process and print one line `BENCH {json}` with its own costs.

Used by the benchmark scripts so wall time, CPU time and peak RSS are the renderer's alone.
"""

from __future__ import annotations

import io
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from renderer.cli import main
from renderer.cli.boundary import leave

if __name__ == "__main__":
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF)
    out, err = io.StringIO(), io.StringIO()
    code = main(sys.argv[1:], stdout=out, stderr=err)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        "BENCH "
        + json.dumps(
            {
                "code": code,
                "wall": time.perf_counter() - start,
                "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
                "user": after.ru_utime - before.ru_utime,
                "sys": after.ru_stime - before.ru_stime,
                # The whole process, as the fal-client baseline measures itself: start, imports and all.
                "cpu_process": after.ru_utime + after.ru_stime,
                "rss_mb": after.ru_maxrss / 1024,
                "stderr": err.getvalue()[-500:],
            }
        )
    )
    # As the `renderer` command itself ends (cli.boundary.leave: `run` skips the teardown).
    leave(0, sys.argv[1:])
