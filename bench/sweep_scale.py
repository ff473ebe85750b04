"""Plan time and peak memory of template sweeps: a template with two variables against the same
jobs written out as plain prompts, then the template sampled, and in sparse-first order.

Reproduce:  python bench/sweep_scale.py [--side 100] [--seeds 10] [--runs 5]
A template "a {color} {shape}" of side × side variants × 1 model × seeds; each run is a fresh
process (peak RSS is the plan's own), timing manifest load + plan. No target: the figures say what
a sweep costs beside the same plan written out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, table

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from renderer.manifest import load as manifest
from renderer.plan import planner as plan
from renderer.models.schemas import SchemaRegistry, default_schema_dir
t1 = time.perf_counter()
p = plan.build(manifest.load(Path(sys.argv[1])), SchemaRegistry(default_schema_dir()))
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"jobs": len(p.jobs), "plan": t2 - t1, "rss_mb": rss}))
"""


def cases(side: int, seeds: int) -> dict[str, dict[str, Any]]:
    colors = [f"c{i}" for i in range(side)]
    shapes = [f"s{i}" for i in range(side)]
    base: dict[str, Any] = {
        "name": "bench-sweep",
        "provider": "emulator",
        "models": ["fal-ai/flux-1/schnell"],
        "seeds": {"start": 1, "count": seeds},
    }
    template = {
        **base,
        "vars": {"color": colors, "shape": shapes},
        "prompts": [{"id": "toy", "text": "a {color} {shape} on a table"}],
    }
    total = side * side * seeds
    return {
        "plain prompts": {
            **base,
            "prompts": [
                {"id": f"p{i}-{j}", "text": f"a {c} {s} on a table"}
                for i, c in enumerate(colors)
                for j, s in enumerate(shapes)
            ],
        },
        "template": template,
        "template, sample 10 %": {**template, "sample": {"count": total // 10, "seed": 1}},
        "template, sparse-first": {**template, "order": "sparse-first"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--side", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in cases(args.side, args.seeds).items():
            path = Path(tmp) / "bench.yaml"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            results = [
                json.loads(
                    subprocess.run(
                        [sys.executable, "-c", CHILD, str(path)],
                        capture_output=True,
                        text=True,
                        cwd=root,
                        check=True,
                    ).stdout
                )
                for _ in range(args.runs)
            ]
            rows.append(
                [
                    name,
                    results[0]["jobs"],
                    args.runs,
                    f"{median([r['plan'] for r in results]):.2f}",
                    f"{min(r['plan'] for r in results):.2f}",
                    f"{median([r['rss_mb'] for r in results]):.0f}",
                ]
            )
    print(
        f"# sweep_scale: {args.side} x {args.side} variants x 1 model x {args.seeds} seeds; {machine()}"
    )
    print(
        f"# reproduce: python bench/sweep_scale.py --side {args.side} --seeds {args.seeds} --runs {args.runs}"
    )
    print(
        table(["case", "jobs", "runs", "median plan s", "min plan s", "median peak RSS MB"], rows)
    )


if __name__ == "__main__":
    main()
