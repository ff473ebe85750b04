"""Rebuilding lost state from the files on disk, so that a lost database never means paying again.

Every image is written with a sidecar (`<image>.json`) that names its job key, request id,
provider and sha256. When `renderer.sqlite` is deleted, emptied or moved aside (say, after
it was damaged), a job the database knows nothing about may still be on disk: before
anything is submitted, a planned job that was never submitted from this database is looked
up by its path (on the first run of a new database only), and adopted as finished when every one of its images is there, whole, and
its sidecar names this very job.

Invariants:
  * Only a sidecar whose `job_key` equals the job's key, and an image whose bytes hash to the
    sidecar's `sha256`, are trusted; anything else is left for the runner (which renders it).
  * A path held by another job's files (same stem, other key) is never reused: the job gets
    its own path (`store.distinct_stem`), and that path is looked up in turn.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from renderer.layout import DATA_DIR
from renderer.output import files
from renderer.state.rows import distinct_stem
from renderer.state.store import Store

IMAGE_EXTENSIONS = ("png", "jpg", "webp")


def _sidecar(run_dir: Path, stem: str, index: int) -> dict[str, Any] | None:
    path = run_dir / DATA_DIR / f"{stem}-{index}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _entry(run_dir: Path, stem: str, index: int, sidecar: dict[str, Any]) -> dict[str, Any] | None:
    """The file entry the store keeps for one image, if the image on disk is the sidecar's."""
    name = sidecar.get("file")
    ext = name.rsplit(".", 1)[-1] if isinstance(name, str) and "." in name else ""
    if ext not in IMAGE_EXTENSIONS or name != f"{stem.rsplit('/', 1)[-1]}-{index}.{ext}":
        return None
    rel = f"{DATA_DIR}/{stem}-{index}.{ext}"
    path = run_dir / rel
    try:
        data = path.read_bytes()
        stat = os.stat(path)
    except OSError:
        return None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sidecar.get("sha256"):
        return None
    entry: dict[str, Any] = {
        "path": rel,
        "sha256": digest,
        "size": len(data),
        "width": sidecar.get("width"),
        "height": sidecar.get("height"),
        "content_type": sidecar.get("content_type"),
        "seed": sidecar.get("seed"),
    }
    if isinstance(sidecar.get("cost"), (int, float)):
        entry["cost"] = sidecar["cost"]
    entry["mtime_ns"] = stat.st_mtime_ns
    return entry


def from_sidecars(store: Store, run_dir: Path) -> int:
    """Adopt planned, never-submitted jobs whose images and sidecars are on disk. Returns how many."""
    # Only a database that has never started a run can have lost track of files: later runs
    # record everything they write, and skip this scan (a stat per planned job).
    if store.runs_started() or not (run_dir / DATA_DIR).is_dir():
        return 0
    adopted = 0
    # One directory listing per folder (jobs come in plan order, folder by folder), not one
    # failed open per job: a first run of a million jobs has no sidecars to find.
    listed: tuple[str, set[str]] = ("", set())
    for key, stem, num_images in store.fresh_keys():
        folder, _, name = f"{DATA_DIR}/{stem}".rpartition("/")
        if folder != listed[0]:
            try:
                listed = (folder, set(os.listdir(run_dir / folder)))
            except OSError:
                listed = (folder, set())
        if f"{name}-0.json" not in listed[1]:
            continue  # what _sidecar would find: nothing (a job's own path is tried only after this one)
        first = _sidecar(run_dir, stem, 0)
        if first is None:
            continue
        if first.get("job_key") != key:
            # Another job's files hold this path: this job gets its own (which may be on disk too).
            if stem.endswith(distinct_stem("", key)):
                continue
            stem = distinct_stem(stem, key)
            store.restem(key, stem)
            first = _sidecar(run_dir, stem, 0)
            if first is None or first.get("job_key") != key:
                continue
        entries = []
        for index in range(num_images):
            sidecar = first if index == 0 else _sidecar(run_dir, stem, index)
            entry = (
                _entry(run_dir, stem, index, sidecar)
                if sidecar and sidecar.get("job_key") == key
                else None
            )
            if entry is None:
                break
            entries.append(entry)
        if len(entries) != num_images:
            continue
        request_id = first.get("request_id") if isinstance(first.get("request_id"), str) else None
        provider = first.get("provider") if isinstance(first.get("provider"), str) else None
        store.adopt(key, stem, request_id, provider, entries)
        adopted += 1
    return adopted


def leftovers(run_dir: Path) -> int:
    """Temporary files a killed process left in the run's own folders (run.json, metadata, card)."""
    return files.remove_partials(run_dir, [run_dir, run_dir / DATA_DIR])
