"""The runner: the plan's pending jobs → verified images on disk, within the provider's limits.

Invariants:
  * Work comes from the store (`Store.pending`), in plan order; results are keyed by job.
  * A job holds an in-flight slot from submit until its files are written (that is what the
    provider's concurrency limit and fal's short result retention care about), and a slot of
    its account from submit until its result is read (what the account's limit counts).
  * A request is followed, read and cancelled only with the key of the account recorded with it
    (store: `account`); a job whose account is not available waits, it is never sent again
    under another key. A 401/403 stops that account only; the run stops when none is left.
  * Resubmission happens only when the provider says the request is gone (404) or its runner
    failed; a submit whose outcome is unknown is failed, never resent (see client.submit).
  * Every state change is committed before the next step, so stopping anywhere is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from aiolimiter import AsyncLimiter

from renderer.errors import (
    AccountError,
    JobRejected,
    OutcomeUnknown,
    RequestGone,
    RunnerFailed,
    StateError,
    TransientError,
)
from renderer.layout import DATA_DIR, RUN_RECORD, SIDECAR_SUFFIX, image_path, job_folder
from renderer.output import dataset, files
from renderer.output.storage import LocalStorage, Storage
from renderer.plan.planner import Job, Plan, image_cost, price_of
from renderer.provider.client import RUNNER_ERRORS, Client, Handle, Status
from renderer.runner import recover
from renderer.settings import RetryPolicy
from renderer.state.store import DB_NAME, LeaseLost, Row, Store

Event = dict[str, Any]
T = TypeVar("T")
# Free bytes below which no new request is paid for: a submit whose request id cannot be
# committed (disk full) would be paid again by the rerun after the fix.
FREE_SPACE_RESERVE = 8 * 1024 * 1024


@dataclass(frozen=True)
class AccountLimit:
    """One of provider.accounts as the runner needs it: a name (never the key) and its own limits."""

    name: str
    concurrency: int
    rate: float | None = (
        None  # submissions per second of this account (limits.rate still caps the run)
    )


@dataclass(frozen=True)
class RunConfig:
    concurrency: int = 2  # jobs in flight (submitted, not yet downloaded)
    per_endpoint: Mapping[str, int] = field(default_factory=dict)
    rate: float = 10.0  # submissions per second
    timeout: float = (
        900.0  # seconds for one job, submit to download (a wait past it cancels the request)
    )
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_failed: bool = False
    max_jobs: int | None = None
    verify: bool = False  # re-hash finished files instead of trusting size + mtime
    grace: float = 10.0  # after Ctrl-C: seconds for submits in flight to record their request ids
    queue_report: float = 30.0  # surface queue_position for jobs waiting longer than this
    provider: str = (
        ""  # who renders: emulator, fal, or the custom provider's origin (recorded per image)
    )
    state: str | None = (
        None  # None: SQLite in the run directory; a postgresql:// URL: shared by many workers
    )
    lease: float = (
        30.0  # seconds a claimed job stays this worker's without renewal (renewed every third)
    )
    accounts: tuple[
        AccountLimit, ...
    ] = ()  # provider.accounts; empty: one account, the client's key


SINGLE_ACCOUNT = "default"  # the slots' name for a run without provider.accounts (one key)


def iso_time(epoch: float | None) -> str | None:
    """ISO 8601 in UTC (for people and other tools), beside the epoch seconds that are kept."""
    if epoch is None:
        return None
    return (
        datetime.fromtimestamp(epoch, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


CANCEL_WAIT = 10.0  # seconds a cancel after the job deadline may take: the bounded margin past it


if sys.version_info >= (3, 11):

    async def _within(work: Coroutine[Any, Any, T], seconds: float) -> T:
        """`await work`, cut off after `seconds` with TimeoutError, as asyncio.wait_for but in this
        task (wait_for makes a task per call: twice the cost, on each step of every job).
        With no time left the coroutine is not started at all, as with wait_for."""
        if seconds <= 0:
            work.close()
            raise asyncio.TimeoutError
        async with asyncio.timeout(seconds):
            return await work
else:  # pragma: no cover - Python 3.10
    _within = asyncio.wait_for


def _left(deadline: float) -> float:
    """Seconds until a monotonic deadline (never negative)."""
    return max(0.0, deadline - time.monotonic())


def describe(row: Row) -> str:
    """prompt, model, seed and axes of a stored job, as Job.describe says them (for failure lines)."""
    return Job(
        0, row.key, row.endpoint, row.model, row.prompt_id, row.seed, row.axes, {}, "", 1, (), ""
    ).describe()


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


def publish(storage: Storage, run_dir: Path, *rels: str) -> None:
    """Copy files written in the run directory to a remote output (the dataset beside its images)."""
    if not storage.remote:
        return
    for rel in rels:
        path = run_dir / rel
        if path.is_file():
            storage.put_bytes(rel, path.read_bytes())


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
    info = dataset.CardInfo(manifest.name, str(manifest.file), text, manifest.license, {}, 0)
    axes = plan.distinct_axes  # the same columns as every job's axes, without a pass over the plan
    columns = dataset.Columns.from_axes(axes if axes is not None else (j.axes for j in plan.jobs))
    # The rows depend on the plan (its digest), the columns and the provider: any change rewrites them.
    signature = json.dumps([getattr(plan, "digest", ""), columns.axes, provider])
    dataset.update(
        store,
        info,
        columns,
        provider,
        signature,
        append=append and bool(getattr(plan, "digest", "")),
        record=record,
    )
    publish(storage, store.run_dir, f"{DATA_DIR}/{dataset.METADATA}", f"{DATA_DIR}/{dataset.CARD}")


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


class AdaptiveLimit:
    """In-flight cap with additive increase, multiplicative decrease on throttling (429)."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = float(ceiling)  #: current allowance; 1 ≤ limit ≤ ceiling
        self.active = 0  #: slots held right now
        self._cond = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.active < max(1, math.floor(self.limit)))
            self.active += 1

    async def release(self) -> None:
        async with self._cond:
            self.active -= 1
            self._cond.notify_all()

    def throttled(self) -> None:
        self.limit = max(1.0, self.limit / 2)

    def succeeded(self) -> None:
        self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)


