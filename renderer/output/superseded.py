"""The dataset folder holds exactly the dataset: images of jobs that left the plan move out of it.

When a manifest changes so that a job leaves the plan (a parameter that is not an axis changed,
a prompt or model removed), its images and sidecars move from RUN/data/<path> to
RUN/superseded/<path>, never deleted (they were paid for); when the job comes back into the
plan (the change undone), they move back before anything is checked or submitted, so it is
not paid for again. So an ImageFolder of RUN/data/ is the dataset metadata.jsonl describes.

Invariants:
  * Derived from the state alone (which jobs are in the plan, which files each recorded), so a
    kill between two moves is completed by the next run; nothing in the state changes.
  * A move is a rename within the run directory: size and mtime are kept, so the rerun's
    check (size + mtime) still trusts a file moved back.
  * Local output only: a bucket's objects stay where they were written (see docs/datasets.md).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from renderer.layout import DATA_DIR, SIDECAR_SUFFIX, SUPERSEDED_DIR
from renderer.state.store import Store

_PREFIX = DATA_DIR + "/"


def _pair(run_dir: Path, rel: str) -> tuple[Path, Path] | None:
    """(where the file is in data/, where it goes in superseded/) for a recorded path."""
    if not rel.startswith(_PREFIX):
        return None
    return run_dir / rel, run_dir / SUPERSEDED_DIR / rel[len(_PREFIX) :]


def _move(source: Path, target: Path) -> bool:
    """source → target with its sidecar, when source is there; True if the image moved."""
    if not source.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    sidecar = source.with_suffix(SIDECAR_SUFFIX)
    if sidecar.is_file():
        os.replace(sidecar, target.with_suffix(SIDECAR_SUFFIX))
    # A folder emptied by the move goes too (ImageFolder and the Hub count folders).
    with contextlib.suppress(OSError):
        source.parent.rmdir()
    return True


def settle(store: Store, run_dir: Path) -> tuple[int, int]:
    """Move the images of jobs out of the plan to superseded/, and back those of planned jobs
    whose images are only there. Returns (moved out, moved back)."""
    out = back = 0
    for row in store.rows(in_plan=False):
        for entry in row.files or []:
            pair = _pair(run_dir, str(entry.get("path", "")))
            if pair is not None and _move(*pair):
                out += 1
    if (run_dir / SUPERSEDED_DIR).is_dir():
        for _key, entries in store.downloaded_files():
            for entry in entries:
                pair = _pair(run_dir, str(entry.get("path", "")))
                if pair is not None and not pair[0].exists() and _move(pair[1], pair[0]):
                    back += 1
    return out, back


def restore(run_dir: Path, stem: str, key: str) -> bool:
    """A lost state's job whose images a manifest change had moved to superseded/: its images
    and sidecars at data/<stem>-N back into data/, when each sidecar names job `key` and data/
    holds nothing at that path. True if the first one came back (recovery then adopts them)."""
    back = run_dir / SUPERSEDED_DIR / stem
    index = 0
    while True:
        sidecar = back.with_name(f"{back.name}-{index}{SIDECAR_SUFFIX}")
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            break
        if not isinstance(meta, dict) or meta.get("job_key") != key:
            break
        name = meta.get("file")
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            break
        target = run_dir / DATA_DIR / Path(stem).parent / name
        if target.exists() or not _move(sidecar.with_name(name), target):
            break
        index += 1
    return index > 0


def evict_strangers(run_dir: Path, planned: Callable[[str], bool]) -> int:
    """Images in data/ whose sidecar names a job that is not in the plan, moved to superseded/.

    Only after a lost state (a new state's first run, recover.from_sidecars): the old state
    would have moved them out when their jobs left the plan, but a change made after that
    state's last run wrote images the new state never knew, so settle() cannot see them.
    Files without a sidecar of ours (one naming a job key and the image beside it) are not
    touched. Returns how many images moved.
    """
    data = run_dir / DATA_DIR
    verdicts: dict[str, bool] = {}  # a job's several images: one lookup
    moved = 0
    for folder, _dirs, names in os.walk(data):
        for name in names:
            if not name.endswith(SIDECAR_SUFFIX):
                continue
            sidecar = Path(folder, name)
            try:
                meta = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict):
                continue
            key, image = meta.get("job_key"), meta.get("file")
            if not isinstance(key, str) or not isinstance(image, str) or "/" in image:
                continue
            source = sidecar.with_name(image)
            if source.with_suffix(SIDECAR_SUFFIX) != sidecar:  # not this sidecar's image
                continue
            if key not in verdicts:
                verdicts[key] = planned(key)
            if not verdicts[key] and _move(
                source, run_dir / SUPERSEDED_DIR / source.relative_to(data)
            ):
                moved += 1
    return moved
