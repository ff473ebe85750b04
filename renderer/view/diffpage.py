"""`renderer diff --html`: the report's viewer in comparison mode.

Each pair shows A | B | difference (amplified ×4), or A and B overlaid with a fade slider;
"verdict" is one more dimension, paged by default so changed pairs come first. Pictures are
copied beside the page (PAGE-images/, thumbnails named by content so A and B share a file when
they are the same bytes), so the page and its folder can be moved or shared together.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

from renderer.layout import DB_NAME
from renderer.state import read_store
from renderer.state.rows import Row
from renderer.view import page as page_mod
from renderer.view import report

VERDICTS = ("changed", "missing", "only in A", "only in B", "same", "identical")
DIFF_SIDE = 512  # difference images are made at most this large: they are for the eye


def _rows(run: Path) -> dict[str, Row]:
    if not (run / DB_NAME).is_file():
        return {}
    with read_store(run) as store:
        return {r.key: r for r in store.rows()}


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


def write(result: dict[str, Any], path: Path) -> Path:
    """Write the comparison page for a `compare.compare` result, and its pictures beside it."""
    run_a, run_b = Path(result["run_a"]), Path(result["run_b"])
    rows_a, rows_b = _rows(run_a), _rows(run_b)
    folder = path.parent / (path.stem + "-images")
    folder.mkdir(parents=True, exist_ok=True)
    sha_a = {e["path"]: e["sha256"] for r in rows_a.values() for e in r.files or []}
    sha_b = {e["path"]: e["sha256"] for r in rows_b.values() for e in r.files or []}
    have = set(os.listdir(folder))
    keep: set[str] = set()
    thumbs: dict[str, tuple[str, str]] = {}
    copies: dict[str, tuple[Path, Path]] = {}
    diffs: dict[str, tuple[str, str, str]] = {}

    def picture(run: Path, rel: str | None, sha: str | None, full: bool) -> dict[str, Any] | None:
        if rel is None or sha is None or not (run / rel).is_file():
            return None
        thumb = sha[:24] + ".jpg"
        keep.add(thumb)
        if thumb not in have:
            thumbs[thumb] = (str(run / rel), str(folder / thumb))
        out: dict[str, Any] = {"path": rel, "thumb": f"{folder.name}/{thumb}"}
        if full:  # the large view of a pair that differs shows the original pixels
            name = sha[:24] + Path(rel).suffix.lower()
            keep.add(name)
            if name not in have:
                copies[name] = (run / rel, folder / name)
            out["full"] = f"{folder.name}/{name}"
        return out

    entries: list[tuple[Row, dict[str, Any]]] = []
    for pair in result["pairs"]:
        row = rows_a.get(pair["key"])
        if row is None:
            continue
        differs = pair["verdict"] in ("changed", "same")
        a = picture(run_a, pair["a"], sha_a.get(pair["a"] or ""), differs)
        b = picture(run_b, pair["b"], sha_b.get(pair["b"] or ""), differs)
        diff = None
        if differs and a and b:
            name = f"d-{sha_a[pair['a']][:16]}-{sha_b[pair['b']][:16]}.png"
            keep.add(name)
            if name not in have:
                diffs[name] = (str(run_a / pair["a"]), str(run_b / pair["b"]), str(folder / name))
            diff = f"{folder.name}/{name}"
        entries.append(
            (
                row,
                {
                    "verdict": pair["verdict"],
                    "label": pair["label"],
                    "index": pair["index"],
                    "key": pair["key"],
                    "hash": pair["hash_distance"],
                    "rmse": pair["rmse"],
                    "a": a,
                    "b": b,
                    "diff": diff,
                    "diff_thumb": diff,
                },
            )
        )
    for side, keys, rows, run in (
        ("A", result["only_in_a"], rows_a, run_a),
        ("B", result["only_in_b"], rows_b, run_b),
    ):
        for key in keys:
            row = rows.get(key)
            if row is None:
                continue
            first = row.files[0] if row.files else None
            pic = picture(
                run, first["path"] if first else None, first["sha256"] if first else None, False
            )
            entries.append(
                (
                    row,
                    {
                        "verdict": f"only in {side}",
                        "label": f"{row.prompt_id} / {row.model} / seed {row.seed}",
                        "index": 0,
                        "key": key,
                        "hash": None,
                        "rmse": None,
                        "a": pic if side == "A" else None,
                        "b": pic if side == "B" else None,
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

    sp = (
        report.space([row for row, _ in entries])
        if entries
        else report.Space([], [], [], [], False)
    )
    verdicts = [v for v in VERDICTS if any(e["verdict"] == v for _, e in entries)]
    indexes = sorted({e["index"] for _, e in entries})
    dims = [{"name": "verdict", "values": verdicts, "missing": False}]
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
        "page": "verdict",
    }
    data = {
        "mode": "diff",
        "summary": f"{result['run_a']} → {result['run_b']}: "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()),
        "dims": dims,
        "linked": [["seed", "sample"]] if sp.sample else [],
        "view": view,
        "items": items,
    }
    return page_mod.write(path, f"diff: {run_a.name} → {run_b.name}", data)
