"""The dataset a run writes (RUN/data/): loads with Hugging Face `datasets`, every column typed."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.output import dataset
from renderer.provider.emulator import ServiceTime

from .conftest import background_emulator, cli, write_manifest

# Mixed-type axes (a preset name beside a {width, height} object), an int axis only one model
# has, a string axis another model has, a model that always fails, tags on one prompt only.
SWEEP = {
    "prompts": [
        {"id": "cat", "text": "a cat", "tags": ["animal", "pet"]},
        {"id": "fuji", "text": "Mount Fuji"},
    ],
    "models": [
        {
            "endpoint": "fal-ai/flux-1/schnell",
            "label": "flux",
            "axes": {
                "image_size": ["landscape_16_9", {"width": 512, "height": 768}],
                "num_inference_steps": [2, 4],
            },
        },
        {
            "endpoint": "fal-ai/imagen4/preview",
            "label": "imagen",
            "axes": {"aspect_ratio": ["1:1", "16:9"]},
        },
        {"endpoint": "acme/missing", "label": "broken", "unchecked": True},
    ],
    "seeds": [7],
    "license": "cc-by-4.0",
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("dataset")
    m = write_manifest(folder, **SWEEP)
    old = os.umask(0o022)
    try:
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
        assert code == 1, err  # acme/missing fails; everything else renders
        assert (
            cli("report", str(folder / "out/t"))[0] == 0
        )  # report/ holds PNG sheets and JPEG thumbnails
    finally:
        os.umask(old)
    yield folder / "out/t"


def _images(data: Path) -> list[Path]:
    return sorted(p for p in data.rglob("*") if p.suffix in (".png", ".jpg", ".webp"))


def _metadata(data: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]


def test_metadata_has_every_column_with_one_type(sweep: Path):
    """One row per image; fixed columns, one column per axis with a single type, input as JSON text."""
    data = sweep / "data"
    rows = _metadata(data)
    assert len(rows) == len(_images(data)) == 2 * (4 + 2)
    columns = set(dataset.FIXED) | {"image_size", "num_inference_steps", "aspect_ratio"}
    assert all(set(r) == columns for r in rows)
    for r in rows:
        image = data / r["file_name"]
        assert hashlib.sha256(image.read_bytes()).hexdigest() == r["sha256"]
        assert json.loads(r["input"])["prompt"] == r["prompt"]
        assert r["provider"].startswith("http://127.0.0.1:") and r["width"] > 0 and r["height"] > 0
    flux = [r for r in rows if r["model"] == "flux"]
    assert {r["image_size"] for r in flux} == {"landscape_16_9", '{"height":768,"width":512}'}
    assert {r["num_inference_steps"] for r in flux} == {2, 4} and all(
        r["aspect_ratio"] is None for r in flux
    )
    imagen = [r for r in rows if r["model"] == "imagen"]
    assert {r["aspect_ratio"] for r in imagen} == {"1:1", "16:9"} and all(
        r["image_size"] is None for r in imagen
    )
    assert {tuple(r["tags"]) for r in rows} == {("animal", "pet"), ()}
    assert {r["has_nsfw_concepts"] for r in flux} == {
        False
    }  # flux's schema reports it; the emulator sends it


def test_card_is_complete_and_sees_only_the_dataset(sweep: Path):
    """The card names the license, task, size, models with counts and the manifest; machinery is outside data/."""
    card = (sweep / "data/README.md").read_text()
    for needle in (
        'pretty_name: "t"',
        'license: "cc-by-4.0"',
        "- text-to-image",
        "- n<1K",
        "| flux | `fal-ai/flux-1/schnell` | 8 |",
        "| imagen | `fal-ai/imagen4/preview` | 4 |",
        "split: train",
        "## Manifest",
        "acme/missing",
    ):
        assert needle in card, needle
    configs = card.split("configs:")[1].split("dataset_info:")[0]
    assert (
        "features" not in configs
    )  # datasets 2.x cannot load a card with features inside a config
    assert '  - name: "image_size"\n    dtype: string' in card.split("dataset_info:")[1]
    assert "broken" not in card.split("## Manifest")[0]  # no images, no row in the model table
    top = {p.name for p in sweep.iterdir() if not p.name.startswith(".")}
    assert {"data", "renderer.sqlite", "report", "run.json"} <= top
    assert top <= {
        "data",
        "renderer.sqlite",
        "renderer.sqlite-shm",
        "renderer.sqlite-wal",
        "report",
        "run.json",
    }
    assert not any(p.suffix in (".sqlite", ".html") for p in (sweep / "data").rglob("*"))


def test_files_honour_the_umask(sweep: Path):
    """Images, sidecars, metadata and card are readable by group and others under umask 022 (not 0600)."""
    data = sweep / "data"
    paths = [
        *_images(data),
        *data.rglob("*.json"),
        data / "metadata.jsonl",
        data / "README.md",
        sweep / "run.json",
    ]
    assert len(paths) > 20
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_loads_through_the_card_configs_and_as_imagefolder(sweep: Path, tmp_path: Path):
    """`datasets` loads data/ both ways with a report present: row count = images, every column, typed."""
    datasets = pytest.importorskip("datasets")
    data = sweep / "data"
    rows = _metadata(data)
    for loaded in (
        datasets.load_dataset(str(data), cache_dir=str(tmp_path / "c1")),
        datasets.load_dataset("imagefolder", data_dir=str(data), cache_dir=str(tmp_path / "c2")),
    ):
        assert list(loaded) == ["train"]
        train = loaded["train"]
        assert train.num_rows == len(rows) == len(_images(data))
        expected = {c for c in rows[0] if c != "file_name"} | {"image"}
        assert set(train.column_names) == expected
        assert str(train.features["has_nsfw_concepts"].dtype) == "bool"
        assert str(train.features["num_inference_steps"].dtype) == "int64"
        assert str(train.features["image_size"].dtype) == "string"
        by_job = {(r["job_key"], r["image_index"]): r for r in rows}
        assert len(by_job) == len(rows)
        for record in train:
            source = by_job.pop((record["job_key"], record["image_index"]))
            assert record["image"].size == (source["width"], source["height"])
            assert {k: record[k] for k in expected - {"image"}} == {
                k: source[k] for k in expected - {"image"}
            }
        assert not by_job
        train.to_parquet(str(tmp_path / "out.parquet"))  # no empty struct: Parquet accepts it


@settings(deadline=None)  # the first example pays for lazy imports; a deadline would make it flaky
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["a", "seed", "b"]),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-5, 5),
                st.floats(allow_nan=False),
                st.text(max_size=3),
                st.fixed_dictionaries({"w": st.integers(1, 9)}),
            ),
        ),
        max_size=6,
    )
)
def test_axis_columns_have_one_type_whatever_the_values(axes: list[dict[str, Any]]):
    """Whatever mix of values an axis takes, every row's cell has the column's one type (or null)."""
    columns = dataset.Columns.from_axes(axes)
    python = {"bool": bool, "int64": int, "float64": float, "string": str}
    job = {
        "key": "k",
        "prompt": "p",
        "prompt_id": "p",
        "model": "m",
        "endpoint": "e",
        "seed": 1,
        "input": {},
        "tags": [],
    }
    for axis_values in axes:
        row = columns.row({**job, "axes": axis_values}, {"path": "data/x.png"}, 0, "emulator")
        assert row["seed"] == 1  # an axis named like a fixed column gets its own prefixed column
        for _, column, dtype in columns.axes:
            assert row[column] is None or type(row[column]) is python[dtype]


def _rows_from_state(run_dir: Path) -> list[dict[str, Any]]:
    with dataset.reading(run_dir) as (_, rows):
        return [row for row, _ in rows]


def _canonical(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def test_a_resumed_run_appends_its_rows_and_the_card_counts_them(tmp_path: Path):
    """A run that finishes a trial's plan appends its rows (the trial's bytes stay as they were); the file then
    holds exactly the state's rows, each once, and the card counts them; a no-op rerun leaves both alone."""
    m = write_manifest(tmp_path, seeds=list(range(1, 13)))
    base = ("run", str(m), "--output", str(tmp_path / "out"), "--quiet")
    run_dir = tmp_path / "out/t"
    data = run_dir / "data"
    with background_emulator(service=ServiceTime("fixed", 0.01)) as emu:
        assert cli(*base, "--provider", emu.url, "--max-jobs", "5", env={"FAL_KEY": "k"})[0] == 0
        first = (data / "metadata.jsonl").read_bytes()
        inode = (data / "metadata.jsonl").stat().st_ino
        assert len(first.splitlines()) == 5
        assert cli(*base, "--provider", emu.url, env={"FAL_KEY": "k"})[0] == 0
        second = (data / "metadata.jsonl").read_bytes()
        assert second.startswith(first) and len(second.splitlines()) == 12
        assert (
            data / "metadata.jsonl"
        ).stat().st_ino == inode  # appended to, not replaced by a rewrite
        assert _canonical(_metadata(data)) == _canonical(_rows_from_state(run_dir))
        card = (data / "README.md").read_text()
        assert "12 images rendered" in card and "| 12 |" in card
        stamp = (data / "metadata.jsonl").stat().st_mtime_ns
        assert cli(*base, "--provider", emu.url, env={"FAL_KEY": "k"})[0] == 0
        assert (data / "metadata.jsonl").stat().st_mtime_ns == stamp


