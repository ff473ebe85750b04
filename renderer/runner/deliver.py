"""Delivery: a job's result → verified images and sidecars in the output, then its record.

Also what a run publishes beside the images: the dataset (metadata.jsonl, the card) and the
copy of the run's own files to a remote output; and GroupCommit, the one commit shared by the
step changes of every job that reached a step in the same turn of the loop.

Invariants:
  * An image is verified (decoded, its size checked) before it is written, and written whole
    and durable (fsynced, renamed into place) before the store records the job as downloaded:
    a recorded file is always a complete one.
  * A worker that lost its job's lease writes no file (`Store.hold` raises LeaseLost first).
  * Writing errors become a StateError naming the file and what to do (`writing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from renderer.errors import JobRejected, RequestGone, StateError, TransientError
from renderer.layout import DATA_DIR, DB_NAME, RUN_RECORD, SIDECAR_SUFFIX, image_path, job_folder
from renderer.manifest.kept import kept_kinds
from renderer.output import dataset, files, superseded
from renderer.output.storage import LocalStorage, Storage
from renderer.plan.cost import image_cost, price_of
from renderer.plan.jobs import Plan
from renderer.provider.client import Client
from renderer.runner.config import Event, RunConfig
from renderer.runner.record import iso_time
from renderer.state.rows import Row
from renderer.state.store import Store


def check_images(result: Any) -> None:
    """A result's shape before anything stores or reads it: `images` is a non-empty list of objects with a URL."""
    images = result.get("images") if isinstance(result, dict) else None
    if not isinstance(images, list) or not images:
        raise JobRejected(f"result has no images: {str(result)[:200]}")
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            raise JobRejected(
                f"result images[{index}] is a {type(image).__name__}, not an object with a url: "
                f"{str(image)[:100]}"
            )
        if not isinstance(image.get("url"), str):
            raise JobRejected(f"result images[{index}] has no url string: {str(image)[:100]}")


# A 1x1 RGB PNG: what warm_up checks.
TINY_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
    b"\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc``h\x00\x00\x00\x84\x00\x81\xc9u\xee\x92\x00\x00\x00"
    b"\x00IEND\xaeB`\x82"
)


def warm_up() -> None:
    """Pillow imported and its first decode done (files.verify_image of a tiny PNG), once.

    The runner calls it in a thread while its first requests render (runner.after_first_round), so the
    first completions' deliveries do not pay for it on the loop (~15-30 ms of CPU, taken in the
    middle of the first burst of refills otherwise)."""
    files.verify_image(TINY_PNG, "image/png")


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform says), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # (macOS, Windows)
        return max(1, os.cpu_count() or 1)


DECODERS = 8  # at most, threads checking full-size pictures at once (CPU work: one a core)


async def verify_download(
    data: bytes,
    declared: str,
    expected: int | None,
    decoders: Callable[[], ThreadPoolExecutor],
) -> files.Verified:
    """files.verify_image of a download, with the costly part off the event loop.

    A thumbnail is checked on the loop (a thread hand-off would cost more). A full-size picture
    (files.DECODE_IN_THREAD pixels and up: 5-25 ms to decode) or any large body (its header walk
    alone can take tens of ms: a hostile host may pad a 1x1 PNG with 60 MB of private chunks) is
    checked whole in one of `decoders()`'s threads: Pillow's decoders, zlib and hashlib release
    the GIL there, and every other job's requests go on meanwhile.
    """
    if len(data) < files.DECODE_IN_THREAD_BYTES:
        opened = files.open_image(data, declared, expected)  # a header: cheap
        if opened.width * opened.height < files.DECODE_IN_THREAD:
            return files.decode_image(opened)
        opened.image.close()  # (checked again from the bytes in the thread: ~0.1 ms there)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(decoders(), files.verify_image, data, declared, expected)


