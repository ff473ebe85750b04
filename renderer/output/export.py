"""`renderer export`: a run's dataset as Parquet shards (image bytes embedded) or WebDataset tars.

Parquet is the form the Hugging Face Hub serves large image datasets in: an `image` column of
{bytes, path} structs plus the metadata columns, typed as in RUN/data/ (renderer.dataset),
with the `datasets` features in the schema metadata so `image` decodes as an Image. A card
(README.md) beside the shards makes `load_dataset(DIR)` work as well.

WebDataset: tar shards of samples `<key>.<png|jpg|webp>` + `<key>.json` (the row), written
with the `webdataset` library's TarWriter.

Invariants:
  * Every shard is written to a hidden temporary file and renamed into place; shards of an
    earlier export that this one did not write are removed, so the folder holds one export.
  * Every image's bytes are checked against the recorded sha256 as they are read: a file
    damaged since the run stops the export (rerun `renderer run` to fetch it again).
  * pyarrow and webdataset are imported only here (the `renderer[datasets]` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from renderer.errors import UsageError
from renderer.layout import DATA_DIR, RUN_RECORD
from renderer.output import files
from renderer.output.dataset import CARD, CardInfo, Columns, card_text, reading
from renderer.output.source import RunSource, sourced

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


def _replace_shards(folder: Path, written: list[Path], pattern: str) -> None:
    keep = {p.name for p in written}
    for old in folder.glob(pattern):
        if old.name not in keep:
            old.unlink(missing_ok=True)


def export(
    run: RunSource | Path, fmt: str, out_dir: Path | None = None, shard_size: int = 1000
) -> dict[str, Any]:
    """Write the export; return {format, dir, shards, rows, bytes}.

    `run`: a run directory, or a RunSource (a distributed run's state, images in a bucket).
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise ExportError(f"--shard-size {shard_size}: give a positive number of images per shard")
    _need("pyarrow" if fmt == "parquet" else "webdataset")
    with sourced(run) as source:
        return _export(source, fmt, out_dir, shard_size)


def _export(source: RunSource, fmt: str, out_dir: Path | None, shard_size: int) -> dict[str, Any]:
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
    # Two passes over the state: the first counts (shard names carry the total, the card the
    # models), the second streams; memory stays bounded by one shard's rows.
    models: dict[str, tuple[str, int]] = {}
    count = 0
    with reading(source) as (columns, rows):
        for row, _ in rows:
            endpoint, n = models.get(row["model"], (row["endpoint"], 0))
            models[row["model"]] = (endpoint, n + 1)
            count += 1
    shards = max(1, -(-count // shard_size))
    with reading(source) as (columns, rows):
        chunks = _chunks(rows, shard_size)
        if fmt == "parquet":
            written, size = _parquet(source, out, columns, chunks, shards)
        else:
            written, size = _webdataset(source, out, chunks, shards)
    if fmt == "parquet":
        files.write_atomic(
            out / CARD,
            card_text(
                replace(_card_info(source, models, count), size=size),
                columns,
                data_globs=("*.parquet",),
                builder_note=" Parquet shards with the images embedded.",
            ).encode(),
        )
    return {
        "format": fmt,
        "dir": str(out),
        "shards": [p.name for p in written],
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
    out: Path,
    columns: Columns,
    chunks: Iterator[list[tuple[dict[str, Any], str]]],
    shards: int,
) -> tuple[list[Path], int]:
    pa = _need("pyarrow")
    pq = __import__("pyarrow.parquet", fromlist=["parquet"])
    schema = _arrow_schema(columns)
    names = [f.name for f in schema]
    written: list[Path] = []
    total = 0
    for index, chunk in enumerate(chunks):
        path = out / _shard_name("train", index, shards, "parquet")
        with (
            files.atomic_stream(path) as handle,
            pq.ParquetWriter(handle, schema, compression="zstd") as writer,
        ):
            for start in range(0, len(chunk), ROW_GROUP):
                group = chunk[start : start + ROW_GROUP]
                data: dict[str, list[Any]] = {n: [] for n in names}
                for row, rel in group:
                    blob = _read_verified(source, rel, row["sha256"])
                    total += len(blob)
                    data["image"].append({"bytes": blob, "path": row["file_name"]})
                    for n in names[1:]:
                        data[n].append(row[n])
                writer.write_table(pa.table(data, schema=schema))
        written.append(path)
    _replace_shards(out, written, "train-*-of-*.parquet")
    return written, total


def _webdataset(
    source: RunSource, out: Path, chunks: Iterator[list[tuple[dict[str, Any], str]]], shards: int
) -> tuple[list[Path], int]:
    wds = _need("webdataset")
    written: list[Path] = []
    total = 0
    for index, chunk in enumerate(chunks):
        path = out / _shard_name("train", index, shards, "tar")
        with files.atomic_stream(path) as handle:
            writer = wds.TarWriter(handle, encoder=False)
            try:
                for row, rel in chunk:
                    blob = _read_verified(source, rel, row["sha256"])
                    total += len(blob)
                    ext = rel.rsplit(".", 1)[-1]
                    # The key must not contain a dot: WebDataset splits a member's name at the first one.
                    key = f"{row['job_key']}-{row['image_index']}"
                    writer.write(
                        {
                            "__key__": key,
                            ext: blob,
                            "json": json.dumps(row, ensure_ascii=False, sort_keys=True).encode(),
                        }
                    )
            finally:
                writer.close()  # while the file is open (tarfile writes its end blocks on close)
        written.append(path)
    _replace_shards(out, written, "train-*-of-*.tar")
    return written, total
