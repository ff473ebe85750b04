"""Where things go on disk. Pure functions of a job: no I/O, no clock, no plan order.

A job's images live at  RUN/data/<model>/<prompt id>/[<axis>-<value>_…/]s<seed>-<i>.<ext>
  * RUN/data/ is the dataset (images, sidecars, metadata.jsonl, the card); the run's machinery
    (state, lock, run.json, report/) stays outside it, so the card's globs and an upload of
    data/ carry only the dataset;
  * every segment is safe on Linux, macOS and Windows (no reserved names, no `:` or `\\`,
    no trailing dot or space, at most 80 characters), and compared case-insensitively for
    collisions, because macOS and Windows file systems fold case;
  * the extension comes from the verified image bytes, so the plan's `stem` is the identity.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

from renderer.canonical import canonical_json

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {
    f"{p}{n}" for p in ("com", "lpt") for n in range(1, 10)
}
MAX_SEGMENT = 80
SIDECAR_SUFFIX = ".json"
# Every name in a run directory, here and nowhere else:
#   RUN/renderer.sqlite, RUN/.renderer.lock   the state (SQLite runs) and the one-writer lock
#   RUN/run.json                               the run record (what ran, counts, cost, outcome)
#   RUN/report/                                the contact sheet (`renderer report`)
#   RUN/data/                                  the dataset: images, sidecars, metadata.jsonl, README.md
DATA_DIR = "data"  # the dataset folder inside a run directory
DB_NAME = "renderer.sqlite"
LOCK_NAME = ".renderer.lock"
RUN_RECORD = "run.json"
REPORT_DIR = "report"
METADATA = "metadata.jsonl"  # inside DATA_DIR: one row per image
CARD = "README.md"  # inside DATA_DIR: the dataset card


@lru_cache(maxsize=65536)
def segment(text: str) -> str:
    """A readable, portable path segment for any text (`16:9` → `16x9`, `a/b` → `a_b`)."""
    value = text.replace(":", "x").replace("/", "_")
    value = _UNSAFE.sub("-", value).strip("-. ") or "_"
    if len(value) > MAX_SEGMENT:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = value[: MAX_SEGMENT - 9].rstrip("-.") + "-" + digest
    if value.split(".")[0].lower() in WINDOWS_RESERVED:
        value = "_" + value
    return value


def value_segment(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"width", "height"}:
        return f"{value['width']}x{value['height']}"
    if isinstance(value, (dict, list)):
        # ensure_ascii=True: segments were always hashed from the escaped text; keep paths stable.
        text = canonical_json(value, ensure_ascii=True)
        return "h" + hashlib.sha256(text.encode()).hexdigest()[:10]
    if isinstance(value, bool):
        return "true" if value else "false"
    return segment(str(value))


def model_segment(name: str) -> str:
    # Flattened: nesting endpoint ids would let `…/preview` + prompt `ultra` collide
    # with `…/preview/ultra`.
    return segment(name.replace("/", "--"))


def job_stem(model: str, prompt_id: str, axes: dict[str, Any], seed: int | None) -> str:
    """The job's path relative to the run directory, without image index and extension."""
    parts = [model_segment(model), segment(prompt_id)]
    if axes:
        parts.append(segment("_".join(f"{segment(k)}-{value_segment(v)}" for k, v in axes.items())))
    parts.append(f"s{seed}" if seed is not None else "s-auto")
    return "/".join(parts)


def image_path(stem: str, index: int, ext: str) -> str:
    """An image's path relative to the run directory (inside the dataset folder)."""
    return f"{DATA_DIR}/{stem}-{index}.{ext}"


def job_folder(stem: str) -> str:
    """The folder, relative to the run directory, that holds a job's images."""
    return image_path(stem, 0, "x").rsplit("/", 1)[0]


def predicted_extension(fmt: Any) -> str:
    return {"jpeg": "jpg", "jpg": "jpg", "webp": "webp"}.get(str(fmt).lower(), "png")
