"""`renderer diff RUN_A RUN_B`: what changed between two runs, image by image.

Jobs are matched by key (same endpoint and input, so the same seed), or, with a model
mapping, by prompt, seed and axes across two models. Each matched image pair is:
  identical  byte for byte (same sha256);
  same       different bytes, the same picture: dHash distance <= HASH_LIMIT (grayscale)
             *and* RMSE <= RMSE_LIMIT (over RGB), both on a 64x64 downscale;
  changed    anything else.
dHash (64 bits: is each pixel brighter than its right neighbour, on a 9x8 downscale) ignores
re-encoding and small noise; RMSE (0…1, in colour) catches shifts of tone and hue that dHash
misses (a grayscale RMSE called two pictures the same when their colours merely had equal
luminance: bench/report_scale.py). JPEG
re-encoding at quality 75 of the same picture measures about dHash 0-2, RMSE 0.01 (tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

from renderer.errors import UsageError, closest
from renderer.output.source import RunSource, sourced
from renderer.state.rows import Row

HASH_LIMIT = 6
RMSE_LIMIT = 0.04


@dataclass
class Pair:
    key: str  # A's job key
    label: str  # prompt / model / seed
    index: int
    a: str | None  # image paths relative to their run
    b: str | None
    verdict: str  # identical | same | changed | missing
    hash_distance: int | None = None
    rmse: float | None = None


def _small(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)


def dhash(image: Image.Image) -> int:
    small = image.resize((9, 8), Image.Resampling.BILINEAR)
    pixels = small.tobytes()  # one byte a pixel: the image is grayscale ("L")
    bits = 0
    for y in range(8):
        for x in range(8):
            bits = (bits << 1) | (pixels[y * 9 + x] > pixels[y * 9 + x + 1])
    return bits


def measure(paths: tuple[str, str]) -> tuple[int, float]:
    """(dHash Hamming distance on grayscale, RMSE in 0…1 over RGB) on a common 64x64 downscale.

    RMSE is taken in colour: two pictures whose tones match in gray but not in hue differ.
    """
    a, b = _small(paths[0]), _small(paths[1])
    distance = bin(dhash(a.convert("L")) ^ dhash(b.convert("L"))).count("1")
    histogram = ImageChops.difference(a, b).histogram()  # 256 bins per band, three bands
    squares = sum(count * (value % 256) ** 2 for value, count in enumerate(histogram))
    rmse = (squares / (64 * 64 * 3)) ** 0.5 / 255
    return distance, rmse


def _measure_or_none(paths: tuple[str, str]) -> tuple[int, float] | None:
    """`measure`, or None when either file is not a readable image (then the pair is 'changed')."""
    try:
        return measure(paths)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def disk_sha256(run: Path | RunSource, entry: dict[str, Any]) -> str | None:
    """The sha256 of the file as it is on disk now, or None when it is gone.

    The recorded hash is trusted only while size and mtime still match what the run
    recorded (the same fast path a rerun uses); a re-encoded, edited or replaced file is
    hashed again, so it can never pass as "identical". (A run in a bucket: the object is read
    and hashed.)
    """
    if isinstance(run, RunSource):
        if run.remote:
            copy = run.local_file(entry["path"])
            return None if copy is None else hashlib.sha256(copy.read_bytes()).hexdigest()
        run = run.run_dir
    path = run / entry["path"]
    try:
        info = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    if (
        info.st_size == entry.get("size")
        and info.st_mtime_ns == entry.get("mtime_ns")
        and entry.get("sha256")
    ):
        return str(entry["sha256"])
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _check_mapping(mapping: dict[str, str], rows_a: list[Row], rows_b: list[Row]) -> None:
    """Every --map label must name a model (label or endpoint) of its run; a typo compares nothing."""
    for side, names, rows in (("A", list(mapping), rows_a), ("B", list(mapping.values()), rows_b)):
        known = sorted({r.model for r in rows} | {r.endpoint for r in rows})
        for name in names:
            if name not in known:
                guess = closest(name, known)
                raise UsageError(
                    f"--map: run {side} has no model {name!r}",
                    hint=(f"did you mean {guess}? " if guess else "")
                    + f"models in run {side}: "
                    + ", ".join(known),
                )


def _load(run: RunSource) -> list[Row]:
    with run.store() as store:
        return store.rows(in_plan=True)


def _identity(row: Row, side: str, mapping: dict[str, str] | None) -> Any:
    """How a job is matched: its key, or (prompt, seed, axes, mapping entry) across models."""
    if mapping is None:
        return row.key
    names = (row.endpoint, row.model)
    if side == "a":
        entry = next((a for a in mapping if a in names), None)
    else:
        entry = next((a for a, b in mapping.items() if b in names), None)
    if entry is None:
        return None
    return (row.prompt_id, row.seed, json.dumps(row.axes, sort_keys=True), entry)


def compare(
    run_a: Path | RunSource,
    run_b: Path | RunSource,
    *,
    mapping: dict[str, str] | None = None,
    hash_limit: int = HASH_LIMIT,
    rmse_limit: float = RMSE_LIMIT,
) -> dict[str, Any]:
    """Match, measure and judge every image pair. `mapping` pairs A_MODEL=B_MODEL (labels or endpoints).

    Each run: a run directory, or a RunSource (any state; images on disk or in a bucket).
    """
    with sourced(run_a) as a, sourced(run_b) as b:
        return _compare(a, b, mapping, hash_limit, rmse_limit)


def _compare(
    run_a: RunSource,
    run_b: RunSource,
    mapping: dict[str, str] | None,
    hash_limit: int,
    rmse_limit: float,
) -> dict[str, Any]:
    rows_a, rows_b = _load(run_a), _load(run_b)
    if mapping is not None:
        _check_mapping(mapping, rows_a, rows_b)
        # Only the mapped models take part: the rest of each run is not being compared.
        rows_a = [r for r in rows_a if _identity(r, "a", mapping) is not None]
        rows_b = [r for r in rows_b if _identity(r, "b", mapping) is not None]
    index_b = {ident: r for r in rows_b if (ident := _identity(r, "b", mapping)) is not None}
    pairs: list[Pair] = []
    only_a, matched = [], set()
    for ra in rows_a:
        rb = index_b.get(_identity(ra, "a", mapping))
        if rb is None:
            only_a.append(ra.key)
            continue
        matched.add(rb.key)
        label = f"{ra.prompt_id} / {ra.model}{' → ' + rb.model if rb.model != ra.model else ''} / seed {ra.seed}"
        files_a, files_b = ra.files or [], rb.files or []
        for i in range(max(len(files_a), len(files_b), 1)):
            fa = files_a[i] if i < len(files_a) else None
            fb = files_b[i] if i < len(files_b) else None
            ha = disk_sha256(run_a, fa) if fa else None
            hb = disk_sha256(run_b, fb) if fb else None
            if fa is None or fb is None or ha is None or hb is None:
                pairs.append(
                    Pair(
                        ra.key,
                        label,
                        i,
                        fa["path"] if fa and ha else None,
                        fb["path"] if fb and hb else None,
                        "missing",
                    )
                )
            elif ha == hb:
                pairs.append(Pair(ra.key, label, i, fa["path"], fb["path"], "identical", 0, 0.0))
            else:
                pairs.append(Pair(ra.key, label, i, fa["path"], fb["path"], "pending"))
    todo = [p for p in pairs if p.verdict == "pending"]
    tasks = [(_file(run_a, p.a), _file(run_b, p.b)) for p in todo if p.a and p.b]
    if len(tasks) >= 16:
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            results = list(pool.map(_measure_or_none, tasks, chunksize=8))
    else:
        results = [_measure_or_none(t) for t in tasks]
    for pair, measured in zip(todo, results, strict=True):
        if measured is None:  # one side is no longer a readable image
            pair.verdict = "changed"
            continue
        distance, rmse = measured
        pair.hash_distance, pair.rmse = distance, round(rmse, 5)
        pair.verdict = "same" if distance <= hash_limit and rmse <= rmse_limit else "changed"
    only_b = [r.key for r in rows_b if r.key not in matched]
    counts = {
        v: sum(1 for p in pairs if p.verdict == v)
        for v in ("identical", "same", "changed", "missing")
    }
    return {
        "run_a": run_a.label,
        "run_b": run_b.label,
        "thresholds": {"hash": hash_limit, "rmse": rmse_limit},
        "counts": {**counts, "only_in_a": len(only_a), "only_in_b": len(only_b)},
        "pairs": [asdict(p) for p in pairs],
        "only_in_a": only_a,
        "only_in_b": only_b,
    }


def _file(run: RunSource, rel: str) -> str:
    """A path on this machine to the run's image (a bucket's is read into a private copy)."""
    return str(run.local_file(rel) or run.run_dir / rel)


def write_html(result: dict[str, Any], path: Path) -> Path:
    """The comparison page: the report's viewer with A | B | difference per pair (renderer/view/diffpage.py)."""
    from renderer.view import diffpage

    return diffpage.write(result, path)
