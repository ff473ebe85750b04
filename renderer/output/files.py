"""Files on disk: verified images, atomic writes, sidecars, and the dataset export.

Invariants:
  * A final path only ever holds a complete, verified image: bytes go to a hidden temporary
    file in the same directory, are fsynced, then renamed into place.
  * The extension comes from the decoded image, never from a URL or a server-given name.
  * Files get the mode the umask allows (0666 & ~umask), like any other program's files: a
    team drive or a web server must be able to read them (mkstemp's 0600 did not allow that).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import os
import secrets
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FORMATS = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
}
PART_SUFFIX = ".part"
_PILLOW_FORMATS = tuple(FORMATS)  # Pillow's names of the formats a download may be


class BadImage(ValueError):
    """Downloaded bytes that are not the image they claim to be."""


@dataclass(frozen=True)
class Verified:
    data: bytes
    ext: str
    content_type: str
    width: int
    height: int
    sha256: str


MAX_PIXELS = 64 * 1024 * 1024  # a bigger image would need gigabytes to decode; no model makes one
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks_intact(data: bytes) -> None:
    """Every chunk of a PNG whole and matching its CRC, up to IEND (BadImage otherwise).

    What Pillow's `verify()` checks (the chunks' CRCs through IEND; a file that ends first is
    truncated), without a second parse of the file: verify leaves its image unusable, so with it
    every download was opened and parsed twice.
    """
    view = memoryview(data)
    end, at = len(data), len(PNG_SIGNATURE)
    while True:
        if at + 12 > end:
            raise BadImage("not a decodable image: truncated PNG file (no IEND chunk)")
        length = int.from_bytes(view[at : at + 4], "big")
        body_end = at + 8 + length  # type (4 bytes) and data, then the 4-byte CRC
        if length > 0x7FFFFFFF or body_end + 4 > end:
            raise BadImage("not a decodable image: truncated PNG file (a chunk runs past the end)")
        crc = int.from_bytes(view[body_end : body_end + 4], "big")
        if zlib.crc32(view[at + 4 : body_end]) != crc:
            kind = bytes(view[at + 4 : at + 8]).decode("latin-1")
            raise BadImage(f"not a decodable image: broken PNG chunk {kind!r} (CRC mismatch)")
        if data[at + 4 : at + 8] == b"IEND":
            return
        at = body_end + 4


def verify_image(
    data: bytes, declared_type: str = "", expected_size: int | None = None
) -> Verified:
    """The download checked: one open and a full decode (catches truncation), the format one of
    FORMATS, the pixel count capped, and for a PNG every chunk's CRC (png_chunks_intact)."""
    return decode_image(open_image(data, declared_type, expected_size))


# Pixels from which an image's check is worth a worker thread (deliver.verify_download): a
# full-size picture takes 5-25 ms to decode (1024x768: JPEG ~5 ms, PNG ~12 ms, WebP ~20 ms
# here), which on the event loop would hold back every other job's requests; a thumbnail's
# decode costs less than the hand-off. Bytes from which the whole check goes there, header too.
DECODE_IN_THREAD = 256 * 256
DECODE_IN_THREAD_BYTES = 256 * 1024
# Held around the bomb-warning filter below: warnings.catch_warnings swaps the process's filter
# list, and two checks interleaving (the loop's and a decode thread's) could leave it swapped.
_FILTERING = threading.Lock()


@dataclass(frozen=True)
class Opened:
    """An image whose header passed open_image's checks; decode_image finishes the check."""

    data: bytes
    image: Any  # a PIL image opened on the bytes, not yet decoded
    ext: str
    content_type: str
    width: int
    height: int


