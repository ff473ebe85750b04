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

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from renderer.errors import StateError, UsageError
from renderer.settings import is_remote, parse_s3

SHA256_KEY = "sha256"  # object metadata key (x-amz-meta-sha256)


class StorageConflict(StateError):
    """The object store already holds different bytes at an image's key."""


class Storage(ABC):
    """A run's output root. Paths are relative, `/`-separated, from layout.py."""

    remote = False

    @abstractmethod
    def where(self, rel: str) -> str:
        """The full location of a relative path, for people."""

    @abstractmethod
    def put_image(self, rel: str, data: bytes, *, sha256: str, content_type: str) -> int | None:
        """Write an image once; returns its mtime in ns (local) or None (object stores)."""

    @abstractmethod
    def put_bytes(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        """Write (or replace) a derived file whole."""

    @abstractmethod
    def intact(self, entry: Mapping[str, Any], *, rehash: bool) -> bool:
        """Is a recorded image still there, unchanged? (size + mtime or size + stored hash; rehash reads it)."""

    def put_json(self, rel: str, value: Any, *, durable: bool = True) -> None:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
        self.put_bytes(rel, text.encode(), durable=durable)


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def put_image(self, rel: str, data: bytes, *, sha256: str, content_type: str) -> int | None:
        from renderer.output import files  # Pillow loads only when something is written

        return files.write_atomic(self.root / rel, data).st_mtime_ns

    def put_bytes(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        from renderer.output import files

        files.write_atomic(self.root / rel, data, durable=durable)

    def intact(self, entry: Mapping[str, Any], *, rehash: bool) -> bool:
        from renderer.output import files

        return files.file_intact(self.root, dict(entry), rehash=rehash)


def _first_line(exc: BaseException) -> str:
    # obstore's messages append a multi-line debug dump; the first line says what happened.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class S3Storage(Storage):
    """An S3-compatible bucket through obstore (small, no botocore, create-only puts)."""

    remote = True

    def __init__(self, url: str, bucket: str, prefix: str, settings: Mapping[str, str]) -> None:
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
        self.store = S3Store(client_options={"allow_http": True} if plain_http else None, **options)

    def where(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def put_image(self, rel: str, data: bytes, *, sha256: str, content_type: str) -> int | None:
        import obstore
        from obstore.exceptions import AlreadyExistsError

        try:
            obstore.put(
                self.store,
                rel,
                data,
                mode="create",
                attributes={"Content-Type": content_type, SHA256_KEY: sha256},
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
        except Exception as exc:
            raise StateError(
                f"cannot write {self.where(rel)}: {_first_line(exc)}",
                hint="check AWS_ENDPOINT_URL, AWS_REGION and the credentials' access to the bucket",
            ) from exc
        return None

    def put_bytes(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        import obstore

        content_type = "application/json" if rel.endswith((".json", ".jsonl")) else "text/markdown"
        try:
            obstore.put(self.store, rel, data, attributes={"Content-Type": content_type})
        except Exception as exc:
            raise StateError(
                f"cannot write {self.where(rel)}: {_first_line(exc)}",
                hint="check AWS_ENDPOINT_URL, AWS_REGION and the credentials' access to the bucket",
            ) from exc

    def _head(self, rel: str) -> tuple[int, dict[str, Any]] | None:
        import obstore

        try:
            result = obstore.get(self.store, rel, options={"head": True})
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StateError(f"cannot read {self.where(rel)}: {_first_line(exc)}") from exc
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
        import hashlib

        import obstore

        try:
            data = bytes(obstore.get(self.store, rel).bytes())
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise StateError(f"cannot read {self.where(rel)}: {_first_line(exc)}") from exc
        return hashlib.sha256(data).hexdigest() == entry["sha256"]

    def get(self, rel: str) -> bytes | None:
        """An object's bytes, or None when absent (status, tests, `renderer` tools that read back)."""
        import obstore

        try:
            return bytes(obstore.get(self.store, rel).bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StateError(f"cannot read {self.where(rel)}: {_first_line(exc)}") from exc


def open_storage(output: str, run_name: str, env: Mapping[str, str]) -> Storage:
    """The output root of a run named `run_name` under `output` (a directory or s3://bucket/prefix)."""
    if not is_remote(output):
        return LocalStorage(Path(output) / run_name)
    bucket, prefix = parse_s3(output)
    base = str(PurePosixPath(prefix, run_name)) if prefix else run_name
    return S3Storage(f"s3://{bucket}/{base}", bucket, base, env)
