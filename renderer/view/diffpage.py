"""`renderer diff --html`: the report's viewer in comparison mode.

Each pair shows A | B | difference (amplified ×4), A and B overlaid with a fade slider, A and B
flickering in place, or a wipe (a slider reveals B over A); "band" (fail, review, pass, only in A
or B) is one more dimension, paged by default so what needs a decision comes first. Review
decisions made on the page are exported as a JSON file for `renderer baseline approve`. Pictures are
copied beside the page (PAGE-images/, thumbnails named by content so A and B share a file when
they are the same bytes), so the page and its folder can be moved or shared together.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from PIL import Image, ImageChops

from renderer.state.rows import Row
from renderer.view import page as page_mod
from renderer.view import report
from renderer.view.bands import Bands

# The band dimension's values, in page order: what needs a decision first; pairs with no image on
# either side (nothing compared, compare.NOT_RENDERED) are a band of their own, before `pass`.
VERDICTS = ("fail", "review", "only in A", "only in B", "not rendered", "pass")
DIFF_SIDE = 512  # difference images are made at most this large: they are for the eye


def _difference(task: tuple[str, str, str]) -> None:
    a, b, out = task
    with Image.open(a) as ia, Image.open(b) as ib:
        ia = ia.convert("RGB")
        ia.thumbnail((DIFF_SIDE, DIFF_SIDE))
        ib = ib.convert("RGB").resize(ia.size)
        delta = ImageChops.difference(ia, ib).point(lambda v: min(255, v * 4))
        tmp = out + ".tmp.png"
        delta.save(tmp, "PNG", compress_level=3)
    os.replace(tmp, out)


def _run(tasks: list[Any], fn: Any) -> None:
    if len(tasks) < 16:
        for task in tasks:
            fn(task)
        return
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(fn, tasks, chunksize=8))


def thumb_paths(result: dict[str, Any], path: Path) -> dict[str, tuple[str | None, str | None]]:
    """Pair id → (A's thumbnail, B's thumbnail), relative to the page's folder, as `write` names them."""
    folder = path.stem + "-images"

    def name(sha: str | None) -> str | None:
        return f"{folder}/{sha[:24]}.jpg" if sha else None

    return {p["id"]: (name(p["sha_a"]), name(p["sha_b"])) for p in result["pairs"]}


@dataclass(frozen=True)
class _Coords:
    """What report.space reads of a job: a pair's coordinates stand in for a run's row."""

    prompt_id: str
    model: str
    seed: int | None
    axes: dict[str, Any]


# A run's image as a file on this machine: (path in the run, sha256) → a local path, or None when
# the run no longer holds it (RunSource.local_file: a bucket's image is fetched and checked first).
Locator = Callable[[str, "str | None"], "Path | None"]


def _on_disk(run: Path) -> Locator:
    def locate(rel: str, _sha: str | None) -> Path | None:
        path = run / rel
        return path if path.is_file() else None

    return locate


