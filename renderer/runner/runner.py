"""The runner: the plan's pending jobs → verified images on disk, within the provider's limits.

`Runner` is the task pool: it reconciles the state at start (reconcile.py), claims jobs from
the store (`Store.claim`, in plan order, under lease) and runs each in a worker task through
the per-job state machine (job.py), stops on Ctrl-C or SIGTERM with a grace period for submits
in flight, and at the end writes the dataset and run.json (record.py) and returns a Summary.

Invariants:
  * Work comes from the store (`Store.claim`), in plan order; results are keyed by job.
  * A job holds provider slots (the run's, its endpoint's, its account's) from its submit until
    it sees its request COMPLETED: what fal's concurrency limit counts (limits.py, with the
    small lead that waits in the provider's queue). Reading the result, downloading and writing
    hold a delivery slot instead, so slow downloads never idle the account.
  * The task pool has room for every provider slot, as many jobs again waiting for a delivery
    slot, and every delivery slot, so jobs waiting to be delivered never keep a freed provider
    slot from its next submit, even when every request finishes at once.
  * A freed provider slot's next submit goes before any new result read or download
    (deliver.Deliveries).
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
import gc
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from renderer.errors import StateError
from renderer.layout import DATA_DIR, DB_NAME
from renderer.output import dataset
from renderer.output.storage import OUTPUT_META, LocalStorage, Storage
from renderer.plan.cost import price_of
from renderer.plan.jobs import Plan
from renderer.provider.client import Client
from renderer.runner.claims import Claims
from renderer.runner.config import Event, RunConfig
from renderer.runner.deliver import (
    Delivery,
    GroupCommit,
    warm_up,
    write_dataset,
    write_record,
    writing,
)
from renderer.runner.job import JobSteps, RunState
from renderer.runner.limits import Accounts, Limits, delivery_bound, provider_capacity
from renderer.runner.reconcile import reconcile
from renderer.runner.record import Summary, run_record
from renderer.state.store import Store


def finished_cost(plan: Plan, store: Store) -> tuple[float | None, list[str]]:
    """(cost of every finished job by the manifest's prices, models without a price)."""
    total, uncosted = store.cost()  # summed in the database: no pass over the finished files here
    # Models named once from the store, not looked up per file (a million-job plan is not held).
    unpriced = set(store.models_without_cost()) if uncosted else set()
    in_plan = plan.by_model or None
    models = (
        {(m.endpoint, m.name) for m in plan.manifest.models if in_plan is None or m.name in in_plan}
        if in_plan is not None
        else {(j.endpoint, j.model) for j in plan.jobs}
    )
    priced = {m for e, m in models if price_of(plan.manifest.prices, e, m) is not None}
    unpriced |= {m for _, m in models} - priced
    return (round(total, 6) if priced else None), sorted(unpriced)


# The embedded database has one worker, under RunLock: nobody else can take its jobs, so a lease
# that ran out only because this event loop was busy (tens of thousands of jobs on one machine)
# would drop work still being done, and the images then written would go uncounted. Its claims
# last as long as the process ("10 years"); a killed run's are voided by the next (void_claims).
SOLO_LEASE = 10 * 365 * 86400.0


def trial_outcome(
    planned: int, counts: dict[str, int], max_jobs: int | None
) -> tuple[str, str | None, str | None]:
    """done, or partial for a `--max-jobs` trial that leaves the plan unfinished (so nobody
    publishes 50 images of a 60,000-job plan as "done"). Judged against the plan, not the state:
    a trial's recording of the plan may have stopped early."""
    left = planned - counts["downloaded"]
    if max_jobs is not None and left > 0:
        hint = (
            f"a --max-jobs {max_jobs} trial; {left:,} jobs of the plan are left: "
            "run again without --max-jobs to finish them"
        )
        return "partial", None, hint
    return "done", None, None


def run_outcome(runner: Runner, counts: dict[str, int]) -> tuple[str, str | None, str | None]:
    """(outcome, error, hint) of the run that ends now."""
    fatal = runner.state.fatal
    if fatal is not None:
        return "stopped", fatal.message, fatal.hint
    if runner.state.stopping:
        return "interrupted", None, None
    if runner.limits.waiting:
        # Only an account the user fixes or configures can finish these: the run cannot go on.
        return "stopped", *runner.limits.waiting_error()
    if counts["failed"]:
        return "failed", None, None
    return trial_outcome(len(runner.plan.jobs), counts, runner.config.max_jobs)


def progress_event(state: RunState, limits: Limits) -> Event:
    """The progress event: counts so far, requests at the provider, the allowance."""
    return {
        "type": "progress",
        "done": state.done,
        "failed": state.failed,
        "in_flight": limits.in_flight,
        "queued": len(state.queued),
        "images": state.images,
        "limit": limits.accounts.limit,
    }


# Jobs that are at the provider or past it: nothing of theirs is still to be submitted.
SUBMITTED = frozenset({"submitted", "waiting", "downloading"})
EARLY_EXPORT_MIN = 1000  # finished jobs below which the dataset is cheap enough to write at the end
EXPORT_STEP = 100  # rows finished since the last early write that make another one worth it


async def export_ahead(runner: Runner, drained: asyncio.Event) -> None:
    """The dataset written while the run's last requests are still running (issue 23's tail).

    Once every job has been handed out (`drained`) and all of them have been submitted, the
    rows finished so far are written (whole, for a changed plan) while the provider renders the
    last ones; then again whenever EXPORT_STEP more have finished and no job is being delivered
    (the loop is idle: every job left is still at the provider). The run's end then appends only
    the rows of the last requests (dataset.update), instead of writing ten thousand rows after
    the last image. Only for a local output of one worker, and only when there is enough to
    write for it to matter. A failure here is left for the run's own export at the end to meet
    and report.
    """
    if runner.shared or runner.storage.remote:
        return
    await drained.wait()
    while any(runner.state.phase.get(k) not in SUBMITTED for k in list(runner.tasks)):
        await asyncio.sleep(0.05)
    # The downloads of the jobs that finished as the last ones were submitted may still be under
    # way: wait for them (not for the last requests), rather than give up on a count taken too soon.
    while runner.tasks and runner.state.done < EARLY_EXPORT_MIN and not runner.state.stopping:
        await asyncio.sleep(0.05)
    written = 0
    while runner.tasks and not runner.state.stopping:
        if written and (
            runner.state.done - written < EXPORT_STEP
            or any(runner.state.phase.get(k) == "downloading" for k in runner.tasks)
        ):
            await asyncio.sleep(0.05)
            continue
        written = runner.state.done
        try:
            runner.write_rows()
        except (StateError, OSError):
            return
        runner.store.checkpoint()  # (the loop is idle: see StoreCore.checkpoint)


# Young objects allocated between two collections of the youngest generation, during a run
# (CPython's default is 700). Every job makes thousands of short-lived containers (requests,
# futures, rows, dicts), and each collection also walks every young survivor: the ~200 jobs in
# flight at once with their coroutines, futures and aiohttp objects. At 700 a (64, 0.2 s,
# 10,000) run collected ~1,000 times for ~0.95 s at load 2 (~1,900 for ~3 s at load 10); at
# 20,000, ~100 times for ~0.04-0.1 s (bench/gc_share.py). Cyclic garbage still goes, later.
GC_YOUNG = 20_000
# Runs in this process inside collecting_less (the Python API may run several, in threads), and
# the thresholds the first of them found: the last one out puts them back.
_COLLECTING: list[Any] = [0, None]
_COLLECTING_LOCK = threading.Lock()


@contextlib.contextmanager
def collecting_less() -> Iterator[None]:
    """The run's garbage collection: what exists at its start is frozen (never walked again by a
    collection: the plan, the modules, the state), and the youngest generation is collected
    every GC_YOUNG allocations instead of 700. Both undone when the last run of the process
    inside it ends (the Python API's caller keeps its own settings)."""
    with _COLLECTING_LOCK:
        if _COLLECTING[0] == 0:
            _COLLECTING[1] = gc.get_threshold()
            gc.set_threshold(GC_YOUNG, *_COLLECTING[1][1:])
        _COLLECTING[0] += 1
        gc.freeze()
    try:
        yield
    finally:
        with _COLLECTING_LOCK:
            _COLLECTING[0] -= 1
            if _COLLECTING[0] == 0:
                gc.set_threshold(*_COLLECTING[1])
                gc.unfreeze()


async def after_first_round(runner: Runner) -> None:
    """What waits for the first round's submits to be answered (lead.FirstRound), the loop
    being idle then until the provider finishes a request; each had taken the GIL from the last
    of 256 first submits when it began with the run:
      * a first run's plan beyond its first batch, recorded in the background
        (state/recording.py; a state read waited 10-20 ms for its thread at 2,000 jobs). A first
        round larger than the first batch (plansync.FIRST_BATCH) ends when the feed runs dry,
        which starts the recording too;
      * what the first delivery needs (deliver.warm_up: Pillow), in a thread: the first burst
        of completions does not pay for it. Not for a stop, nor a run with nothing to render.
        Tried once; a failure is the first delivery's to meet.
    """
    await runner.limits.first.over.wait()
    if runner.store.recorder is not None:
        runner.store.recorder.start()
    await asyncio.sleep(0)  # (the jobs the feed just handed out have their tasks)
    if runner.state.stopping or not runner.tasks:
        return
    with contextlib.suppress(Exception):
        await asyncio.to_thread(warm_up)


class Runner:
    """One worker's run of a plan: the task pool around the per-job state machine."""

    def __init__(
        self,
        plan: Plan,
        store: Store,
        client: Client,
        config: RunConfig,
        events: Callable[[Event], None] | None = None,
        output_check: Callable[[str, Any], list[Any]] | None = None,
        storage: Storage | None = None,
        clients: Mapping[str, Client] | None = None,
    ):
        """`clients`: with config.accounts, each account's client by account name (Client.with_key)."""
        self.plan = plan
        self.store = store
        self.client = client
        self.config = config
        self.emit: Callable[[Event], None] = events or (lambda event: None)
        self.run_dir: Path = store.run_dir
        # Where images, sidecars and the dataset land: the run directory, or a bucket (storage.py).
        self.storage: Storage = storage or LocalStorage(self.run_dir)
        self.signal = 2  # SIGINT unless stop() is told otherwise (SIGTERM → exit 143)
        self.state = RunState()
        self.limits = Limits(config, store, client, clients, self.emit)
        self.commits = GroupCommit(store)
        self.redownloads: set[str] = set()  # failed downloads put back by --retry-failed
        self.delivery = Delivery(
            plan, store, self.storage, client, config, self.commits, self.emit, self.redownloads
        )
        self.jobs = JobSteps(
            store,
            config,
            self.limits,
            self.delivery,
            self.commits,
            self.state,
            self.emit,
            self.stop,
            output_check,
        )
        self.claims = Claims(store, config, self.state, self.emit)
        self.claims.dry = self.limits.first.ran_dry
        self.claims.alone = self.limits.first.alone
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.plan_changed = True  # until prepare() finds the stored plan unchanged
        self.shared = store.shared  # several workers share the state: claims decide who does what
        self.finalizer = False  # this worker wrote the dataset and run.json (see finish)
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        if self.shared:  # the shared state says when it rides out an outage (state/postgres.py)
            store.on_outage = lambda message: self.emit({"type": "warning", "message": message})

    @property
    def accounts(self) -> Accounts:
        return self.limits.accounts

    @property
    def phase(self) -> dict[str, str]:
        """key → what its task is doing now (limited, submitting, waiting, downloading)."""
        return self.state.phase

    def progress(self) -> Event:
        return progress_event(self.state, self.limits)

    # -------------------------------------------------- the run

    def prepare(self) -> int:
        """Reconcile the state, join as a worker; returns the count of ambiguous submits.

        (With shared state an ambiguous submit is counted when its job is claimed: see JobSteps.submit.)
        """
        found = reconcile(
            self.plan, self.store, self.storage, self.config, self.client.base_url, self.emit
        )
        self.plan_changed = found.plan_changed
        self.redownloads |= found.redownloads  # the same set the delivery reads
        lease = self.config.lease if self.shared else SOLO_LEASE  # see SOLO_LEASE
        self.store.join(self.worker_id, lease, socket.gethostname(), os.getpid())
        if self.storage.remote and self.store.meta(OUTPUT_META) != self.storage.where(""):
            # Where the images are, for the tools that read the run from its state (output/source.py).
            self.store.set_meta(OUTPUT_META, self.storage.where(""))
        if self.shared:  # account limits held in the shared state for every worker
            self.store.set_accounts(self.limits.shared_ceilings())
        return 0 if self.shared else self.store.ambiguous()

    async def run(self) -> Summary:
        started = time.time()
        ambiguous = self.prepare()
        run_id = self.store.start_run(ambiguous)
        pending = self.store.pending_count(self.config.max_jobs)
        if not self.shared:  # (shared: run.json is written once, when the run is complete)
            # Until finish() replaces it, run.json says the run is in progress: a crash never leaves "done".
            record = run_record(
                self.plan,
                "running",
                provider=self.config.provider,
                started=started,
                pending=pending,
            )
            write_record(self.storage, self.run_dir, record)
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

        closing: list[bool] = []  # the pool ends: a worker's cancellation is final, never a job's
        drained = asyncio.Event()  # every key handed out: the feeder's end markers are next

        async def worker() -> None:
            while (key := await queue.get()) is not None:
                if self.state.stopping:
                    continue  # drain: the feeder ends with one None per worker
                # The job takes its provider slots itself, just before its submit (JobSteps).
                self.limits.first.took()
                task = asyncio.ensure_future(self.jobs.advance(key))
                self.tasks[key] = task
                try:
                    await task
                except asyncio.CancelledError:  # a job's (stop, lost lease), or ours (`closing`)
                    if closing or (not self.state.stopping and key not in self.state.dropped):
                        raise
                finally:
                    self.tasks.pop(key, None)
                    self.state.phase.pop(key, None)
                    self.state.queued.pop(key, None)
                self.emit(self.progress())
            drained.set()

        # Enough workers for every provider slot (with its lead), as many jobs again between their
        # COMPLETED and their delivery, and every delivery: when every request finishes at once,
        # each freed slot still has a job waiting to submit (with one worker per slot and
        # delivery, the jobs queued for a delivery slot held the workers, and a burst of 256
        # completions refilled 96 slots at once and the rest only as deliveries ended).
        size = 2 * provider_capacity(self.config) + delivery_bound(self.config.concurrency)
        if self.limits.limiter is None and not any(a.limiter for a in self.accounts.all):
            # (A paced run's first round lasts as long as its rate makes it: nothing waits for it.)
            self.limits.first.arm()  # the first round: see lead.FirstRound
        workers = [asyncio.ensure_future(worker()) for _ in range(size)]
        helpers = [
            asyncio.ensure_future(self.claims.feed(queue, len(workers))),
            asyncio.ensure_future(self.claims.renew(self.tasks)),
            asyncio.ensure_future(export_ahead(self, drained)),
            asyncio.ensure_future(after_first_round(self)),
        ]
        self.store.grouping = self.store.group_commit
        try:
            with collecting_less():
                await asyncio.gather(*workers)
        finally:
            closing.append(True)
            for w in workers + helpers:
                w.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            self.delivery.close()
            self.store.grouping = False
            try:
                self.store.commit()  # anything deferred by a job cancelled while it waited
            except StateError as exc:
                self.state.broken = self.state.broken or exc
            try:
                self.store.release()  # claimed, not finished: others (or the next run) may take them at once
                self.store.leave()
            except StateError as exc:  # (unreachable: the leases end by themselves)
                self.state.broken = self.state.broken or exc
            summary = self.finish(run_id, started, ambiguous)
        return summary

    def stop(self, force: bool = False, signal: int | None = None) -> None:
        """Ctrl-C or SIGTERM: stop new submissions; abandon waits and downloads (their state is recorded).

        Submits in flight get `grace` seconds to record their request ids; with force, or
        after the grace period, everything is cancelled. `signal` sets the exit code (128 + it).
        """
        if signal is not None:
            self.signal = signal
        self.state.stopping = True
        for key, task in list(self.tasks.items()):
            if force or self.state.phase.get(key) != "submitting":
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
        if self.state.broken is not None:
            with contextlib.suppress(StateError):  # (the state itself may be what broke)
                self.store.finish_run(
                    run_id,
                    "error",
                    run_record(
                        self.plan,
                        "error",
                        error=self.state.broken.message,
                        counts=self.store.counts(),
                        finished=time.time(),
                        images=self.state.images,
                    ),
                )
            raise self.state.broken
        counts = self.store.counts()
        # Shared state: the dataset and run.json are written once, by the worker that finds the run
        # complete (one wins set_meta_once), or by `renderer finalize`; the others only report.
        self.finalizer = not self.shared or (
            self.store.unfinished(self.config.max_jobs) == 0
            and self.store.set_meta_once(
                "finalized",
                f"{self.plan.digest}:{counts['downloaded']}:{counts['failed']}",
            )
        )
        if self.finalizer:
            with writing(self.run_dir / DATA_DIR):
                self.export()
        outcome, error, hint = run_outcome(self, counts)
        total_cost, unpriced = finished_cost(self.plan, self.store)
        summary = Summary(
            outcome,
            counts,
            started,
            time.time(),
            self.state.images,
            ambiguous,
            dict(self.client.calls),
            error,
            hint,
            None if total_cost is None else round(self.state.cost, 6),
            total_cost,
            self.plan.total_cost,
            self.run_dir,
            self.store.resubmit_reasons(run_id),
            self.signal,
            self.limits.account_record(),
            self.limits.waiting_record(),
            self.config.provider,
        )
        record = run_record(
            self.plan,
            outcome,
            provider=self.config.provider,
            summary=summary,
            store=self.store,
            unpriced=unpriced,
        )
        if self.finalizer:
            write_record(self.storage, self.run_dir, record)
        self.store.finish_run(run_id, outcome, record)
        # The last event: a listener (the API's on_event) learns the run ended and how.
        self.emit(
            {
                "type": "finished",
                "outcome": outcome,
                "counts": dict(counts),
                "images": summary.images,
                "error": error,
            }
        )
        return summary

    def export(self) -> None:
        # The dataset is derived from the finished rows alone: unchanged rows, unchanged files.
        if (
            not self.shared
            and not self.storage.remote
            and not self.plan_changed
            and self.state.images == 0
            and self.state.failed == 0
            and (self.run_dir / DATA_DIR / dataset.METADATA).is_file()
        ):
            return
        self.write_rows()

    def write_rows(self) -> None:
        """metadata.jsonl and the card now: for an unchanged plan this run's finished jobs are
        appended (a changed one rewrites it whole); then it matches the plan, so a later write
        of this run appends to it."""
        write_dataset(
            self.plan,
            self.store,
            self.storage,
            self.config.provider or None,
            append=not self.plan_changed,
            record=True,
        )
        self.plan_changed = False