class AccountSlots(AdaptiveLimit):
    """The in-flight slots of one account: its own ceiling, halved on its own 429s.

    `acquire`, `try_acquire` and `release` are all the runner uses, so slots leased in shared
    state (one limit across several workers) can stand in for these in-process ones.
    """

    @property
    def allowance(self) -> int:
        return max(1, math.floor(self.limit))

    async def try_acquire(self) -> bool:
        """Take a slot if one is free now (never waits for one)."""
        async with self._cond:
            if self.active >= self.allowance:
                return False
            self.active += 1
            return True


class SharedSlots(AccountSlots):
    """An account's slots leased in the shared state (pgstore.acquire_slot): one limit across all workers.

    A slot is taken here first (this worker's own allowance, halved by its 429s), then in the
    database; a worker that dies holds its database slots only until its lease ends.
    """

    POLL = 0.2  # seconds between looks for a slot another worker freed

    def __init__(self, ceiling: int, store: Any, name: str) -> None:
        super().__init__(ceiling)
        self.store = store
        self.name = name
        self.numbers: list[int] = []  # database slots held now

    async def try_acquire(self) -> bool:
        if not await super().try_acquire():
            return False
        n = self.store.acquire_slot(self.name, "")
        if n is None:
            await super().release()
            return False
        self.numbers.append(n)
        return True

    async def acquire(self) -> None:
        while not await self.try_acquire():
            await asyncio.sleep(self.POLL)

    async def release(self) -> None:
        if self.numbers:
            self.store.release_slot(self.name, self.numbers.pop())
        await super().release()


class SharedRate:
    """Submissions per second across every worker of a shared run: evenly spaced turns taken in
    the database (pgstore.reserve, a GCRA), so N workers together keep one account's rate."""

    def __init__(self, store: Any, name: str, rate: float) -> None:
        self.store, self.name, self.interval = store, name, 1.0 / rate

    async def acquire(self) -> None:
        wait = self.store.reserve(self.name, self.interval)
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass(eq=False)
class Account:
    """An account of this run: its client (its key), its slots, its own rate, and whether it stopped."""

    name: str | None  # None: the single key of a run without provider.accounts (recorded as NULL)
    client: Client
    slots: AccountSlots
    limiter: AsyncLimiter | SharedRate | None = None
    stopped: AccountError | None = None  # the 401/403 that stopped it
    submitted: int = 0  # requests this run paid for under this account

    @property
    def label(self) -> str:
        return f"account {self.name!r}" if self.name is not None else "the account"


class Accounts:
    """The run's accounts; new work goes to the live account with the most room, weighted by its limit."""

    POLL = 1.0  # seconds between looks when every account is full (slots may be freed elsewhere)

    def __init__(self, accounts: Sequence[Account]) -> None:
        self.all = list(accounts)
        self.by_name = {a.name: a for a in self.all}
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """Wake the jobs waiting for a slot (one was freed, or an account stopped)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    @property
    def live(self) -> list[Account]:
        return [a for a in self.all if a.stopped is None]

    async def pick(self) -> Account | None:
        """An account with a slot taken for a new submit; None when every account is stopped."""
        while True:
            event = self._changed  # taken first: a slot freed while we look still wakes us
            live = self.live
            if not live:
                return None
            # Least used first (by share of its allowance), then the larger: over time each account
            # carries work in proportion to its concurrency.
            for account in sorted(
                live, key=lambda a: (a.slots.active / a.slots.allowance, -a.slots.allowance)
            ):
                if await account.slots.try_acquire():
                    return account
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), self.POLL)

    async def release(self, account: Account) -> None:
        await account.slots.release()
        self.changed()

    @property
    def limit(self) -> float:
        """The in-flight allowance of the live accounts together (after any halving by 429s)."""
        return sum(a.slots.limit for a in self.live) or sum(a.slots.limit for a in self.all)


@dataclass
class Summary:
    outcome: str  # done | failed | interrupted | stopped
    counts: dict[str, int]
    started: float
    finished: float
    images: int
    ambiguous_resubmits: int
    calls: dict[str, int]
    error: str | None = None
    hint: str | None = None
    cost: float | None = None  # what this run's finished jobs cost by the manifest's prices (USD)
    total_cost: float | None = None  # every finished job of the plan, all runs
    estimate: float | None = None  # the plan's estimate for all its jobs
    run_dir: Path | None = None
    resubmits: dict[str, int] = field(
        default_factory=dict
    )  # this run's paid resubmissions, by reason
    signal: int = 2  # what interrupted the run: SIGINT (Ctrl-C) or SIGTERM
    # provider.accounts only: name → submitted this run, limit, and why it stopped (null if it did not)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    waiting: dict[str, int] = field(
        default_factory=dict
    )  # submitted jobs left waiting for an account, by name

    @property
    def paid_twice(self) -> int:
        """Submissions of this run that paid (or may have paid) for an input again."""
        return self.ambiguous_resubmits + sum(self.resubmits.values())

    @property
    def exit_code(self) -> int:
        return {"done": 0, "failed": 1, "stopped": 3, "interrupted": 128 + self.signal}[
            self.outcome
        ]


def _disk_hint(exc: OSError) -> str:
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
def writing(path: Path) -> Iterator[None]:
    """File system errors while writing the run's files, as a StateError naming the file and what to do."""
    try:
        yield
    except OSError as exc:
        raise StateError(
            f"cannot write {path}: {exc.strerror or exc}", hint=_disk_hint(exc)
        ) from exc


SINGLE_KEY = (
    "(single key)"  # how run.json and status name the key of a run without provider.accounts
)


def _who(name: str | None) -> str:
    return f"account {name!r}" if name is not None else "the single key of an earlier run"


def bucket_size(rate: float) -> int:
    """Tokens the submission bucket holds: 50 ms' worth, at least one.

    Any one-second window then sees at most rate + bucket submissions. A one-token bucket
    paid the event loop's timer lag on every token (-5.7 % at 50/s, bench/rate_precision.py);
    a bucket of a whole second's worth let 2 x rate through in the first second.
    """
    return max(1, math.floor(rate / 20))


def _limiter(rate: float) -> AsyncLimiter:
    size = bucket_size(rate)
    return AsyncLimiter(size, size / rate)


