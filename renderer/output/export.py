"""`renderer export`: a run's dataset as Parquet shards (image bytes embedded) or WebDataset tars.

Parquet is the form the Hugging Face Hub serves large image datasets in: an `image` column of
{bytes, path} structs plus the metadata columns, typed as in RUN/data/ (renderer.dataset),
with the `datasets` features in the schema metadata so `image` decodes as an Image. A card
(README.md) beside the shards makes `load_dataset(DIR)` work as well.

WebDataset: tar shards of samples `<key>.<png|jpg|webp>` + `<key>.json` (the row), members
written as the `webdataset` library's TarWriter writes them (tar_member; no library needed).

Invariants:
  * Every shard is written to a hidden temporary file and renamed into place; shards of an
    earlier export that this one did not write are removed, so the folder holds one export.
  * Every image's bytes are checked against the recorded sha256 as they are read: a file
    damaged since the run stops the export (rerun `renderer run` to fetch it again).
  * pyarrow is imported only here (the `renderer[datasets]` extra); WebDataset needs no library.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from renderer.errors import UsageError
from renderer.layout import DATA_DIR, RUN_RECORD
from renderer.output import files
from renderer.output.dataset import CARD, CardInfo, Columns, card_text, reading
from renderer.output.source import RunSource, sourced
from renderer.settings import is_remote, parse_s3

FORMATS = ("parquet", "webdataset")
ROW_GROUP = 100  # images per Parquet row group: what the Hub's viewer reads in one go


class ExportError(UsageError):
    """An export that cannot go on: a missing library, a damaged image, an unusable destination."""


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ExportError(
            f"export needs the {module} library, which is not installed",
            hint="pip install 'renderer[datasets]'",
        ) from exc


def _shard_name(prefix: str, index: int, count: int, ext: str) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}.{ext}"


def _read_verified(source: RunSource, rel: str, sha256: str | None) -> bytes:
    path = source.where(rel)
    try:
        data = source.read(rel)
    except OSError as exc:
        raise ExportError(
            f"{path}: cannot read this image: {exc.strerror or exc}",
            hint="`renderer run` the manifest again to fetch missing images, then export",
        ) from exc
    if data is None:
        raise ExportError(
            f"{path}: cannot read this image: it is not there",
            hint="`renderer run` the manifest again to fetch missing images, then export",
        )
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ExportError(
            f"{path}: the image changed since it was downloaded (sha256 differs)",
            hint="`renderer run --verify` fetches it again, then export",
        )
    return data


READERS = 8  # images read (and hashed) at once: a disk's or a bucket's latency overlapped


def _blobs(
    source: RunSource, group: list[tuple[dict[str, Any], str]], pool: ThreadPoolExecutor
) -> Iterator[bytes]:
    """The verified bytes of each image of `group`, in order, read by the pool's threads (reads
    and sha256 release the GIL), a slice of the group per thread (a task per image cost more
    than the read). At most one group is in memory."""
    step = -(-len(group) // READERS) or 1

    def read(part: list[tuple[dict[str, Any], str]]) -> list[bytes]:
        return [_read_verified(source, rel, row["sha256"]) for row, rel in part]

    parts = [group[i : i + step] for i in range(0, len(group), step)]
    for blobs in pool.map(read, parts):
        yield from blobs


def _each_read(
    source: RunSource, chunk: list[tuple[dict[str, Any], str]], pool: ThreadPoolExecutor
) -> Iterator[tuple[dict[str, Any], str, bytes]]:
    """(row, path, verified bytes) of each image of `chunk`, read a row group at a time."""
    for start in range(0, len(chunk), ROW_GROUP):
        group = chunk[start : start + ROW_GROUP]
        for (row, rel), blob in zip(group, _blobs(source, group, pool), strict=True):
            yield row, rel, blob


def _chunks(
    rows: Iterator[tuple[dict[str, Any], str]], size: int
) -> Iterator[list[tuple[dict[str, Any], str]]]:
    chunk: list[tuple[dict[str, Any], str]] = []
    for item in rows:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def hf_features(columns: Columns) -> dict[str, Any]:
    """The `datasets` features as stored in Parquet schema metadata (the form 2.x and 5.x both read)."""
    out: dict[str, Any] = {"image": {"_type": "Image"}}
    for column, dtype in columns.dtypes().items():
        if column == "file_name":
            continue
        if dtype == "list<string>":
            out[column] = {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"}
        else:
            out[column] = {"dtype": dtype, "_type": "Value"}
    return out


def _arrow_schema(columns: Columns) -> Any:
    pa = _need("pyarrow")
    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "list<string>": pa.list_(pa.string()),
    }
    fields = [
        pa.field(
            "image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
        )
    ]
    fields += [
        pa.field(column, types[dtype])
        for column, dtype in columns.dtypes().items()
        if column != "file_name"
    ]
    metadata = {"huggingface": json.dumps({"info": {"features": hf_features(columns)}})}
    return pa.schema(fields, metadata=metadata)


class _Folder:
    """Where an export's files go: a local folder (shards written in place, atomically)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.label = str(folder)

    def shard(self, name: str) -> Path:
        """The file a shard is written to."""
        return self.folder / name

    def written(self, path: Path) -> None:
        """A shard is complete."""

    def card(self, data: bytes) -> None:
        files.write_atomic(self.folder / CARD, data)

    def finish(self, written: list[str], pattern: str) -> None:
        """The folder holds one export: shards of an earlier one that this did not write go."""
        keep = set(written)
        for old in self.folder.glob(pattern):
            if old.name not in keep:
                old.unlink(missing_ok=True)


