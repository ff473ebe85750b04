"""Contact sheets: a static HTML report and labelled PNG sheets for a run directory.

Layout: one grid per page, ROW axis × COL axis (default prompt × model); every other axis
that varies (seed, parameter axes) makes the pages, like an X/Y/Z plot. Failed jobs are
visible red cells with their reason, jobs not yet run are grey: never silent blanks.

Files (all inside RUN/report/, no server or network needed, works from file://):
  index.html        the grid, tabs per page, a detail panel per cell (input, seed, request id)
  thumbs/<sha>.jpg  one thumbnail per image content, made once and reused by later reports
  sheet-P[-N].png   a labelled PNG per page, split so no sheet exceeds the size cap
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .errors import UsageError
from .store import Row, Store

THUMB = 256
CELL = 192  # pixels per cell in a PNG sheet
LABEL = 28


@dataclass
class Cell:
    state: str  # downloaded | failed | pending
    job: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)  # {path, thumb, width, height, sha256}


@dataclass
class Page:
    title: str
    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], Cell]


def dims(row: Row) -> dict[str, Any]:
    return {"prompt": row.prompt_id, "model": row.model, "seed": row.seed, **row.axes}


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def build_pages(rows: list[Row], row_axis: str, col_axis: str) -> list[Page]:
    """Group rows into pages of ROW × COL grids, in plan order.

    Pages come from the other axes that vary *within* a grid cell. Seeds page by their
    position among the cell's seeds ("sample k"), so seeds drawn per prompt and model
    (`random: N`) still line up; a page whose cells all share one seed is titled by it.
    """
    known = {name for r in rows for name in dims(r)}
    for axis in (row_axis, col_axis):
        if axis not in known:
            raise UsageError(f"no axis {axis!r} in this run", hint="axes here: " + ", ".join(sorted(known)))
    pick = [(r, dims(r)) for r in rows]
    groups: dict[tuple[str, ...], list[int]] = {}
    for r, d in pick:
        others = tuple(f"{k}={_label(v)}" for k, v in d.items() if k not in (row_axis, col_axis, "seed"))
        groups.setdefault((_label(d.get(row_axis)), _label(d.get(col_axis)), *others), []).append(r.seed or 0)
    for r, d in pick:
        if "seed" not in (row_axis, col_axis):
            others = tuple(f"{k}={_label(v)}" for k, v in d.items() if k not in (row_axis, col_axis, "seed"))
            d["sample"] = groups[(_label(d.get(row_axis)), _label(d.get(col_axis)), *others)].index(r.seed or 0)
            del d["seed"]
    cells: dict[tuple[str, str], set[str]] = {}
    for _, d in pick:
        for k, v in d.items():
            cells.setdefault((f"{_label(d.get(row_axis))}\0{_label(d.get(col_axis))}", k), set()).add(_label(v))
    candidates = list(dict.fromkeys(k for _, d in pick for k in d if k not in (row_axis, col_axis)))
    paging = [a for a in candidates if any(len(v) > 1 for (_, k), v in cells.items() if k == a)]
    pages: dict[str, Page] = {}
    for r, d in pick:
        parts = [f"{a}={_label(d.get(a))}" for a in paging if a in d]
        page = pages.setdefault("  ".join(parts) or "all", Page("  ".join(parts) or "all", [], [], {}))
        rv, cv = _label(d.get(row_axis)), _label(d.get(col_axis))
        if rv not in page.rows:
            page.rows.append(rv)
        if cv not in page.cols:
            page.cols.append(cv)
        job = {"key": r.key, "endpoint": r.endpoint, "model": r.model, "prompt_id": r.prompt_id, "prompt": r.prompt,
               "seed": (r.result or {}).get("seed", r.seed), "axes": r.axes, "input": r.input,
               "request_id": r.request_id, "error": r.error,
               "timings": {"submitted_at": r.submitted_at, "completed_at": r.completed_at,
                           "downloaded_at": r.downloaded_at}}
        state = r.state if r.state in ("downloaded", "failed") else "pending"
        images = [{k: e[k] for k in ("path", "width", "height", "sha256")} for e in (r.files or [])]
        page.cells[(rv, cv)] = Cell(state, job, images)
    for page in pages.values():
        seeds = {cell.job["seed"] for cell in page.cells.values()}
        if len(seeds) == 1 and "sample=" in page.title:
            kept = [p for p in page.title.split("  ") if not p.startswith("sample=")]
            page.title = "  ".join([*kept, f"seed={seeds.pop()}"])
    return list(pages.values())


def _make_thumb(task: tuple[str, str]) -> None:
    source, target = task
    with Image.open(source) as image:
        image.thumbnail((THUMB, THUMB))
        tmp = target + ".tmp"
        image.convert("RGB").save(tmp, "JPEG", quality=82)
    os.replace(tmp, target)


def make_thumbnails(run_dir: Path, report_dir: Path, pages: Iterable[Page], workers: int | None = None) -> int:
    """Thumbnails named by content hash: made once, reused by every later report. Returns how many were made."""
    thumbs = report_dir / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    todo: dict[str, tuple[str, str]] = {}
    for page in pages:
        for cell in page.cells.values():
            for image in cell.images:
                name = image["sha256"][:24] + ".jpg"
                image["thumb"] = f"thumbs/{name}"
                if not (thumbs / name).exists() and (run_dir / image["path"]).is_file():
                    todo[name] = (str(run_dir / image["path"]), str(thumbs / name))
    tasks = list(todo.values())
    if len(tasks) < 16:
        for task in tasks:
            _make_thumb(task)
    else:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            list(pool.map(_make_thumb, tasks, chunksize=16))
    return len(tasks)


# ---------------------------------------------------------------- HTML

STYLE = """
body{font:14px system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{padding:12px 16px;background:#222;color:#fff}header h1{margin:0;font-size:18px}
nav{padding:8px 16px;display:flex;flex-wrap:wrap;gap:6px}
nav button{border:1px solid #bbb;background:#fff;padding:4px 10px;border-radius:4px;cursor:pointer}
nav button.on{background:#222;color:#fff;border-color:#222}
.grid{border-collapse:collapse;margin:8px 16px}
.grid th{font-weight:600;padding:6px;max-width:200px;word-break:break-word;text-align:left;vertical-align:bottom}
.grid td{padding:4px;vertical-align:top}
.cell{width:192px;height:192px;display:flex;align-items:center;justify-content:center;border-radius:4px;
      overflow:hidden;cursor:pointer;position:relative;background:#eee}
.cell img{max-width:100%;max-height:100%}
.cell.failed{background:#fde2e2;color:#a11;font-size:12px;padding:8px;box-sizing:border-box;text-align:center}
.cell.pending{background:#e8e8e8;color:#666}
.cell .count{position:absolute;right:4px;bottom:4px;background:#0009;color:#fff;font-size:11px;padding:1px 5px;border-radius:8px}
#detail{position:fixed;inset:0;background:#000c;display:none;align-items:center;justify-content:center}
#detail.open{display:flex}
#detail .box{background:#fff;max-width:92vw;max-height:92vh;overflow:auto;display:flex;gap:16px;padding:16px;border-radius:6px}
#detail img{max-width:60vw;max-height:85vh;align-self:flex-start;object-fit:contain}
#detail pre{font-size:12px;max-width:32vw;white-space:pre-wrap;word-break:break-word}
"""

SCRIPT = """
const pages = DATA.pages;
const nav = document.getElementById('tabs'), main = document.getElementById('grid');
function show(i){
  [...nav.children].forEach((b,j)=>b.classList.toggle('on',i===j));
  const p = pages[i], t = document.createElement('table'); t.className='grid';
  const head = t.insertRow(); head.appendChild(document.createElement('th'));
  p.cols.forEach(c=>{const th=document.createElement('th'); th.textContent=c; th.className='col'; head.appendChild(th);});
  p.rows.forEach(r=>{
    const tr=t.insertRow(); const th=document.createElement('th'); th.textContent=r; th.className='row'; tr.appendChild(th);
    p.cols.forEach(c=>{
      const td=tr.insertCell(), cell=p.cells[r+'\\u0000'+c], div=document.createElement('div');
      div.className='cell '+(cell?cell.state:'pending');
      if(!cell){div.textContent='not planned';}
      else if(cell.state==='downloaded'){
        const img=document.createElement('img'); img.src=cell.images[0].thumb; img.alt=r+' / '+c; div.appendChild(img);
        if(cell.images.length>1){const n=document.createElement('span'); n.className='count'; n.textContent=cell.images.length; div.appendChild(n);}
      } else if(cell.state==='failed'){div.textContent='failed: '+(cell.job.error||'unknown reason');}
      else {div.textContent='not rendered yet';}
      if(cell){div.onclick=()=>detail(cell);}
      td.appendChild(div);
    });
  });
  main.replaceChildren(t);
}
function detail(cell){
  const box=document.querySelector('#detail .box'); box.replaceChildren();
  if(cell.images.length){const img=document.createElement('img'); img.src='../'+cell.images[0].path; box.appendChild(img);}
  const pre=document.createElement('pre'); pre.id='detail-text';
  pre.textContent=JSON.stringify(Object.assign({state:cell.state,files:cell.images.map(i=>i.path)},cell.job),null,2);
  box.appendChild(pre); document.getElementById('detail').classList.add('open');
}
document.getElementById('detail').onclick=(e)=>{if(e.target.id==='detail')e.target.classList.remove('open');};
pages.forEach((p,i)=>{const b=document.createElement('button'); b.textContent=p.title; b.onclick=()=>show(i); nav.appendChild(b);});
if(pages.length) show(0);
"""


def write_html(report_dir: Path, title: str, pages: list[Page]) -> Path:
    data = {"pages": [{"title": p.title, "rows": p.rows, "cols": p.cols,
                       "cells": {f"{r}\u0000{c}": {"state": cell.state, "job": cell.job, "images": cell.images}
                                 for (r, c), cell in p.cells.items()}} for p in pages]}
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1></header>"
            f"<nav id=tabs></nav><main id=grid></main><div id=detail><div class=box></div></div>"
            f"<script>const DATA = {payload};</script><script>{SCRIPT}</script></body></html>\n")
    path = report_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------- PNG sheets


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _draw_sheet(spec: tuple[str, str, list[str], list[str], dict[tuple[str, str], tuple[str, str | None]]]) -> str:
    """One labelled sheet; runs in a worker process (sheets are independent)."""
    path, title, rows, cols, cells = spec
    font = _font(13)
    sheet = Image.new("RGB", (CELL * (len(cols) + 1), LABEL * 2 + CELL * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill="black", font=font)
    for j, col in enumerate(cols):
        draw.text((CELL * (j + 1) + 6, LABEL + 6), col[:28], fill="black", font=font)
    for i, row in enumerate(rows):
        top = LABEL * 2 + CELL * i
        draw.text((6, top + 6), row[:26], fill="black", font=font)
        for j, col in enumerate(cols):
            left = CELL * (j + 1)
            state, thumb = cells.get((row, col), ("pending", None))
            if thumb is None:
                color = "#fde2e2" if state == "failed" else "#e8e8e8"
                draw.rectangle((left + 2, top + 2, left + CELL - 2, top + CELL - 2), fill=color)
                draw.text((left + 8, top + 8), "failed" if state == "failed" else "pending", fill="black", font=font)
                continue
            with Image.open(thumb) as image:
                image.thumbnail((CELL - 4, CELL - 4))
                sheet.paste(image, (left + 2, top + 2))
    sheet.save(path, "PNG", optimize=False)
    return path


def write_sheets(report_dir: Path, pages: list[Page], max_side: int = 4096) -> list[Path]:
    """One labelled PNG per page; pages too large for `max_side` are split into several."""
    fit_cols = max(1, (max_side - CELL) // CELL)  # the first column holds the row labels
    fit_rows = max(1, (max_side - LABEL * 2) // CELL)
    specs = []
    for index, page in enumerate(pages, 1):
        row_chunks = [page.rows[i:i + fit_rows] for i in range(0, len(page.rows), fit_rows)] or [[]]
        col_chunks = [page.cols[i:i + fit_cols] for i in range(0, len(page.cols), fit_cols)] or [[]]
        parts = [(r, c) for r in row_chunks for c in col_chunks]
        for n, (rows, cols) in enumerate(parts, 1):
            cells = {}
            for key, cell in page.cells.items():
                if key[0] in rows and key[1] in cols:
                    thumb = str(report_dir / cell.images[0]["thumb"]) if cell.state == "downloaded" and cell.images else None
                    cells[key] = (cell.state, thumb)
            suffix = f"-{n}" if len(parts) > 1 else ""
            specs.append((str(report_dir / f"sheet-{index}{suffix}.png"), page.title, rows, cols, cells))
    if len(specs) < 4:
        return [Path(_draw_sheet(spec)) for spec in specs]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return [Path(p) for p in pool.map(_draw_sheet, specs)]


def build(run_dir: Path, *, row_axis: str = "prompt", col_axis: str = "model", tags: set[str] | None = None,
          models: set[str] | None = None, seeds: set[int] | None = None, max_side: int = 4096) -> dict[str, Any]:
    store = Store(run_dir, readonly=True)
    try:
        rows = store.rows(in_plan=True)
    finally:
        store.close()
    if tags:
        rows = [r for r in rows if tags & set(r.tags)]
    if models:
        rows = [r for r in rows if r.model in models or r.endpoint in models]
    if seeds:
        rows = [r for r in rows if r.seed in seeds]
    if not rows:
        raise UsageError(f"{run_dir}: no jobs match", hint="check the filters, or run the manifest first")
    pages = build_pages(rows, row_axis, col_axis)
    report_dir = run_dir / "report"
    made = make_thumbnails(run_dir, report_dir, pages)
    index = write_html(report_dir, f"{run_dir.name}: {row_axis} × {col_axis}", pages)
    sheets = write_sheets(report_dir, pages, max_side)
    return {"index": index, "sheets": sheets, "pages": len(pages), "thumbnails_made": made,
            "cells": sum(len(p.cells) for p in pages)}
