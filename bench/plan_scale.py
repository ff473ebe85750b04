"""Plan time and peak memory for a 100,000-job manifest (100 prompts x 10 models x 100 seeds).

Reproduce:  python bench/plan_scale.py [--jobs-scale 1.0] [--runs 5]
Each run is a fresh process (so peak RSS is the plan's own), timing manifest load + plan.
Targets (issue 3): <= 3 s and <= 250 MB RSS on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, table

MODELS = [
    "fal-ai/flux-1/schnell",
    "fal-ai/imagen4/preview",
    "fal-ai/imagen4/preview/fast",
    "fal-ai/imagen4/preview/ultra",
    "fal-ai/hidream-i1-full",
    "fal-ai/hidream-i1-fast",
    "fal-ai/ideogram/v2",
    "fal-ai/stable-diffusion-v35-large",
    "fal-ai/omnigen-v2",
    "fal-ai/f-lite/standard",
]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from renderer.manifest import load as manifest
from renderer.plan import planner as plan
from renderer.models.schemas import SchemaRegistry, default_schema_dir
t1 = time.perf_counter()
p = plan.build(manifest.load(Path(sys.argv[1])), SchemaRegistry(default_schema_dir()))
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"jobs": len(p.jobs), "import": t1 - t0, "plan": t2 - t1, "rss_mb": rss}))
"""


def write_manifest(folder: Path, prompts: int, seeds: int) -> Path:
    data = {
        "name": "bench-plan",
        "provider": "emulator",
        "prompts": [
            {
                "id": f"p{i:04d}",
                "text": f"a test picture number {i} of a lighthouse in a storm, oil on canvas",
            }
            for i in range(prompts)
        ],
        "models": MODELS,
        "seeds": {"start": 1, "count": seeds},
        "defaults": {"aspect_ratio": "1:1"},
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        path = write_manifest(Path(tmp), args.prompts, args.seeds)
        results = []
        for _ in range(args.runs):
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)],
                capture_output=True,
                text=True,
                cwd=root,
                check=True,
            )
            results.append(json.loads(done.stdout))
    jobs = results[0]["jobs"]
    plan_s = median([r["plan"] for r in results])
    rss = median([r["rss_mb"] for r in results])
    print(
        f"# plan_scale: {args.prompts} prompts x {len(MODELS)} models x {args.seeds} seeds; {machine()}"
    )
    print(
        f"# reproduce: python bench/plan_scale.py --prompts {args.prompts} --seeds {args.seeds} --runs {args.runs}"
    )
    print(
        table(
            [
                "jobs",
                "runs",
                "median plan s",
                "min plan s",
                "median import s",
                "median peak RSS MB",
                "target",
            ],
            [
                [
                    jobs,
                    args.runs,
                    f"{plan_s:.2f}",
                    f"{min(r['plan'] for r in results):.2f}",
                    f"{median([r['import'] for r in results]):.2f}",
                    f"{rss:.0f}",
                    "<= 3 s, <= 250 MB",
                ]
            ],
        )
    )


if __name__ == "__main__":
    main()
