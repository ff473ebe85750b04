"""Verified images and atomic writes: a final path holds a whole image or nothing."""

from __future__ import annotations

import io
import json
import os
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from renderer.output.files import (
    MAX_PIXELS,
    BadImage,
    decode_image,
    file_intact,
    json_text,
    open_image,
    remove_partials,
    verify_image,
    write_atomic,
)


def _png(size: tuple[int, int] = (8, 4), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, fmt)
    return out.getvalue()


def test_verify_reads_format_size_and_hash():
    """A good image yields its own extension, content type, dimensions and sha256."""
    v = verify_image(_png(), "image/png", None)
    assert (v.ext, v.content_type, v.width, v.height) == ("png", "image/png", 8, 4)
    assert verify_image(_png(fmt="JPEG"), "").ext == "jpg"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "header"])
def test_other_formats_are_refused_unparsed(fmt):
    """A body in a format no model returns is refused, and Pillow's parser for that format never
    runs on it: a damaged TIFF header made Pillow print "Corrupt EXIF data" into the run."""
    data = b"II*\x00\x08\x00\x00\x00" if fmt == "header" else _png((8, 8), fmt)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with pytest.raises(BadImage, match="not PNG, JPEG or WebP, the formats taken"):
            verify_image(data, "")
    assert [str(w.message) for w in said] == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "size", "type"])
def test_verify_rejects_damage(damage):
    """Truncated, flipped, non-image, mis-sized and mis-typed downloads are all rejected."""
    data, declared, expected = _png((64, 64)), "image/png", None
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        middle = len(data) // 2
        data = (
            data[:middle]
            + bytes(b ^ 0xFF for b in data[middle : middle + 16])
            + data[middle + 16 :]
        )
    elif damage == "garbage":
        data = b"<html>not an image</html>"
    elif damage == "size":
        expected = len(data) + 1
    else:
        declared = "image/jpeg"
    with pytest.raises(BadImage):
        verify_image(data, declared, expected)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one byte of image data (never decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        )

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def test_header_checks_refuse_before_anything_is_decoded():
    """open_image refuses an over-cap pixel count and a mis-declared type from the header alone."""
    side = int(MAX_PIXELS**0.5) + 1  # over the cap, under Pillow's own bomb limit
    with pytest.raises(BadImage, match="pixel cap"):
        open_image(_png_header_only(side, side), "image/png")
    with pytest.raises(BadImage, match="declared image/jpeg but the bytes are image/png"):
        open_image(_png_header_only(64, 64), "image/jpeg")
    opened = open_image(_png_header_only(64, 64), "image/png")  # a header is all it reads
    assert (opened.width, opened.height, opened.ext) == (64, 64, "png")
    with pytest.raises(BadImage, match="not a decodable image"):
        decode_image(opened)  # one byte of data for 64x64 pixels: the decode finds it out


def test_the_two_halves_verify_as_one_in_any_thread():
    """decode_image(open_image(b)) is verify_image(b), with the decodes in threads of their own."""
    data = _png((300, 200), fmt="PNG")
    with ThreadPoolExecutor(4) as pool:
        opened = [open_image(data, "image/png") for _ in range(8)]
        results = list(pool.map(decode_image, opened))
    assert set(results) == {verify_image(data, "image/png")}


_DAMAGED = _png((48, 40))  # with a text chunk after the image data below


def _with_text(png: bytes) -> bytes:
    """The PNG with a tEXt chunk inserted before IEND (a chunk only the CRC walk reads)."""
    body = b"tEXtComment\x00made by the test"
    chunk = len(body[4:]).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    return png[:-12] + chunk + png[-12:]


@given(st.data())
def test_verify_rejects_any_changed_byte_or_cut_of_a_png(data: st.DataObject):
    """A PNG with any one byte changed, or cut anywhere, is never accepted as an image."""
    good = _with_text(_DAMAGED)
    assert verify_image(good, "image/png").width == 48
    at = data.draw(st.integers(0, len(good) - 1))
    if data.draw(st.booleans()):
        damaged = good[:at]
    else:
        damaged = good[:at] + bytes([good[at] ^ data.draw(st.integers(1, 255))]) + good[at + 1 :]
    with pytest.raises(BadImage):
        verify_image(damaged, "image/png")