def test_a_metadata_file_that_is_not_the_recorded_one_is_rewritten_whole(tmp_path: Path):
    """metadata.jsonl cut short (a kill mid-append, an edit) no longer matches the state's record: the next run
    rewrites it whole from the state, in plan order, every row once."""
    m = write_manifest(tmp_path, seeds=list(range(1, 9)))
    base = ("run", str(m), "--output", str(tmp_path / "out"), "--quiet")
    run_dir = tmp_path / "out/t"
    path = run_dir / "data/metadata.jsonl"
    with background_emulator(service=ServiceTime("fixed", 0.01)) as emu:
        assert cli(*base, "--provider", emu.url, "--max-jobs", "4", env={"FAL_KEY": "k"})[0] == 0
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:-1]))  # one row lost
        assert cli(*base, "--provider", emu.url, env={"FAL_KEY": "k"})[0] == 0
    assert [json.dumps(r, sort_keys=True) for r in _metadata(run_dir / "data")] == [
        json.dumps(r, sort_keys=True) for r in _rows_from_state(run_dir)
    ]
    assert len(_metadata(run_dir / "data")) == 8


def test_two_runs_load_as_two_datasets_from_one_cache(tmp_path: Path):
    """`load_dataset(RUN/data)` on two runs with the same columns, one cache: each gets its own rows."""
    datasets = pytest.importorskip("datasets")
    cache = str(tmp_path / "cache")
    loaded = {}
    for name, seeds in (("a", [1, 2]), ("b", [1, 2, 3])):
        folder = tmp_path / name
        folder.mkdir()
        m = write_manifest(folder, name=name, seeds=seeds, output=str(tmp_path / "out"))
        assert cli("run", str(m))[0] == 0
        loaded[name] = datasets.load_dataset(str(tmp_path / "out" / name / "data"), cache_dir=cache)
    assert loaded["a"]["train"].num_rows == 2
    assert loaded["b"]["train"].num_rows == 3
    assert set(loaded["b"]["train"]["seed"]) == {1, 2, 3}


