"""Writing metadata.jsonl and the card at the end of a run: rewritten whole vs appended (issue 15).

A state of N finished jobs is synthesised (rows only: no image is needed to write metadata);
then K more jobs finish, as a resumed run leaves them. Times `write_dataset` rewriting the
whole file (what every run's end did before) and appending the K rows (what a run on an
unchanged plan does now), median of --runs, and checks both files hold the same rows.
Reproduce:  python bench/dataset_append.py [--jobs 100000] [--more 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, median, table


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=100_000, help="jobs finished before (N)")
    ap.add_argument("--more", type=int, default=2000, help="jobs this run finishes (K)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    import yaml

    from renderer.manifest import load as manifest_mod
    from renderer.models.schemas import SchemaRegistry, default_schema_dir
    from renderer.output.storage import LocalStorage
    from renderer.plan import planner as plan_mod
    from renderer.runner.deliver import write_dataset
    from renderer.state.rows import key_blob
    from renderer.state.sqlite import SQLiteStore

    total = args.jobs + args.more
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "prompts.jsonl").write_text(
            "".join(
                json.dumps({"id": f"p{i:07d}", "text": f"picture {i}"}) + "\n" for i in range(total)
            )
        )
        (folder / "m.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": "bench",
                    "prompts": [{"file": "prompts.jsonl"}],
                    "models": ["fal-ai/flux-1/schnell"],
                    "seeds": [1],
                }
            )
        )
        m = manifest_mod.load(folder / "m.yaml")
        m = manifest_mod.Manifest(**{**m.__dict__, "output": folder / "out"})
        plan = plan_mod.build(m, SchemaRegistry(default_schema_dir()))
        store = SQLiteStore(m.run_dir)
        store.sync_plan(plan.jobs, plan.digest)
        storage = LocalStorage(m.run_dir)

        def finish(jobs: list, at: float) -> None:
            rows = [
                (
                    json.dumps(
                        [
                            {
                                "path": f"data/{j.stem}-0.png",
                                "sha256": "0" * 64,
                                "size": 100,
                                "mtime_ns": 1,
                                "width": 64,
                                "height": 64,
                                "content_type": "image/png",
                                "seed": j.seed,
                            }
                        ]
                    ),
                    json.dumps(
                        {"images": [{"url": "x"}], "seed": j.seed, "has_nsfw_concepts": [False]}
                    ),
                    at,
                    key_blob(j.key),
                )
                for j in jobs
            ]
            with store.db:
                store.db.executemany(
                    "UPDATE job SET state = 'downloaded', files = ?, result = ?, request_id = 'r', "
                    "downloaded_at = ? WHERE k = ?",
                    rows,
                )

        jobs = list(plan.jobs)
        # The K that finish later are spread over the plan (a resumed run's are wherever the gaps were).
        step = max(1, total // max(1, args.more))
        later = set(list(range(0, total, step))[: args.more])
        finish([j for i, j in enumerate(jobs) if i not in later], 1.0)
        write_dataset(
            plan, store, storage, None, record=True
        )  # the file as the earlier run left it
        path = m.run_dir / "data" / "metadata.jsonl"
        rewrite, append = [], []
        for run in range(args.runs):
            write_dataset(
                plan, store, storage, None, record=True
            )  # the earlier run's file and its record
            earlier = path.read_bytes()
            finish([jobs[i] for i in sorted(later)], 2.0 + run)
            start = time.perf_counter()
            write_dataset(plan, store, storage, None, append=True, record=True)
            append.append(time.perf_counter() - start)
            assert path.read_bytes().startswith(earlier), "the file was rewritten, not appended to"
            appended = sorted(path.read_bytes().splitlines())
            start = time.perf_counter()
            write_dataset(plan, store, storage, None, record=True)
            rewrite.append(time.perf_counter() - start)
            assert sorted(path.read_bytes().splitlines()) == appended, (
                "appended and rewritten rows differ"
            )
            assert len(appended) == total
            finish([jobs[i] for i in sorted(later)], 1.0)  # as before the run, for the next round
            store.db.executemany(
                "UPDATE job SET state = 'planned' WHERE k = ?",
                [(key_blob(jobs[i].key),) for i in later],
            )
            store.db.commit()
        store.close()
    print(
        f"# metadata.jsonl + card at a run's end; {machine()}; load {os.getloadavg()[0]:.1f}; medians of {args.runs}"
    )
    print(
        f"# reproduce: python bench/dataset_append.py --jobs {args.jobs} --more {args.more} --runs {args.runs}"
    )
    print(
        table(
            ["rows before", "rows this run", "rewritten whole s", "appended s", "speed-up"],
            [
                [
                    args.jobs,
                    args.more,
                    f"{median(rewrite):.2f}",
                    f"{median(append):.3f}",
                    f"{median(rewrite) / median(append):.0f}x",
                ]
            ],
        )
    )


if __name__ == "__main__":
    main()
