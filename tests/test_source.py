"""Every tool reads every backend: a distributed run (PostgreSQL state, images in a bucket) read
from a machine that never ran a worker gives what the same run gives on local disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from renderer.output.source import open_source
from renderer.output.storage import open_storage
from renderer.provider.emulator import ServiceTime

from .conftest import background_emulator, cli, write_manifest

FAST = ServiceTime("fixed", 0.01)


def _parquet_rows(folder: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows = []
    for shard in sorted(folder.glob("*.parquet")):
        # Each run has its own request ids; everything else (image bytes included) is the run's.
        rows.extend({**r, "request_id": None} for r in pq.read_table(shard).to_pylist())
    return sorted(rows, key=lambda r: (r["job_key"], r["image_index"]))


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    return {k: status[k] for k in ("counts", "rerun", "missing_on_disk", "failures")}


def test_tools_read_a_distributed_run_from_a_fresh_machine_as_a_local_one(
    tmp_path: Path,
    postgres_url: str,
    s3: tuple[Any, str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """report, export --format parquet, diff, status and open_run with only --state and the AWS variables: the local run's answers; the worker wrote nothing in its working directory."""
    from renderer import api

    _server, url, aws = s3
    (tmp_path / "local").mkdir()
    worker, fresh = tmp_path / "worker", tmp_path / "fresh"
    worker.mkdir()
    fresh.mkdir()
    manifest = write_manifest(
        tmp_path,
        seeds=[1, 2],
        prompts=[{"id": "cat", "text": "a cat"}, {"id": "dog", "text": "a dog"}],
    )
    with background_emulator(service=FAST) as emu:
        local_out = tmp_path / "local" / "o"
        code, _out, err = cli(
            "run",
            str(manifest),
            "--provider",
            emu.url,
            "--output",
            str(local_out),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
        assert code == 0, err
        monkeypatch.chdir(worker)
        code, out, err = cli(
            "run",
            str(manifest),
            "--provider",
            emu.url,
            "--state",
            postgres_url,
            "--output",
            url,
            env={"FAL_KEY": "k", **aws},
        )
        assert code == 0, err
    run_url = f"{url}/t"
    assert f"→ {run_url}/" in out  # the summary points at the bucket...
    assert list(worker.iterdir()) == []  # ...and nothing was written here
    storage = open_storage(url, "t", aws)
    assert storage.read("run.json") and storage.read("data/metadata.jsonl")
    local = local_out / "t"

    monkeypatch.chdir(fresh)
    state = ("--state", postgres_url)
    # status: the same counts and plan for a rerun; finished workers apart from live ones.
    code, out, err = cli("status", str(local), "--json")
    assert code == 0, err
    want = json.loads(out)
    # (also named by its manifest, whose state: and output: say where the run is)
    import yaml

    described = fresh / "m.yaml"
    described.write_text(
        yaml.safe_dump(
            {**yaml.safe_load(manifest.read_text()), "state": postgres_url, "output": url}
        )
    )
    for named, given in ((run_url, state), ("outputs/t", state), (str(described), ())):
        code, out, err = cli("status", named, *given, "--json", env=aws)
        assert code == 0, err
        got = json.loads(out)
        assert _comparable(got) == _comparable(want)
        assert [w["state"] for w in got["workers"]] == ["finished"]
    # export: the same rows, the same image bytes.
    code, _out, err = cli("export", str(local), "--format", "parquet", "--out", str(fresh / "pl"))
    assert code == 0, err
    code, _out, err = cli(
        "export", run_url, *state, "--format", "parquet", "--out", str(fresh / "pd"), env=aws
    )
    assert code == 0, err
    assert _parquet_rows(fresh / "pd") == _parquet_rows(fresh / "pl") != []
    # export into the bucket: the same shards and card, nothing written here.
    before = sorted(p.relative_to(fresh) for p in fresh.rglob("*"))
    code, out, err = cli(
        "export", run_url, *state, "--format", "parquet", "--out", f"{url}/exports/pq/", env=aws
    )
    assert code == 0, err
    assert f"→ {url}/exports/pq/" in out
    assert sorted(p.relative_to(fresh) for p in fresh.rglob("*")) == before
    exports = open_storage(url, "exports", aws)
    names = exports.names("pq")
    assert "README.md" in names
    (fresh / "from-bucket").mkdir()
    for name in names:
        (fresh / "from-bucket" / name).write_bytes(exports.read(f"pq/{name}") or b"")
    assert _parquet_rows(fresh / "from-bucket") == _parquet_rows(fresh / "pl")
    # A second export with smaller shards replaces the first's in the bucket.
    code, out, err = cli(
        "export", run_url, *state, "--format", "webdataset", "--shard-size", "1",
        "--out", f"{url}/exports/pq", env=aws,
    )  # fmt: skip
    assert code == 0, err
    tars = {n for n in exports.names("pq") if n.endswith(".tar")}
    assert len(tars) == 4 and "train-00000-of-00004.tar" in tars
    code, out, err = cli(
        "export", run_url, *state, "--format", "webdataset", "--shard-size", "2",
        "--out", f"{url}/exports/pq", env=aws,
    )  # fmt: skip
    assert code == 0, err
    assert {n for n in exports.names("pq") if n.endswith(".tar")} == {
        "train-00000-of-00002.tar",
        "train-00001-of-00002.tar",
    }
    # diff: the distributed run against the local one: every pair passes (the same pictures, exit 0).
    page = fresh / "diff" / "ab.html"
    page.parent.mkdir()
    code, out, err = cli(
        "diff", run_url, str(local), "--state-a", postgres_url, "--json", "--html", str(page),
        env=aws,
    )  # fmt: skip
    assert code == 0, err + out
    # the page's pictures: A's from the bucket, B's from disk; the same bytes share one thumbnail
    assert page.is_file() and len(list((fresh / "diff/ab-images").glob("*.jpg"))) == 4
    counts = json.loads(out)["counts"]
    assert (counts["pairs"], counts["pass"], counts["only_in_a"], counts["only_in_b"]) == (
        4,
        4,
        0,
        0,
    )
    # report: the same cells and pages, its thumbnails made from the bucket's images.
    code, out, err = cli("report", str(local))
    assert code == 0, err
    code, out_d, err = cli("report", run_url, *state, env=aws)
    assert code == 0, err
    # pages, cells, thumbnails made
    assert out_d.splitlines()[0].split("(", 1)[1] == out.splitlines()[0].split("(", 1)[1]
    assert len(list((fresh / "outputs/t/report/thumbs").glob("*/*.jpg"))) == 4
    # open_run: the same rows.
    run = api.open_run(run_url, state=postgres_url, env=aws)
    run_local = api.open_run(local)

    def rows(r: api.Run) -> list[dict[str, Any]]:
        skip = ("path", "request_id")
        return sorted(({k: v for k, v in row.items() if k not in skip} for row in r), key=str)

    assert rows(run) == rows(run_local) and len(run) == 4
    assert all(str(row["path"]).startswith(run_url + "/data/") for row in run)
    # status checks the bucket: an image removed from it is missing.
    import obstore

    gone = next(iter(run))["file_name"]
    obstore.delete(storage.store, gone if gone.startswith("data/") else f"data/{gone}")  # type: ignore[attr-defined]
    code, out, err = cli("status", run_url, *state, "--json", env=aws)
    assert code == 0, err
    assert len(json.loads(out)["missing_on_disk"]) == 1
    code, out, err = cli("status", run_url, *state, env=aws)
    assert "missing or changed in the bucket" in out


def test_a_bucket_run_without_its_state_is_a_usage_error(
    tmp_path: Path, s3: tuple[Any, str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Naming a bucket folder without --state (and no SQLite state here) says what to give, exit 2."""
    _server, url, aws = s3
    monkeypatch.chdir(tmp_path)
    code, _out, err = cli("report", f"{url}/t", env=aws)
    assert code == 2 and "no run here" in err and "--state" in err
    with pytest.raises(Exception, match="no run here"):
        open_source(f"{url}/t", None, aws)