def disk_hint(exc: OSError) -> str:
    """What to do about a file that cannot be written (the job stays recorded as rendered, not downloaded)."""
    what = {
        errno.ENOSPC: "free space on that disk",
        errno.EDQUOT: "free space within your quota",
        errno.EROFS: "make that file system writable",
        errno.EACCES: "make the folder writable",
        errno.EPERM: "make the folder writable",
        errno.ENOTDIR: "a file stands where a folder must be: move it away",
        errno.EEXIST: "a file stands where a folder must be: move it away",
        errno.EISDIR: "a folder stands where an image must be: move it away",
    }.get(exc.errno or 0, "fix the cause")
    return (
        f"{what}, then rerun the same command: rendered jobs are downloaded again from the provider "
        "without paying twice"
    )


@contextmanager
def writing(path: Path, rel: str = "") -> Iterator[None]:
    """File system errors while writing the run's files, as a StateError naming the file (`path`,
    or `rel` inside it: joined only for the message) and what to do."""
    try:
        yield
    except OSError as exc:
        if rel:
            path = path / rel
        raise StateError(
            f"cannot write {path}: {exc.strerror or exc}", hint=disk_hint(exc)
        ) from exc


def publish(storage: Storage, folder: Path, *rels: str) -> None:
    """Copy files written in a local folder to a remote output (the dataset beside its images)."""
    if not storage.remote:
        return
    for rel in rels:
        path = folder / rel
        if path.is_file():
            storage.put_bytes(rel, path.read_bytes())


def write_record(storage: Storage, run_dir: Path, record: dict[str, Any]) -> None:
    """run.json: in the run directory, or (a remote output) in the bucket only."""
    if storage.remote:
        storage.put_json(RUN_RECORD, record)
        return
    with writing(run_dir / RUN_RECORD):
        files.write_json(run_dir / RUN_RECORD, record)


def write_dataset(
    plan: Plan,
    store: Store,
    storage: Storage,
    provider: str | None,
    *,
    append: bool = False,
    record: bool = False,
) -> None:
    """metadata.jsonl and the card from the state's finished rows (then copied to a remote output).

    `append`: add the rows of jobs finished since it was written, if the state's record says
    that is exact (dataset.update), instead of rewriting a million rows; `record`: keep that
    record (a writable state).
    """
    manifest = plan.manifest
    try:
        text: str | None = manifest.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = None  # a manifest given as a dict (the Python API), or gone since
    info = dataset.CardInfo(
        manifest.name,
        str(manifest.file),
        text,
        manifest.license,
        {},
        0,
        sources=tuple(s.provenance() for s in manifest.hub),
    )
    axes = plan.distinct_axes  # the same columns as every job's axes, without a pass over the plan
    columns = dataset.Columns.from_axes(
        axes if axes is not None else (j.axes for j in plan.jobs)
    ).keeping(kept_kinds(manifest.prompts))
    # The rows depend on the plan (its digest), the columns and the provider: any change rewrites them.
    signature = json.dumps(
        [plan.digest, columns.axes, provider, *([columns.kept] if columns.kept else [])]
    )
    if not storage.remote:
        superseded.settle(store, store.run_dir)  # data/ holds exactly what metadata.jsonl lists
        dataset.update(
            store,
            info,
            columns,
            provider,
            signature,
            append=append and bool(plan.digest),
            record=record,
        )
        return
    # A bucket: written whole in a private temporary folder, then put beside the images; nothing
    # lands in the working directory.
    with tempfile.TemporaryDirectory(prefix="renderer-dataset-") as staging:
        dataset.write(Path(staging), info, columns, store.export_rows(), provider)
        publish(
            storage, Path(staging), f"{DATA_DIR}/{dataset.METADATA}", f"{DATA_DIR}/{dataset.CARD}"
        )


