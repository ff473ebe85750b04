"""Rebuilding lost state from the output, so that a lost database never means paying again.

Every image is written with a sidecar (`<image>.json`) that names its job key, request id,
provider and sha256. When `renderer.sqlite` is deleted, emptied or moved aside (say, after
it was damaged), or a distributed run's PostgreSQL schema is dropped or new, a job the state
knows nothing about may still be in the output, on disk or in the bucket: before anything is
submitted, a planned job that was never submitted from this state is looked up by its path
(on the first run of a new state only), and adopted as finished when every one of its images
is there, whole, and its sidecar names this very job.

Invariants:
  * Only a sidecar whose `job_key` equals the job's key, and an image whose bytes hash to the
    sidecar's `sha256` (in a bucket: whose sha256 stored at its create-only PUT is the
    sidecar's), are trusted; anything else is left for the runner (which renders it).
  * A path held by another job's files (same stem, other key) is never reused: the job gets
    its own path (`store.distinct_stem`), and that path is looked up in turn (also when the
    natural path is empty: the other job's files may have left data/ for superseded/ since).
  * Afterwards data/ holds only planned jobs' images: those whose sidecar names a job outside
    the plan move to superseded/ (superseded.evict_strangers), as settle() would have done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from renderer.errors import StateError
from renderer.layout import DATA_DIR, SUPERSEDED_DIR
from renderer.output import files, superseded
from renderer.output.storage import LocalStorage, Storage
from renderer.state.rows import distinct_stem
from renderer.state.store import Store

IMAGE_EXTENSIONS = ("png", "jpg", "webp")


def _sidecar(storage: Storage, stem: str, index: int) -> dict[str, Any] | None:
    try:
        data = json.loads(storage.read(f"{DATA_DIR}/{stem}-{index}.json") or b"null")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _entry(
    storage: Storage, stem: str, index: int, sidecar: dict[str, Any]
) -> dict[str, Any] | None:
    """The file entry the store keeps for one image, if the image in the output is the sidecar's."""
    name = sidecar.get("file")
    ext = name.rsplit(".", 1)[-1] if isinstance(name, str) and "." in name else ""
    if ext not in IMAGE_EXTENSIONS or name != f"{stem.rsplit('/', 1)[-1]}-{index}.{ext}":
        return None
    digest = sidecar.get("sha256")
    if not isinstance(digest, str):
        return None
    rel = f"{DATA_DIR}/{stem}-{index}.{ext}"
    found = storage.stored_image(rel, digest)
    if found is None:
        return None
    entry: dict[str, Any] = {
        "path": rel,
        "sha256": digest,
        "size": found[0],
        "width": sidecar.get("width"),
        "height": sidecar.get("height"),
        "content_type": sidecar.get("content_type"),
        "seed": sidecar.get("seed"),
    }
    if isinstance(sidecar.get("cost"), (int, float)):
        entry["cost"] = sidecar["cost"]
    entry["mtime_ns"] = found[1]
    return entry


def from_sidecars(store: Store, storage: Storage) -> int:
    """Adopt planned, never-submitted jobs whose images and sidecars are in the output. Returns how many."""
    # Only a state that has never started a run can have lost track of files: later runs
    # record everything they write, and skip this scan (a stat per planned job).
    moved_out = isinstance(storage, LocalStorage) and (storage.root / SUPERSEDED_DIR).is_dir()
    if store.runs_started() or not (storage.has_data() or moved_out):
        return 0
    # Several workers may start on one new shared state at once: one scans at a time, and a
    # worker claims nothing before its own scan is over, so no job is adopted while claimed
    # (adopt also leaves a job some worker holds alone).
    with store.exclusive():
        adopted = _adopt(store, storage)
        if isinstance(storage, LocalStorage):
            # What a change after the lost state's last run wrote into data/ is not the dataset.
            superseded.evict_strangers(storage.root, lambda key: _planned(store, key))
        return adopted


def _planned(store: Store, key: str) -> bool:
    try:
        return store.get(key).in_plan
    except StateError:
        return False


def _adopt(store: Store, storage: Storage) -> int:
    adopted = 0
    # One directory listing per folder (jobs come in plan order, folder by folder), not one
    # failed open per job: a first run of a million jobs has no sidecars to find.
    listed: tuple[str, set[str]] = ("", set())
    for key, stem, num_images in store.fresh_keys():
        folder, _, name = f"{DATA_DIR}/{stem}".rpartition("/")
        if folder != listed[0]:
            listed = (folder, storage.names(folder))
        if f"{name}-0.json" not in listed[1]:
            if not _bring_back(storage, stem, key):
                # Nothing at the natural path: the job may have been written at its own path
                # (the natural one was another job's then, and that job has since left data/).
                own = distinct_stem(stem, key)
                if stem.endswith(distinct_stem("", key)) or not (
                    f"{own.rpartition('/')[2]}-0.json" in listed[1]
                    or _bring_back(storage, own, key)
                ):
                    continue
                first = _sidecar(storage, own, 0)
                if first is None or first.get("job_key") != key:
                    continue
                store.restem(key, own)
                stem = own
            listed = (folder, storage.names(folder))
        first = _sidecar(storage, stem, 0)
        if first is None:
            continue
        if first.get("job_key") != key:
            # Another job's files hold this path: this job gets its own (which may be there too).
            if stem.endswith(distinct_stem("", key)):
                continue
            stem = distinct_stem(stem, key)
            store.restem(key, stem)
            _bring_back(storage, stem, key)
            first = _sidecar(storage, stem, 0)
            if first is None or first.get("job_key") != key:
                continue
        entries = []
        for index in range(num_images):
            sidecar = first if index == 0 else _sidecar(storage, stem, index)
            entry = (
                _entry(storage, stem, index, sidecar)
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


def _bring_back(storage: Storage, stem: str, key: str) -> bool:
    """Images of this job in superseded/ (moved there by a manifest change the state no longer
    remembers) back into data/, so that they are adopted instead of paid for again. Local output
    only: a bucket's superseded objects never leave data/."""
    return isinstance(storage, LocalStorage) and superseded.restore(storage.root, stem, key)


def leftovers(run_dir: Path) -> int:
    """Temporary files a killed process left in the run's own folders (run.json, metadata, card)."""
    return files.remove_partials(run_dir, [run_dir, run_dir / DATA_DIR])
