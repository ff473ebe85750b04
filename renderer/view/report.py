"""Contact sheets: a static viewer folder and labelled PNG sheets for a run, built in one streamed
pass over the state (a page of rows at a time, in plan order), so a million-image run needs no
more memory than a few columns of small integers.

Every job is a point in a space of dimensions: prompt, model, each parameter axis (an axis
only some models have is "(not set)" for the others), seed, and, where seeds are drawn per
prompt and model, "sample" (the seed's position within its prompt and model, so random seeds
still line up). The page lets the user put any dimension on X, Y or pages and filter the rest;
a combination the run does not have is "n/a", never "pending"; failed jobs show their reason.

Files (in RUN/report/, or --out DIR, or a bucket: nothing needs a server, works from file://):
  index.html            the viewer (renderer/view/web/) with the run's dimensions and an index
                        of the data chunks inlined (under 2 MB at a million images)
  data/i-NNNNN.js       the grid of CHUNK jobs in plan order: value indexes, states, thumbnails;
                        each chunk's [low, high] value index per dimension is in index.html, so
                        the viewer loads only chunks that can hold what is on screen
  data/d-NNNNN.js       the same jobs' details for the large view (prompt, input, times, files)
  data/l-D-NNNNN.js     labels of a dimension with more than LARGE values (D: its position)
  thumbs/ab/<sha>.jpg   one thumbnail per image content (report_out.py: made once, recorded)
  sheet-P[-N].png       one labelled grid per page value of the default view (report_sheets.py)
  manifest.sqlite       what earlier reports made, so a rerun makes only what is new
Chunk files are scripts that hand their data to window.rendererData: the page loads them with
<script> tags, which file:// allows where fetch() does not.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from renderer.errors import UsageError
from renderer.layout import REPORT_DIR
from renderer.output.source import RunSource, sourced
from renderer.view import page as page_mod
from renderer.view import report_sheets
from renderer.view.report_out import (
    Target,
    bounded_map,
    make_thumb,
    open_target,
    pool_for,
    thumb_rel,
)
from renderer.view.report_sheets import CELL, LABEL, NOT_SET, ROW_LABEL, Sheet
from renderer.view.report_space import Space, _Collector, space

__all__ = ["CELL", "LABEL", "NOT_SET", "ROW_LABEL", "Sheet", "Space", "build", "space"]

CHUNK = 5000  # jobs per data chunk: the first grid of any run needs one or two of them
LARGE = 2000  # a dimension with more values keeps its labels in label chunks, not index.html
LABELS = 5000  # labels per label chunk
PAGE = 2000  # rows read from the state at a time
BUDGET = 2400  # cells the viewer draws at a time (more as the page is scrolled)
# "auto" draws the PNG sheets up to this many (~4,000 rows of the default view, ~90 MB of PNG):
# a design sweep's sheets are what its team browses; a caption dataset's are gigabytes of
# one-column strips that say nothing the viewer does not.
SHEETS_AUTO = 200
SHEETS_MODES = ("auto", "all", "none")
STATE_CODE = {"planned": "p", "submitted": "s", "completed": "c", "downloaded": "d", "failed": "f"}
_make_thumb = make_thumb  # diffpage makes its thumbnails with the report's function


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


class _Job:
    """A job as the report reads it: a `jobs` record with only what is shown decoded (the input
    stays JSON text, spliced into the details; the result is read only for a model-drawn seed)."""

    __slots__ = ("axes", "files", "r", "seed")

    def __init__(self, r: Any, axes: dict[str, Any]) -> None:
        self.r = r
        self.axes = axes
        self.seed: int | None = r["seed"]
        files = r["files"]
        self.files: list[dict[str, Any]] = (
            json.loads(files) if isinstance(files, str) else list(files or [])
        )

    def __getattr__(self, name: str) -> Any:
        return self.r[name]

    @property
    def tags(self) -> list[str]:
        tags = self.r["tags"]
        return list(json.loads(tags) if isinstance(tags, str) else tags or [])


def _cost(files: list[dict[str, Any]]) -> float | None:
    """What the job's delivered images cost by the manifest's prices (recorded per file); None when unpriced."""
    costs = [e["cost"] for e in files if isinstance(e.get("cost"), (int, float))]
    return round(sum(costs), 6) if costs else None


def detail(job: _Job, image_base: str) -> str:
    """What the large view shows of a job, as JSON text (the grid needs far less: see _write_grid)."""
    r = job.r
    seed = job.seed
    if seed is None and r["result"]:  # the model drew the seed: the result says which
        result = r["result"]
        seed = (json.loads(result) if isinstance(result, str) else result).get("seed")
    given = {
        "state": r["state"],
        "key": r["key"],
        "prompt": r["prompt"],
        "prompt_id": r["prompt_id"],
        "model": r["model"],
        "endpoint": r["endpoint"],
        "seed": seed,
        "request_id": r["request_id"],
        "error": r["error"],
        "error_kind": r["error_kind"],
        "attempts": r["attempts"],
        "images": [
            {"path": image_base + e["path"], "width": e.get("width"), "height": e.get("height")}
            for e in job.files
        ],
        "cost": _cost(job.files),
        "t": {
            "submitted": r["submitted_at"],
            "completed": r["completed_at"],
            "downloaded": r["downloaded_at"],
        },
    }
    text = r["input"]
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False, separators=(",", ":"))
    rest = json.dumps(given, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return '{"input":' + text + "," + rest[1:]


def _chunk_js(kind: str, k: int, data: Any) -> bytes:
    # JSON is a JS expression; script_json also escapes U+2028/9 and <, >, & (inert anywhere).
    return f"window.rendererData({json.dumps(kind)},{k},{page_mod.script_json(data)});\n".encode()


def _details_js(k: int, parts: list[str]) -> bytes:
    body = page_mod.inert("[" + ",".join(parts) + "]")
    return f'window.rendererData("d",{k},{body});\n'.encode()


def _write(target: Target, rel: str, data: bytes) -> None:
    path = target.dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    target.publish(rel)


@dataclass
class _Jobs:
    """Per job, what the grid and the sheets need: state code, thumbnail (12 bytes of its hash),
    and, sparsely, failure reasons and pictures without a thumbnail."""

    states: bytearray = field(default_factory=bytearray)
    thumbs: bytearray = field(default_factory=bytearray)
    errors: dict[int, str] = field(default_factory=dict)
    fallback: dict[int, str] = field(default_factory=dict)  # n -> image path (no thumbnail)
    counts: dict[str, int] = field(default_factory=dict)
    images: int = 0
    made: int = 0

    def thumb(self, n: int) -> str | None:
        raw = self.thumbs[n * 12 : n * 12 + 12]
        return raw.hex() if any(raw) else None


def _jobs(records: Iterator[Any]) -> Iterator[_Job]:
    axes: dict[str, dict[str, Any]] = {}  # jobs of a cell share their axes text: decoded once
    for r in records:
        text = r["axes"]
        if not isinstance(text, str):
            yield _Job(r, dict(text or {}))
            continue
        parsed = axes.get(text)
        if parsed is None:
            if len(axes) > 10_000:
                axes.clear()
            parsed = axes[text] = json.loads(text)
        yield _Job(r, parsed)


def _filtered(
    rows: Iterator[_Job], tags: set[str] | None, models: set[str] | None, seeds: set[int] | None
) -> Iterator[_Job]:
    for r in rows:
        if tags and not tags & set(r.tags):
            continue
        if models and not (r.model in models or r.endpoint in models):
            continue
        if seeds and r.seed not in seeds:
            continue
        yield r


def _batches(rows: Iterator[_Job], size: int) -> Iterator[list[_Job]]:
    batch: list[_Job] = []
    for r in rows:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _image_base(source: RunSource, target: Target) -> str:
    """Where the full images are, seen from the report (relative when both are on this machine)."""
    if source.remote:
        run = source.where("").rstrip("/")
        here = target.where.rstrip("/")
        if target.bucket is not None and here.startswith(run + "/"):
            return "../" * here[len(run) + 1 :].count("/") + "../"
        return run + "/"
    if target.bucket is not None:
        return source.run_dir.resolve().as_uri() + "/"
    return Path(os.path.relpath(source.run_dir.resolve(), target.dir.resolve())).as_posix() + "/"


def _stream(source: RunSource, target: Target, filters: Any) -> tuple[Space, _Jobs]:
    """The one pass over the state: columns, thumbnails and the detail chunks."""
    collect, jobs = _Collector(), _Jobs()
    base = _image_base(source, target)
    details: list[str] = []
    thumbs = str(target.dir) + "/"
    pool = None
    try:
        with source.store() as store:
            records = _jobs(store.plan_records_paged(PAGE))
            for batch in _batches(_filtered(records, *filters), PAGE):
                todo: dict[str, tuple[str, str]] = {}
                shas = [e["sha256"] for r in batch for e in r.files if r.state == "downloaded"]
                have = target.have_thumbs(shas) if shas else set()
                for r in batch:
                    n = collect.n
                    collect.add(r)
                    jobs.counts[r.state] = jobs.counts.get(r.state, 0) + 1
                    jobs.states.append(ord(STATE_CODE.get(r.state, "p")))
                    files = r.files
                    jobs.images += len(files)
                    if r.state == "failed" or r.error:
                        jobs.errors[n] = r.error or ""
                    shown = b"\0" * 12
                    for e in files:
                        sha = e["sha256"]
                        if sha[:24] not in have and sha[:24] not in todo:
                            # From a bucket the image is read (its hash checked) only when it has no thumbnail yet.
                            image = source.local_file(e["path"], sha if source.remote else None)
                            if image is None:
                                continue
                            todo[sha[:24]] = (str(image), thumbs + thumb_rel(sha))
                        if shown == b"\0" * 12:
                            shown = bytes.fromhex(sha[:24])
                    if files and shown == b"\0" * 12:
                        jobs.fallback[n] = base + files[0]["path"]
                    jobs.thumbs += shown
                    details.append(detail(r, base))
                    if len(details) == CHUNK:
                        _write(
                            target,
                            f"data/d-{(n // CHUNK):05d}.js",
                            _details_js(n // CHUNK, details),
                        )
                        details = []
                if todo:
                    pool = pool or pool_for(len(todo))
                    for name, made in zip(
                        todo, bounded_map(pool, make_thumb, todo.values()), strict=True
                    ):
                        target.publish(os.path.relpath(made, target.dir))
                        if source.remote:
                            Path(todo[name][0]).unlink(
                                missing_ok=True
                            )  # the bucket's copy, read once
                    target.made_thumbs(todo)
                    jobs.made += len(todo)
    finally:
        if pool is not None:
            pool.shutdown()
    if details:
        k = (collect.n - 1) // CHUNK
        _write(target, f"data/d-{k:05d}.js", _details_js(k, details))
    return collect.finish(), jobs


def _write_grid(target: Target, sp: Space, jobs: _Jobs) -> list[list[list[int]]]:
    """The grid chunks; returns each chunk's [low, high, has "not set"] per dimension."""
    zones = []
    total = len(jobs.states)
    failed, unthumbed = sorted(jobs.errors), sorted(jobs.fallback)
    for k, lo in enumerate(range(0, total, CHUNK)):
        hi = min(lo + CHUNK, total)
        zone, cols = [], []
        for c in sp.cols:
            part = c[lo:hi]
            present = part[part >= 0]
            zone.append(
                [int(present.min()), int(present.max()), int(len(present) < len(part))]
                if len(present)
                else [1, 0, 1]
            )
            cols.append(part.tolist())
        data = {
            "v": cols,
            "s": jobs.states[lo:hi].decode(),
            "t": [jobs.thumb(n) or "" for n in range(lo, hi)],
            "e": _within(jobs.errors, failed, lo, hi),
            "p": _within(jobs.fallback, unthumbed, lo, hi),
        }
        _write(target, f"data/i-{k:05d}.js", _chunk_js("i", k, data))
        zones.append(zone)
    return zones