class Deliveries:
    """The deliveries' slots (`delivery_bound`), each taken only after the submits that freed
    provider slots were given before it: `async with deliveries:` around a result read or a download.

    Refills first (issue 23): when many requests finish at once (all S of them, at L = 1 s),
    each finished job would otherwise start its result read, download and writes in the same
    turns of the loop in which the jobs given its freed slot are to send their submits, so the
    last slots of the burst stood idle until most of the burst's deliveries had been started. A
    job given a slot for a new submit is pending until its submit is on the wire (or it lets go);
    a delivery waits for the ones granted before it, not for later ones (so deliveries are never
    starved by a steady stream of refills). Only the step from the slot to the wire counts (a
    rate limiter's wait leaves pending first), so a delivery waits a turn of the loop or two,
    never for a slow server. A job waiting here holds no provider slot.
    """

    def __init__(self, bound: int) -> None:
        self.slots = asyncio.Semaphore(bound)
        self._serial = 0  # grants so far
        # key → its grant's serial, oldest first (dicts keep insertion order)
        self.pending: dict[str, int] = {}
        # (serial, future): a delivery waiting until every grant below serial is sent
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def granted(self, key: str) -> None:
        self.pending[key] = self._serial
        self._serial += 1

    def sent(self, key: str) -> None:
        """`key`'s submit is on the wire, or it no longer means to send one now."""
        if self.pending.pop(key, None) is None or not self._waiters:
            return
        oldest = next(iter(self.pending.values()), self._serial)
        while self._waiters and self._waiters[0][0] <= oldest:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def __aenter__(self) -> None:
        if self.pending:
            entry = (self._serial, asyncio.get_running_loop().create_future())
            self._waiters.append(entry)
            try:
                await entry[1]
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                raise
        await self.slots.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.slots.release()


