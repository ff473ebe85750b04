"""Where a report is written, and what earlier reports there already made.

A report goes to a local folder (RUN/report/ by default, or `--out DIR`) or to a bucket
(`--out s3://bucket/prefix/`, through output/storage.py's object-store writer). Either way it is
built in a local folder: the report folder itself, or a private staging folder whose files are
uploaded as they are finished (a bucket report never writes into the working directory).

`manifest.sqlite` (in the report) records what was made: each thumbnail by its image's sha256
(thumbnails are content-addressed, so an image that did not change keeps its thumbnail) and
each PNG sheet by a hash of everything drawn on it. A rerun makes only thumbnails the manifest
lacks and draws only sheets whose content changed: a run that grew by 10 images costs 10
thumbnails and the sheets those 10 land on.

Invariants:
  * A thumbnail or sheet is recorded only after its file is complete (written atomically, and
    uploaded when the report goes to a bucket): a report interrupted midway leaves a manifest
    that names only finished files.
  * Thumbnails live in 256 folders by the first two hex digits of their hash (no folder holds
    more than ~4,000 at a million images).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from renderer.output.storage import S3Storage, Storage
from renderer.settings import is_remote, parse_s3

THUMB = 256
MANIFEST = "manifest.sqlite"
T = TypeVar("T")
R = TypeVar("R")

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".sqlite": "application/vnd.sqlite3",
}


def thumb_rel(sha256: str) -> str:
    """The thumbnail of an image with this sha256, relative to the report folder."""
    return f"thumbs/{sha256[:2]}/{sha256[:24]}.jpg"


class Target:
    """The report folder being written: local, or staged locally and uploaded to a bucket."""

    def __init__(self, folder: Path, bucket: Storage | None = None) -> None:
        self.dir = folder
        self.bucket = bucket
        self.dir.mkdir(parents=True, exist_ok=True)
        if bucket is not None:
            data = bucket.read(MANIFEST)
            if data is not None:
                (self.dir / MANIFEST).write_bytes(data)
        self.db = sqlite3.connect(self.dir / MANIFEST, isolation_level=None)
        # One file (no -wal beside it), so the folder is as easy to copy or upload as before.
        self.db.execute("PRAGMA journal_mode = DELETE")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self._sheets: list[tuple[str, str]] = []
        self.written: set[str] = set()
        self.db.execute("CREATE TABLE IF NOT EXISTS thumbs (sha TEXT PRIMARY KEY) WITHOUT ROWID")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS sheets (name TEXT PRIMARY KEY, sig TEXT NOT NULL) WITHOUT ROWID"
        )
        self._adopt_flat_thumbs()

    @property
    def where(self) -> str:
        return self.bucket.where("") if self.bucket is not None else str(self.dir)

    def location(self, rel: str) -> str:
        """Where a file of the report is, for people (a local path or the bucket's URL)."""
        return self.bucket.where(rel) if self.bucket is not None else str(self.dir / rel)

    def publish(self, rel: str) -> None:
        """A file finished in the local folder: uploaded when the report goes to a bucket."""
        self.written.add(rel)
        if self.bucket is None:
            return
        path = self.dir / rel
        ext = os.path.splitext(rel)[1]
        self.bucket.put_bytes(
            rel, path.read_bytes(), content_type=CONTENT_TYPES.get(ext, "application/octet-stream")
        )

    def prune(self, folder: str) -> None:
        """Remove the files in `folder` this report did not write (chunks of an earlier, larger report)."""
        if self.bucket is not None:
            names = self.bucket.names(folder)
        else:
            names = set(os.listdir(self.dir / folder)) if (self.dir / folder).is_dir() else set()
        for name in names:
            if f"{folder}/{name}" not in self.written:
                self.remove(f"{folder}/{name}")

    def remove(self, rel: str) -> None:
        (self.dir / rel).unlink(missing_ok=True)
        if self.bucket is not None:
            self.bucket.remove(rel)

    def fetch(self, rel: str) -> Path | None:
        """A local copy of a file of the report (from the bucket when it is not staged here)."""
        path = self.dir / rel
        if path.is_file():
            return path
        if self.bucket is None:
            return None
        data = self.bucket.read(rel)
        if data is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def close(self) -> None:
        self.flush()
        self.db.close()
        if self.bucket is not None:
            self.publish(MANIFEST)

    # ------------------------------------------------------------ the manifest

    def have_thumbs(self, shas: Iterable[str]) -> set[str]:
        """Which of these images (by sha256) already have a thumbnail in the report."""
        wanted = list(dict.fromkeys(s[:24] for s in shas))
        have: set[str] = set()
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            have.update(
                r[0]
                for r in self.db.execute(
                    f"SELECT sha FROM thumbs WHERE sha IN ({','.join('?' * len(part))})", part
                )
            )
        if self.bucket is None:
            # A thumbnail deleted by hand is made again (a stat each: ~2 s at a million).
            root = str(self.dir) + "/"
            have = {s for s in have if os.path.isfile(root + thumb_rel(s))}
        return have

    def made_thumbs(self, shas: Iterable[str]) -> None:
        # One transaction a batch: autocommit would sync the file once per thumbnail.
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR IGNORE INTO thumbs (sha) VALUES (?)", [(s[:24],) for s in shas]
        )
        self.db.execute("COMMIT")

    def sheet_sigs(self) -> dict[str, str]:
        self.flush()
        return dict(self.db.execute("SELECT name, sig FROM sheets").fetchall())

    def made_sheet(self, name: str, sig: str) -> None:
        """Record a drawn sheet (in batches: tens of thousands of sheets, not as many commits)."""
        self._sheets.append((name, sig))
        if len(self._sheets) >= 256:
            self.flush()

    def flush(self) -> None:
        if self._sheets:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO sheets (name, sig) VALUES (?, ?)", self._sheets
            )
            self.db.execute("COMMIT")
            self._sheets = []

    def forget_sheet(self, name: str) -> None:
        self.db.execute("DELETE FROM sheets WHERE name = ?", (name,))

    def _adopt_flat_thumbs(self) -> None:
        """Thumbnails of a report made before the manifest (thumbs/<sha24>.jpg) move into their folders."""
        flat = self.dir / "thumbs"
        if self.bucket is not None or not flat.is_dir():
            return
        moved = []
        with os.scandir(flat) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                if ext == ".jpg" and len(stem) == 24 and entry.is_file():
                    target = self.dir / thumb_rel(stem)
                    target.parent.mkdir(exist_ok=True)
                    os.replace(entry.path, target)
                    moved.append(stem)
        self.made_thumbs(moved)