def open_image(data: bytes, declared_type: str = "", expected_size: int | None = None) -> Opened:
    """The cheap half of verify_image: the announced size, the header's format and pixel count
    (before anything is decoded), the declared type. Pillow's decompression-bomb warning is made
    an error for the header's parse, under _FILTERING (the filters are the process's)."""
    if expected_size is not None and len(data) != expected_size:
        raise BadImage(f"{len(data)} bytes received, {expected_size} announced")
    # Imported here: the Python API and the tools import this module, and only a run that
    # receives images needs Pillow (~60 ms at start-up otherwise).
    from PIL import Image, UnidentifiedImageError

    try:
        with _FILTERING, warnings.catch_warnings():
            # Pillow warns (and past 2x raises) for decompression bombs: both are a bad image here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Only the accepted formats' parsers see the bytes: a hostile host's file is never
            # parsed as EPS, PSD or any other format Pillow knows but no model returns.
            image = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"refused a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:  # (Pillow's text names only a BytesIO's address)
        raise BadImage("not a decodable image: not PNG, JPEG or WebP, the formats taken") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"not a decodable image: {exc}") from exc
    (width, height), known = image.size, FORMATS.get(image.format or "")
    if width * height > MAX_PIXELS:
        problem = (
            f"{width}x{height} pixels is over the {MAX_PIXELS}-pixel cap (a decompression bomb?)"
        )
    elif known is None:
        problem = f"unsupported image format {image.format}"
    elif declared_type.startswith("image/") and declared_type not in (known[1], "image/jpg"):
        problem = f"declared {declared_type} but the bytes are {known[1]}"
    else:
        return Opened(data, image, known[0], known[1], width, height)
    image.close()
    raise BadImage(problem)


def decode_image(opened: Opened) -> Verified:
    """The costly half of verify_image: for a PNG its chunks' checksums, then the full decode
    (catches truncation and damaged compressed data) and the SHA-256. Pillow's decoders, zlib
    and hashlib release the GIL for large inputs."""
    try:
        with opened.image as image:
            if opened.ext == "png":
                png_chunks_intact(opened.data)  # structure and checksums, before any decoding
            image.load()
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"not a decodable image: {exc}") from exc
    digest = hashlib.sha256(opened.data).hexdigest()
    return Verified(
        opened.data, opened.ext, opened.content_type, opened.width, opened.height, digest
    )


def write_atomic(
    path: Path | str, data: bytes, *, durable: bool = True, parents: bool = True
) -> os.stat_result:
    """Write bytes so that `path` is either absent, the old file, or the complete new file.

    The data is fsynced before the rename; the directory is not. After a power cut the rename
    may be undone, and a rerun notices the missing file (size/mtime check) and fetches it again.
    `parents`: create missing folders. Returns the file's stat (its mtime is the one the rename keeps).
    """
    fd, tmp, stat = write_open(path, data, parents=parents)
    try:
        if durable:
            fsync_close(fd)
        else:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return stat


