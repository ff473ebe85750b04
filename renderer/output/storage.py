"""Where a run's outputs land: a local directory (the default) or an S3-compatible bucket.

Both backends take the same relative paths (layout.py: `data/<model>/…/s<seed>-<i>.<ext>`, the
sidecars beside them, `data/metadata.jsonl`, `data/README.md`, `run.json`), so a dataset in a
bucket is laid out exactly like one on disk.

Invariants:
  * An image is written once. Locally: temporary file, fsync, rename (files.write_atomic). On S3:
    a create-only PUT (`If-None-Match: *`) carrying the image's sha256 as object metadata; a PUT
    lands whole or not at all, so there are no temporary objects. When the key already exists,
    the stored sha256 decides: the same bytes count as written (a worker that died after the
    upload but before its commit), different bytes are an error naming both hashes.
  * Sidecars, metadata.jsonl, the card and run.json are derived from the state and rewritten
    whole (an overwriting PUT is atomic too).
  * obstore's exceptions are translated here and nowhere else; messages never carry credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from renderer.errors import OutageError, StateError, UsageError
from renderer.layout import DATA_DIR
from renderer.settings import is_remote, parse_s3

if TYPE_CHECKING:
    from obstore.store import ClientConfig

T = TypeVar("T")
SHA256_KEY = "sha256"  # object metadata key (x-amz-meta-sha256)
DEFAULT_OUTAGE = 90.0  # seconds (settings: outage; RunConfig.outage)
OUTAGE_HINT = (
    "rerun the same command once the service is back (exit 75 means: try again later); "
    "everything committed stays committed and nothing is paid for again; --outage SECONDS "
    "(RENDERER_OUTAGE, limits.outage) sets how long a worker waits"
)
OUTPUT_META = "output"  # the state's record of a remote output (s3://bucket/prefix/NAME)


class StorageConflict(StateError):
    """The object store already holds different bytes at an image's key."""


class Stored(NamedTuple):
    """What writing an image did: its mtime (local files; None in a bucket), and whether the
    same bytes were there already (a worker that died before its commit, or a lost state)."""

    mtime_ns: int | None
    existed: bool = False


class Storage(ABC):
    """A run's output root. Paths are relative, `/`-separated, from layout.py."""

    remote = False

    @abstractmethod
    def where(self, rel: str) -> str:
        """The full location of a relative path, for people."""

    @abstractmethod
    def put_image(self, rel: str, data: bytes, *, sha256: str, content_type: str) -> Stored:
        """Write an image once: its mtime in ns (local) or None (object stores), and whether it was there."""

    @abstractmethod
    def put_bytes(
        self, rel: str, data: bytes, *, durable: bool = True, content_type: str | None = None
    ) -> None:
        """Write (or replace) a derived file whole (`content_type`: what a bucket serves it as)."""

    @abstractmethod
    def remove(self, rel: str) -> None:
        """Remove a derived file (a report's stale sheet); nothing when it is absent."""

    @abstractmethod
    def intact(self, entry: Mapping[str, Any], *, rehash: bool) -> bool:
        """Is a recorded image still there, unchanged? (size + mtime or size + stored hash; rehash reads it)."""

    @abstractmethod
    def read(self, rel: str) -> bytes | None:
        """A file's bytes, or None when it is absent (sidecars, the dataset, images for the tools)."""

    @abstractmethod
    def names(self, folder: str) -> set[str]:
        """The names of the files directly inside a folder (empty when there is none)."""

    @abstractmethod
    def has_data(self) -> bool:
        """Does the output hold anything under the dataset folder (a run wrote here before)?"""

    @abstractmethod
    def stored_image(self, rel: str, sha256: str) -> tuple[int, int | None] | None:
        """(size, mtime_ns or None) of the image at `rel` if its bytes are the ones hashing to `sha256`.

        On disk the bytes are hashed; in a bucket the sha256 stored with the object at its
        create-only PUT is compared (an object without one is read and hashed).
        """

    def put_json(self, rel: str, value: Any, *, durable: bool = True) -> None:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
        self.put_bytes(rel, text.encode(), durable=durable)


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def put_image(self, rel: str, data: bytes, *, sha256: str, content_type: str) -> Stored:
        from renderer.output import files  # Pillow loads only when something is written

        return Stored(files.write_atomic(self.root / rel, data).st_mtime_ns)

    def put_bytes(
        self, rel: str, data: bytes, *, durable: bool = True, content_type: str | None = None
    ) -> None:
        from renderer.output import files

        files.write_atomic(self.root / rel, data, durable=durable)

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)

    def intact(self, entry: Mapping[str, Any], *, rehash: bool) -> bool:
        from renderer.output import files

        return files.file_intact(self.root, dict(entry), rehash=rehash)

    def read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except OSError:
            return None

    def names(self, folder: str) -> set[str]:
        try:
            return set(os.listdir(self.root / folder))
        except OSError:
            return set()

    def has_data(self) -> bool:
        return (self.root / DATA_DIR).is_dir()

    def stored_image(self, rel: str, sha256: str) -> tuple[int, int | None] | None:
        path = self.root / rel
        try:
            data = path.read_bytes()
            stat = os.stat(path)
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            return None
        return len(data), stat.st_mtime_ns