def test_atomic_write_leaves_no_partial_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """If writing fails, neither the final path nor a temporary file remains."""
    target = tmp_path / "a/b.png"

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_partials_are_cleaned_and_intact_files_recognised(tmp_path: Path):
    """Hidden .part files from a killed process are removed; size+mtime or hash say intact."""
    (tmp_path / "x").mkdir()
    (tmp_path / "x/.s1-0.png.abc.part").write_bytes(b"half")
    assert remove_partials(tmp_path) == 1
    stat = write_atomic(tmp_path / "x/s1-0.png", b"12345")
    import hashlib

    entry = {
        "path": "x/s1-0.png",
        "size": 5,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": hashlib.sha256(b"12345").hexdigest(),
    }
    assert file_intact(tmp_path, entry, rehash=False) and file_intact(tmp_path, entry, rehash=True)
    (tmp_path / "x/s1-0.png").write_bytes(b"54321")
    assert not file_intact(tmp_path, entry, rehash=True)
    (tmp_path / "x/s1-0.png").unlink()
    assert not file_intact(tmp_path, entry, rehash=False)


def test_group_fsync_serves_every_caller_in_fewer_groups(tmp_path: Path):
    """fsyncs handed in together run as a group off the loop; each caller gets its own result or its own error."""
    import asyncio

    from renderer.output.files import GroupFsync, fsync_close, write_open

    async def main() -> tuple[int, list[Any]]:
        group = GroupFsync()
        opened = [write_open(tmp_path / f"f{i}.png", b"x" * i) for i in range(40)]
        synced = [group.run(lambda fd=fd: fsync_close(fd)) for fd, _, _ in opened]
        sized = [group.run(lambda i=i: i) for i in range(20)]
        results = await asyncio.gather(
            *synced, group.run(lambda: fsync_close(-1)), *sized, return_exceptions=True
        )
        for _, tmp, _ in opened:
            os.replace(tmp, tmp_path / Path(tmp).name.split(".")[1])
        return group.groups, results

    groups, results = asyncio.run(main())
    assert results[:40] == [None] * 40 and isinstance(results[40], OSError)
    assert results[41:] == list(range(20))  # the failure in the same group reached its caller alone
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"f{i}" for i in range(40))
    assert [(tmp_path / f"f{i}").stat().st_size for i in range(40)] == list(range(40))
    assert groups <= 2  # 61 callers at once: one group (two if the first was already on its way)


@pytest.mark.parametrize(("files", "threads"), [(1, 1), (8, 1), (9, 2), (40, 4), (100, 4)])
def test_a_backlog_of_fsyncs_spreads_over_threads_and_a_few_take_one(files: int, threads: int):
    """A group of up to 8 files runs in one thread (no GIL trading per file); a backlog overlaps its fsyncs in up to 4."""
    import asyncio
    import threading
    import time

    from renderer.output.files import GroupFsync

    # Each thread's first work waits until `threads` threads have arrived: fewer parts than
    # expected time out (an error); more would leave the extra ones waiting (also an error).
    arrived = threading.Barrier(threads, timeout=10)
    seen: set[int] = set()
    lock = threading.Lock()

    def work() -> int:
        me = threading.get_ident()
        with lock:
            first = me not in seen
            seen.add(me)
        if first:
            arrived.wait()
        time.sleep(0.01)  # long enough that parts, if there are more, run side by side
        return me

    async def main() -> list[int]:
        group = GroupFsync()
        done = await asyncio.gather(*(group.run(work) for _ in range(files)))
        assert group.groups == 1
        return done

    assert len(set(asyncio.run(main()))) == threads


