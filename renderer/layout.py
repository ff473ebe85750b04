"""Where things go on disk. Pure functions of a job and the run's layout: no I/O, no clock, no plan order.

A job's images live at  RUN/data/<model>/[<bucket>/]<prompt id>/[<axis>-<value>_…/]s<seed>-<i>.<ext>
  * layout "flat" (a sweep of up to FLAT_PROMPTS prompts: readable paths) has no bucket;
    "sharded" puts each prompt's folder under one of 4,096 buckets named by the first three hex
    digits of its id's hash, so no folder holds more than ~10,000 entries up to ~40M prompts a
    model (the Hugging Face Hub asks for under 10,000 entries a folder);
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
#   RUN/superseded/                            images of jobs no longer in the plan (same paths as in data/)
DATA_DIR = "data"  # the dataset folder inside a run directory
SUPERSEDED_DIR = "superseded"  # where a job's images go when it leaves the plan (never deleted)
DB_NAME = "renderer.sqlite"
# The columns every dataset row has (output/dataset.py types them), `image` being the one
# `datasets` makes of file_name: a prompt file's kept column (`keep:`) may not take these names.
DATASET_COLUMNS = (
    "file_name",
    "prompt",
    "prompt_id",
    "model",
    "endpoint",
    "seed",
    "image_index",
    "job_key",
    "request_id",
    "provider",
    "width",
    "height",
    "sha256",
    "content_type",
    "has_nsfw_concepts",
    "tags",
    "input",
)
AXIS_PREFIX = "axis_"  # an axis whose name is one of DATASET_COLUMNS is a column of this prefix
LOCK_NAME = ".renderer.lock"
RUN_RECORD = "run.json"
REPORT_DIR = "report"
METADATA = "metadata.jsonl"  # inside DATA_DIR: one row per image
CARD = "README.md"  # inside DATA_DIR: the dataset card


def segment_of(text: str) -> str:
    """A readable, portable path segment for any text (`16:9` → `16x9`, `a/b` → `a_b`).

    Uncached: for values met once each (a caption set's million prompt ids); `segment` caches.
    """
    value = text.replace(":", "x").replace("/", "_")
    value = _UNSAFE.sub("-", value).strip("-. ") or "_"
    if len(value) > MAX_SEGMENT:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = value[: MAX_SEGMENT - 9].rstrip("-.") + "-" + digest
    if value.split(".")[0].lower() in WINDOWS_RESERVED:
        value = "_" + value
    return value


segment = lru_cache(maxsize=65536)(segment_of)


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


LAYOUTS = ("auto", "flat", "sharded")
LAYOUT_META = "layout"  # the state's record of the layout a run started with
FLAT_PROMPTS = 10_000  # "auto" shards above this many prompts: one folder per prompt a model


def resolve_layout(layout: str, prompts: int) -> str:
    """flat or sharded: `auto` by the plan's prompt count, the others as given."""
    if layout == "auto":
        return "sharded" if prompts > FLAT_PROMPTS else "flat"
    return layout


def bucket(prompt_id: str) -> str:
    """A prompt's bucket in the sharded layout: 3 hex digits of its (case-folded) id's hash."""
    return hashlib.sha256(prompt_id.lower().encode()).hexdigest()[:3]


def job_stem(
    model: str, prompt_id: str, axes: dict[str, Any], seed: int | None, sharded: bool = False
) -> str:
    """The job's path relative to the run directory, without image index and extension."""
    parts = [model_segment(model), segment(prompt_id)]
    if sharded:
        parts.insert(1, bucket(prompt_id))
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