def write_open(
    path: Path | str, data: bytes, *, parents: bool = True
) -> tuple[int, str, os.stat_result]:
    """The bytes in a new temporary file beside `path`, left open: (fd, temporary name, its stat).

    The first half of an atomic write: the caller closes the fd (fsynced or not), then renames
    the file into place (`os.replace`) or, on any failure, unlinks it. A rename keeps the inode,
    so the stat's size and mtime are those of the final file.
    """
    fd, tmp = open_temporary(path, parents=parents)
    try:
        # Straight to the descriptor: a file object would add an fstat, an lseek and an isatty
        # ioctl per file, a measurable share of a small image's cost.
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return fd, tmp, os.fstat(fd)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_close(fd: int) -> None:
    """fsync then close a descriptor (closed even when the fsync fails)."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingFsync:
    """A written file's descriptor, closed exactly once: fsynced and closed by a GroupFsync thread
    (`run`), or closed by its writer that gave up first (`abandon`: cancelled, a deadline, the
    loop ending while the group still waits for the disk, when the thread may never get to it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._taken = False

    def _take(self) -> bool:
        with self._lock:
            taken, self._taken = self._taken, True
        return not taken

    def run(self) -> None:
        """In the group's thread: fsync and close, unless the writer abandoned it (then nothing)."""
        if self._take():
            fsync_close(self.fd)

    def abandon(self) -> None:
        """On the writer's side after a failure: close it now, unless a thread has it (it closes it)."""
        if self._take():
            os.close(self.fd)


class GroupFsync:
    """fsyncs (or other blocking file work) for many files at once, off the event loop: group commit for images.

    Callers hand in work (`write`: fsync and close one file's descriptor); the work waiting
    when a group starts runs in one thread, or for a backlog in up to THREADS (see _drain), and
    each caller resumes with its own result (or exception) once its work is done. Keep the work
    to the call that blocks: every other call a thread makes takes the GIL back from the loop.
    """

    THREADS = 4
    PER_THREAD = 8
    LOOP_WRITE_MAX = 1 << 20  # bytes: larger files are written whole in a thread (see write)

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._draining = False
        self._task: asyncio.Future[None] | None = None
        self.groups = 0  # for the benchmark: how many groups the files came in

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` in one of the group's threads; returns what it returns, raises what it raises."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((work, future))
        if not self._draining:
            self._draining = True
            self._task = asyncio.ensure_future(self._drain())
        return await future

    async def write(self, path: Path | str, data: bytes) -> os.stat_result:
        """write_atomic (durable), with only the part that waits for the disk off the loop.

        A small file is written on the loop and only its fsync goes to the group's thread: a
        thread that made every call of a write (create, write, close, rename) took the GIL back
        after each (75 futex calls a job; 10 with the fsync alone; the client's CPU per job fell
        by a sixth). A large one is written whole in the thread, so the loop never waits on the
        kernel's dirty-page throttling for megabytes.
        """
        if len(data) > self.LOOP_WRITE_MAX:
            return await self.run(lambda: write_atomic(path, data))
        fd, tmp, stat = write_open(path, data)
        pending = PendingFsync(fd)
        try:
            await self.run(pending.run)
            os.replace(tmp, path)
        except BaseException:
            pending.abandon()
            # A thread may still hold the descriptor (Windows refuses the unlink then): the
            # leftover is a PART_SUFFIX file, removed by the next run (remove_partials).
            with suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
            raise
        return stat

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                self.groups += 1
                # A thread per PER_THREAD files, up to THREADS: a group of a few files (the usual
                # case at a few hundred images a second) takes one thread, so the loop and the
                # threads do not trade the GIL per file; a backlog (a slow disk) spreads out, so
                # its fsyncs overlap and the file system merges their journal commits.
                n = min(self.THREADS, -(-len(group) // self.PER_THREAD))
                parts = [group[i::n] for i in range(n)]
                done = await asyncio.gather(
                    *(asyncio.to_thread(_run_all, [w for w, _ in part]) for part in parts)
                )
                for part, outcomes in zip(parts, done, strict=True):
                    for (_, future), (ok, value) in zip(part, outcomes, strict=True):
                        if future.done():  # its caller was cancelled
                            continue
                        if ok:
                            future.set_result(value)
                        else:
                            future.set_exception(value)
        finally:
            self._draining = False


def _run_all(works: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    """Each work in turn (in a thread): (True, result) or (False, its exception)."""
    outcomes: list[tuple[bool, Any]] = []
    for work in works:
        try:
            outcomes.append((True, work()))
        except Exception as exc:  # handed to that caller alone
            outcomes.append((False, exc))
    return outcomes


# Temporary names: this process's random tag and a counter (uniqueness without a getrandom
# call per file; O_EXCL still guards against any clash, e.g. after a fork).
_TAG = secrets.token_hex(4)
_SERIAL = itertools.count()


class _Folders:
    """Folders this process made or found, so each costs one mkdir, not a failing open per file.

    Bounded (forgotten wholesale past `CAP`: jobs come in plan order, so a folder's files come
    together and forgetting costs one mkdir of an existing folder). A folder removed meanwhile
    is still found missing by the open, and made again (open_temporary). Folders are strings:
    pathlib's joins and parses were a measurable share of a small image's cost.
    """

    CAP = 4096

    def __init__(self) -> None:
        self.known: set[str] = set()

    def ensure(self, folder: str) -> None:
        if folder in self.known:
            return
        make_folder(folder)
        if len(self.known) >= self.CAP:
            self.known.clear()
        self.known.add(folder)

    def forget(self, folder: str) -> None:
        self.known.discard(folder)


FOLDERS = _Folders()


def make_folder(folder: str) -> None:
    """`Path(folder).mkdir(parents=True, exist_ok=True)`: one mkdir when the parent exists (the
    usual case: a new prompt's folder), FileExistsError when something else than a folder is there."""
    try:
        os.mkdir(folder)
    except FileExistsError:
        if not os.path.isdir(folder):
            raise
    except FileNotFoundError:
        Path(folder).mkdir(parents=True, exist_ok=True)


def open_temporary(path: Path | str, *, parents: bool = True) -> tuple[int, str]:
    """A new hidden temporary file beside `path` (same file system, so a rename is atomic).

    Created with O_EXCL and mode 0666, so the kernel applies the process umask (mkstemp would
    force 0600). The name ends in PART_SUFFIX, which is how `remove_partials` finds leftovers.
    `parents`: a missing folder is created, once per folder per process (FOLDERS): a new
    folder costs one mkdir and no failing open; a known one, nothing.
    """
    folder, name = os.path.split(os.fspath(path))
    folder = folder or "."
    if parents:
        FOLDERS.ensure(folder)
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_BINARY", 0)
        | getattr(os, "O_CLOEXEC", 0)
    )
    while True:
        tmp = os.path.join(folder, f".{name}.{_TAG}{next(_SERIAL):x}{PART_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # another process's leftover with the same name: never overwrite it
            continue
        except FileNotFoundError:
            FOLDERS.forget(folder)
            if not parents:
                raise
            make_folder(folder)  # removed since it was made: again
            parents = False  # once: a folder removed again at once is an error worth raising


@contextmanager
def atomic_stream(path: Path, mode: str = "wb") -> Iterator[Any]:
    """A file object whose contents appear at `path` whole, or not at all.

    On a clean exit the temporary file is flushed, fsynced and renamed over `path`; on any
    exception (a kill leaves a PART_SUFFIX file for `remove_partials`) it is removed.
    """
    fd, tmp = open_temporary(path)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The C encoder (indent= falls back to the pure-Python one, which cost more per sidecar than
# writing it did: bench/README.md section 3).
_ONE_LINE = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))
_quote = (
    json.encoder.encode_basestring
)  # the C function the encoder uses for strings (ensure_ascii=False)


_SCALARS = {None: "null", True: "true", False: "false"}


def _json_value(value: Any) -> str:
    # Strings and integers directly by the C string encoder and int's repr (what the encoder
    # itself writes); containers, floats and the rest through the encoder.
    kind = type(value)
    if kind is str:
        return _quote(value)
    if kind is int:
        return int.__repr__(value)
    if value is None or kind is bool:
        return _SCALARS[value]
    return _ONE_LINE.encode(value)


def json_text(value: dict[str, Any]) -> str:
    """An object as JSON with one top-level key per line and each value on its line: readable, cheap."""
    return (
        "{\n"
        + ",\n".join(f"  {_quote(str(k))}: {_json_value(v)}" for k, v in value.items())
        + "\n}\n"
    )


def write_json(path: Path, data: Any, *, durable: bool = True) -> os.stat_result:
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    return write_atomic(path, text.encode(), durable=durable)


def remove_partials(run_dir: Path, folders: Iterable[Path] | None = None) -> int:
    """Temporary files left by a process that was killed mid-write.

    `folders` limits the search (the folders of unfinished jobs: a finished job's files were
    all renamed into place before it was recorded as finished); None searches the whole run.
    """
    found = 0
    places = [run_dir] if folders is None else sorted(set(folders))
    for folder in places:
        pattern = folder.rglob if folders is None else folder.glob
        for part in pattern(f".*{PART_SUFFIX}"):
            part.unlink(missing_ok=True)
            found += 1
    return found


def file_intact(run_dir: Path, entry: dict[str, Any], *, rehash: bool) -> bool:
    """Is a recorded file still there, unchanged? Size and mtime by default; the hash with rehash."""
    path = os.path.join(
        run_dir, entry["path"]
    )  # plain strings: this runs once per file on every rerun
    try:
        stat = os.stat(path)
    except OSError:
        return False
    if stat.st_size != entry["size"]:
        return False
    if rehash:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest() == entry["sha256"]
    return stat.st_mtime_ns == entry["mtime_ns"]