def _within(sparse: dict[int, str], keys: list[int], lo: int, hi: int) -> dict[str, str]:
    """The entries of a sparse per-job map for jobs lo..hi-1 (`keys`: its keys in order), keyed
    by position in the chunk: a bisect, not a scan of every failure for every chunk."""
    a, b = bisect.bisect_left(keys, lo), bisect.bisect_left(keys, hi)
    return {str(n - lo): sparse[n] for n in keys[a:b]}


def _write_labels(target: Target, sp: Space) -> list[dict[str, Any]]:
    dims = []
    for d, (name, values, missing) in enumerate(zip(sp.names, sp.values, sp.missing, strict=True)):
        dim: dict[str, Any] = {"name": name, "count": len(values), "missing": missing}
        if len(values) <= LARGE:
            dim["values"] = values
        else:
            dim["values"] = None  # in data/l-D-NNNNN.js, LABELS a file
            for k, lo in enumerate(range(0, len(values), LABELS)):
                _write(
                    target,
                    f"data/l-{d}-{k:05d}.js",
                    _chunk_js(f"l-{d}", k, values[lo : lo + LABELS]),
                )
        dims.append(dim)
    return dims


def build(
    run: RunSource | Path,
    *,
    row_axis: str = "prompt",
    col_axis: str = "model",
    tags: set[str] | None = None,
    models: set[str] | None = None,
    seeds: set[int] | None = None,
    max_side: int = 4096,
    out: str | None = None,
    env: Mapping[str, str] | None = None,
    sheets: str = "auto",
) -> dict[str, Any]:
    """The report of a run (a directory, or a RunSource: any state, images on disk or in a bucket),
    written to `out` (a folder or s3://bucket/prefix/; default RUN/report/).

    `sheets`: "all" draws every PNG sheet of the default view, "none" none, "auto" (the default)
    all of them when there are at most SHEETS_AUTO, else none (a dataset-sized run would get
    one sheet per few prompts: 12,500 PNGs, ~5 GB, at 100k captions; the viewer shows the same).
    """
    if sheets not in SHEETS_MODES:
        raise UsageError(f"sheets={sheets!r}", hint="one of: " + ", ".join(SHEETS_MODES))
    with sourced(run) as source:
        _check_axes(source, row_axis, col_axis)
        target = open_target(out, source.run_dir / REPORT_DIR, env or {})
        try:
            return _build(
                source, target, row_axis, col_axis, (tags, models, seeds), max_side, sheets
            )
        finally:
            target.close()