class GroupCommit:
    """One commit for the step changes of every job that reached a step in the same turn of the loop.

    A job calls `durable()` after its change and resumes once that change is committed: the
    commit is scheduled for the end of the current turn, so changes made meanwhile by other
    jobs share it (group commit: one write of the log instead of one per change).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._future: asyncio.Future[None] | None = None
        self.commits = 0  # for the benchmark: how many commits the step changes took

    async def durable(self) -> None:
        if not self.store.grouping:
            return  # every change was committed as it was made
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._commit)
        # Shielded: a job cancelled while it waits does not cancel the commit the others wait for.
        await asyncio.shield(self._future)

    def _commit(self) -> None:
        future, self._future = self._future, None
        assert future is not None
        self.commits += 1
        try:
            self.store.commit()
        except StateError as exc:
            future.set_exception(exc)
            future.exception()  # marked seen: the waiting jobs raise it, and if all were cancelled nothing logs it
        else:
            future.set_result(None)


class Delivery:
    """Downloads a completed job's images, verifies and writes them with their sidecars, and
    records the job as downloaded.

    `redownloads`: keys whose failed download --retry-failed put back: a read error there keeps
    the job failed (nothing paid); a URL the file host says is gone (404/410) renders again.
    """

    def __init__(
        self,
        plan: Plan,
        store: Store,
        storage: Storage,
        client: Client,
        config: RunConfig,
        commits: GroupCommit,
        emit: Callable[[Event], None],
        redownloads: set[str],
    ) -> None:
        self.plan = plan
        self.store = store
        self.storage = storage
        self.client = client
        self.config = config
        self.commits = commits
        self.emit = emit
        self.redownloads = redownloads
        self.run_dir = store.run_dir
        self.fsyncs = files.GroupFsync()
        # Threads for full-size pictures' checks (made at the first one): one a usable core, at
        # most DECODERS; its own pool, so fsync groups never queue behind decodes.
        self.decoders: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """The decode threads let go (a check still running ends on its own; its job is over)."""
        if self.decoders is not None:
            self.decoders.shutdown(wait=False, cancel_futures=True)
            self.decoders = None

    def decoding(self) -> ThreadPoolExecutor:
        if self.decoders is None:
            workers = min(DECODERS, usable_cores())
            self.decoders = ThreadPoolExecutor(workers, thread_name_prefix="renderer-decode")
        return self.decoders

    def prepare(self, row: Row) -> None:
        """The job's folder made while its request runs, not in its delivery (a local output).

        A delivery's file-system calls are on the loop, and while other images' fsyncs commit
        the journal each one waits its turn (0.1-0.3 ms for a mkdir then, against ~20 us on a
        quiet disk): made here, the folder of each job of the run's last round no longer adds
        to the burst of deliveries when that round ends. Best effort: a failure is left for the
        delivery to meet and report, and nothing is made once the run directory is gone (the
        delivery then says so).
        """
        if not isinstance(self.storage, LocalStorage) or self.store.gone():
            return
        with contextlib.suppress(OSError):
            files.FOLDERS.ensure(f"{self.storage.root}/{job_folder(row.stem)}")

    async def deliver(self, row: Row, retry: Callable[[Row, str], None]) -> Row | None:
        """Every image of `row`'s result written and recorded: the row as downloaded.

        None after `retry(row, reason)` put the job back to render again (the file host says
        the file is gone: 404/410, an expired result).
        """
        assert row.result is not None
        check_images(row.result)  # also for results stored by an earlier version
        entries = []
        for index, image in enumerate(row.result.get("images", [])):
            try:
                verified = await self.fetch_verified(row, image)
            except RequestGone as exc:
                # Proof that the file will never be served again (404/410 from the file host, an
                # expired result): only this justifies paying for the input again.
                reason = "the result's file has expired"
                if row.key in self.redownloads:
                    self.redownloads.discard(row.key)
                    reason = f"download URL gone on retry ({exc.message[:120]})"
                    self.emit(
                        {
                            "type": "warning",
                            "key": row.key,
                            "message": f"{row.key}: {reason}: submitting again, which pays for it again",
                        }
                    )
                retry(row, reason)
                return None
            except (TransientError, JobRejected) as exc:
                if row.key in self.redownloads:
                    # --retry-failed: a read that failed again (truncated, interrupted, refused) is
                    # a read error, not proof the file is gone: the job stays failed with its
                    # result, nothing is paid, and the next --retry-failed reads it again.
                    self.redownloads.discard(row.key)
                    raise type(exc)(
                        f"{exc.message}; the result is kept: rerun with --retry-failed to read it "
                        "again (nothing is paid again unless the file host says it is gone)"
                    ) from exc
                raise
            rel = image_path(row.stem, index, verified.ext)
            entry = {
                "path": rel,
                "sha256": verified.sha256,
                "size": len(verified.data),
                "width": verified.width,
                "height": verified.height,
                "content_type": verified.content_type,
                "seed": row.result.get("seed", row.seed),
            }
            price = price_of(self.plan.manifest.prices, row.endpoint, row.model)
            if price is not None:
                entry["cost"] = round(image_cost(price, verified.width, verified.height), 6)
            if self.store.gone():
                raise StateError(
                    f"{self.run_dir}: the run directory (or its {DB_NAME}) was removed during the run"
                )
            if self.store.shared:
                self.store.hold(row.key)  # a worker that lost the job writes no file (LeaseLost)
            # Local files: written, fsynced in groups off the loop (files.GroupFsync), then renamed
            # into place, so the record below still follows a durable, complete file.
            earlier: str | None = None
            with writing(self.run_dir, rel):
                sidecar = self.sidecar(row, index, entry)
                if self.storage.remote:  # network I/O: off the loop
                    entry["mtime_ns"], earlier = await asyncio.to_thread(
                        self.write, rel, verified, sidecar
                    )
                elif isinstance(self.storage, LocalStorage):
                    entry["mtime_ns"] = await self.write_local(rel, verified, sidecar)
                else:
                    entry["mtime_ns"], earlier = self.write(rel, verified, sidecar)
            if index == 0 and earlier is not None and earlier != row.request_id:
                # The output held this job's image from another request: its state was lost
                # (or never adopted it) and this input was paid for again. Counted, and said.
                reason = "the output already held this job's image from an earlier request"
                self.store.record_resubmit(row.key, reason)
                self.emit(
                    {
                        "type": "warning",
                        "key": row.key,
                        "message": f"{row.key}: {reason} ({earlier}): paid twice",
                    }
                )
            entries.append(entry)
        self.store.downloaded(row.key, entries)
        await self.commits.durable()
        self.emit({"type": "downloaded", "key": row.key, "files": [e["path"] for e in entries]})
        return row.evolve(state="downloaded", files=entries)

    def write(
        self, rel: str, image: files.Verified, sidecar: dict[str, Any]
    ) -> tuple[int | None, str | None]:
        """Image, then its sidecar: the image's mtime (recorded for the rerun check; None on S3),
        and the request id named by the sidecar of the same image found there already."""
        stored = self.storage.put_image(
            rel, image.data, sha256=image.sha256, content_type=image.content_type
        )
        side = str(PurePosixPath(rel).with_suffix(SIDECAR_SUFFIX))
        earlier = None
        if stored.existed:
            try:
                found = json.loads(self.storage.read(side) or b"null")
            except ValueError:
                found = None
            if isinstance(found, dict) and found.get("job_key") == sidecar["job_key"]:
                earlier = (
                    found.get("request_id") if isinstance(found.get("request_id"), str) else None
                )
        # The sidecar is rebuilt from the database on demand; an atomic rename is enough for it.
        self.storage.put_bytes(side, files.json_text(sidecar).encode(), durable=False)
        return stored.mtime_ns, earlier

    async def write_local(self, rel: str, image: files.Verified, sidecar: dict[str, Any]) -> int:
        """As write: the image fsynced before its rename, the disk waited for off the loop (GroupFsync.write)."""
        assert isinstance(self.storage, LocalStorage)
        # Strings, not Paths: pathlib's joins cost more than the writes' own Python (rel is the
        # layout's POSIX path, image_path, and ends in the image's extension).
        target = f"{self.storage.root}/{rel}"
        mtime = (await self.fsyncs.write(target, image.data)).st_mtime_ns
        # The sidecar is rebuilt from the database on demand; an atomic rename is enough for it.
        files.write_atomic(
            target[: target.rindex(".")] + SIDECAR_SUFFIX,
            files.json_text(sidecar).encode(),
            durable=False,
            parents=False,
        )
        return mtime

    async def fetch_verified(self, row: Row, image: dict[str, Any]) -> files.Verified:
        url: str = image["url"]  # a string: check_images has seen it
        expected = image.get("file_size") if isinstance(image.get("file_size"), int) else None
        for attempt in range(1, self.config.retry.attempts + 1):
            try:
                data, declared = await self.client.fetch(url)
                return await verify_download(data, declared, expected, self.decoding)
            except files.BadImage as exc:
                if attempt >= self.config.retry.attempts:
                    raise JobRejected(f"download of {url[:80]} failed verification: {exc}") from exc
                await asyncio.sleep(self.client.backoff(attempt))
        raise AssertionError("unreachable")

    def sidecar(self, row: Row, index: int, entry: dict[str, Any]) -> dict[str, Any]:
        result = row.result or {}
        now = time.time()
        return {
            "job_key": row.key,
            "image_index": index,
            "endpoint": row.endpoint,
            "model": row.model,
            "prompt_id": row.prompt_id,
            "axes": row.axes,
            "input": row.input,
            "request_id": row.request_id,
            "provider": self.config.provider or None,
            "seed": result.get("seed", row.seed),
            "sha256": entry["sha256"],
            "width": entry["width"],
            "height": entry["height"],
            "content_type": entry["content_type"],
            "file": entry["path"].rsplit("/", 1)[-1],
            "cost": entry.get("cost"),  # USD by the manifest's prices; null when unpriced
            "timings": {
                "submitted_at": row.submitted_at,
                "completed_at": row.completed_at,
                "downloaded_at": now,
                "submitted": iso_time(row.submitted_at),
                "completed": iso_time(row.completed_at),
                "downloaded": iso_time(now),
                "provider": result.get("timings"),
            },
            "manifest": {"file": str(self.plan.manifest.file), "prompt_at": row.source},
        }