class Runner:
    def __init__(
        self,
        plan: Plan,
        store: Store,
        client: Client,
        config: RunConfig,
        events: Callable[[Event], None] | None = None,
        output_check: Callable[..., list[Any]] | None = None,
        storage: Storage | None = None,
        clients: Mapping[str, Client] | None = None,
    ):
        """`clients`: with config.accounts, each account's client by account name (Client.with_key)."""
        self.plan = plan
        self.store = store
        self.client = client
        self.config = config
        self.emit = events or (lambda event: None)
        self.output_check = output_check
        self.run_dir: Path = store.run_dir
        # Where images, sidecars and the dataset land: the run directory, or a bucket (storage.py).
        self.storage: Storage = storage or LocalStorage(self.run_dir)
        self.stopping = False
        self.fatal: AccountError | None = None
        self.broken: StateError | None = (
            None  # the run's own files cannot be written: stop, say why
        )
        self.signal = 2  # SIGINT unless stop() is told otherwise (SIGTERM → exit 143)
        self.redownloads: set[str] = set()  # failed downloads put back by --retry-failed
        self.slots = AdaptiveLimit(config.concurrency)
        self.endpoint_slots = {e: asyncio.Semaphore(n) for e, n in config.per_endpoint.items()}
        self.limiter = _limiter(config.rate)
        self.phase: dict[str, str] = {}  # key → what its task is doing now
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.queued: dict[str, int | None] = {}  # keys waiting in the provider's queue → position
        self._endpoints: dict[
            str, str
        ] = {}  # key → endpoint, for the jobs read but not yet finished
        self.plan_changed = True  # until prepare() finds the stored plan unchanged
        self.fsyncs = files.GroupFsync()
        self.commits = GroupCommit(store)
        self.done = 0
        self.failed = 0
        self.images = 0
        self.cost = 0.0  # of this run's finished jobs, by the manifest's prices
        self._capped_said = False
        self._sending: set[str] = set()  # keys whose submit is on the wire (sent, not yet answered)
        self._dropped: set[str] = (
            set()
        )  # keys whose lease this worker lost: their tasks are cancelled, not failed
        self.shared = store.shared  # several workers share the state: claims decide who does what
        self.finalizer = False  # this worker wrote the dataset and run.json (see finish)
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        if config.accounts:
            self.pooled = True
            self.accounts = Accounts(
                [
                    Account(
                        a.name,
                        (clients or {}).get(a.name) or client.with_key(None),
                        AccountSlots(a.concurrency),
                        _limiter(a.rate) if a.rate else None,
                    )
                    for a in config.accounts
                ]
            )
        else:
            self.pooled = False
            self.accounts = Accounts([Account(None, client, AccountSlots(config.concurrency))])
        if self.shared:
            # One limit per account across every worker: its slots are leased in the shared state.
            for account in self.accounts.all:
                account.slots = SharedSlots(
                    account.slots.ceiling, store, account.name or SINGLE_ACCOUNT
                )
                rate = next(
                    (a.rate for a in config.accounts if a.name == account.name and a.rate), None
                )
                if rate:
                    account.limiter = SharedRate(store, f"account:{account.name}", rate)
            self.accounts.POLL = SharedSlots.POLL
            self.limiter = SharedRate(
                store, "run", config.rate
            )  # --rate: the run's total, all workers
        for account in self.accounts.all:
            account.client.on_event = lambda kind, account=account: self._client_event(
                kind, account
            )
        self._held: dict[str, Account] = {}  # key → the account whose slot the job holds
        self.waiting: dict[
            str | None, int
        ] = {}  # account name → its submitted jobs that wait for it

    # -------------------------------------------------- events

    def _client_event(self, kind: str, account: Account) -> None:
        if kind == "throttled":
            account.slots.throttled()  # that account's 429: the others keep their allowance
            self.emit({"type": "throttled", "limit": account.slots.limit, "account": account.name})
        elif kind == "retry_after_capped" and not self._capped_said:
            self._capped_said = True
            self.emit(
                {
                    "type": "warning",
                    "message": "the provider asked to wait longer than "
                    f"{self.client.limits.retry_after:g} s (Retry-After); waiting {self.client.limits.retry_after:g} s "
                    "instead",
                }
            )

    def progress(self) -> Event:
        return {
            "type": "progress",
            "done": self.done,
            "failed": self.failed,
            "in_flight": self.slots.active,
            "queued": len(self.queued),
            "images": self.images,
            "limit": self.accounts.limit,
        }

    # -------------------------------------------------- the run

    def prepare(self) -> int:
        """Sync the plan, check finished files, join as a worker; returns the count of ambiguous submits.

        (With shared state an ambiguous submit is counted when its job is claimed: see _submit.)
        """
        if not self.shared:
            self.store.void_claims()
        # A first run (no state, no files: nothing to find or mark out) renders while the rest of
        # the plan is recorded in the background, and the plan's digest (a pass over every key) is
        # made there too, at the end; any other run records the plan first.
        lazy = getattr(self.plan, "digest_of", None) is not None and not self.plan.__dict__.get(
            "_digest"
        )
        recording = (
            None
            if (self.run_dir / DATA_DIR).is_dir()
            else self.store.record_plan(
                self.plan.jobs,
                (lambda: self.plan.digest) if lazy else getattr(self.plan, "digest", ""),
            )
        )
        self.plan_changed = recording is not None or self.store.sync_plan(
            self.plan.jobs, getattr(self.plan, "digest", "")
        )
        files.remove_partials(
            self.run_dir,
            {self.run_dir / job_folder(stem) for stem in self.store.unfinished_stems()},
        )
        recover.leftovers(self.run_dir)
        adopted = recover.from_sidecars(self.store, self.run_dir)
        if adopted:
            self.plan_changed = True
            self.emit(
                {
                    "type": "note",
                    "message": f"rebuilt the state of {adopted} finished job(s) from their sidecars "
                    f"({DB_NAME} was missing or had no record of them): they are not submitted again",
                }
            )
        if self.config.provider and self.config.provider != "emulator":
            # The emulator's placeholders are not images: for a real provider those jobs are not
            # done. (The other way round, real images are kept: an emulator run never replaces them;
            # and images from one real provider are not paid for again at another.)
            for key in self.store.rendered_by("emulator"):
                self.store.rerender(key, f"rendered by the emulator, not by {self.config.provider}")
                self.plan_changed = True
        if self.config.retry_failed:
            self.redownloads = {
                r.key for r in self.store.rows(in_plan=True, state="failed") if r.result is not None
            }
            self.store.retry_failed()
        if self.config.provider == "emulator" and not self.shared:
            # The emulator lives in this process: an earlier run's requests died with it. It is
            # free, so sending them again costs nothing (and is not counted as paying twice).
            for row in self.store.rows(in_plan=True, state="submitted") + self.store.rows(
                in_plan=True, state="completed"
            ):
                if not (row.status_url or "").startswith(self.client.base_url + "/"):
                    self.store.resubmit(
                        row.key, "the in-process emulator of an earlier run is gone", paid=False
                    )
        if not self.shared and not self.config.verify and isinstance(self.storage, LocalStorage):
            # What Storage.intact checks on disk (size + mtime), in one tight loop: a rerun of a
            # million finished files costs a stat each, not a JSON decode and a call chain each.
            root, stat = os.path.join(self.storage.root, ""), os.stat
            for page in self.store.file_stats():
                changed = set()
                for ref, rel, size, mtime in page:
                    try:
                        found = stat(root + rel)
                    except (OSError, TypeError, ValueError):
                        changed.add(ref)
                        continue
                    if found.st_size != size or found.st_mtime_ns != mtime:
                        changed.add(ref)
                for key in sorted(self.store.key_of(ref) for ref in changed):
                    self.store.redownload(key, "a finished file was missing or changed")
                    self.plan_changed = True
        elif not self.shared or self.config.verify:
            # With shared state every worker would check every file at start: only --verify does.
            for key, entries in self.store.downloaded_files():
                if not all(self.storage.intact(e, rehash=self.config.verify) for e in entries):
                    self.store.redownload(key, "a finished file was missing or changed")
                    self.plan_changed = True
        self.store.join(self.worker_id, self.config.lease, socket.gethostname(), os.getpid())
        if self.shared:
            self.store.set_accounts(
                {
                    a.slots.name: a.slots.ceiling
                    for a in self.accounts.all  # type: ignore[attr-defined]
                    if isinstance(a.slots, SharedSlots)
                }
            )
        return 0 if self.shared else self.store.ambiguous()

    async def _feed(self, queue: asyncio.Queue[str | None], consumers: int) -> None:
        """Claim jobs in plan order, a batch at a time, and hand them to the consumers; then one None each.

        Claimed jobs wait here under lease (renewed), so a batch is half the in-flight cap: other
        workers are not starved. With shared state, when nothing is claimable but jobs are still
        unfinished (held by other workers), wait: a dead worker's jobs come free when its lease ends.
        """
        batch = max(1, self.config.concurrency // 2)
        poll = min(2.0, self.config.lease / 4)
        recorder, bound = self.store.recorder, self.config.max_jobs
        try:
            while not self.stopping and self.broken is None:
                # Read before claiming: a recording that ended before an empty claim has nothing more.
                recording = (
                    recorder is not None
                    and not recorder.finished.is_set()
                    and (bound is None or recorder.recorded < bound)
                )
                claimed = self.store.claim(batch, before=bound)
                for c in claimed:
                    self._endpoints[c.key] = c.endpoint
                    await queue.put(c.key)
                if claimed:
                    continue
                if recording:  # the plan is still being recorded: more jobs come
                    await asyncio.sleep(0.02)
                    continue
                if recorder is not None and recorder.error is not None:
                    raise recorder.error
                # Done when every unfinished job is this worker's own (in flight, or waiting for an
                # account it lacks: released at the end); else another worker holds some: wait.
                if not self.shared or self.store.unfinished(self.config.max_jobs, others=True) == 0:
                    break
                await asyncio.sleep(poll * (0.5 + secrets.randbelow(1000) / 1000))
        except StateError as exc:  # the state cannot be read or written: stop, say why
            self.broken = self.broken or exc
        finally:
            if recorder is not None:
                # Stopping: the recording ends after its batch in hand (the next run records the
                # rest). Otherwise it is waited for, so the run ends on the whole plan's state.
                if self.stopping or self.broken is not None:
                    recorder.halt()
                try:
                    await asyncio.get_running_loop().run_in_executor(None, recorder.thread.join)
                except asyncio.CancelledError:
                    recorder.halt()
                    recorder.thread.join()
                    raise
                if recorder.error is not None and self.broken is None:
                    self.broken = recorder.error
            for _ in range(consumers):
                await queue.put(None)

    async def _renew(self) -> None:
        """Renew this worker's leases every third of their length; drop the jobs whose lease was lost."""
        while True:
            await asyncio.sleep(self.config.lease / 3)
            try:
                held = self.store.renew()
            except LeaseLost:
                continue
            except (
                StateError
            ) as exc:  # the shared state is unreachable for now: the fences decide later
                self.emit({"type": "warning", "message": f"could not renew leases: {exc.message}"})
                continue
            for key, task in list(self.tasks.items()):
                if key not in held and not task.done() and self.phase.get(key) != "submitting":
                    self._dropped.add(key)
                    self.emit(
                        {
                            "type": "warning",
                            "key": key,
                            "message": f"{key}: lost its lease (another worker may "
                            "have it now); dropped here without recording anything",
                        }
                    )
                    task.cancel()

    async def run(self) -> Summary:
        started = time.time()
        ambiguous = self.prepare()
        run_id = self.store.start_run(ambiguous)
        pending = self.store.pending_count(self.config.max_jobs)
        if not self.shared:  # (shared: run.json is written once, when the run is complete)
            # Until finish() replaces it, run.json says the run is in progress: a crash never leaves "done".
            with writing(self.run_dir / RUN_RECORD):
                files.write_json(
                    self.run_dir / RUN_RECORD,
                    {
                        "manifest": str(self.plan.manifest.file),
                        "name": self.plan.manifest.name,
                        "outcome": "running",
                        "provider": self.config.provider or self.plan.manifest.provider.kind,
                        "started": started,
                        "started_at": iso_time(started),
                        "pending": pending,
                    },
                )
            self.publish(RUN_RECORD)
        self.emit(
            {
                "type": "start",
                "pending": pending,
                "total": len(self.plan.jobs),
                "done": self.store.counts()["downloaded"],
                "ambiguous": ambiguous,
            }
        )
        queue: asyncio.Queue[str | None] = asyncio.Queue(
            maxsize=max(1, self.config.concurrency // 2)
        )

        async def worker() -> None:
            while (key := await queue.get()) is not None:
                if self.stopping:
                    continue  # drain: the feeder ends with one None per worker
                await self.slots.acquire()
                try:
                    if self.stopping:
                        continue
                    task = asyncio.ensure_future(self._job(key))
                    self.tasks[key] = task
                    try:
                        await task
                    except asyncio.CancelledError:
                        if not self.stopping and key not in self._dropped:
                            raise
                    finally:
                        self.tasks.pop(key, None)
                        self.phase.pop(key, None)
                        self.queued.pop(key, None)
                        self._endpoints.pop(key, None)
                finally:
                    await self.slots.release()
                self.emit(self.progress())

        workers = [asyncio.ensure_future(worker()) for _ in range(self.config.concurrency)]
        helpers = [
            asyncio.ensure_future(self._feed(queue, len(workers))),
            asyncio.ensure_future(self._renew()),
        ]
        self.store.grouping = self.store.group_commit
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers + helpers:
                w.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            self.store.grouping = False
            try:
                self.store.commit()  # anything deferred by a job cancelled while it waited
            except StateError as exc:
                self.broken = self.broken or exc
            self.store.release()  # claimed, not finished: others (or the next run) may take them at once
            summary = self.finish(run_id, started, ambiguous)
        return summary

    def stop(self, force: bool = False, signal: int | None = None) -> None:
        """Ctrl-C or SIGTERM: stop new submissions; abandon waits and downloads (their state is recorded).

        Submits in flight get `grace` seconds to record their request ids; with force, or
        after the grace period, everything is cancelled. `signal` sets the exit code (128 + it).
        """
        if signal is not None:
            self.signal = signal
        self.stopping = True
        for key, task in list(self.tasks.items()):
            if force or self.phase.get(key) != "submitting":
                task.cancel()
        if not force:
            asyncio.get_running_loop().call_later(self.config.grace, self.stop, True)

    def finish(self, run_id: int, started: float, ambiguous: int) -> Summary:
        if self.store.gone():
            # Writing run.json or the dataset now would re-create the folder the user removed.
            raise StateError(
                f"{self.run_dir}: the run directory (or its {DB_NAME}) was removed during the run; "
                "the run stopped",
                hint="rerun the same command: images still on disk are found by "
                "their sidecars and not paid for again",
            )
        if self.broken is not None:
            with_state = self.store.counts()
            self.store.finish_run(
                run_id,
                "error",
                {
                    "outcome": "error",
                    "error": self.broken.message,
                    "counts": with_state,
                    "finished": time.time(),
                    "images_this_run": self.images,
                },
            )
            raise self.broken
        counts = self.store.counts()
        # Shared state: the dataset and run.json are written once, by the worker that finds the run
        # complete (one wins set_meta_once), or by `renderer finalize`; the others only report.
        self.finalizer = not self.shared or (
            self.store.unfinished(self.config.max_jobs) == 0
            and self.store.set_meta_once(
                "finalized",
                f"{getattr(self.plan, 'digest', '')}:{counts['downloaded']}:{counts['failed']}",
            )
        )
        if self.finalizer:
            with writing(self.run_dir / DATA_DIR):
                self.export()
        error, hint = (self.fatal.message, self.fatal.hint) if self.fatal else (None, None)
        waiting = {
            (name if name is not None else SINGLE_KEY): n for name, n in self.waiting.items()
        }
        if self.fatal is not None:
            outcome = "stopped"
        elif self.stopping:
            outcome = "interrupted"
        elif waiting:
            # Only an account the user fixes or configures can finish these: the run cannot go on.
            outcome = "stopped"
            error = "submitted jobs wait for an account: " + ", ".join(
                f"{n} for {_who(name)}" for name, n in self.waiting.items()
            )
            hint = (
                "configure that account (provider.accounts, its key in the environment) or fix it, then rerun: "
                "its jobs are followed with its key, never paid for again under another"
            )
        elif counts["failed"]:
            outcome = "failed"
        else:
            outcome = "done"
        total_cost, unpriced = self.total_cost()
        resubmits = self.store.resubmit_reasons(run_id)
        accounts = (
            {
                a.name: {
                    "concurrency": a.slots.ceiling,
                    "limit": round(a.slots.limit, 2),
                    "submitted": a.submitted,
                    "stopped": a.stopped.message if a.stopped else None,
                }
                for a in self.accounts.all
                if a.name is not None
            }
            if self.pooled
            else {}
        )
        summary = Summary(
            outcome,
            counts,
            started,
            time.time(),
            self.images,
            ambiguous,
            dict(self.client.calls),
            error,
            hint,
            None if total_cost is None else round(self.cost, 6),
            total_cost,
            self.plan.total_cost,
            self.run_dir,
            resubmits,
            self.signal,
            accounts,
            waiting,
        )
        all_runs = self.store.resubmit_reasons()
        record = {
            "manifest": str(self.plan.manifest.file),
            "name": self.plan.manifest.name,
            "outcome": outcome,
            "provider": self.config.provider or self.plan.manifest.provider.kind,
            "started": started,
            "finished": summary.finished,
            "started_at": iso_time(started),
            "finished_at": iso_time(summary.finished),
            "seconds": round(summary.finished - started, 3),
            "counts": counts,
            "images_this_run": self.images,
            "ambiguous_resubmits": ambiguous,
            "ambiguous_resubmits_all_runs": self.store.total_ambiguous(),
            "requests": summary.calls,
            # Every input paid for more than once, and why: kills between a submit and its commit
            # (ambiguous) and resubmissions after the provider lost a request or its runner failed.
            "paid_twice": {
                "this_run": summary.paid_twice,
                "ambiguous": ambiguous,
                "resubmits": resubmits,
                "all_runs": self.store.total_ambiguous() + sum(all_runs.values()),
                "resubmits_all_runs": all_runs,
            },
            "cost": {
                "currency": "USD",
                "this_run": summary.cost,
                "all_runs": total_cost,
                "estimate": self.plan.total_cost,
                "unpriced_models": unpriced,
            },
            "error": summary.error,
            # provider.accounts: each account's share and whether it stopped (by name, never by key)
            **({"accounts": accounts} if accounts else {}),
            **({"waiting_for_accounts": waiting} if waiting else {}),
        }
        if self.finalizer:
            with writing(self.run_dir / RUN_RECORD):
                files.write_json(self.run_dir / RUN_RECORD, record)
            self.publish(RUN_RECORD)
        self.store.finish_run(run_id, outcome, record)
        return summary

    def total_cost(self) -> tuple[float | None, list[str]]:
        """(cost of every finished job by the manifest's prices, models without a price)."""
        total, uncosted = (
            self.store.cost()
        )  # summed in the database: no pass over the finished files here
        # Models named once from the store, not looked up per file (a million-job plan is not held).
        unpriced = set(self.store.models_without_cost()) if uncosted else set()
        in_plan = self.plan.by_model or None
        models = (
            {
                (m.endpoint, m.name)
                for m in self.plan.manifest.models
                if in_plan is None or m.name in in_plan
            }
            if in_plan is not None
            else {(j.endpoint, j.model) for j in self.plan.jobs}
        )
        priced = {m for e, m in models if price_of(self.plan.manifest.prices, e, m) is not None}
        unpriced |= {m for _, m in models} - priced
        return (round(total, 6) if priced else None), sorted(unpriced)

    def export(self) -> None:
        # The dataset is derived from the finished rows alone: unchanged rows, unchanged files.
        if (
            not self.shared
            and not self.plan_changed
            and self.images == 0
            and self.failed == 0
            and (self.run_dir / DATA_DIR / dataset.METADATA).is_file()
        ):
            return
        # An unchanged plan: this run's finished jobs are appended (a changed one rewrites it whole).
        write_dataset(
            self.plan,
            self.store,
            self.storage,
            self.config.provider or None,
            append=not self.plan_changed,
            record=True,
        )

    def publish(self, *rels: str) -> None:
        publish(self.storage, self.run_dir, *rels)

    # -------------------------------------------------- one job

    async def _job(self, key: str) -> None:
        slot = (
            self.endpoint_slots.get(self._endpoints.get(key, "")) if self.endpoint_slots else None
        )
        if slot is None:
            await self._advance(key)
            return
        async with slot:
            await self._advance(key)

    async def _advance(self, key: str) -> None:
        try:
            first = self.store.get(key)
            # An account's slot is taken before the deadline starts: waiting for room at the
            # provider is not the job's own time (as with the run's slots, taken by the worker).
            if not await self._hold(first):
                return
            row: Row | None = first
            # The job deadline covers the whole job: submit, wait, result and download.
            deadline = time.monotonic() + self.config.timeout
            while True:
                if self.stopping and row is not first:
                    # A submit that ended inside the grace period has recorded its request id, which
                    # is all the grace is for: the next run follows it. (Tasks in any other phase
                    # were cancelled by stop(); without this, one would wait out a whole render.)
                    return
                # Each step returns the row as it now stands, or None when the store must be
                # read again (after a resubmit or a failure): no re-read on the common path.
                row = row or self.store.get(key)
                step = row.state
                try:
                    if step == "planned":
                        if self.stopping or not await self._hold(row):
                            return
                        row = await _within(self._submit(row), _left(deadline))
                        if row is None:
                            return
                    elif step == "submitted":
                        if not await self._hold(row):
                            return
                        account = self._held[key]
                        try:
                            row = await self._follow(row, deadline, account)
                        except AccountError as exc:
                            # The request stays recorded under its account: a later run follows it.
                            await self._let_go(key)
                            await self._stop_account(account, exc)
                            self._wait_for_account(row)
                            return
                        # The result is read (or the request is given up): the account's slot is free.
                        await self._let_go(key)
                    elif step == "completed":
                        row = await _within(self._download(row), _left(deadline))
                    else:
                        if row.state == "downloaded":
                            self.done += 1
                        return
                except asyncio.TimeoutError:
                    self._over_deadline(key, step)
                    return
        except LeaseLost as exc:
            # Another worker may own the job now: record nothing, write nothing, just let go.
            self._dropped.add(key)
            self.emit({"type": "warning", "key": key, "message": exc.message})
        except AccountError as exc:
            self.fatal = self.fatal or exc
            self.emit({"type": "fatal", "message": exc.message})
            # Not forced: nothing new is sent, waits are abandoned, and a submit already on the
            # wire gets its answer (the same refusal, recorded as one) instead of being cut off
            # into an ambiguous submit that the next run would count as paid twice.
            if not self.stopping:
                self.stop()
        except StateError as exc:
            # The run's own files or state cannot be written: every further job would fail the same way.
            self.broken = self.broken or exc
            # Not forced: a submit in flight still gets to record its request id (if the disk lets
            # it), so that the rerun after the fix does not pay for it again.
            if not self.stopping:
                self.stop()
        except OutcomeUnknown as exc:
            self._fail(key, exc.message, "outcome_unknown")
        except JobRejected as exc:
            self._fail(key, exc.message, "rejected")
        except TransientError as exc:
            self._fail(
                key,
                f"gave up after {self.config.retry.attempts} attempts: {exc.message}",
                "transient",
            )
        finally:
            await self._let_go(key)

    # -------------------------------------------------- accounts

    async def _hold(self, row: Row) -> bool:
        """Take the account slot this step needs; False when the job must wait (or the run stops).

        A new submit takes a slot of whichever live account has room; following a submitted
        request takes a slot of the account recorded with it, and only of that one.
        """
        if row.key in self._held or row.state not in ("planned", "submitted"):
            return True
        if row.state == "planned":
            self.phase[row.key] = "limited"
            account = await self.accounts.pick()
            if account is None:
                return False  # every account stopped: the run is stopping
        else:
            found = self.accounts.by_name.get(row.account)
            if found is None:
                self._wait_for_account(row)
                return False
            account = found
            await account.slots.acquire()
        self._held[row.key] = account
        return True

    async def _let_go(self, key: str) -> None:
        account = self._held.pop(key, None)
        if account is not None:
            await self.accounts.release(account)

    async def _stop_account(self, account: Account, exc: AccountError) -> None:
        """A 401/403 for `account`: it sends nothing more; AccountError (run stops) when it was the last."""
        if account.stopped is None:
            account.stopped = exc
            self.accounts.changed()  # jobs waiting for its slots look at the other accounts
            if self.accounts.live:
                others = ", ".join(repr(a.name) for a in self.accounts.live)
                self.emit(
                    {
                        "type": "warning",
                        "message": f"{account.label} stopped: {exc.message} (hint: {exc.hint}); "
                        f"its jobs not yet submitted go to {others}; those it submitted stay recorded under it",
                    }
                )
        if self.accounts.live:
            return
        if not self.pooled:
            raise exc
        stopped = "; ".join(
            f"{a.name!r}: {a.stopped.message if a.stopped else '?'}" for a in self.accounts.all
        )
        raise AccountError(
            f"every account is stopped ({stopped})", status=exc.status, hint=exc.hint
        )

    def _wait_for_account(self, row: Row) -> None:
        """A submitted job whose account cannot follow it now: it waits (and is never sent under another key)."""
        name = row.account
        first = name not in self.waiting
        self.waiting[name] = self.waiting.get(name, 0) + 1
        if not first:
            return
        found = self.accounts.by_name.get(name)
        if found is not None and found.stopped is not None:
            why = f"{found.label} is stopped ({found.stopped.message})"
        elif name is None:
            why = (
                "they were submitted with the single key of an earlier run (provider.key_env), which is not "
                "among this run's provider.accounts"
            )
        elif self.pooled:
            why = f"account {name!r} is not in this run's provider.accounts"
        else:
            why = f"they were submitted by account {name!r} (provider.accounts), which this run does not have"
        self.emit(
            {
                "type": "warning",
                "message": f"jobs submitted by {_who(name)} wait: {why}; they are followed "
                "only with the key that submitted them, never sent again under another",
            }
        )

    def _over_deadline(self, key: str, step: str) -> None:
        limit = f"{self.config.timeout:g} s"
        if key in self._sending:  # cut off between sending the submit and reading its answer
            self._sending.discard(key)
            self._fail(
                key,
                f"submit: no answer within the job deadline ({limit}); the provider may have "
                "accepted and billed it",
                "outcome_unknown",
            )
        elif step == "planned":
            self._fail(
                key,
                f"submit: not accepted within the job deadline ({limit}); nothing was sent "
                "that the provider took",
                "deadline",
            )
        else:
            what = "result" if step == "submitted" else "download"
            self._fail(key, f"{what}: not complete within the job deadline ({limit})", "deadline")

    def _fail(self, key: str, reason: str, kind: str) -> None:
        reason = self.client.scrub(reason)  # a server may echo the key into anything it answers
        self.store.failed(key, reason, kind)
        self.failed += 1
        self.emit(
            {"type": "failed", "key": key, "reason": reason, "job": describe(self.store.get(key))}
        )

    def _retry_job(self, row: Row, reason: str) -> None:
        """Resubmit after a runner failure or a lost request, within the attempt budget."""
        if row.attempts >= self.config.retry.attempts:
            raise JobRejected(f"{reason}; gave up after {row.attempts} submissions")
        self.store.resubmit(row.key, reason)
        self.emit({"type": "resubmit", "key": row.key, "reason": reason})

    async def _submit(self, row: Row) -> Row | None:
        """Submit with the account whose slot the job holds; after a 401/403 there, with another."""
        if self.shared and row.submit_started is not None and row.request_id is None:
            # A worker stopped between sending this job's submit and recording its answer (that is
            # the submit→commit window): the provider may have it; sending again may pay twice.
            self.store.record_resubmit(row.key, "a worker stopped between a submit and its record")
        while True:
            account = self._held[row.key]
            self.phase[row.key] = "limited"
            if account.limiter is not None:
                await account.limiter.acquire()
            await self.limiter.acquire()
            if self.stopping:
                return None
            handle = await self._send(row, account)
            if handle is not None:
                break
            if not await self._hold(row):  # that account stopped: another one's slot
                return None
        self.store.submitted(
            row.key,
            handle.request_id,
            handle.status_url,
            handle.response_url,
            handle.cancel_url,
            self.config.provider or None,
            account=account.name,
        )
        await self.commits.durable()  # the request id is committed before anything follows it
        account.submitted += 1
        self.emit(
            {
                "type": "submitted",
                "key": row.key,
                "endpoint": row.endpoint,
                "request_id": handle.request_id,
                **({"account": account.name} if self.pooled else {}),
            }
        )
        account.slots.succeeded()
        self.phase[row.key] = "submitted"
        return row.evolve(
            state="submitted",
            attempts=row.attempts + 1,
            request_id=handle.request_id,
            status_url=handle.status_url,
            response_url=handle.response_url,
            cancel_url=handle.cancel_url,
            submitted_at=time.time(),
            account=account.name,
        )

    async def _send(self, row: Row, account: Account) -> Handle | None:
        """One submit under `account`; None when it refused the key (401/403) and stopped."""
        self.phase[row.key] = "submitting"
        self._check_space()

        def sending() -> (
            None
        ):  # the submit→commit window opens: a kill now leaves an ambiguous submit
            self._sending.add(row.key)
            self.store.submit_started(row.key)

        def refused() -> None:  # a definite refusal (429, 401, ingress 502…): nothing was taken
            self._sending.discard(row.key)
            self.store.submit_refused(row.key)

        try:
            return await account.client.submit(
                row.endpoint, row.input, sending=sending, refused=refused
            )
        except AccountError as exc:
            self.store.submit_refused(row.key)  # a definite refusal is not an ambiguous submit
            await self._let_go(row.key)
            await self._stop_account(account, exc)  # raises when no account is left
            return None
        finally:
            self._sending.discard(row.key)

    def _check_space(self) -> None:
        """Refuse to pay for a request whose id the disk may have no room left to record."""
        try:
            free = shutil.disk_usage(self.run_dir).free
        except OSError:
            return  # the writes themselves will say what is wrong
        if free < FREE_SPACE_RESERVE:
            raise StateError(
                f"{self.run_dir}: only {free / 1e6:.1f} MB free; renderer stops submitting below "
                f"{FREE_SPACE_RESERVE / 1e6:.0f} MB, so that every paid request can still be recorded",
                hint=_disk_hint(OSError(errno.ENOSPC, "no space")),
            )

    async def _follow(self, row: Row, deadline: float, account: Account) -> Row | None:
        assert row.request_id and row.status_url and row.response_url and row.cancel_url
        handle = Handle(row.request_id, row.status_url, row.response_url, row.cancel_url)
        self.phase[row.key] = "waiting"
        reported = [time.monotonic()]  # when queue_position was last surfaced for this job
        last: list[Status] = []

        def on_status(status: Status) -> None:
            last[:] = [status]
            if status.state == "IN_QUEUE":
                self.queued[row.key] = status.queue_position
                if time.monotonic() - reported[0] > self.config.queue_report:
                    self.emit(
                        {
                            "type": "queued",
                            "key": row.key,
                            "position": status.queue_position,
                            "job": describe(row),
                        }
                    )
                    reported[0] = time.monotonic()
            else:
                self.queued.pop(row.key, None)

        try:
            status = await _within(account.client.wait(handle, on_status), _left(deadline))
        except asyncio.TimeoutError:
            try:
                answer = await asyncio.wait_for(account.client.cancel(handle), CANCEL_WAIT)
            except asyncio.TimeoutError:
                answer = f"no answer within {CANCEL_WAIT:g} s"
            where = f"; last status {last[0].state}" if last else ""
            if last and last[0].queue_position is not None:
                where += f" at queue position {last[0].queue_position}"
            self._fail(
                row.key,
                f"no result within {self.config.timeout:g} s{where}; cancel: {answer}",
                "deadline",
            )
            return None
        except RequestGone:
            self._retry_job(row, "the provider no longer knows the request")
            return None
        finally:
            self.queued.pop(row.key, None)
        if status.error_type in RUNNER_ERRORS:
            self._retry_job(
                row, f"the provider's runner failed ({status.error_type}: {status.error})"
            )
            return None
        # A read error here is retried as a read (client.result); only definite evidence that
        # this request will never deliver (a runner error_type, a 404) pays for a new one.
        try:
            result = await _within(account.client.result(handle), _left(deadline))
        except RunnerFailed as exc:
            self._retry_job(row, exc.message)
            return None
        except RequestGone:
            self._retry_job(row, "the provider no longer has the result")
            return None
        check_images(result)
        if self.output_check is not None:
            for problem in self.output_check(row.endpoint, result):
                self.emit(
                    {
                        "type": "warning",
                        "key": row.key,
                        "message": f"result does not match the output schema: {problem.json_path}: {problem.message}",
                    }
                )
        self.store.completed(row.key, result)
        await self.commits.durable()
        return row.evolve(state="completed", result=result, completed_at=time.time())

    async def _download(self, row: Row) -> Row | None:
        assert row.result is not None
        check_images(row.result)  # also for results stored by an earlier version
        self.phase[row.key] = "downloading"
        entries = []
        for index, image in enumerate(row.result.get("images", [])):
            try:
                verified = await self._fetch_verified(row, image)
            except RequestGone:
                self._retry_job(row, "the result's file has expired")
                return None
            except (TransientError, JobRejected) as exc:
                if row.key not in self.redownloads:
                    raise
                # --retry-failed on a download that failed before: the URL is dead (an emulator
                # that exited, an expired CDN file). Retrying it forever never ends; render again.
                self.redownloads.discard(row.key)
                reason = f"download URL dead on retry ({exc.message[:120]})"
                self.emit(
                    {
                        "type": "warning",
                        "key": row.key,
                        "message": f"{row.key}: {reason}: submitting again, which pays for it again",
                    }
                )
                self._retry_job(row, reason)
                return None
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
            if self.shared:
                self.store.hold(row.key)  # a worker that lost the job writes no file (LeaseLost)
            # Local files: written, fsynced in groups off the loop (files.GroupFsync), then renamed
            # into place, so the record below still follows a durable, complete file.
            with writing(self.run_dir / rel):
                sidecar = self._sidecar(row, index, entry)
                if self.storage.remote:  # network I/O: off the loop
                    entry["mtime_ns"] = await asyncio.to_thread(self._write, rel, verified, sidecar)
                elif isinstance(self.storage, LocalStorage):
                    entry["mtime_ns"] = await self._write_local(rel, verified, sidecar)
                else:
                    entry["mtime_ns"] = self._write(rel, verified, sidecar)
            entries.append(entry)
        self.store.downloaded(row.key, entries)
        await self.commits.durable()
        self.images += len(entries)
        self.cost += sum(e.get("cost") or 0.0 for e in entries)
        self.emit({"type": "downloaded", "key": row.key, "files": [e["path"] for e in entries]})
        return row.evolve(state="downloaded", files=entries)

    def _write(self, rel: str, image: files.Verified, sidecar: dict[str, Any]) -> int | None:
        """Image, then its sidecar; returns the image's mtime (recorded for the rerun check; None on S3)."""
        mtime = self.storage.put_image(
            rel, image.data, sha256=image.sha256, content_type=image.content_type
        )
        # The sidecar is rebuilt from the database on demand; an atomic rename is enough for it.
        self.storage.put_bytes(
            str(PurePosixPath(rel).with_suffix(SIDECAR_SUFFIX)),
            files.json_text(sidecar).encode(),
            durable=False,
        )
        return mtime

    async def _write_local(self, rel: str, image: files.Verified, sidecar: dict[str, Any]) -> int:
        """As _write: the image fsynced before its rename, the disk waited for off the loop (GroupFsync.write)."""
        assert isinstance(self.storage, LocalStorage)
        target = self.storage.root / rel
        mtime = (await self.fsyncs.write(target, image.data)).st_mtime_ns
        # The sidecar is rebuilt from the database on demand; an atomic rename is enough for it.
        files.write_atomic(
            target.with_suffix(SIDECAR_SUFFIX),
            files.json_text(sidecar).encode(),
            durable=False,
            parents=False,
        )
        return mtime

    async def _fetch_verified(self, row: Row, image: dict[str, Any]) -> files.Verified:
        url = image.get("url")
        expected = image.get("file_size") if isinstance(image.get("file_size"), int) else None
        for attempt in range(1, self.config.retry.attempts + 1):
            try:
                data, declared = await self.client.fetch(url)
                return files.verify_image(data, declared, expected)
            except files.BadImage as exc:
                if attempt >= self.config.retry.attempts:
                    raise JobRejected(f"download of {url[:80]} failed verification: {exc}") from exc
                await asyncio.sleep(self.client.backoff(attempt))
        raise AssertionError("unreachable")

    def _sidecar(self, row: Row, index: int, entry: dict[str, Any]) -> dict[str, Any]:
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
            "file": Path(entry["path"]).name,
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
