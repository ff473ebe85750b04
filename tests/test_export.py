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
    st.text(min_size=1, max_size=130).filter(lambda n: "\x00" not in n),
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
