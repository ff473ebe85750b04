"""Contact sheets: a static viewer page and labelled PNG sheets for a run directory.

Every job is a point in a space of dimensions: prompt, model, each parameter axis (an axis
only some models have is "(not set)" for the others), seed, and, where seeds are drawn per
prompt and model, "sample" (the seed's position within its prompt and model, so random seeds
still line up). The page lets the user put any dimension on X, Y or pages and filter the rest;
a combination the run does not have is "n/a", never "pending"; failed jobs show their reason.

Files (all inside RUN/report/, nothing needs a server or the network, works from file://):
  index.html        the viewer (renderer/view/web/) with the run's data inlined as escaped JSON
  thumbs/<sha>.jpg  one thumbnail per image content, made once and reused by later reports
  sheet-P[-N].png   one labelled grid per page value of the default view (A1111's X/Y/Z
                    style), split so no sheet exceeds the size cap; sheets an earlier report
                    wrote and this one did not are removed
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from renderer.errors import UsageError
from renderer.layout import REPORT_DIR
from renderer.output.source import RunSource, sourced
from renderer.state.rows import Row
from renderer.view import page as page_mod

THUMB = 256
CELL = 192  # pixels per cell in a PNG sheet
LABEL = 28  # one line of header text
ROW_LABEL = 220  # width of the row-label column in a PNG sheet
NOT_SET = "(not set)"


def _label(value: Any) -> str:
    return (
        value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    )


@dataclass
class Space:
    """The run's dimensions and each job's coordinates in them (value index, -1 = not set)."""

    names: list[str]
    values: list[list[str]]
    missing: list[bool]
    coords: list[list[int]]
    sample: bool  # "sample" is a dimension: seeds differ between prompts/models

    def index(self, name: str) -> int:
        return self.names.index(name) if name in self.names else -1


def space(rows: list[Row]) -> Space:
    """Dimensions in a fixed order (prompt, model, axes by first appearance, seed, sample)."""
    axis_names = list(dict.fromkeys(k for r in rows for k in r.axes))
    # A seed's position among its prompt/model/axes group's seeds, in plan order.
    groups: dict[tuple[str, str, str], list[int | None]] = {}
    samples = []
    for r in rows:
        seeds = groups.setdefault((r.prompt_id, r.model, json.dumps(r.axes, sort_keys=True)), [])
        if r.seed not in seeds:
            seeds.append(r.seed)
        samples.append(seeds.index(r.seed))
    seeds_of_sample: dict[int, set[int | None]] = {}
    for r, s in zip(rows, samples, strict=True):
        seeds_of_sample.setdefault(s, set()).add(r.seed)
    with_sample = any(len(v) > 1 for v in seeds_of_sample.values())
    names = ["prompt", "model", *axis_names, "seed", *(["sample"] if with_sample else [])]
    raw: list[list[str | None]] = []
    for r, s in zip(rows, samples, strict=True):
        point: list[str | None] = [r.prompt_id, r.model]
        point += [_label(r.axes[a]) if a in r.axes else None for a in axis_names]
        point.append(None if r.seed is None else str(r.seed))
        if with_sample:
            point.append(str(s))
        raw.append(point)
    values: list[list[str]] = []
    index: list[dict[str, int]] = []
    for d, name in enumerate(names):
        seen = list(dict.fromkeys(v for p in raw if (v := p[d]) is not None))
        if name in ("seed", "sample"):
            seen.sort(key=int)
        values.append(seen)
        index.append({v: i for i, v in enumerate(seen)})
    coords = [[-1 if v is None else index[d][v] for d, v in enumerate(p)] for p in raw]
    missing = [any(c[d] < 0 for c in coords) for d in range(len(names))]
    return Space(names, values, missing, coords, with_sample)


@dataclass(frozen=True)
class View:
    x: str
    y: str
    page: str  # "" for none


def default_view(sp: Space, row_axis: str, col_axis: str) -> View:
    """Models side by side, prompts down, samples (or seeds) as pages."""
    for axis in (row_axis, col_axis):
        if axis not in sp.names:
            raise UsageError(
                f"no axis {axis!r} in this run", hint="axes here: " + ", ".join(sp.names)
            )
    page = ""
    for name in ("sample", "seed"):
        d = sp.index(name)
        if d >= 0 and name not in (row_axis, col_axis) and len(sp.values[d]) > 1:
            page = name
            break
    if page == "seed" and sp.sample:
        page = ""  # seeds differ per prompt/model and "sample" has one value: pages would be 1-cell grids
    return View(col_axis, row_axis, page)


def _linked(sp: Space, view: View) -> set[str]:
    """seed and sample name the same thing: one on an axis implies the other."""
    on = {view.x, view.y, view.page}
    if "seed" in on:
        return {"sample"}
    # Seeds drawn per prompt and model never line up across a row: "sample" is the aligned name.
    return {"seed"} if "sample" in on or sp.sample else set()


def _make_thumb(task: tuple[str, str]) -> None:
    source, target = task
    with Image.open(source) as image:
        image.thumbnail((THUMB, THUMB))
        tmp = target + ".tmp"
        image.convert("RGB").save(tmp, "JPEG", quality=82)
    os.replace(tmp, target)


def make_thumbs(tasks: list[tuple[str, str]], workers: int | None = None) -> int:
    if len(tasks) < 16:
        for task in tasks:
            _make_thumb(task)
    else:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            list(pool.map(_make_thumb, tasks, chunksize=16))
    return len(tasks)


def thumbnails(
    source: RunSource, report_dir: Path, rows: Iterable[Row]
) -> tuple[dict[str, str], int]:
    """Thumbnails named by content hash: made once, reused by every later report.

    Returns {sha256: path relative to report_dir} for every image that has one, and how many were made.
    """
    thumbs = report_dir / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    have = set(os.listdir(thumbs))
    made: dict[str, str] = {}
    todo: dict[str, tuple[str, str]] = {}
    for r in rows:
        for entry in r.files or []:
            name = entry["sha256"][:24] + ".jpg"
            if name in have:
                made[entry["sha256"]] = f"thumbs/{name}"
            elif name not in todo:
                # From a bucket the image is read (and its hash checked) only when it has no thumbnail yet.
                image = source.local_file(entry["path"], entry["sha256"] if source.remote else None)
                if image is not None:
                    todo[name] = (str(image), str(thumbs / name))
                    made[entry["sha256"]] = f"thumbs/{name}"
    return made, make_thumbs(list(todo.values()))


# ---------------------------------------------------------------- the page


def _summary(rows: list[Row]) -> str:
    states: dict[str, int] = {}
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
    images = sum(len(r.files or []) for r in rows)
    parts = [f"{n} {s}" for s, n in sorted(states.items(), key=lambda kv: -kv[1])]
    return f"{len(rows)} jobs, {images} images: " + ", ".join(parts)


def _cost(row: Row) -> float | None:
    """What the job's delivered images cost by the manifest's prices (recorded per file); None when unpriced."""
    costs = [e["cost"] for e in row.files or [] if isinstance(e.get("cost"), (int, float))]
    return round(sum(costs), 6) if costs else None


def page_data(
    rows: list[Row], sp: Space, view: View, thumbs: dict[str, str], image_base: str = "../"
) -> dict[str, Any]:
    """`image_base`: where the full images are, from the report folder (a bucket's URL for a remote run)."""
    items = []
    for r, point in zip(rows, sp.coords, strict=True):
        images = [
            {
                "path": image_base + e["path"],
                "thumb": thumbs.get(e["sha256"]),
                "width": e.get("width"),
                "height": e.get("height"),
            }
            for e in (r.files or [])
        ]
        items.append(
            {
                "v": point,
                "state": r.state,
                "key": r.key,
                "prompt": r.prompt,
                "prompt_id": r.prompt_id,
                "model": r.model,
                "endpoint": r.endpoint,
                "seed": (r.result or {}).get("seed", r.seed),
                "input": r.input,
                "request_id": r.request_id,
                "error": r.error,
                "error_kind": r.error_kind,
                "attempts": r.attempts,
                "images": images,
                "cost": _cost(r),
                "t": {
                    "submitted": r.submitted_at,
                    "completed": r.completed_at,
                    "downloaded": r.downloaded_at,
                },
            }
        )
    return {
        "mode": "run",
        "summary": _summary(rows),
        "dims": [
            {"name": n, "values": v, "missing": m}
            for n, v, m in zip(sp.names, sp.values, sp.missing, strict=True)
        ],
        "linked": [["seed", "sample"]] if sp.sample else [],
        "view": {"x": view.x, "y": view.y, "page": view.page},
        "items": items,
    }


# ---------------------------------------------------------------- PNG sheets


@dataclass
class Sheet:
    """One labelled grid (or a part of one): what `_draw_sheet` needs, picklable."""

    path: str
    title: str
    corner: str
    cols: list[str]
    rows: list[list[str]]  # label lines per row
    cells: dict[tuple[int, int], tuple[str, str | None, str]]  # (state, thumbnail, failure reason)


def sheets_for(
    rows: list[Row], sp: Space, view: View, thumbs: dict[str, str], report_dir: Path, max_side: int
) -> list[Sheet]:
    """One grid per page value of `view`; rows are Y values × the other dimensions that vary."""
    x, y, pg = sp.index(view.x), sp.index(view.y), sp.index(view.page)
    skip = {sp.index(n) for n in _linked(sp, view)}
    inner = [
        d
        for d in range(len(sp.names))
        if d not in (x, y, pg) and d not in skip and len({c[d] for c in sp.coords}) > 1
    ]

    def name(d: int, v: int) -> str:
        return NOT_SET if v < 0 else sp.values[d][v]

    def order(values: Iterable[int]) -> list[int]:
        return sorted(set(values), key=lambda v: (v < 0, v))

    pages: dict[int, list[int]] = {}
    for i, c in enumerate(sp.coords):
        pages.setdefault(c[pg] if pg >= 0 else 0, []).append(i)
    fit_cols = max(1, (max_side - ROW_LABEL) // CELL)
    fit_rows = max(1, (max_side - LABEL * 3) // CELL)
    out: list[Sheet] = []
    for n, pv in enumerate(order(pages), 1):
        members = pages[pv]
        cols = order(sp.coords[i][x] for i in members)
        row_keys = sorted(
            {(sp.coords[i][y], *(sp.coords[i][d] for d in inner)) for i in members},
            key=lambda k: [(v < 0, v) for v in k],
        )
        grid: dict[tuple[int, int], tuple[str, str | None, str]] = {}
        row_at = {k: j for j, k in enumerate(row_keys)}
        col_at = {v: j for j, v in enumerate(cols)}
        for i in members:
            c, r = sp.coords[i], rows[i]
            # Not (c[y], *gen): mypy reads a starred tuple in a subscript as 3.11-only syntax.
            at = (row_at[(c[y],) + tuple(c[d] for d in inner)], col_at[c[x]])  # noqa: RUF005
            if at in grid:
                continue  # a cell shows its first job; the page shows all of them
            thumb = next(
                (thumbs.get(e["sha256"]) for e in r.files or [] if thumbs.get(e["sha256"])), None
            )
            state = r.state if r.state in ("downloaded", "failed") else "pending"
            grid[at] = (
                state,
                str(report_dir / thumb) if thumb and state == "downloaded" else None,
                r.error or "",
            )
        title = f"{view.page} = {name(pg, pv)}" if pg >= 0 else "all"
        corner = f"rows: {view.y}, columns: {view.x}"
        labels = [
            [
                f"{view.y}: {name(y, k[0])}",
                *(f"{sp.names[d]}: {name(d, v)}" for d, v in zip(inner, k[1:], strict=True)),
            ]
            for k in row_keys
        ]
        row_chunks = [
            range(i, min(i + fit_rows, len(row_keys))) for i in range(0, len(row_keys), fit_rows)
        ]
        col_chunks = [range(i, min(i + fit_cols, len(cols))) for i in range(0, len(cols), fit_cols)]
        parts = [(rc, cc) for rc in row_chunks for cc in col_chunks]
        for m, (rc, cc) in enumerate(parts, 1):
            cells = {
                (a, b): grid[(ri, ci)]
                for a, ri in enumerate(rc)
                for b, ci in enumerate(cc)
                if (ri, ci) in grid
            }
            suffix = f"-{m}" if len(parts) > 1 else ""
            part = f"  (part {m} of {len(parts)})" if len(parts) > 1 else ""
            out.append(
                Sheet(
                    str(report_dir / f"sheet-{n}{suffix}.png"),
                    title + part,
                    corner,
                    [name(x, cols[ci]) for ci in cc],
                    [labels[ri] for ri in rc],
                    cells,
                )
            )
    return out


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """Text cut to `width` pixels, with an ellipsis when cut."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _draw_sheet(sheet: Sheet) -> str:
    """One labelled sheet; runs in a worker process (sheets are independent)."""
    font, bold = _font(13), _font(15)
    top = LABEL * 3
    image = Image.new(
        "RGB", (ROW_LABEL + CELL * len(sheet.cols), top + CELL * len(sheet.rows)), "white"
    )
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), _fit(draw, sheet.title, bold, image.width - 12), fill="black", font=bold)
    draw.text(
        (6, LABEL * 2 + 6), _fit(draw, sheet.corner, font, ROW_LABEL - 12), fill="#555", font=font
    )
    for j, col in enumerate(sheet.cols):
        left = ROW_LABEL + CELL * j
        lines = textwrap.wrap(col, 26)[:2] or [""]
        for k, line in enumerate(lines):
            draw.text(
                (left + 6, LABEL * (1 + k) + 10),
                _fit(draw, line, font, CELL - 12),
                fill="black",
                font=font,
            )
    for i, label_lines in enumerate(sheet.rows):
        y0 = top + CELL * i
        draw.line((0, y0, image.width, y0), fill="#ddd")
        for k, line in enumerate(label_lines[: CELL // 18]):
            draw.text(
                (6, y0 + 6 + 18 * k),
                _fit(draw, line, font, ROW_LABEL - 12),
                fill="black",
                font=font,
            )
        for j in range(len(sheet.cols)):
            x0 = ROW_LABEL + CELL * j
            state, thumb, reason = sheet.cells.get((i, j), ("n/a", None, ""))
            box = (x0 + 2, y0 + 2, x0 + CELL - 2, y0 + CELL - 2)
            if thumb is not None:
                with Image.open(thumb) as picture:
                    picture.thumbnail((CELL - 4, CELL - 4), Image.Resampling.BILINEAR)
                    # Centred whatever the aspect ratio.
                    image.paste(
                        picture,
                        (x0 + (CELL - picture.width) // 2, y0 + (CELL - picture.height) // 2),
                    )
                continue
            if state == "failed":
                draw.rectangle(box, fill="#fde3e1")
                lines = ["failed", *textwrap.wrap(reason or "no reason recorded", 24)][:9]
                for k, line in enumerate(lines):
                    draw.text(
                        (x0 + 8, y0 + 8 + 17 * k),
                        _fit(draw, line, font, CELL - 16),
                        fill="#9d1b12",
                        font=font,
                    )
            elif state == "n/a":
                draw.rectangle(box, fill="#f3f3f0")
                draw.text((x0 + CELL // 2 - 10, y0 + CELL // 2 - 8), "n/a", fill="#999", font=font)
            else:
                draw.rectangle(box, fill="#e3e3e0")
                draw.text(
                    (x0 + 8, y0 + 8),
                    "pending" if state == "pending" else state,
                    fill="#555",
                    font=font,
                )
    tmp = sheet.path + ".tmp"
    image.save(
        tmp, "PNG", optimize=False, compress_level=1
    )  # zlib dominated the sheet time (bench/)
    os.replace(tmp, sheet.path)
    return sheet.path


def write_sheets(report_dir: Path, sheets: list[Sheet]) -> list[Path]:
    """Draw every sheet, then remove sheets an earlier report left that this one did not write."""
    if len(sheets) < 4:
        paths = [Path(_draw_sheet(s)) for s in sheets]
    else:
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            paths = [Path(p) for p in pool.map(_draw_sheet, sheets, chunksize=4)]
    keep = {p.name for p in paths}
    for old in report_dir.glob("sheet-*.png"):
        if old.name not in keep:
            old.unlink()
    return paths


def build(
    run: RunSource | Path,
    *,
    row_axis: str = "prompt",
    col_axis: str = "model",
    tags: set[str] | None = None,
    models: set[str] | None = None,
    seeds: set[int] | None = None,
    max_side: int = 4096,
) -> dict[str, Any]:
    """The report of a run (a directory, or a RunSource: any state, images on disk or in a bucket)."""
    with sourced(run) as source:
        return _build(source, row_axis, col_axis, tags, models, seeds, max_side)


def _build(
    source: RunSource,
    row_axis: str,
    col_axis: str,
    tags: set[str] | None,
    models: set[str] | None,
    seeds: set[int] | None,
    max_side: int,
) -> dict[str, Any]:
    with source.store() as store:
        rows = store.rows(in_plan=True)
    if tags:
        rows = [r for r in rows if tags & set(r.tags)]
    if models:
        rows = [r for r in rows if r.model in models or r.endpoint in models]
    if seeds:
        rows = [r for r in rows if r.seed in seeds]
    if not rows:
        raise UsageError(
            f"{source.label}: no jobs match", hint="check the filters, or run the manifest first"
        )
    sp = space(rows)
    view = default_view(sp, row_axis, col_axis)
    report_dir = source.run_dir / REPORT_DIR
    thumbs, made = thumbnails(source, report_dir, rows)
    index = page_mod.write(
        report_dir / "index.html",
        f"{source.name}: {len(rows)} jobs",
        page_data(rows, sp, view, thumbs, source.where("") + "/" if source.remote else "../"),
    )
    specs = sheets_for(rows, sp, view, thumbs, report_dir, max_side)
    sheets = write_sheets(report_dir, specs)
    pg = sp.index(view.page)
    pages = len({c[pg] for c in sp.coords}) if pg >= 0 else 1
    return {
        "index": index,
        "sheets": sheets,
        "pages": pages,
        "thumbnails_made": made,
        "cells": len(rows),
        "view": view,
    }