def open_target(out: str | None, default: Path, env: Mapping[str, str]) -> Target:
    """The report's destination: `out` (a folder or s3://bucket/prefix/), else `default`."""
    if out is None or not is_remote(out):
        return Target(Path(out) if out else default)
    url = out.rstrip("/")
    bucket, prefix = parse_s3(url)
    staging = Path(tempfile.mkdtemp(prefix="renderer-report-"))
    return _Staged(staging, S3Storage(url, bucket, prefix, env))


class _Staged(Target):
    """A bucket report: the local folder is private staging, removed when the report is done."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- thumbnails


def make_thumb(task: tuple[str, str]) -> str:
    """One thumbnail (runs in a worker process): the image at task[0] to a JPEG at task[1]."""
    source, target = task
    with Image.open(source) as image:
        image.thumbnail((THUMB, THUMB))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".tmp"
        image.convert("RGB").save(tmp, "JPEG", quality=82)
    os.replace(tmp, target)
    return target


def bounded_map(
    pool: Executor | None, fn: Callable[[T], R], items: Iterable[T], window: int = 64
) -> Iterator[R]:
    """fn over items in order, at most `window` in flight (map() would submit them all at once)."""
    if pool is None:
        yield from (fn(i) for i in items)
        return
    pending: list[Future[R]] = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for f in pending:
        yield f.result()


def pool_for(count: int, at_least: int = 16) -> ProcessPoolExecutor | None:
    """Worker processes when there is enough work to pay for starting them."""
    return ProcessPoolExecutor(max_workers=os.cpu_count() or 1) if count >= at_least else None


def nothing(*_: Any) -> None:
    return None