def test_temporary_files_get_distinct_names_and_folders_are_made_only_when_missing(tmp_path: Path):
    """Temporary names never repeat (counter, no random draw per file); a missing folder is created, an existing one kept."""
    from renderer.output.files import PART_SUFFIX, open_temporary

    names = set()
    for i in range(200):
        fd, name = open_temporary(tmp_path / "deep/er" / f"{i % 3}.png")
        os.close(fd)
        names.add(name)
        assert name.endswith(PART_SUFFIX) and Path(name).parent == tmp_path / "deep/er"
    assert len(names) == 200
    with pytest.raises(FileNotFoundError):
        open_temporary(tmp_path / "nowhere/x.png", parents=False)
    assert not (tmp_path / "nowhere").exists()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.text(), _JSON, max_size=8))
def test_sidecar_json_reads_back_exactly(value: dict[str, Any]):
    """A sidecar's text (one key per line, made fast) is JSON that reads back as exactly the object written."""
    text = json_text(value)
    assert json.loads(text) == value
    assert len(text.split("\n")) == max(len(value), 1) + 3  # one line per key, between the braces


def test_a_cancelled_writers_descriptor_is_closed_even_when_the_loop_ends_before_its_group(
    tmp_path: Path,
):
    """A write given up (Ctrl-C, a job deadline) while an earlier group is still on a slow disk: its descriptor is
    closed when the run's loop ends, though the thread never got to it; a descriptor the thread took is closed once."""
    import asyncio
    import threading

    from renderer.output.files import GroupFsync, PendingFsync, write_open

    disk = threading.Event()  # the earlier group's fsync, on a slow disk, until set
    opened: dict[str, int] = {}

    async def main() -> None:
        group = GroupFsync()
        earlier = asyncio.ensure_future(group.run(lambda: disk.wait(10)))
        await asyncio.sleep(0.05)  # that group is in its thread now
        fd, tmp, _ = write_open(tmp_path / "a.png", b"image")
        opened["fd"], opened["ino"] = fd, os.fstat(fd).st_ino
        pending = PendingFsync(fd)
        writer = asyncio.ensure_future(group.run(pending.run))
        await asyncio.sleep(0.01)
        writer.cancel()  # as stop() or a deadline does; the runner then abandons it and removes the file
        with pytest.raises(asyncio.CancelledError):
            await writer
        pending.abandon()
        os.unlink(tmp)
        earlier.cancel()
        threading.Timer(0.3, disk.set).start()
        # main returns: asyncio.run cancels what is left (the group's drain) and waits for its threads

    asyncio.run(main())
    try:
        still = os.fstat(opened["fd"])
    except OSError:
        still = None
    if still is not None and still.st_ino == opened["ino"]:
        os.close(opened["fd"])  # not left to the rest of the suite
        pytest.fail("the descriptor of the cancelled write was never closed")

    fd, tmp, _ = write_open(tmp_path / "b.png", b"image")
    taken = PendingFsync(fd)
    taken.run()  # the thread fsynced and closed it
    taken.abandon()  # a late give-up closes nothing (the number may already be another file's)
    os.replace(tmp, tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes() == b"image"


def test_a_write_given_up_while_the_disk_is_slow_leaves_nothing_behind(tmp_path: Path):
    """GroupFsync.write cancelled while its fsync waits behind a slow disk: no final file, no temporary file,
    and no descriptor left open once the loop has ended."""
    import asyncio
    import threading

    from renderer.output.files import GroupFsync

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    disk = threading.Event()  # the earlier group's fsync, on a slow disk, until set
    before = open_fds()

    async def main() -> None:
        group = GroupFsync()
        earlier = asyncio.ensure_future(group.run(lambda: disk.wait(10)))
        await asyncio.sleep(0.05)  # that group is in its thread now
        writer = asyncio.ensure_future(group.write(tmp_path / "a.png", b"image"))
        await asyncio.sleep(0.01)
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        earlier.cancel()
        threading.Timer(0.3, disk.set).start()

    asyncio.run(main())
    assert list(tmp_path.iterdir()) == []
    assert open_fds() == before