def test_each_template_variable_is_a_column(tmp_path: Path):
    """metadata.jsonl has one column per template variable, zip key and alternation, beside the
    resolved prompt that was sent; the card lists them as swept axes."""
    m = write_manifest(
        tmp_path,
        vars={"color": ["red", "blue"]},
        prompts=[{"id": "pet", "text": "a {color} {subject}, {matte|glossy}"}],
        models=["fal-ai/hidream-i1-fast"],
        zip=[{"subject": ["cat", "dog", "owl"], "negative_prompt": ["dogs", "cats", "hawks"]}],
        output=str(tmp_path / "out"),
    )
    with background_emulator(service=ServiceTime("fixed", 0.0)) as emu:
        code, _, err = cli("run", str(m), "--provider", emu.url, "--quiet", env={"FAL_KEY": "k"})
    assert code == 0, err
    data = tmp_path / "out/t/data"
    rows = _metadata(data)
    assert len(rows) == 2 * 3 * 2
    for r in rows:
        assert r["prompt"] == f"a {r['color']} {r['subject']}, {r['alt1']}"
        assert {"cat": "dogs", "dog": "cats", "owl": "hawks"}[r["subject"]] == r["negative_prompt"]
        assert json.loads(r["input"])["negative_prompt"] == r["negative_prompt"]
    assert {(r["color"], r["subject"], r["alt1"]) for r in rows} == {
        (c, s, f)
        for c in ("red", "blue")
        for s in ("cat", "dog", "owl")
        for f in ("matte", "glossy")
    }
    card = (data / "README.md").read_text()
    assert all(f"`{column}` (string)" in card for column in ("color", "subject", "alt1"))


