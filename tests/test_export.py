"""`renderer export`: Parquet and WebDataset shards that load back with every image and column."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.output import export
from renderer.provider.emulator import ServiceTime

from .conftest import background_emulator, cli, write_manifest

datasets = pytest.importorskip("datasets")
wds = pytest.importorskip("webdataset")

SWEEP = {
    "prompts": [
        {"id": "cat", "text": "a cat", "tags": ["animal"]},
        {"id": "fuji", "text": "Mount Fuji"},
    ],
    "models": [
        {
            "endpoint": "fal-ai/flux-1/schnell",
            "label": "flux",
            "axes": {"image_size": ["landscape_16_9", {"width": 512, "height": 768}]},
        },
        {"endpoint": "fal-ai/imagen4/preview", "label": "imagen"},
        {
            "endpoint": "fal-ai/hidream-i1-fast",
            "label": "hidream",
            "params": {"output_format": "jpeg"},
        },
        {"endpoint": "acme/missing", "label": "broken", "unchecked": True},
    ],
    "seeds": [3, 4],
    "license": "mit",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("export")
    m = write_manifest(folder, **SWEEP)
    with background_emulator(service=ServiceTime("fixed", 0.01)) as emu:
        code, _, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(folder / "out"),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
    assert code == 1, err  # acme/missing fails; 16 images render
    assert cli("report", str(folder / "out/t"))[0] == 0
    yield folder / "out/t"


def _metadata(run_dir: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (run_dir / "data/metadata.jsonl").read_text().splitlines()]
    return {f"{r['job_key']}-{r['image_index']}": r for r in rows}


def test_parquet_round_trip(run_dir: Path, tmp_path: Path):
    """Parquet shards load with datasets ("parquet" and through their card): every row, column and image byte."""
    code, out, err = cli(
        "export", str(run_dir), "--format", "parquet", "--shard-size", "5", "--json"
    )
    assert code == 0, err
    done = json.loads(out)
    expected = _metadata(run_dir)
    assert done["rows"] == len(expected) == 16 and len(done["shards"]) == 4
    folder = Path(done["dir"])
    assert folder == run_dir / "export/parquet"
    loaded = datasets.load_dataset(
        "parquet", data_files=str(folder / "*.parquet"), cache_dir=str(tmp_path / "c1")
    )
    via_card = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "c2"))
    for ds in (loaded["train"], via_card["train"]):
        assert ds.num_rows == 16
        assert set(ds.column_names) == (set(next(iter(expected.values()))) - {"file_name"}) | {
            "image"
        }
        raw = ds.cast_column("image", datasets.Image(decode=False))
        seen = set()
        for record in raw:
            key = f"{record['job_key']}-{record['image_index']}"
            source = expected[key]
            blob = record["image"]["bytes"]
            assert (
                hashlib.sha256(blob).hexdigest()
                == source["sha256"]
                == hashlib.sha256((run_dir / "data" / source["file_name"]).read_bytes()).hexdigest()
            )
            assert {k: v for k, v in record.items() if k != "image"} == {
                k: v for k, v in source.items() if k != "file_name"
            }
            seen.add(key)
        assert seen == set(expected)
        assert ds[0]["image"].size == (ds[0]["width"], ds[0]["height"])  # decodes as an Image
    card = (folder / "README.md").read_text()
    assert 'license: "mit"' in card and "| flux | `fal-ai/flux-1/schnell` | 8 |" in card


def test_webdataset_round_trip(run_dir: Path):
    """WebDataset tars read back with webdataset.WebDataset: every sample's image bytes and JSON row."""
    code, out, err = cli(
        "export", str(run_dir), "--format", "webdataset", "--shard-size", "4", "--json"
    )
    assert code == 0, err
    done = json.loads(out)
    assert len(done["shards"]) == 4
    urls = [str(Path(done["dir"]) / name) for name in done["shards"]]
    expected = _metadata(run_dir)
    seen = {}
    with warnings.catch_warnings():
        # webdataset 1.0 leaves closing its shard files to the garbage collector.
        warnings.simplefilter("ignore", ResourceWarning)
        loader = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        for sample in loader:
            key = sample["__key__"]
            row = json.loads(sample["json"])
            ext = row["file_name"].rsplit(".", 1)[1]
            assert hashlib.sha256(sample[ext]).hexdigest() == row["sha256"]
            seen[key] = row
        del loader, sample
        gc.collect()
    assert seen == expected
    assert {r["file_name"].rsplit(".", 1)[1] for r in seen.values()} == {"png", "jpg"}