def write(
    result: dict[str, Any],
    path: Path,
    files: tuple[Locator | None, Locator | None] = (None, None),
) -> Path:
    """Write the comparison page for a `compare.compare` result, and its pictures beside it.

    Everything comes from the result (A may be a baseline, which has no run database). `files`
    finds each side's images (default: under the result's run_a / run_b folders on disk).
    """
    run_a, run_b = Path(result["run_a"]), Path(result["run_b"])
    locate_a, locate_b = files[0] or _on_disk(run_a), files[1] or _on_disk(run_b)
    folder = path.parent / (path.stem + "-images")
    folder.mkdir(parents=True, exist_ok=True)
    have = set(os.listdir(folder))
    keep: set[str] = set()
    thumbs: dict[str, tuple[str, str]] = {}
    copies: dict[str, tuple[Path, Path]] = {}
    diffs: dict[str, tuple[str, str, str]] = {}

    found: dict[str, Path] = {}  # sha256 → where this machine read that picture (not in the page)

    def picture(
        locate: Locator, rel: str | None, sha: str | None, full: bool
    ) -> dict[str, Any] | None:
        if rel is None or sha is None:
            return None
        source = locate(rel, sha)
        if source is None:
            return None
        thumb = sha[:24] + ".jpg"
        keep.add(thumb)
        if thumb not in have:
            thumbs[thumb] = (str(source), str(folder / thumb))
        found[sha] = source
        out: dict[str, Any] = {"path": rel, "thumb": f"{folder.name}/{thumb}"}
        if full:  # the large view of a pair that differs shows the original pixels
            name = sha[:24] + Path(rel).suffix.lower()
            keep.add(name)
            if name not in have:
                copies[name] = (source, folder / name)
            out["full"] = f"{folder.name}/{name}"
        return out

    entries: list[tuple[_Coords, dict[str, Any]]] = []
    for pair in result["pairs"]:
        differs = not pair["identical"]
        a = picture(locate_a, pair["a"], pair["sha_a"], differs)
        b = picture(locate_b, pair["b"], pair["sha_b"], differs)
        diff = None
        if differs and a and b:
            name = f"d-{pair['sha_a'][:16]}-{pair['sha_b'][:16]}.png"
            keep.add(name)
            if name not in have:
                diffs[name] = (
                    str(found[pair["sha_a"]]),
                    str(found[pair["sha_b"]]),
                    str(folder / name),
                )
            diff = f"{folder.name}/{name}"
        entries.append(
            (
                _Coords(pair["prompt_id"], pair["model"], pair["seed"], pair["axes"]),
                {
                    "id": pair["id"],
                    "verdict": pair["band"],
                    "label": pair["label"],
                    "index": pair["index"],
                    "key": pair["key"],
                    "ssim": pair["ssim"],
                    "phash": pair["phash"],
                    "reason": pair["reason"],
                    "differs": pair["differs"],
                    "identical": pair["identical"],
                    "a": a,
                    "b": b,
                    "diff": diff,
                    "diff_thumb": diff,
                },
            )
        )
    for side, key, locate in (("A", "only_in_a", locate_a), ("B", "only_in_b", locate_b)):
        for item in result[key]:
            pic = picture(locate, item["path"], item["sha"], False)
            entries.append(
                (
                    _Coords(item["prompt_id"], item["model"], item["seed"], item["axes"]),
                    {
                        "id": item["id"],
                        "verdict": f"only in {side}",
                        "label": item["label"],
                        "index": 0,
                        "key": item["key"],
                        "ssim": None,
                        "phash": None,
                        "reason": f"only in {side}",
                        "differs": {},
                        "identical": False,
                        "a": pic if side == "A" else None,
                        "b": pic if side == "B" else None,
                        "diff": None,
                        "diff_thumb": None,
                    },
                )
            )
    for item in result.get("not_rendered", ()):
        entries.append(
            (
                _Coords(item["prompt_id"], item["model"], item["seed"], item["axes"]),
                {
                    "id": item["id"],
                    "verdict": "not rendered",
                    "label": item["label"],
                    "index": item["index"],
                    "key": item["key"],
                    "ssim": None,
                    "phash": None,
                    "reason": item["reason"],
                    "differs": item["differs"],
                    "identical": False,
                    "a": None,
                    "b": None,
                    "diff": None,
                    "diff_thumb": None,
                },
            )
        )
    _run(list(thumbs.values()), report._make_thumb)
    for source, target in copies.values():
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    _run(list(diffs.values()), _difference)
    for name in have - keep:  # pictures of an earlier comparison written to the same page
        if not name.endswith(".tmp"):
            (folder / name).unlink(missing_ok=True)

    # report.space reads prompt_id, model, seed and axes only: the coordinates stand in for rows.
    sp = (
        report.space(cast(list[Row], [c for c, _ in entries]))
        if entries
        else report.Space([], [], [], [], False)
    )
    verdicts = [v for v in VERDICTS if any(e["verdict"] == v for _, e in entries)]
    indexes = sorted({e["index"] for _, e in entries})
    dims = [{"name": "band", "values": verdicts, "missing": False}]
    dims += [
        {"name": n, "values": v, "missing": m}
        for n, v, m in zip(sp.names, sp.values, sp.missing, strict=True)
    ]
    if len(indexes) > 1:
        dims.append({"name": "image", "values": [str(i) for i in indexes], "missing": False})
    items = []
    for (_, entry), point in zip(entries, sp.coords, strict=True):
        v = [verdicts.index(entry["verdict"]), *point]
        if len(indexes) > 1:
            v.append(indexes.index(entry["index"]))
        items.append({**entry, "v": v})
    counts = result["counts"]
    names = {d["name"] for d in dims}
    view = {
        "x": "model" if "model" in names else "",
        "y": "prompt" if "prompt" in names else "",
        "page": "band",
    }
    a_name = f"baseline {result['baseline']}" if result.get("baseline") else result["run_a"]
    bands = Bands.from_json(result["bands"])
    data = {
        "mode": "diff",
        "summary": f"{a_name} → {result['run_b']}: {result['outcome']}; "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()),
        "bands": bands.describe(),
        "calibration": result.get("calibration"),
        "baseline": result.get("baseline"),
        "run_a": result["run_a"],
        "run_b": result["run_b"],
        "dims": dims,
        "linked": [["seed", "sample"]] if sp.sample else [],
        "view": view,
        "items": items,
    }
    title = f"diff: {result.get('baseline') or run_a.name} → {run_b.name}"
    return page_mod.write(path, title, data)
