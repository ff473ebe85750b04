"""Report and diff on a 5,000-image run: thumbnailing is the cost, spread over all cores.

A finished run is synthesised through the store with real emulator pictures (256 px), then:
report (cold: makes every thumbnail), report again (warm: reuses them), and diff against a
copy whose images were re-encoded (so every pair is measured, none byte-identical).
Reproduce:  python bench/report_scale.py [--images 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, manifest, median, table

from renderer import compare, report
from renderer import manifest as manifest_mod
from renderer import plan as plan_mod
from renderer.layout import image_path
from renderer.pictures import render
from renderer.schemas import SchemaRegistry, default_schema_dir
from renderer.store import Store


def synthesise(folder: Path, images: int, salt: str) -> Path:
    m = manifest_mod.load(manifest(folder, images, 64))
    m = manifest_mod.Manifest(**{**m.__dict__, "output": folder / f"out-{salt or 'a'}"})
    plan = plan_mod.build(m, SchemaRegistry(default_schema_dir()))
    store = Store(m.run_dir)
    store.sync_plan(plan.jobs)
    rows = []
    for job in plan.jobs:
        data, _ = render(job.endpoint, job.input["prompt"], job.seed or 0, 0, (256, 192), "png", salt)
        rel = image_path(job.stem, 0, "png")
        (m.run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (m.run_dir / rel).write_bytes(data)
        entry = {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "mtime_ns": 0,
                 "width": 256, "height": 192, "content_type": "image/png", "seed": job.seed}
        rows.append((json.dumps([entry]), job.key))
    with store.db:
        store.db.executemany("UPDATE jobs SET state = 'downloaded', files = ?, request_id = 'r' WHERE key = ?", rows)
    store.close()
    return m.run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cold, warm, diffs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_a = synthesise(folder, args.images, "")
        run_b = synthesise(folder, args.images, "v2")
        for _ in range(args.runs):
            shutil.rmtree(run_a / "report", ignore_errors=True)
            start = time.perf_counter()
            report.build(run_a)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            report.build(run_a)
            warm.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = compare.compare(run_a, run_b)
            diffs.append(time.perf_counter() - start)
        assert result["counts"]["changed"] == args.images, result["counts"]
    print(f"# report and diff on {args.images} images (256x192 PNG); {machine()}; medians of {args.runs}")
    print(f"# reproduce: python bench/report_scale.py --images {args.images} --runs {args.runs}")
    print(table(["step", "median s", "images/s"], [
        ["report, cold (all thumbnails made)", f"{median(cold):.2f}", f"{args.images / median(cold):.0f}"],
        ["report, warm (thumbnails reused)", f"{median(warm):.2f}", f"{args.images / median(warm):.0f}"],
        ["diff, every pair measured", f"{median(diffs):.2f}", f"{args.images / median(diffs):.0f}"],
    ]))


if __name__ == "__main__":
    main()
