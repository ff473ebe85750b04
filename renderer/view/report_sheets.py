"""The report's labelled PNG sheets: one grid per page value of the default view (A1111's X/Y/Z
style), split so no sheet exceeds the size cap, laid out from the report's columns (one int per
job per dimension) by one sort, and generated one sheet at a time (memory is one sheet's cells).

Each sheet is identified by what is drawn on it (`Sheet.signature`): a rerun draws only the
sheets whose content changed and removes sheets an earlier report wrote that this one did not.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 192  # pixels per cell in a PNG sheet
LABEL = 28  # one line of header text
ROW_LABEL = 220  # width of the row-label column in a PNG sheet
NOT_SET = "(not set)"
LAST = np.int64(2**40)  # sort key of "not set": after every value


@dataclass
class Sheet:
    """One labelled grid (or a part of one): what `draw` needs, picklable."""

    name: str  # sheet-P[-N].png
    title: str
    corner: str
    cols: list[str]
    rows: list[list[str]]  # label lines per row
    cells: dict[tuple[int, int], tuple[str, str | None, str]]  # (state, thumbnail, failure reason)
    path: str = ""  # where it is drawn (set by the caller)

    def signature(self, max_side: int) -> str:
        """A hash of everything drawn: an unchanged sheet is not drawn again."""
        cells = sorted((list(k), list(v)) for k, v in self.cells.items())
        body = [1, max_side, CELL, LABEL, ROW_LABEL, self.title, self.corner, self.cols, self.rows]
        return hashlib.sha256(json.dumps([*body, cells]).encode()).hexdigest()


@dataclass(frozen=True)
class Layout:
    """What a sheet grid is made of: dimension indexes of X, Y, page (-1: none) and the inner ones."""

    names: Sequence[str]
    labels: Callable[[int, int], str]  # (dimension, value index) -> label
    x: int
    y: int
    page: int
    inner: list[int]


@dataclass
class Arranged:
    """The default view's jobs in sheet order: `order[i]` is the i-th job, with its keys."""

    order: np.ndarray
    page: np.ndarray
    y: np.ndarray
    x: np.ndarray
    inner: list[np.ndarray]
    row_id: np.ndarray  # the row a job lands in, counted over all pages
    starts: list[int]  # where each page starts in `order`, and the end


def arrange(layout: Layout, cols: Sequence[np.ndarray]) -> Arranged | None:
    """The default view's jobs in sheet order (one sort); None for no jobs. `cols[d][n]`: job n's
    value index in dimension d. Counting the sheets and drawing them share it."""
    count = len(cols[0]) if cols else 0
    if not count:
        return None

    def key(d: int) -> np.ndarray:
        if d < 0:
            return np.zeros(count, dtype=np.int64)
        c = cols[d].astype(np.int64)
        return np.where(c < 0, LAST, c)

    page, y, x = key(layout.page), key(layout.y), key(layout.x)
    inner = [key(d) for d in layout.inner]
    jobs = np.arange(count, dtype=np.int64)
    order = np.lexsort((jobs, x, *reversed(inner), y, page))
    page, y, x, inner = page[order], y[order], x[order], [k[order] for k in inner]
    new_page = np.empty(count, dtype=bool)
    new_page[0] = True
    new_page[1:] = page[1:] != page[:-1]
    new_row = new_page.copy()
    for k in (y, *inner):
        new_row[1:] |= k[1:] != k[:-1]
    row_id = np.cumsum(new_row) - 1
    starts = [*np.flatnonzero(new_page).tolist(), count]
    return Arranged(order, page, y, x, inner, row_id, starts)


