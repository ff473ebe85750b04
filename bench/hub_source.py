"""A caption set read by its Hub name (`- hub: org/name`) against the same Parquet file named
with `file:`: what resolving, downloading and verifying add to `renderer validate`.

N distinct captions (12 random words and a number) in one Parquet file with three more columns
kept as dataset columns (`keep: [source_url, license, original_id]`), served by the test suite's
Hub on 127.0.0.1 (tests/test_hub.py: the Hub's dataset-info and resolve endpoints, real HTTP).
Cases, each `renderer validate` in a child process (GNU time: wall, CPU user + sys, peak RSS):
  file        the local file, `- {file: captions.parquet, …}`
  hub cold    `- {hub: bench/captions, …}` with an empty HF cache: resolve, download, verify, read
  hub warm    the same with the file in the cache: resolve, verify (hash the file), read
Medians of --runs alternated runs; the load average is printed before and after (on a shared
machine wall times follow it; CPU seconds and ratios say more).
Reproduce:  python bench/hub_source.py --captions 1000000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env, machine, median, table
from captions import captions

HERE = Path(__file__).resolve().parent

ENTRY = "text: caption, keep: [source_url, license, original_id]"


def once(folder: Path, manifest: str, env: dict[str, str]) -> tuple[float, float, float]:
    """(seconds, CPU seconds, peak MiB) of `renderer validate MANIFEST`."""
    done = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%e %U %S %M",
            sys.executable,
            "-m",
            "renderer",
            "validate",
            manifest,
        ],
        cwd=folder,
        env=child_env(PYTHONPATH=str(HERE.parent), **env),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"renderer validate {manifest} failed:\n{done.stderr[-2000:]}")
    seconds, user, system, kib = done.stderr.strip().splitlines()[-1].split()
    return float(seconds), float(user) + float(system), int(kib) / 1024


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from tests.test_hub import serving  # the suite's Hub; needs the test extra

    started = load()
    results: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, serving() as hub:
        folder = Path(tmp)
        captions(folder, args.captions)
        data = (folder / "captions.parquet").read_bytes()
        hub.commit("bench/captions", {"data/train-00000-of-00001.parquet": data})
        for name, entry in (("file", "file: captions.parquet"), ("hub", "hub: bench/captions")):
            (folder / f"{name}.yaml").write_text(
                f"name: {name}\nprovider: emulator\noutput: out\nprompts: [{{{entry}, {ENTRY}}}]\n"
                "models: [fal-ai/flux-1/schnell]\nseeds: [1]\n"
            )
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(folder / "hf")}
        for _ in range(args.runs):
            results.setdefault("file", []).append(once(folder, "file.yaml", env))
            shutil.rmtree(folder / "hf", ignore_errors=True)
            results.setdefault("hub cold", []).append(once(folder, "hub.yaml", env))
            results.setdefault("hub warm", []).append(once(folder, "hub.yaml", env))
        size = len(data)
    base = median([v[1] for v in results["file"]])
    rows = [
        [
            case,
            f"{median([v[0] for v in values]):.2f}",
            f"{median([v[1] for v in values]):.2f}",
            f"{median([v[2] for v in values]):.0f}",
            f"{median([v[1] for v in values]) / base:.2f}",
        ]
        for case, values in results.items()
    ]
    print(
        f"{machine()}; {args.captions:,} captions, a {size / 2**20:.1f} MiB Parquet file; "
        f"medians of {args.runs} alternated runs; load average {started} before, {load()} after"
    )
    print(table(["case", "wall s", "CPU s", "peak MiB", "CPU ratio to file"], rows))
    print(f"reproduce: python bench/hub_source.py --captions {args.captions} --runs {args.runs}")


if __name__ == "__main__":
    main()
