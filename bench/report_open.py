"""Opening a report in Chromium: time to first grid, first thumbnails, and scrolling.

A finished run is synthesised through the store with real emulator pictures (256x192):
PROMPTS prompts × 4 models × SEEDS seeds, so the default view is a grid of prompts × models
per seed page. The report is built once; then Debian's Chromium (/usr/bin/chromium, headless,
through Playwright) opens it from file:// several times, each in a fresh page:
  first grid     navigation start → the viewer has put every grid in the document
                 (window.rendererFirstGrid, performance.now() at the end of the first render)
  thumbs shown   navigation start → every thumbnail in the first screen has decoded
  scroll         the page scrolled down 400 px per animation frame for 60 frames (24,000 px,
                 about 150 rows of cells): median and worst frame interval (60 Hz is 16.7 ms)
The viewer draws a window of rows (DATA.chunks.budget cells) and more as it is scrolled, so
"items in the DOM" is what the first grid drew.
--run DIR opens the report of a run made elsewhere (bench/report_scale.py --keep DIR leaves
DIR/out/scale): the 1M-image measurement; its report is built first when it has none.
Reproduce:  python bench/report_open.py [--prompts 125 --seeds 10] [--runs 5]
            python bench/report_open.py --run /tmp/cap1m/out/scale --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import machine, median, synthesise_finished_run, table

from renderer.plan import planner as plan_mod
from renderer.provider.emulator.pictures import render
from renderer.view import report

MODELS = [
    {"endpoint": e, "label": e.split("/")[1]}
    for e in (
        "fal-ai/flux-1/schnell",
        "fal-ai/imagen4/preview",
        "fal-ai/ideogram/v2",
        "fal-ai/recraft/v2/text-to-image",
    )
]

# Only the first 100 thumbnails are looked at: measuring all 5,000 would force the layout of
# every page, which the viewer itself never does (content-visibility skips what is off screen).
FIRST_SCREEN_DECODED = """() => {
  const imgs = [...document.querySelectorAll('.item img')].slice(0, 100).filter(i => i.getBoundingClientRect().top < innerHeight);
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""

SCROLL = """async () => {
  const frames = [];
  let last = performance.now();
  for (let i = 1; i <= 60; i++) {
    window.scrollBy(0, 400);
    await new Promise(r => requestAnimationFrame(r));
    const now = performance.now(); frames.push(now - last); last = now;
  }
  frames.sort((a, b) => a - b);
  return [frames[frames.length >> 1], frames[frames.length - 1]];
}"""


def synthesise(folder: Path, prompts: int, seeds: int) -> Path:
    path = folder / "open.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "open",
                "prompts": [{"id": f"p{i:04d}", "text": f"picture {i}"} for i in range(prompts)],
                "models": MODELS,
                "seeds": list(range(1, seeds + 1)),
            },
            sort_keys=False,
        )
    )

    def picture(job: plan_mod.Job) -> bytes:
        return render(job.endpoint, job.input["prompt"], job.seed or 0, 0, (256, 192), "png")[0]

    return synthesise_finished_run(path, folder / "out", picture)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--prompts", type=int, default=125)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--run", type=Path, help="open this run's report (built when it has none)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    images = args.prompts * len(MODELS) * args.seeds
    first, thumbs, frame_med, frame_max, drawn = [], [], [], [], []
    built = None
    with tempfile.TemporaryDirectory() as tmp:
        run = synthesise(Path(tmp), args.prompts, args.seeds) if args.run is None else args.run
        if args.run is None or not (run / "report/index.html").is_file():
            start = time.perf_counter()
            report.build(run)
            built = time.perf_counter() - start
        index = json.loads(
            (text := (run / "report/index.html").read_text())[
                text.index('id="renderer-data">') + 19 : text.index(
                    "</script>", text.index('id="renderer-data">')
                )
            ]
        )
        # (a report made before the chunks inlines its items: --run measures old reports too)
        images = index["chunks"]["total"] if "chunks" in index else len(index["items"])
        page_mb = (run / "report/index.html").stat().st_size / 1e6
        url = (run / "report/index.html").as_uri()
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=args.chromium,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--no-first-run",
                ],
            )
            for _ in range(args.runs):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url, wait_until="commit")
                page.wait_for_selector("body[data-ready]", timeout=60_000)
                first.append(page.evaluate("window.rendererFirstGrid") / 1000)
                page.wait_for_function(FIRST_SCREEN_DECODED, timeout=60_000, polling="raf")
                thumbs.append(page.evaluate("performance.now()") / 1000)
                drawn.append(page.locator(".item").count())
                med, worst = page.evaluate(SCROLL)
                frame_med.append(med)
                frame_max.append(worst)
                page.close()
            browser.close()
    print(
        f"# open a {images}-image report in headless Chromium (file://); {machine()}; medians of {args.runs}"
    )
    print(
        f"# reproduce: python bench/report_open.py --run {args.run} --runs {args.runs}"
        if args.run
        else f"# reproduce: python bench/report_open.py --prompts {args.prompts} --seeds {args.seeds} --runs {args.runs}"
    )
    print(
        (f"# report built in {built:.1f} s; " if built is not None else "# ")
        + f"index.html {page_mb:.2f} MB; {median(drawn):.0f} items in the DOM at the first grid"
        + f"; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        table(
            ["measure", "median", "worst"],
            [
                ["first grid (s)", f"{median(first):.2f}", f"{max(first):.2f}"],
                [
                    "first screen of thumbnails decoded (s)",
                    f"{median(thumbs):.2f}",
                    f"{max(thumbs):.2f}",
                ],
                ["scroll: median frame (ms)", f"{median(frame_med):.1f}", f"{max(frame_med):.1f}"],
                ["scroll: worst frame (ms)", f"{median(frame_max):.1f}", f"{max(frame_max):.1f}"],
            ],
        )
    )


if __name__ == "__main__":
    main()