def _caption_run(folder: Path) -> Path:
    """A caption file keeping three columns (the second row lacks its license) beside an inline prompt: run
    on the built-in emulator. Returns the run directory."""
    rows = [
        {"caption": "a red fox", "source_url": "https://x/0", "license": "cc0", "original_id": 0},
        {"caption": "a heron", "source_url": "https://x/1", "original_id": 1},
        {"caption": "an owl", "source_url": "https://x/2", "license": "cc-by", "original_id": 2},
    ]
    (folder / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = write_manifest(
        folder,
        output=str(folder / "out"),
        prompts=[
            {"id": "cat", "text": "a cat"},
            {
                "file": "c.jsonl",
                "text": "caption",
                "keep": ["source_url", "license", "original_id"],
            },
        ],
    )
    code, _, err = cli("run", str(m), "--quiet")
    assert code == 0, err
    return folder / "out/t"


def test_kept_columns_are_dataset_columns(tmp_path: Path):
    """A caption set's kept columns are columns of every metadata row (null where a row has none), typed in
    the card, and `datasets` loads them aligned with each image's caption, as ImageFolder and via the card."""
    run_dir = _caption_run(tmp_path)
    data = run_dir / "data"
    rows = _metadata(data)
    assert [list(r)[-3:] for r in rows] == [["source_url", "license", "original_id"]] * 4
    by_prompt = {r["prompt"]: (r["source_url"], r["license"], r["original_id"]) for r in rows}
    assert by_prompt == {
        "a cat": (None, None, None),
        "a red fox": ("https://x/0", "cc0", 0),
        "a heron": ("https://x/1", None, 1),
        "an owl": ("https://x/2", "cc-by", 2),
    }
    card = (data / "README.md").read_text()
    assert '  - name: "original_id"\n    dtype: int64' in card
    assert "`source_url` (string), `license` (string), `original_id` (int64)" in card
    assert _canonical(rows) == _canonical(_rows_from_state(run_dir))  # export reads the same rows
    datasets = pytest.importorskip("datasets")
    for loaded in (
        datasets.load_dataset(str(data), cache_dir=str(tmp_path / "c1")),
        datasets.load_dataset("imagefolder", data_dir=str(data), cache_dir=str(tmp_path / "c2")),
    ):
        train = loaded["train"]
        assert str(train.features["original_id"].dtype) == "int64"
        assert str(train.features["source_url"].dtype) == "string"
        got = {r["prompt"]: (r["source_url"], r["license"], r["original_id"]) for r in train}
        assert got == by_prompt
        raw = train.cast_column("image", datasets.Image(decode=False))
        for record in raw:  # each image is the one rendered for its row's caption
            source = next(r for r in rows if r["prompt"] == record["prompt"])
            image = record["image"]
            blob = image["bytes"] or Path(image["path"]).read_bytes()
            assert hashlib.sha256(blob).hexdigest() == source["sha256"]


def test_adding_or_editing_kept_columns_renders_nothing_again(tmp_path: Path):
    """`keep:` added to a finished run, then a kept value edited: each rerun writes no image, and
    metadata.jsonl's rows then hold the file's current values."""
    (tmp_path / "c.csv").write_text("caption,license\na red fox,cc0\na heron,cc-by\n")
    entry: dict[str, Any] = {"file": "c.csv", "text": "caption"}
    m = write_manifest(tmp_path, output=str(tmp_path / "out"), prompts=[entry], seeds=[1, 2])
    data = tmp_path / "out/t/data"
    assert cli("run", str(m), "--quiet")[0] == 0
    images = {p: p.stat().st_mtime_ns for p in _images(data)}
    write_manifest(
        tmp_path,
        output=str(tmp_path / "out"),
        prompts=[{**entry, "keep": ["license"]}],
        seeds=[1, 2],
    )
    for licenses in (("cc0", "cc-by"), ("cc0", "mit")):
        (tmp_path / "c.csv").write_text(
            f"caption,license\na red fox,{licenses[0]}\na heron,{licenses[1]}\n"
        )
        code, out, err = cli("run", str(m))
        assert code == 0 and "0 images written" in out, err
        rows = _metadata(data)
        assert sorted((r["prompt"], r["license"]) for r in rows) == sorted(
            [("a red fox", licenses[0]), ("a heron", licenses[1])] * 2
        )
    assert {p: p.stat().st_mtime_ns for p in _images(data)} == images