class _Bucket(_Folder):
    """A folder in a bucket: each shard is staged in a private temporary folder, uploaded once
    complete and removed here, so the local disk holds one shard at a time."""

    def __init__(self, url: str, env: Mapping[str, str]) -> None:
        from renderer.output.storage import S3Storage

        bucket, prefix = parse_s3(url)
        path = PurePosixPath(prefix)
        if not prefix:
            raise ExportError(
                f"--out {url}: name a folder in the bucket",
                hint="e.g. --out s3://BUCKET/exports/NAME/",
            )
        parent = "" if str(path.parent) == "." else str(path.parent)
        self.storage = S3Storage(url, bucket, parent, env)
        self.rel = path.name
        self.staging = Path(tempfile.mkdtemp(prefix="renderer-export-"))
        super().__init__(self.staging)
        self.label = url.rstrip("/")

    def written(self, path: Path) -> None:
        kind = "application/x-tar" if path.suffix == ".tar" else "application/vnd.apache.parquet"
        try:
            self.storage.put_file(f"{self.rel}/{path.name}", path, content_type=kind)
        finally:
            path.unlink(missing_ok=True)

    def card(self, data: bytes) -> None:
        self.storage.put_bytes(f"{self.rel}/{CARD}", data)

    def finish(self, written: list[str], pattern: str) -> None:
        keep = set(written)
        for name in self.storage.names(self.rel):
            if fnmatch.fnmatchcase(name, pattern) and name not in keep:
                self.storage.remove(f"{self.rel}/{name}")

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def export(
    run: RunSource | Path,
    fmt: str,
    out_dir: Path | str | None = None,
    shard_size: int = 1000,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the export; return {format, dir, shards, rows, bytes}.

    `run`: a run directory, or a RunSource (a distributed run's state, images in a bucket).
    `out_dir`: a folder, or s3://BUCKET/PREFIX (credentials from `env`'s AWS variables); by
    default export/FORMAT beside the run's data/ (in its bucket when its images are in one).
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise ExportError(f"--shard-size {shard_size}: give a positive number of images per shard")
    if fmt == "parquet":
        _need("pyarrow")
    with sourced(run) as source:
        if out_dir is None and source.remote:
            out_dir = source.where(f"export/{fmt}")
        if out_dir is not None and is_remote(str(out_dir)):
            url = str(out_dir).rstrip("/")
            data = source.where(DATA_DIR) if source.remote else None
            if data is not None and (url == data or url.startswith(data + "/")):
                raise ExportError(f"{url}: an export cannot go inside the dataset folder {data}")
            bucket = _Bucket(url, env or {})
            try:
                return _export(source, fmt, bucket, shard_size)
            finally:
                bucket.close()
        return _export(
            source, fmt, _local(source, fmt, Path(out_dir) if out_dir else None), shard_size
        )


def _local(source: RunSource, fmt: str, out_dir: Path | None) -> _Folder:
    run_dir = source.run_dir
    out = out_dir or run_dir / "export" / fmt
    try:
        resolved = out.resolve()
        if (
            resolved == (run_dir / DATA_DIR).resolve()
            or (run_dir / DATA_DIR).resolve() in resolved.parents
        ):
            raise ExportError(
                f"{out}: an export cannot go inside the dataset folder {run_dir / DATA_DIR}"
            )
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{out}: cannot create the export folder: {exc.strerror or exc}") from exc
    return _Folder(out)


def _export(source: RunSource, fmt: str, out: _Folder, shard_size: int) -> dict[str, Any]:
    # The counts first (shard names carry the total, the card the models), summed by the
    # database; then the rows, streamed: memory stays bounded by one row group's images.
    with source.store() as store:
        models = store.images_by_model()
    count = sum(n for _, n in models.values())
    shards = max(1, -(-count // shard_size))
    with (
        reading(source) as (columns, rows),
        ThreadPoolExecutor(READERS, thread_name_prefix="export-read") as pool,
    ):
        chunks = _chunks(rows, shard_size)
        if fmt == "parquet":
            written, size = _parquet(source, out, columns, chunks, shards, pool)
        else:
            written, size = _webdataset(source, out, chunks, shards, pool)
    if fmt == "parquet":
        out.card(
            card_text(
                replace(_card_info(source, models, count), size=size),
                columns,
                data_globs=("*.parquet",),
                builder_note=" Parquet shards with the images embedded.",
            ).encode(),
        )
    return {
        "format": fmt,
        "dir": out.label,
        "shards": written,
        "rows": count,
        "bytes": size,
    }


def _card_info(source: RunSource, models: dict[str, tuple[str, int]], count: int) -> CardInfo:
    """The export's card keeps what the run's card says (name, license) and the manifest run.json names."""
    front: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError, IndexError, yaml.YAMLError):
        card = (source.read(f"{DATA_DIR}/{CARD}") or b"").decode("utf-8")
        loaded = yaml.safe_load(card.split("---\n")[1])
        front = loaded if isinstance(loaded, dict) else {}
    manifest = ""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        manifest = str(json.loads(source.read(RUN_RECORD) or b"null").get("manifest") or "")
    license_ = front.get("license")
    return CardInfo(
        str(front.get("pretty_name") or source.name),
        manifest or source.label,
        None,
        license_ if isinstance(license_, str) else None,
        models,
        count,
    )


def _parquet(
    source: RunSource,
    out: _Folder,
    columns: Columns,
    chunks: Iterator[list[tuple[dict[str, Any], str]]],
    shards: int,
    pool: ThreadPoolExecutor,
) -> tuple[list[str], int]:
    pa = _need("pyarrow")
    pq = __import__("pyarrow.parquet", fromlist=["parquet"])
    schema = _arrow_schema(columns)
    names = [f.name for f in schema]
    written: list[str] = []
    total = 0
    for index, chunk in enumerate(chunks):
        path = out.shard(_shard_name("train", index, shards, "parquet"))
        with (
            files.atomic_stream(path) as handle,
            pq.ParquetWriter(handle, schema, compression="zstd") as writer,
        ):
            for start in range(0, len(chunk), ROW_GROUP):
                group = chunk[start : start + ROW_GROUP]
                data: dict[str, list[Any]] = {n: [] for n in names}
                for (row, _), blob in zip(group, _blobs(source, group, pool), strict=True):
                    total += len(blob)
                    data["image"].append({"bytes": blob, "path": row["file_name"]})
                    for n in names[1:]:
                        data[n].append(row[n])
                writer.write_table(pa.table(data, schema=schema))
        out.written(path)
        written.append(path.name)
    out.finish(written, "train-*-of-*.parquet")
    return written, total


def _webdataset(
    source: RunSource,
    out: _Folder,
    chunks: Iterator[list[tuple[dict[str, Any], str]]],
    shards: int,
    pool: ThreadPoolExecutor,
) -> tuple[list[str], int]:
    written: list[str] = []
    total = 0
    mtime = int(time.time())
    for index, chunk in enumerate(chunks):
        path = out.shard(_shard_name("train", index, shards, "tar"))
        with files.atomic_stream(path) as handle:
            for row, rel, blob in _each_read(source, chunk, pool):
                total += len(blob)
                ext = rel.rsplit(".", 1)[-1]
                # The key must not contain a dot: WebDataset splits a member's name at the first one.
                key = f"{row['job_key']}-{row['image_index']}"
                text = json.dumps(row, ensure_ascii=False, sort_keys=True).encode()
                # A sample's members in the order webdataset's TarWriter writes them (by extension).
                for name, data in sorted(((f"{key}.json", text), (f"{key}.{ext}", blob))):
                    handle.write(tar_member(name, data, mtime))
            # Two zero blocks end the archive, padded (as tarfile does) to whole records.
            handle.write(bytes(_TAR_END + (-(handle.tell() + _TAR_END) % _TAR_RECORD)))
        out.written(path)
        written.append(path.name)
    out.finish(written, "train-*-of-*.tar")
    return written, total


_TAR_BLOCK = 512
_TAR_RECORD = 20 * _TAR_BLOCK  # tar pads an archive to whole records
_TAR_END = 2 * _TAR_BLOCK  # two zero blocks end an archive


def tar_member(name: str, data: bytes, mtime: int) -> bytes:
    """One regular file of a tar archive (POSIX ustar header, data padded to 512 bytes), as
    webdataset's TarWriter makes it (mode 0444, owner bigdata) without tarfile's per-member cost
    (its PAX header for a float mtime doubled the tar's headers and took 2/3 of the export).
    A name too long or not ASCII for ustar gets tarfile's PAX header."""
    encoded = name.encode()
    if len(encoded) > 100 or not encoded.isascii():
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), mtime, 0o444
        info.uname = info.gname = "bigdata"
        head = info.tobuf(tarfile.PAX_FORMAT)
    else:
        header = bytearray(_TAR_BLOCK)
        header[0 : len(encoded)] = encoded
        header[100:108] = b"0000444\0"
        header[108:116] = b"0000000\0"
        header[116:124] = b"0000000\0"
        header[124:136] = b"%011o\0" % len(data)
        header[136:148] = b"%011o\0" % mtime
        header[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
        header[156:157] = b"0"  # a regular file
        header[257:265] = b"ustar\x0000"
        header[265:272] = b"bigdata"
        header[297:304] = b"bigdata"
        header[148:156] = b"%06o\0 " % sum(header)
        head = bytes(header)
    return head + data + bytes(-len(data) % _TAR_BLOCK)