def _check_axes(source: RunSource, *axes: str) -> None:
    """An axis the run lacks is a usage error before anything is read in full or written."""
    fixed = {"prompt", "model", "seed", "sample"}
    if all(a in fixed for a in axes):
        return  # ("sample" exists only where seeds differ: default_view says so after the pass)
    with source.store() as store:
        names = ["prompt", "model", *sorted(store.axis_names()), "seed"]
    for axis in axes:
        if axis not in names and axis != "sample":
            raise UsageError(f"no axis {axis!r} in this run", hint="axes here: " + ", ".join(names))


def _build(
    source: RunSource,
    target: Target,
    row_axis: str,
    col_axis: str,
    filters: tuple[Any, ...],
    max_side: int,
    sheets: str,
) -> dict[str, Any]:
    sp, jobs = _stream(source, target, filters)
    total = len(jobs.states)
    if not total:
        raise UsageError(
            f"{source.label}: no jobs match", hint="check the filters, or run the manifest first"
        )
    view = default_view(sp, row_axis, col_axis)
    zones = _write_grid(target, sp, jobs)
    dims = _write_labels(target, sp)
    parts = [f"{n} {s}" for s, n in sorted(jobs.counts.items(), key=lambda kv: -kv[1])]
    data = {
        "mode": "run",
        "summary": f"{total} jobs, {jobs.images} images: " + ", ".join(parts),
        "dims": dims,
        "linked": [["seed", "sample"]] if sp.sample else [],
        "view": {"x": view.x, "y": view.y, "page": view.page},
        "chunks": {
            "size": CHUNK,
            "labels": LABELS,
            "total": total,
            "zones": zones,
            "budget": BUDGET,
        },
    }
    index = page_mod.write(target.dir / "index.html", f"{source.name}: {total} jobs", data)
    target.publish("index.html")
    target.prune("data")
    # Not drawn this time: those of an earlier report are left as they are.
    layout = layout_of(sp, view)
    arranged = report_sheets.arrange(layout, sp.cols) if sheets != "none" else None
    planned = report_sheets.count(arranged, max_side) if sheets == "auto" else 0
    draw = sheets == "all" or (sheets == "auto" and planned <= SHEETS_AUTO)
    drawn, names = _sheets(target, layout, arranged, jobs, max_side) if draw else (0, [])
    pg = sp.index(view.page)
    return {
        "index": target.location("index.html") if target.bucket is not None else index,
        "sheets": [
            target.location(n) if target.bucket is not None else target.dir / n for n in names
        ],
        "sheets_drawn": drawn,
        "sheets_skipped": 0 if draw else planned,  # too many for "auto" (not "none")
        "pages": len(sp.values[pg]) + int(sp.missing[pg]) if pg >= 0 else 1,
        "thumbnails_made": jobs.made,
        "cells": total,
        "view": view,
        "where": target.where,
    }


