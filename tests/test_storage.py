"""Outputs on a local disk or an S3-compatible bucket (a real SeaweedFS server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from renderer.errors import UsageError
from renderer.output.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    StorageConflict,
    open_storage,
    parse_s3,
)

from .conftest import cli, write_manifest


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def entry_for(rel: str, data: bytes, mtime: int | None) -> dict[str, Any]:
    return {
        "path": rel,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "mtime_ns": mtime,
    }


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend in turn: the same relative paths, the same guarantees."""
    if request.param == "local":
        return LocalStorage(tmp_path / "run")
    _server, url, env = request.getfixturevalue("s3")
    return open_storage(url, "run", env)


def test_image_round_trip_and_intact(storage: Storage) -> None:
    """An image written once is reported intact; a recorded image that is absent is not."""
    data = png((10, 20, 30))
    rel = "data/model/cat/s1-0.png"
    mtime = storage.put_image(
        rel, data, sha256=hashlib.sha256(data).hexdigest(), content_type="image/png"
    ).mtime_ns
    assert storage.intact(entry_for(rel, data, mtime), rehash=False)
    assert storage.intact(entry_for(rel, data, mtime), rehash=True)
    assert not storage.intact(entry_for("data/model/cat/s2-0.png", data, mtime), rehash=False)
    wrong_size = {**entry_for(rel, data, mtime), "size": len(data) + 1}
    assert not storage.intact(wrong_size, rehash=False)


def test_same_bytes_twice_is_done(storage: Storage) -> None:
    """Writing the same image again (a worker that died before its commit) succeeds and changes nothing."""
    data = png((1, 2, 3))
    digest = hashlib.sha256(data).hexdigest()
    assert not storage.put_image(
        "data/a/s1-0.png", data, sha256=digest, content_type="image/png"
    ).existed
    again = storage.put_image("data/a/s1-0.png", data, sha256=digest, content_type="image/png")
    assert again.existed == storage.remote  # a bucket says so (a lost state's duplicate is counted)
    assert (
        storage.intact(entry_for("data/a/s1-0.png", data, None), rehash=True) or not storage.remote
    )


def test_s3_create_only_refuses_different_bytes(s3: tuple[Any, str, dict[str, str]]) -> None:
    """On S3 a second image with other bytes at the same key is an error naming both hashes; the first stays."""
    _server, url, env = s3
    storage = open_storage(url, "run", env)
    assert isinstance(storage, S3Storage)
    first, second = png((255, 0, 0)), png((0, 0, 255))
    first_sha, second_sha = hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()
    storage.put_image("data/x/s1-0.png", first, sha256=first_sha, content_type="image/png")
    with pytest.raises(StorageConflict) as caught:
        storage.put_image("data/x/s1-0.png", second, sha256=second_sha, content_type="image/png")
    assert first_sha in caught.value.message and second_sha in caught.value.message
    assert f"{url}/run/data/x/s1-0.png" in caught.value.message
    assert storage.get("data/x/s1-0.png") == first


def test_s3_concurrent_create_only_has_one_winner(s3: tuple[Any, str, dict[str, str]]) -> None:
    """8 writers racing for one key with different bytes: exactly one lands, the others get a conflict."""
    _server, url, env = s3
    storage = open_storage(url, "run", env)
    assert isinstance(storage, S3Storage)
    images = [png((i * 10, 0, 0)) for i in range(8)]
    outcomes: list[str] = [""] * len(images)
    barrier = threading.Barrier(len(images))

    def write(i: int) -> None:
        barrier.wait()
        try:
            storage.put_image(
                "data/race/s1-0.png",
                images[i],
                sha256=hashlib.sha256(images[i]).hexdigest(),
                content_type="image/png",
            )
            outcomes[i] = "won"
        except StorageConflict:
            outcomes[i] = "conflict"

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes.count("won") == 1 and outcomes.count("conflict") == len(images) - 1
    assert storage.get("data/race/s1-0.png") == images[outcomes.index("won")]


def test_s3_intact_checks_stored_hash(s3: tuple[Any, str, dict[str, str]]) -> None:
    """A recorded image whose stored sha256 differs from the state's (same size) is not intact."""
    _server, url, env = s3
    storage = open_storage(url, "run", env)
    data = png((5, 5, 5))
    storage.put_image(
        "data/h/s1-0.png", data, sha256=hashlib.sha256(data).hexdigest(), content_type="image/png"
    )
    assert not storage.intact(
        {**entry_for("data/h/s1-0.png", data, None), "sha256": "0" * 64}, rehash=False
    )