def test_reexport_replaces_shards_and_damage_stops_it(run_dir: Path, tmp_path: Path):
    """A second export leaves no stale shard; a damaged image stops the export with a clear error."""
    out_dir = tmp_path / "pq"
    assert (
        cli(
            "export",
            str(run_dir),
            "--format",
            "parquet",
            "--shard-size",
            "2",
            "--out",
            str(out_dir),
        )[0]
        == 0
    )
    assert len(list(out_dir.glob("*.parquet"))) == 8
    assert cli("export", str(run_dir), "--format", "parquet", "--out", str(out_dir))[0] == 0
    assert [p.name for p in out_dir.glob("*.parquet")] == ["train-00000-of-00001.parquet"]
    victim = next((run_dir / "data").rglob("*.png"))
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:-10] + b"0123456789")
        code, _, err = cli(
            "export", str(run_dir), "--format", "webdataset", "--out", str(tmp_path / "w")
        )
        assert code == 2 and "changed since it was downloaded" in err and "hint:" in err
        assert not list((tmp_path / "w").glob("*.tar")) and not list((tmp_path / "w").glob(".*"))
    finally:
        victim.write_bytes(original)
    code, _, err = cli(
        "export", str(run_dir), "--format", "parquet", "--out", str(run_dir / "data/x")
    )
    assert code == 2 and "inside the dataset folder" in err
    code, _, err = cli("export", str(tmp_path), "--format", "parquet")
    assert code == 2 and "no run here" in err


@settings(max_examples=80, deadline=None)
@given(
    # A member name is `<job key>-<index>.<ext>`: never NUL, never a trailing '/' (which tar
    # readers take for a directory, whatever the header's type says).
    st.text(min_size=1, max_size=130).filter(lambda n: "\x00" not in n and not n.endswith("/")),
    st.binary(max_size=2000),
    st.integers(0, 8**11 - 1),
)
def test_tar_members_are_what_tarfile_writes(name, data, mtime):
    """WebDataset shards are standard tar: each member is byte for byte tarfile's ustar header
    (PAX for names ustar cannot hold), read back with its name, bytes and mode."""
    member = export.tar_member(name, data, mtime)
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o444
    info.uname = info.gname = "bigdata"
    encoded = name.encode()
    if len(encoded) <= 100 and encoded.isascii():
        assert member[:512] == info.tobuf(tarfile.USTAR_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(member + bytes(1024))) as tar:
        (got,) = tar.getmembers()
        assert (got.name, got.size, got.mode, got.mtime) == (name, len(data), 0o444, mtime)
        assert tar.extractfile(got).read() == data


def test_kept_columns_are_exported_in_both_formats(tmp_path: Path):
    """A caption set's kept columns reach Parquet (typed, loaded by datasets) and WebDataset rows, aligned with
    each image and its caption; a row without a value holds null."""
    (tmp_path / "c.csv").write_text(
        "caption,source_url,license\na red fox,https://x/0,cc0\na heron,https://x/1,\n"
    )
    m = write_manifest(
        tmp_path,
        output=str(tmp_path / "out"),
        prompts=[
            {"id": "cat", "text": "a cat"},
            {"file": "c.csv", "text": "caption", "keep": ["source_url", "license"]},
        ],
        seeds=[1, 2],
    )
    assert cli("run", str(m), "--quiet")[0] == 0
    run_dir = tmp_path / "out/t"
    expected = _metadata(run_dir)
    assert {(r["prompt"], r["source_url"], r["license"]) for r in expected.values()} == {
        ("a cat", None, None),
        ("a red fox", "https://x/0", "cc0"),
        ("a heron", "https://x/1", ""),  # CSV: an empty field is empty text
    }
    code, out, err = cli("export", str(run_dir), "--format", "parquet", "--json")
    assert code == 0, err
    folder = Path(json.loads(out)["dir"])
    ds = datasets.load_dataset(
        "parquet", data_files=str(folder / "*.parquet"), cache_dir=str(tmp_path / "c")
    )["train"].cast_column("image", datasets.Image(decode=False))
    assert ds.num_rows == 6 and ds.column_names[-2:] == ["source_url", "license"]
    for record in ds:
        source = expected[f"{record['job_key']}-{record['image_index']}"]
        assert (record["prompt"], record["source_url"], record["license"]) == (
            source["prompt"],
            source["source_url"],
            source["license"],
        )
        assert hashlib.sha256(record["image"]["bytes"]).hexdigest() == source["sha256"]
    code, out, err = cli("export", str(run_dir), "--format", "webdataset", "--json")
    assert code == 0, err
    done = json.loads(out)
    rows = {}
    for name in done["shards"]:
        with tarfile.open(Path(done["dir"]) / name) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    row = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    rows[f"{row['job_key']}-{row['image_index']}"] = row
    assert rows == expected