def _capacity(max_side: int) -> tuple[int, int]:
    """Columns and rows of cells one sheet of at most `max_side` pixels holds."""
    return max(1, (max_side - ROW_LABEL) // CELL), max(1, (max_side - LABEL * 3) // CELL)


def count(a: Arranged | None, max_side: int) -> int:
    """How many sheets `sheets` would yield, without building any (one pass per page)."""
    if a is None:
        return 0
    fit_cols, fit_rows = _capacity(max_side)
    total = 0
    for lo, hi in itertools.pairwise(a.starts):
        rows = int(a.row_id[hi - 1] - a.row_id[lo] + 1)
        width = len(np.unique(a.x[lo:hi]))
        total += -(-rows // fit_rows) * -(-width // fit_cols)
    return total


def sheets(
    layout: Layout,
    ar: Arranged | None,
    cell: Callable[[int], tuple[str, str | None, str]],
    max_side: int,
) -> Iterator[Sheet]:
    """The sheets of the default view (`ar`: its jobs arranged), in order.

    Rows are Y values × the inner dimensions that vary; a cell shows its first job (the page
    shows all of them); a page's columns are the X values present on that page.
    """
    if ar is None:
        return
    order, page, y, x, inner = ar.order, ar.page, ar.y, ar.x, ar.inner
    row_id, starts = ar.row_id, ar.starts
    fit_cols, fit_rows = _capacity(max_side)
    names = layout.names

    def name(d: int, v: int) -> str:
        return NOT_SET if v >= LAST else layout.labels(d, v)

    corner = f"rows: {names[layout.y]}, columns: {names[layout.x]}"
    for n, (lo, hi) in enumerate(itertools.pairwise(starts), 1):
        page_cols = np.unique(x[lo:hi]).tolist()  # ascending: "not set" (LAST) last
        col_at = {v: j for j, v in enumerate(page_cols)}
        first_row, rows = int(row_id[lo]), int(row_id[hi - 1] - row_id[lo] + 1)
        title = (
            f"{names[layout.page]} = {name(layout.page, int(page[lo]))}"
            if layout.page >= 0
            else "all"
        )
        row_chunks = [(i, min(i + fit_rows, rows)) for i in range(0, rows, fit_rows)]
        col_chunks = [
            (i, min(i + fit_cols, len(page_cols))) for i in range(0, len(page_cols), fit_cols)
        ]
        parts = len(row_chunks) * len(col_chunks)
        m = 0
        for r0, r1 in row_chunks:
            a = lo + int(np.searchsorted(row_id[lo:hi], first_row + r0))
            b = lo + int(np.searchsorted(row_id[lo:hi], first_row + r1))
            labels: list[list[str]] = []
            grid: dict[tuple[int, int], tuple[str, str | None, str]] = {}
            for i in range(a, b):
                r = int(row_id[i]) - first_row - r0
                if r == len(labels):
                    labels.append(
                        [
                            f"{names[layout.y]}: {name(layout.y, int(y[i]))}",
                            *(
                                f"{names[d]}: {name(d, int(k[i]))}"
                                for d, k in zip(layout.inner, inner, strict=True)
                            ),
                        ]
                    )
                at = (r, col_at[int(x[i])])
                if at not in grid:
                    grid[at] = cell(int(order[i]))
            for c0, c1 in col_chunks:
                m += 1
                suffix = f"-{m}" if parts > 1 else ""
                yield Sheet(
                    f"sheet-{n}{suffix}.png",
                    title + (f"  (part {m} of {parts})" if parts > 1 else ""),
                    corner,
                    [name(layout.x, v) for v in page_cols[c0:c1]],
                    labels,
                    {(r, c - c0): v for (r, c), v in grid.items() if c0 <= c < c1},
                )


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


def draw(sheet: Sheet) -> str:
    """One labelled sheet, written atomically to sheet.path; runs in a worker process."""
    font, bold = _font(13), _font(15)
    top = LABEL * 3
    image = Image.new(
        "RGB", (ROW_LABEL + CELL * len(sheet.cols), top + CELL * len(sheet.rows)), "white"
    )
    pen = ImageDraw.Draw(image)
    pen.text((6, 6), _fit(pen, sheet.title, bold, image.width - 12), fill="black", font=bold)
    pen.text(
        (6, LABEL * 2 + 6), _fit(pen, sheet.corner, font, ROW_LABEL - 12), fill="#555", font=font
    )
    for j, col in enumerate(sheet.cols):
        left = ROW_LABEL + CELL * j
        for k, line in enumerate(textwrap.wrap(col, 26)[:2] or [""]):
            pen.text(
                (left + 6, LABEL * (1 + k) + 10),
                _fit(pen, line, font, CELL - 12),
                fill="black",
                font=font,
            )
    for i, label_lines in enumerate(sheet.rows):
        y0 = top + CELL * i
        pen.line((0, y0, image.width, y0), fill="#ddd")
        for k, line in enumerate(label_lines[: CELL // 18]):
            pen.text(
                (6, y0 + 6 + 18 * k), _fit(pen, line, font, ROW_LABEL - 12), fill="black", font=font
            )
        for j in range(len(sheet.cols)):
            _cell(
                image,
                pen,
                font,
                ROW_LABEL + CELL * j,
                y0,
                sheet.cells.get((i, j), ("n/a", None, "")),
            )
    tmp = sheet.path + ".tmp"
    image.save(
        tmp, "PNG", optimize=False, compress_level=1
    )  # zlib dominated the sheet time (bench/)
    os.replace(tmp, sheet.path)
    return sheet.path


def _cell(
    image: Image.Image,
    pen: ImageDraw.ImageDraw,
    font: Any,
    x0: int,
    y0: int,
    spec: tuple[str, str | None, str],
) -> None:
    state, thumb, reason = spec
    box = (x0 + 2, y0 + 2, x0 + CELL - 2, y0 + CELL - 2)
    if thumb is not None:
        with Image.open(thumb) as picture:
            picture.thumbnail((CELL - 4, CELL - 4), Image.Resampling.BILINEAR)
            # Centred whatever the aspect ratio.
            image.paste(
                picture, (x0 + (CELL - picture.width) // 2, y0 + (CELL - picture.height) // 2)
            )
        return
    if state == "failed":
        pen.rectangle(box, fill="#fde3e1")
        lines = ["failed", *textwrap.wrap(reason or "no reason recorded", 24)][:9]
        for k, line in enumerate(lines):
            pen.text(
                (x0 + 8, y0 + 8 + 17 * k),
                _fit(pen, line, font, CELL - 16),
                fill="#9d1b12",
                font=font,
            )
    elif state == "n/a":
        pen.rectangle(box, fill="#f3f3f0")
        pen.text((x0 + CELL // 2 - 10, y0 + CELL // 2 - 8), "n/a", fill="#999", font=font)
    else:
        pen.rectangle(box, fill="#e3e3e0")
        pen.text((x0 + 8, y0 + 8), state, fill="#555", font=font)