def _first_line(exc: BaseException) -> str:
    # obstore's messages append a multi-line debug dump; the first line says what happened.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


# What obstore says when it could not reach the store at all (after its retries), as opposed to
# an answer (403, 400, a conflict): those are not outages.
_UNREACHABLE = (
    "error sending request",
    "connection",
    "timed out",
    "timeout",
    "retries",
    "retry",
    "server error",
    "service unavailable",
    "dns error",
)


def _failed(what: str, where: str, exc: BaseException, outage: float) -> StateError:
    """The error for an object-store call that failed: an OutageError when the store was unreachable."""
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    text = str(exc).lower()
    if not isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) and any(
        word in text for word in _UNREACHABLE
    ):
        return OutageError(
            f"cannot {what} {where}: the object store stayed unreachable for the outage window "
            f"({outage:g} s): {_first_line(exc)}",
            hint=OUTAGE_HINT,
        )
    return StateError(
        f"cannot {what} {where}: {_first_line(exc)}",
        hint="check AWS_ENDPOINT_URL, AWS_REGION and the credentials' access to the bucket",
    )


class S3Storage(Storage):
    """An S3-compatible bucket through obstore (small, no botocore, create-only puts)."""

    remote = True

    def __init__(
        self,
        url: str,
        bucket: str,
        prefix: str,
        settings: Mapping[str, str],
        *,
        outage: float = DEFAULT_OUTAGE,
    ) -> None:
        try:
            from obstore.store import S3Store
        except ImportError as exc:
            raise UsageError(
                f"--output {url}: writing to S3 needs the obstore package",
                hint="pip install 'renderer[s3]'",
            ) from exc
        self.url = url.rstrip("/")
        self.prefix = prefix
        endpoint = settings.get("AWS_ENDPOINT_URL") or settings.get("AWS_ENDPOINT_URL_S3")
        options: dict[str, Any] = {
            "bucket": bucket,
            "region": settings.get("AWS_REGION")
            or settings.get("AWS_DEFAULT_REGION")
            or "us-east-1",
        }
        if prefix:
            options["prefix"] = prefix
        if endpoint:
            options["endpoint"] = endpoint
        if settings.get("AWS_ACCESS_KEY_ID") and settings.get("AWS_SECRET_ACCESS_KEY"):
            options["access_key_id"] = settings["AWS_ACCESS_KEY_ID"]
            options["secret_access_key"] = settings["AWS_SECRET_ACCESS_KEY"]
            if settings.get("AWS_SESSION_TOKEN"):
                options["token"] = settings["AWS_SESSION_TOKEN"]
        plain_http = bool(endpoint and endpoint.startswith("http://"))
        self.outage = outage
        client: ClientConfig = {"connect_timeout": timedelta(seconds=5)}
        if plain_http:
            client["allow_http"] = True
        self.store = S3Store(client_options=client, **options)

    def _call(self, what: str, rel: str, work: Callable[[], T]) -> T:
        """`work()` (one obstore call), run again while the store is unreachable, for up to the
        outage window from the first failure (obstore's own retries last ~2 s); then OutageError.

        FileNotFoundError and AlreadyExistsError are answers: they pass through unchanged.
        """
        from obstore.exceptions import AlreadyExistsError

        deadline: float | None = None
        pause = 0.1
        while True:
            try:
                return work()
            except (FileNotFoundError, AlreadyExistsError):
                raise
            except Exception as exc:
                error = _failed(what, self.where(rel), exc, self.outage)
                now = time.monotonic()
                deadline = now + self.outage if deadline is None else deadline
                if not isinstance(error, OutageError) or now >= deadline:
                    raise error from exc
            time.sleep(min(pause, max(0.0, deadline - now)))
            pause = min(pause * 2, 2.0)

    def where(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def put_image(self, rel: str, data: bytes, *, sha256: str, content_type: str) -> Stored:
        import obstore
        from obstore.exceptions import AlreadyExistsError

        try:
            # Create-only: a PUT that landed before its answer was lost is found again here.
            self._call(
                "write",
                rel,
                lambda: obstore.put(
                    self.store,
                    rel,
                    data,
                    mode="create",
                    attributes={"Content-Type": content_type, SHA256_KEY: sha256},
                ),
            )
        except AlreadyExistsError:
            stored = self._stored_sha256(rel)
            if stored != sha256:
                raise StorageConflict(
                    f"{self.where(rel)} already holds different bytes (stored sha256 {stored or 'not recorded'}, "
                    f"this image's sha256 {sha256})",
                    hint="another run or tool wrote this key; give this run its own prefix (--output s3://…/other) "
                    "or remove the object if it is wrong",
                ) from None
            return Stored(None, existed=True)
        return Stored(None)

    def put_bytes(
        self, rel: str, data: bytes, *, durable: bool = True, content_type: str | None = None
    ) -> None:
        import obstore

        kind = content_type or (
            "application/json" if rel.endswith((".json", ".jsonl")) else "text/markdown"
        )
        self._call(
            "write",
            rel,
            lambda: obstore.put(self.store, rel, data, attributes={"Content-Type": kind}),
        )

    def put_file(self, rel: str, path: Path, *, content_type: str) -> None:
        """A local file (an export's shard) uploaded whole, in parts when large: never read into memory."""
        import obstore

        self._call(
            "write",
            rel,
            lambda: obstore.put(self.store, rel, path, attributes={"Content-Type": content_type}),
        )

    def remove(self, rel: str) -> None:
        """Remove an object (a report's stale sheet, an earlier export's shard); nothing when absent."""
        import obstore

        with contextlib.suppress(FileNotFoundError):
            self._call("remove", rel, lambda: obstore.delete(self.store, rel))

    def _head(self, rel: str) -> tuple[int, dict[str, Any]] | None:
        import obstore

        try:
            result = self._call(
                "read", rel, lambda: obstore.get(self.store, rel, options={"head": True})
            )
        except FileNotFoundError:
            return None
        return int(result.meta["size"]), dict(result.attributes)

    def _stored_sha256(self, rel: str) -> str | None:
        head = self._head(rel)
        value = head[1].get(SHA256_KEY) if head else None
        return value if isinstance(value, str) else None

    def intact(self, entry: Mapping[str, Any], *, rehash: bool) -> bool:
        rel = str(entry["path"])
        head = self._head(rel)
        if head is None or head[0] != entry["size"] or head[1].get(SHA256_KEY) != entry["sha256"]:
            return False
        if not rehash:
            return True
        data = self.read(rel)
        return data is not None and hashlib.sha256(data).hexdigest() == entry["sha256"]

    def read(self, rel: str) -> bytes | None:
        """An object's bytes, or None when absent (status, tests, `renderer` tools that read back)."""
        import obstore

        try:
            return self._call("read", rel, lambda: bytes(obstore.get(self.store, rel).bytes()))
        except FileNotFoundError:
            return None

    get = read

    def names(self, folder: str) -> set[str]:
        import obstore

        try:
            listed = self._call(
                "list",
                folder,
                lambda: obstore.list_with_delimiter(self.store, folder.rstrip("/") + "/"),
            )
        except FileNotFoundError:
            return set()
        return {str(meta["path"]).rsplit("/", 1)[-1] for meta in listed["objects"]}

    def has_data(self) -> bool:
        import obstore

        def first() -> bool:
            return any(chunk for chunk in obstore.list(self.store, DATA_DIR + "/", chunk_size=1))

        try:
            return self._call("list", DATA_DIR, first)
        except FileNotFoundError:
            return False

    def stored_image(self, rel: str, sha256: str) -> tuple[int, int | None] | None:
        head = self._head(rel)
        if head is None or head[0] <= 0:
            return None
        stored = head[1].get(SHA256_KEY)
        if stored is None:  # not written by renderer (no stored hash): read it and hash it
            data = self.read(rel)
            if data is None or hashlib.sha256(data).hexdigest() != sha256:
                return None
        elif stored != sha256:
            return None
        return head[0], None


def run_location(output: str, run_name: str) -> str:
    """Where a run named `run_name` under a bucket `output` lands, for people: s3://bucket/prefix/NAME."""
    bucket, prefix = parse_s3(output)
    base = str(PurePosixPath(prefix, run_name)) if prefix else run_name
    return f"s3://{bucket}/{base}"


def open_storage(
    output: str, run_name: str, env: Mapping[str, str], *, outage: float = DEFAULT_OUTAGE
) -> Storage:
    """The output root of a run named `run_name` under `output` (a directory or s3://bucket/prefix).

    `outage`: seconds a bucket may stay unreachable (requests retried meanwhile) before an OutageError.
    """
    if not is_remote(output):
        return LocalStorage(Path(output) / run_name)
    url = run_location(output, run_name)
    bucket, base = parse_s3(url)
    return S3Storage(url, bucket, base, env, outage=outage)
