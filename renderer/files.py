"""Files on disk: verified images, atomic writes, sidecars, and the dataset export.

Invariants:
  * A final path only ever holds a complete, verified image: bytes go to a hidden temporary
    file in the same directory, are fsynced, then renamed into place.
  * The extension comes from the decoded image, never from a URL or a server-given name.
  * metadata.jsonl lists images in plan order, with `file_name` relative to the run directory,
    loadable as a Hugging Face ImageFolder dataset; README.md pins the split so a path segment
    such as `dev` or `test` is never read as one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .layout import SIDECAR_SUFFIX

FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "WEBP": ("webp", "image/webp")}
PART_SUFFIX = ".part"


class BadImage(ValueError):
    """Downloaded bytes that are not the image they claim to be."""


@dataclass(frozen=True)
class Verified:
    data: bytes
    ext: str
    content_type: str
    width: int
    height: int
    sha256: str


def verify_image(data: bytes, declared_type: str = "", expected_size: int | None = None) -> Verified:
    if expected_size is not None and len(data) != expected_size:
        raise BadImage(f"{len(data)} bytes received, {expected_size} announced")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
            probe.verify()  # structure and checksums
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: catches truncation that verify() does not
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"not a decodable image: {exc}") from exc
    if fmt not in FORMATS:
        raise BadImage(f"unsupported image format {fmt}")
    ext, content_type = FORMATS[fmt]
    if declared_type.startswith("image/") and declared_type not in (content_type, "image/jpg"):
        raise BadImage(f"declared {declared_type} but the bytes are {content_type}")
    return Verified(data, ext, content_type, width, height, hashlib.sha256(data).hexdigest())


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> os.stat_result:
    """Write bytes so that `path` is either absent, the old file, or the complete new file.

    The data is fsynced before the rename; the directory is not. After a power cut the rename
    may be undone, and a rerun notices the missing file (size/mtime check) and fetches it again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat()


def write_json(path: Path, data: Any, *, durable: bool = True) -> os.stat_result:
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    return write_atomic(path, text.encode(), durable=durable)


def remove_partials(run_dir: Path, folders: Iterable[Path] | None = None) -> int:
    """Temporary files left by a process that was killed mid-write.

    `folders` limits the search (the folders of unfinished jobs: a finished job's files were
    all renamed into place before it was recorded as finished); None searches the whole run.
    """
    found = 0
    places = [run_dir] if folders is None else sorted(set(folders))
    for folder in places:
        pattern = folder.rglob if folders is None else folder.glob
        for part in pattern(f".*{PART_SUFFIX}"):
            part.unlink(missing_ok=True)
            found += 1
    return found


def sidecar_path(image: Path) -> Path:
    return image.with_suffix(SIDECAR_SUFFIX)


def file_intact(run_dir: Path, entry: dict[str, Any], *, rehash: bool) -> bool:
    """Is a recorded file still there, unchanged? Size and mtime by default; the hash with rehash."""
    path = os.path.join(run_dir, entry["path"])  # plain strings: this runs once per file on every rerun
    try:
        stat = os.stat(path)
    except OSError:
        return False
    if stat.st_size != entry["size"]:
        return False
    if rehash:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest() == entry["sha256"]
    return stat.st_mtime_ns == entry["mtime_ns"]


HF_README = """---
# Written by renderer. Pins every image to one split, so that path segments such as
# "dev" or "test" (e.g. a model called flux-1/dev) are never read as split names.
configs:
- config_name: default
  data_files:
  - split: train
    path:
    - "metadata.jsonl"
    - "**/*.png"
    - "**/*.jpg"
    - "**/*.webp"
---
# {name}

Images rendered by `renderer` from `{manifest}`. `metadata.jsonl` has one row per image:
`file_name` (relative to this folder), `prompt`, `prompt_id`, `model`, `endpoint`, `seed`,
`job_key`, `params` (everything else that was sent) and `tags`.
"""


def export(run_dir: Path, name: str, manifest: str, rows: Iterable[dict[str, Any]]) -> None:
    """metadata.jsonl (plan order), streamed to a temporary file and renamed; the dataset README."""
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".metadata.jsonl.", suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, run_dir / "metadata.jsonl")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_atomic(run_dir / "README.md", HF_README.format(name=name, manifest=manifest).encode())