def layout_of(sp: Space, view: View) -> report_sheets.Layout:
    """The sheets' grid for `view`: rows are Y values × the other dimensions that vary."""
    x, y, pg = sp.index(view.x), sp.index(view.y), sp.index(view.page)
    skip = {sp.index(n) for n in _linked(sp, view)}
    inner = [
        d
        for d in range(len(sp.names))
        if d not in (x, y, pg) and d not in skip and len(sp.values[d]) + sp.missing[d] > 1
    ]
    return report_sheets.Layout(sp.names, lambda d, v: sp.values[d][v], x, y, pg, inner)


def _sheets(
    target: Target,
    layout: report_sheets.Layout,
    arranged: report_sheets.Arranged | None,
    jobs: _Jobs,
    max_side: int,
) -> tuple[int, list[str]]:
    """Draw the sheets whose content changed; remove those an earlier report wrote and this one did not."""

    def cell(n: int) -> tuple[str, str | None, str]:
        code = chr(jobs.states[n])
        state = "downloaded" if code == "d" else "failed" if code == "f" else "pending"
        thumb = jobs.thumb(n) if state == "downloaded" else None
        return state, thumb_rel(thumb) if thumb else None, jobs.errors.get(n, "")

    known = target.sheet_sigs()
    names: list[str] = []

    def todo() -> Iterator[_Signed]:
        for sheet in report_sheets.sheets(layout, arranged, cell, max_side):
            names.append(sheet.name)
            sig = sheet.signature(max_side)
            if known.get(sheet.name) == sig and target.fetch(sheet.name) is not None:
                continue
            sheet.path = str(target.dir / sheet.name)
            sheet.cells = {
                at: (state, _local(target, thumb), reason)
                for at, (state, thumb, reason) in sheet.cells.items()
            }
            yield _Signed(sheet, sig)

    drawn = 0
    specs = todo()
    first = list(itertools.islice(specs, 8))
    pool = pool_for(len(first), at_least=4)
    try:
        for done in bounded_map(pool, _draw, itertools.chain(first, specs), window=16):
            target.publish(done.name)
            target.made_sheet(done.name, done.sig)
            drawn += 1
    finally:
        if pool is not None:
            pool.shutdown()
    for stale in set(target.sheet_sigs()) - set(names):
        target.remove(stale)
        target.forget_sheet(stale)
    for old in target.dir.glob("sheet-*.png"):  # sheets of a report made before the manifest
        if old.name not in names:
            old.unlink()
    return drawn, names


@dataclass
class _Signed:
    sheet: Sheet
    sig: str

    @property
    def name(self) -> str:
        return self.sheet.name


def _draw(signed: _Signed) -> _Signed:
    report_sheets.draw(signed.sheet)
    return signed


def _local(target: Target, thumb: str | None) -> str | None:
    if thumb is None:
        return None
    path = target.fetch(thumb)
    return str(path) if path is not None else None