@pytest.mark.parametrize("outage", [0.0, 1.5])
def test_s3_unreachable_is_an_outage_error_after_the_window(tmp_path: Path, outage: float) -> None:
    """A bucket that cannot be reached: retried for the outage window, then an OutageError (exit 75) naming the object, never the secret key."""
    import time

    from renderer.errors import OutageError

    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
    }
    storage = open_storage("s3://some-bucket/p", "run", env, outage=outage)
    started = time.monotonic()
    with pytest.raises(OutageError) as caught:
        storage.put_bytes("run.json", b"{}")
    waited = time.monotonic() - started
    assert waited >= outage * 0.5  # it kept trying (retries end within the window)
    assert caught.value.exit_code == 75
    assert "s3://some-bucket/p/run/run.json" in caught.value.message
    assert "s3cr3t-value" not in caught.value.message + (caught.value.hint or "")


@given(
    bucket=st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True),
    parts=st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True), max_size=3),
)
def test_parse_s3_round_trips(bucket: str, parts: list[str]) -> None:
    """Any valid bucket and prefix parse back to themselves, extra slashes ignored."""
    assert parse_s3(f"s3://{bucket}/" + "//".join(parts) + "/") == (bucket, "/".join(parts))


@pytest.mark.parametrize(
    "url", ["gs://bucket/x", "s3://B/x", "s3://ab/x", "s3://bucket/../x", "s3:///x"]
)
def test_parse_s3_rejects(url: str) -> None:
    """Other schemes, invalid bucket names and `..` prefixes are the user's mistake, said plainly."""
    with pytest.raises(UsageError):
        parse_s3(url)


def test_run_to_s3(
    tmp_path: Path, s3: tuple[Any, str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`renderer run --output s3://…`: every image with its sidecar, metadata.jsonl, the card and run.json land in the bucket, none on disk."""
    _server, url, env = s3
    monkeypatch.chdir(tmp_path)
    manifest = write_manifest(tmp_path, seeds=[1, 2, 3])
    code, _out, err = cli("run", str(manifest), "--output", url, "--quiet", env=env)
    assert code == 0, err
    storage = open_storage(url, "t", env)
    assert isinstance(storage, S3Storage)
    rows = [
        json.loads(line)
        for line in (storage.get("data/metadata.jsonl") or b"").decode().splitlines()
    ]
    assert len(rows) == 3
    for row in rows:
        image = storage.get(
            row["file_name"] if row["file_name"].startswith("data/") else "data/" + row["file_name"]
        )
        assert image is not None
        rel = (
            row["file_name"] if row["file_name"].startswith("data/") else "data/" + row["file_name"]
        )
        sidecar = json.loads(storage.get(str(Path(rel).with_suffix(".json"))) or b"null")
        assert sidecar["sha256"] == hashlib.sha256(image).hexdigest()
    assert b"metadata.jsonl" in (storage.get("data/README.md") or b"")
    assert json.loads(storage.get("run.json") or b"{}")["outcome"] == "done"
    assert not list((tmp_path / "outputs" / "t" / "data").rglob("*.png"))
    # A rerun finds every image intact in the bucket and sends nothing.
    code, _out, err = cli("run", str(manifest), "--output", url, "--quiet", "--verify", env=env)
    assert code == 0, err
    assert json.loads(storage.get("run.json") or b"{}")["images_this_run"] == 0


def test_manifest_output_s3_bad_bucket(tmp_path: Path) -> None:
    """`output: s3://…` with an invalid bucket is a manifest error at the field, exit 2, nothing written."""
    manifest = write_manifest(tmp_path, output="s3://Bad_Bucket/x")
    code, _out, err = cli("run", str(manifest))
    assert code == 2
    assert "m.yaml:" in err and "output" in err and "bucket" in err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_run_rides_out_the_object_store_going_away(
    tmp_path: Path, s3: tuple[Any, str, dict[str, str]]
) -> None:
    """SeaweedFS stopped for a few seconds mid-run, then started again: the run waits for it and finishes, every image in the bucket, nothing paid twice."""
    import os
    import subprocess
    import sys
    import threading
    import time

    from renderer.provider.emulator import ServiceTime

    from .conftest import ROOT, background_emulator
    from .servers import start_s3, stop_s3

    server, url, env = s3
    manifest = write_manifest(
        tmp_path,
        prompts=[{"id": f"p{i}", "text": f"a bird {i}"} for i in range(10)],
        seeds=[1, 2, 3],
    )
    with background_emulator(service=ServiceTime("fixed", 0.2), workers=8) as emu:
        proc = subprocess.Popen(
            [sys.executable, "-m", "renderer", "run", str(manifest), "--provider", emu.url,
             "--output", url, "--concurrency", "4"],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT), "FAL_KEY": "k"},
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(1.5)
        stop_s3(server.endpoint)
        outage = threading.Timer(5.0, start_s3, args=(server.endpoint,))
        outage.start()
        try:
            _out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
            pytest.fail(f"the run hung: {err.decode()[-2000:]}")
        finally:
            outage.join(60)
        stats = emu.stats()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert stats["submits"] == 30 and stats["duplicate_submits"] == 0
    storage = open_storage(url, "t", env)
    rows = (storage.read("data/metadata.jsonl") or b"").decode().splitlines()
    assert len(rows) == 30 and json.loads(storage.read("run.json") or b"{}")["outcome"] == "done"
