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
import itertools
import json
import operator
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from renderer.errors import UsageError
from renderer.layout import DATA_DIR, RUN_RECORD
from renderer.output import files
from renderer.output.dataset import CARD, CardInfo, Columns, card_text, reading
from renderer.output.source import RunSource, sourced
from renderer.output.storage import LocalStorage
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


def _unreadable(where: str, why: str) -> ExportError:
    return ExportError(
        f"{where}: cannot read this image: {why}",
        hint="`renderer run` the manifest again to fetch missing images, then export",
    )


def _checked(where: str, data: bytes, sha256: str | None) -> bytes:
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ExportError(
            f"{where}: the image changed since it was downloaded (sha256 differs)",
            hint="`renderer run --verify` fetches it again, then export",
        )
    return data


def _read_file(path: str) -> bytes:
    """A local file's bytes by os.read, to its end: a third of Path.read_bytes' cost for the small
    files of a dataset (no file object, no buffer, no fstat), which was a sixth of the export."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, _FIRST_READ)
        while True:  # until read says the end: a file larger than the first read comes whole
            more = os.read(fd, _MORE_READ)
            if not more:
                return data
            data += more
    finally:
        os.close(fd)


_FIRST_READ = 1 << 16
_MORE_READ = 1 << 20
READERS = 8  # images read (and hashed) at once: a bucket's latency overlapped
# A local read task takes at least this many bytes of images (or the whole group).
PART_BYTES = 1 << 20

Item = tuple[dict[str, Any], str]  # (metadata row, image path relative to the run)


class _Images:
    """The verified bytes of a row group's images, read by a pool's threads one group ahead of
    the shard being written (reads and sha256 of large images release the GIL).

    A local file is read by os.read; a group of small files is one task (a task per image, or
    per eighth of a group, cost more in thread handoffs than the reads); larger images are
    split so each task reads about PART_BYTES. A bucket's group is split in READERS tasks,
    whatever the sizes: its cost is latency."""

    def __init__(self, source: RunSource, pool: ThreadPoolExecutor) -> None:
        self.source = source
        self.pool = pool
        storage = source.storage
        self.root = str(storage.root) + os.sep if isinstance(storage, LocalStorage) else None

    def read(self, part: list[Item]) -> list[bytes]:
        root = self.root
        if root is None:
            return [self._remote(rel, row["sha256"]) for row, rel in part]
        blobs = []
        for row, rel in part:
            path = root + rel
            try:
                data = _read_file(path)
            except FileNotFoundError:
                raise _unreadable(path, "it is not there") from None
            except OSError as exc:
                raise _unreadable(path, exc.strerror or str(exc)) from exc
            blobs.append(_checked(path, data, row["sha256"]))
        return blobs

    def _remote(self, rel: str, sha256: str | None) -> bytes:
        where = self.source.where(rel)
        try:
            data = self.source.read(rel)
        except OSError as exc:
            raise _unreadable(where, exc.strerror or str(exc)) from exc
        if data is None:
            raise _unreadable(where, "it is not there")
        return _checked(where, data, sha256)

    def parts(self, group: list[Item]) -> list[list[Item]]:
        """`group` cut into the tasks that read it: READERS of them from a bucket; locally as many
        as make about PART_BYTES each (the group's first file standing for its size), at most
        READERS: one task for a group of small images."""
        per = -(-len(group) // READERS) or 1
        if self.root is not None and group:
            try:
                size = os.stat(self.root + group[0][1]).st_size
            except OSError:
                size = 0  # read() says what is wrong with it
            per = max(per, PART_BYTES // max(1, size))
        return [group[i : i + per] for i in range(0, len(group), per)]

    def ahead(
        self, groups: Iterator[tuple[int, list[Item]]]
    ) -> Iterator[tuple[int, list[Item], list[bytes]]]:
        """(shard, group, verified bytes of its images) for each group, the next group's reads
        already under way: the images of the group being written and of the next are in memory."""
        pending: tuple[int, list[Item], list[Future[list[bytes]]]] | None = None
        for shard, group in groups:
            started = (shard, group, [self.pool.submit(self.read, p) for p in self.parts(group)])
            if pending is not None:
                yield pending[0], pending[1], _joined(pending[2])
            pending = started
        if pending is not None:
            yield pending[0], pending[1], _joined(pending[2])


def _joined(futures: list[Future[list[bytes]]]) -> list[bytes]:
    return [blob for future in futures for blob in future.result()]


def _groups(rows: Iterator[Item], shard_size: int) -> Iterator[tuple[int, list[Item]]]:
    """(shard index, group) for each row group: ROW_GROUP rows, a shard's last group shorter;
    the grouping of the earlier export (a shard of shard_size rows cut in ROW_GROUPs), so the
    Parquet row groups and the bytes written are the same."""
    shard, in_shard, group = 0, 0, []
    for item in rows:
        group.append(item)
        in_shard += 1
        if len(group) == ROW_GROUP or in_shard == shard_size:
            yield shard, group
            group = []
            if in_shard == shard_size:
                shard, in_shard = shard + 1, 0
    if group:
        yield shard, group


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
        read = _Images(source, pool).ahead(_groups(rows, shard_size))
        if fmt == "parquet":
            written, size = _parquet(out, columns, read, shards)
        else:
            written, size = _webdataset(out, read, shards)
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
    sources: tuple[dict[str, Any], ...] = ()
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError, KeyError):
        record = json.loads(source.read(RUN_RECORD) or b"null")
        manifest = str(record.get("manifest") or "")
        # `- hub:` sources: the commit the prompts were read at travels with the export.
        sources = tuple(
            {k: h[k] for k in ("repo", "config", "split", "revision", "commit")}
            for h in record.get("hub") or ()
        )
    license_ = front.get("license")
    return CardInfo(
        str(front.get("pretty_name") or source.name),
        manifest or source.label,
        None,
        license_ if isinstance(license_, str) else None,
        models,
        count,
        sources=sources,
    )


Read = Iterator[tuple[int, list[Item], list[bytes]]]  # (shard, row group, its images' bytes)


def _by_shard(read: Read) -> Iterator[tuple[int, Iterator[tuple[list[Item], list[bytes]]]]]:
    """The row groups of each shard in turn (consumed one shard after the other)."""
    for shard, groups in itertools.groupby(read, key=lambda x: x[0]):
        yield shard, ((group, blobs) for _, group, blobs in groups)


def _parquet(out: _Folder, columns: Columns, read: Read, shards: int) -> tuple[list[str], int]:
    pa = _need("pyarrow")
    pq = __import__("pyarrow.parquet", fromlist=["parquet"])
    schema = _arrow_schema(columns)
    image_fields = list(schema.field("image").type)
    # file_name (the image's path), then the other columns, as pick() gives them.
    names = ["file_name", *[f.name for f in schema][1:]]
    types = [pa.string(), *[f.type for f in schema][1:]]
    pick = operator.itemgetter(*names)
    written: list[str] = []
    total = 0
    for index, groups in _by_shard(read):
        path = out.shard(_shard_name("train", index, shards, "parquet"))
        with (
            files.atomic_stream(path) as handle,
            pq.ParquetWriter(handle, schema, compression="zstd") as writer,
        ):
            for group, blobs in groups:
                total += sum(map(len, blobs))
                # Column by column (what pa.table of row dicts does inside, at half the cost):
                # each row's values in schema order, transposed into columns.
                values = zip(*(pick(row) for row, _ in group), strict=True)
                arrays = [pa.array(column, t) for column, t in zip(values, types, strict=True)]
                image = pa.StructArray.from_arrays(
                    [pa.array(blobs, pa.binary()), arrays[0]], fields=image_fields
                )
                writer.write_table(pa.Table.from_arrays([image, *arrays[1:]], schema=schema))
        out.written(path)
        written.append(path.name)
    out.finish(written, "train-*-of-*.parquet")
    return written, total


# The row as JSON, as json.dumps(row, ensure_ascii=False, sort_keys=True) writes it (one encoder,
# not one made per row).
_ROW_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode


def _webdataset(out: _Folder, read: Read, shards: int) -> tuple[list[str], int]:
    written: list[str] = []
    total = 0
    mtime = int(time.time())
    for index, groups in _by_shard(read):
        path = out.shard(_shard_name("train", index, shards, "tar"))
        with files.atomic_stream(path) as handle:
            for group, blobs in groups:
                parts: list[bytes] = []
                for (row, rel), blob in zip(group, blobs, strict=True):
                    total += len(blob)
                    ext = rel.rsplit(".", 1)[-1]
                    # The key must not contain a dot: WebDataset splits a member's name at the first one.
                    key = f"{row['job_key']}-{row['image_index']}"
                    text = _ROW_JSON(row).encode()
                    # A sample's members in the order webdataset's TarWriter writes them (by extension).
                    for name, data in sorted(((f"{key}.json", text), (f"{key}.{ext}", blob))):
                        parts += _member(name, data, mtime)
                handle.write(b"".join(parts))
            # Two zero blocks end the archive, padded (as tarfile does) to whole records.
            handle.write(bytes(_TAR_END + (-(handle.tell() + _TAR_END) % _TAR_RECORD)))
        out.written(path)
        written.append(path.name)
    out.finish(written, "train-*-of-*.tar")
    return written, total


_TAR_BLOCK = 512
_TAR_RECORD = 20 * _TAR_BLOCK  # tar pads an archive to whole records
_TAR_END = 2 * _TAR_BLOCK  # two zero blocks end an archive
_ZEROS = bytes(_TAR_BLOCK)
# A ustar header's fields after the name (100 bytes), in three pieces around size and mtime
# (each "%011o\0") and the checksum ("%06o\0 "): mode 0444, owner 0:0, a regular file, "ustar"
# "00", owner names bigdata, the rest zeros; as tarfile writes them.
_MODE_IDS = b"0000444\0" + b"0000000\0" * 2
_AFTER_SUM = b"".join(  # from the type flag (offset 156) to the end of the block
    (b"0", bytes(100), b"ustar\x0000", b"bigdata".ljust(32, b"\0") * 2, bytes(_TAR_BLOCK - 329))
)
_FIXED_SUM = sum(_MODE_IDS) + sum(b" " * 8) + sum(_AFTER_SUM)


def tar_member(name: str, data: bytes, mtime: int) -> bytes:
    """One regular file of a tar archive: header, data, padding to 512 bytes."""
    return b"".join(_member(name, data, mtime))


def _member(name: str, data: bytes, mtime: int) -> tuple[bytes, bytes, bytes]:
    """tar_member as (header, data, padding), for one write of many members: a POSIX ustar
    header as webdataset's TarWriter makes it (mode 0444, owner bigdata) without tarfile's
    per-member cost (its PAX header for a float mtime doubled the tar's headers and took 2/3 of
    the export); the checksum summed from the parts (fixed ones summed once).
    A name too long or not ASCII for ustar gets tarfile's PAX header."""
    encoded = name.encode()
    if len(encoded) > 100 or not encoded.isascii():
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), mtime, 0o444
        info.uname = info.gname = "bigdata"
        head = info.tobuf(tarfile.PAX_FORMAT)
    else:
        size = b"%011o\0" % len(data)
        stamp = b"%011o\0" % mtime
        check = _FIXED_SUM + sum(encoded) + sum(size) + sum(stamp)
        head = b"".join(
            (
                encoded,
                _ZEROS[: 100 - len(encoded)],
                _MODE_IDS,
                size,
                stamp,
                b"%06o\0 " % check,
                _AFTER_SUM,
            )
        )
    return head, data, _ZEROS[: -len(data) % _TAR_BLOCK]
