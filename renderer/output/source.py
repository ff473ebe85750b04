"""A run as the tools read it (report, export, diff, status, finalize, open_run): its state,
SQLite in the run directory or shared PostgreSQL, and its output, the run directory or a bucket.

`open_source(run, state, env)` takes what the user names: a run directory (`outputs/NAME`), the
run's bucket location (`s3://bucket/prefix/NAME`), or its manifest (whose `state:` and `output:`
count), with the run's `--state` when it is shared. A run whose output is a bucket says so in its state (meta `output`, written by the
workers), so `renderer report outputs/NAME --state postgresql://…` finds its images from any
machine, with only the AWS variables set.

Invariants:
  * Read-only: nothing here writes to the state or the output. Images of a bucket are read
    into a private temporary folder (removed on close) when a tool needs a file, never into
    the working directory.
  * An image is handed out only when its bytes hash to the state's sha256 (a bucket read is
    checked like a file on disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from renderer.errors import UsageError
from renderer.layout import DB_NAME
from renderer.output.storage import OUTPUT_META, LocalStorage, S3Storage, Storage
from renderer.settings import is_remote, parse_s3
from renderer.state.choose import read_store
from renderer.state.store import Store

DEFAULT_ROOT = Path("outputs")  # where a manifest's runs go unless it says otherwise


@dataclass
class RunSource:
    """One run's state and output, opened for reading. Use as a context manager (or close())."""

    run_dir: Path  # the local run directory: SQLite state, and the tools' own results (report/)
    name: str  # the run's name (the manifest's): the shared state's schema is found by it
    state: str | None  # None: SQLite in run_dir; else a postgresql:// URL
    storage: Storage  # where the images are
    _cache: Path | None = field(default=None, repr=False)

    def __enter__(self) -> RunSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._cache is not None:
            shutil.rmtree(self._cache, ignore_errors=True)
            self._cache = None

    @property
    def remote(self) -> bool:
        return self.storage.remote

    @property
    def label(self) -> str:
        """The run's location for people: its directory, or its bucket URL."""
        return self.storage.where("") if self.remote else str(self.run_dir)

    def store(self) -> Store:
        """The run's state, read-only: `with source.store() as store: …`."""
        return read_store(self.run_dir, self.state, self.name)

    def where(self, rel: str) -> str:
        return self.storage.where(rel)

    def read(self, rel: str) -> bytes | None:
        """A file of the run (an image, run.json, the card), or None when absent."""
        return self.storage.read(rel)

    def local_file(self, rel: str, sha256: str | None = None) -> Path | None:
        """A file on this machine holding the run's file `rel` (for tools that open paths).

        The run directory's own file when the output is local; from a bucket, a copy in a
        private temporary folder, given only when its bytes hash to `sha256`. None when absent.
        """
        if not self.remote:
            path = self.run_dir / rel
            return path if path.is_file() else None
        if self._cache is None:
            self._cache = Path(tempfile.mkdtemp(prefix="renderer-read-"))
        target = self._cache / PurePosixPath(rel)
        if target.is_file():
            return target
        data = self.storage.read(rel)
        if data is None or (sha256 is not None and hashlib.sha256(data).hexdigest() != sha256):
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def intact(self, entry: Mapping[str, Any]) -> bool:
        """Is a finished file still there, unchanged (size + mtime on disk; size + stored hash in a bucket)?"""
        return self.storage.intact(entry, rehash=False)


def open_source(
    run: str | Path, state: str | None = None, env: Mapping[str, str] | None = None
) -> RunSource:
    """The run the user named (a directory, s3://…/NAME, or its manifest: its run directory, output
    and `state:`), with its state (`state` wins over the manifest's); UsageError when there is none."""
    environ: Mapping[str, str] = env or {}
    text = str(run)
    if text.endswith((".yaml", ".yml")) and Path(text).is_file():
        # The manifest itself: its run directory, its output and its `state:` (a flag's wins).
        from renderer.manifest.load import load

        manifest = load(Path(text), environ)
        state = state or manifest.state
        if manifest.output_url:
            from renderer.output.storage import run_location

            text = run_location(manifest.output_url, manifest.name)
        else:
            text = str(manifest.run_dir)
    if is_remote(text):
        url = text.rstrip("/")
        bucket, prefix = parse_s3(url)
        if not prefix:
            raise UsageError(
                f"{url}: name the run's folder in the bucket (s3://BUCKET/PREFIX/NAME)",
                hint="the run's images are under s3://BUCKET/PREFIX/NAME/data/",
            )
        name = PurePosixPath(prefix).name
        run_dir = DEFAULT_ROOT / name
        storage: Storage = S3Storage(url, bucket, prefix, environ)
    else:
        run_dir = Path(text)
        name = run_dir.name
        storage = LocalStorage(run_dir)
    return _opened(run_dir, name, state, storage, text, environ)


def _bucket(url: str, env: Mapping[str, str]) -> S3Storage:
    bucket, prefix = parse_s3(url)
    return S3Storage(url, bucket, prefix, env)


def _opened(
    run_dir: Path, name: str, state: str | None, storage: Storage, text: str, env: Mapping[str, str]
) -> RunSource:
    if not state and not (run_dir / DB_NAME).is_file():
        raise UsageError(
            f"{text}: no run here (no {DB_NAME})",
            hint="pass a run directory such as outputs/NAME, or the --state (RENDERER_STATE) "
            "of its distributed run",
        )
    source = RunSource(run_dir, name, state, storage)
    if not storage.remote:
        output = None
        # (A damaged SQLite file is reported by the tool that reads it, with its hint.)
        with contextlib.suppress(sqlite3.Error), source.store() as store:
            output = store.meta(OUTPUT_META)
        if output and is_remote(output):
            # The workers wrote the images to a bucket: read them there.
            source.storage = _bucket(output, env)
    return source


@contextmanager
def sourced(run: RunSource | str | Path) -> Iterator[RunSource]:
    """`run` as a RunSource: one opened here (and closed after) from a directory, or the caller's own."""
    if isinstance(run, RunSource):
        yield run
        return
    with open_source(run) as source:
        yield source