def _plain_parquet(path: Path, rows: list[dict], run_dir: Path, schema, group: int) -> bytes:
    """A shard as the first export wrote it: pa.table of row dicts per row group, images read whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f.name for f in schema]
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, len(rows), group):
            data: dict[str, list] = {n: [] for n in names}
            for row in rows[start : start + group]:
                blob = (run_dir / "data" / row["file_name"]).read_bytes()
                data["image"].append({"bytes": blob, "path": row["file_name"]})
                for n in names[1:]:
                    data[n].append(row[n])
            writer.write_table(pa.table(data, schema=schema))
    return path.read_bytes()


def _plain_tar(rows: list[dict], run_dir: Path, mtime: int) -> bytes:
    """A shard as tarfile writes it: ustar members (mode 0444, owner bigdata), each sample's
    members by name, the row as sorted JSON."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row in rows:
            key = f"{row['job_key']}-{row['image_index']}"
            ext = row["file_name"].rsplit(".", 1)[1]
            text = json.dumps(row, ensure_ascii=False, sort_keys=True).encode()
            blob = (run_dir / "data" / row["file_name"]).read_bytes()
            for name, data in sorted(((f"{key}.json", text), (f"{key}.{ext}", blob))):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), mtime, 0o444
                info.uname = info.gname = "bigdata"
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(("group", "part_bytes"), [(100, 1 << 20), (3, 1 << 20), (4, 1)])
def test_shards_are_byte_for_byte_the_plain_writers(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: int, part_bytes: int
):
    """Every shard is byte for byte what pyarrow (row dicts) or tarfile writes from metadata.jsonl's
    rows and the image files, in order, however the images are grouped and split among readers."""
    import pyarrow.parquet as pq

    from renderer.output.dataset import reading

    with reading(run_dir) as (columns, _):
        schema = export._arrow_schema(columns)
    monkeypatch.setattr(export, "ROW_GROUP", group)
    monkeypatch.setattr(export, "PART_BYTES", part_bytes)
    rows = [json.loads(line) for line in (run_dir / "data/metadata.jsonl").read_text().splitlines()]
    done = export.export(run_dir, "parquet", tmp_path / "pq", shard_size=7)
    assert done["rows"] == len(rows) == 16 and len(done["shards"]) == 3
    for index, name in enumerate(done["shards"]):
        shard = tmp_path / "pq" / name
        part = rows[index * 7 : index * 7 + 7]
        assert shard.read_bytes() == _plain_parquet(tmp_path / "p", part, run_dir, schema, group)
        assert pq.ParquetFile(shard).num_row_groups == -(-len(part) // group)
    done = export.export(run_dir, "webdataset", tmp_path / "wd", shard_size=7)
    for index, name in enumerate(done["shards"]):
        shard = (tmp_path / "wd" / name).read_bytes()
        mtime = int(shard[136:147], 8)
        assert shard == _plain_tar(rows[index * 7 : index * 7 + 7], run_dir, mtime)


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([0, 1, 140, (1 << 16) - 1, 1 << 16, (1 << 16) + 1, (1 << 20) + (1 << 16) + 5]),
    st.binary(min_size=1, max_size=64),
)
def test_local_reads_come_whole(tmp_path_factory: pytest.TempPathFactory, size: int, seed: bytes):
    """An image is read to its end whatever its size (around the first and later read sizes)."""
    data = (seed * (size // len(seed) + 1))[:size]
    path = tmp_path_factory.mktemp("read") / "image.png"
    path.write_bytes(data)
    assert export._read_file(str(path)) == data


def test_a_missing_image_stops_the_export_with_no_shard(run_dir: Path, tmp_path: Path):
    """An image gone since the run stops the export naming the file, with nothing written."""
    victim = next((run_dir / "data").rglob("*.jpg"))
    kept = tmp_path / "kept.jpg"
    victim.rename(kept)
    try:
        for fmt in ("parquet", "webdataset"):
            code, _, err = cli(
                "export", str(run_dir), "--format", fmt, "--out", str(tmp_path / fmt)
            )
            assert code == 2 and f"{victim}: cannot read this image: it is not there" in err, err
            assert "Traceback" not in err and "hint:" in err
            assert not [p for p in (tmp_path / fmt).iterdir()]
    finally:
        kept.rename(victim)
