"""The per-job state machine: one job from its stored state to downloaded (or failed).

planned → submit → submitted → status/result → completed → deliver → downloaded. Each step
reads nothing it was not given, commits its change before the next step, and returns the row as
it now stands (None: read it again, after a resubmit or a failure).

Invariants:
  * The job deadline (RunConfig.timeout) covers submit, wait, result and download; a step with
    no time left is not started, so nothing is sent past it.
  * Resubmission only on the provider's word that the request is gone (404) or its runner
    failed, within the attempt budget; a submit whose outcome is unknown is failed, never resent.
  * A request is followed, read and cancelled only under the account recorded with it.
  * Provider slots (limits.py) are held from just before the submit until COMPLETED is seen;
    the result read and the delivery hold a delivery slot instead, never a provider slot.
  * No paid request without room on the disk to record its id (FREE_SPACE_RESERVE).

`JobSteps` needs a store, a client-like object per account (submit, wait, result, cancel,
fetch) and the run's limits: no task pool, no server (tests/test_job.py drives it directly).
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from renderer.errors import (
    AccountError,
    JobRejected,
    OutcomeUnknown,
    RequestGone,
    RunnerFailed,
    StateError,
    TransientError,
)
from renderer.plan.jobs import describe_job
from renderer.provider.client import RUNNER_ERRORS, Handle, Status
from renderer.runner.config import Event, RunConfig
from renderer.runner.deliver import Delivery, GroupCommit, check_images, disk_hint
from renderer.runner.limits import Account, Limits
from renderer.state.rows import LeaseLost, Row
from renderer.state.store import Store

T = TypeVar("T")
# Free bytes below which no new request is paid for: a submit whose request id cannot be
# committed (disk full) would be paid again by the rerun after the fix.
FREE_SPACE_RESERVE = 8 * 1024 * 1024


CANCEL_WAIT = 10.0  # seconds a cancel after the job deadline may take: the bounded margin past it


if sys.version_info >= (3, 11):

    async def within(work: Coroutine[Any, Any, T], seconds: float) -> T:
        """`await work`, cut off after `seconds` with TimeoutError, as asyncio.wait_for but in this
        task (wait_for makes a task per call: twice the cost, on each step of every job).
        With no time left the coroutine is not started at all, as with wait_for."""
        if seconds <= 0:
            work.close()
            raise asyncio.TimeoutError
        async with asyncio.timeout(seconds):
            return await work
else:  # pragma: no cover - Python 3.10
    within = asyncio.wait_for


def left(deadline: float) -> float:
    """Seconds until a monotonic deadline (never negative)."""
    return max(0.0, deadline - time.monotonic())


def describe(row: Row) -> str:
    """prompt, model, seed and axes of a stored job, as Job.describe says them (for failure lines)."""
    return describe_job(row.prompt_id, row.model, row.seed, row.axes)


@dataclass
class RunState:
    """What the task pool and the jobs share: whether to stop and why, what each job is doing,
    and the counts so far (read by progress events and the summary)."""

    stopping: bool = False
    fatal: AccountError | None = None  # the 401/403 that stopped the run
    broken: StateError | None = None  # the run's own files cannot be written: stop, say why
    phase: dict[str, str] = field(default_factory=dict)  # key → what its task is doing now
    queued: dict[str, int | None] = field(default_factory=dict)  # key → queue position
    # Keys whose lease this worker lost: their tasks are cancelled, not failed.
    dropped: set[str] = field(default_factory=set)
    # Keys whose submit is on the wire (sent, not yet answered).
    sending: set[str] = field(default_factory=set)
    done: int = 0
    failed: int = 0
    images: int = 0
    cost: float = 0.0  # of this run's finished jobs, by the manifest's prices


def deadline_failure(step: str, sent: bool, timeout: float) -> tuple[str, str]:
    """(reason, kind) of a job the deadline cut off in `step`; `sent`: its submit was on the wire."""
    limit = f"{timeout:g} s"
    if sent:  # cut off between sending the submit and reading its answer
        return (
            f"submit: no answer within the job deadline ({limit}); the provider may have "
            "accepted and billed it",
            "outcome_unknown",
        )
    if step == "planned":
        return (
            f"submit: not accepted within the job deadline ({limit}); nothing was sent "
            "that the provider took",
            "deadline",
        )
    what = "result" if step == "submitted" else "download"
    return f"{what}: not complete within the job deadline ({limit})", "deadline"


def check_space(run_dir: Path) -> None:
    """Refuse to pay for a request whose id the disk may have no room left to record."""
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return  # the writes themselves will say what is wrong
    if free < FREE_SPACE_RESERVE:
        raise StateError(
            f"{run_dir}: only {free / 1e6:.1f} MB free; renderer stops submitting below "
            f"{FREE_SPACE_RESERVE / 1e6:.0f} MB, so that every paid request can still be recorded",
            hint=disk_hint(OSError(errno.ENOSPC, "no space")),
        )


class QueueWatch:
    """The statuses of one followed job (the client's on_status): its queue position for the
    progress count, surfaced as an event every `every` seconds, and the last status seen."""

    def __init__(
        self, row: Row, state: RunState, every: float, emit: Callable[[Event], None]
    ) -> None:
        self.row, self.state, self.every, self.emit = row, state, every, emit
        self.reported = time.monotonic()  # when queue_position was last surfaced for this job
        self.last: Status | None = None

    def __call__(self, status: Status) -> None:
        self.last = status
        key = self.row.key
        if status.state != "IN_QUEUE":
            self.state.queued.pop(key, None)
            return
        self.state.queued[key] = status.queue_position
        if time.monotonic() - self.reported > self.every:
            self.emit(
                {
                    "type": "queued",
                    "key": key,
                    "position": status.queue_position,
                    "job": describe(self.row),
                }
            )
            self.reported = time.monotonic()

    def where(self) -> str:
        """Where the job was last seen, for the deadline's failure reason ("" if never)."""
        if self.last is None:
            return ""
        where = f"; last status {self.last.state}"
        if self.last.queue_position is not None:
            where += f" at queue position {self.last.queue_position}"
        return where


class JobSteps:
    """Moves one job through its steps (`advance`); the task pool runs one call per job.

    `stop`: what a job asks of the pool when the run cannot go on (a last account refused its
    key, the state cannot be written): no new submits, waits abandoned.
    """

    def __init__(
        self,
        store: Store,
        config: RunConfig,
        limits: Limits,
        delivery: Delivery,
        commits: GroupCommit,
        state: RunState,
        emit: Callable[[Event], None],
        stop: Callable[[], None],
        output_check: Callable[[str, Any], list[Any]] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.limits = limits
        self.delivery = delivery
        self.commits = commits
        self.state = state
        self.emit = emit
        self.stop = stop
        self.output_check = output_check
        self.run_dir = store.run_dir

    async def _hold(self, row: Row) -> bool:
        if row.state == "planned" and row.key not in self.limits.held:
            self.state.phase[row.key] = "limited"  # waiting for an account's slot
        return await self.limits.hold(row)

    async def advance(self, key: str) -> None:
        """Every step `key` still needs, from its stored state; failures are recorded, not raised
        (except the ones that stop the run, which set `state.fatal` or `state.broken`)."""
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
                if self.state.stopping and row is not first:
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
                        if self.state.stopping or not await self._hold(row):
                            return
                        row = await within(self.submit(row), left(deadline))
                        if row is None:
                            return
                    elif step == "submitted":
                        # (Waiting for the client's own first round is not the job's time.)
                        deadline += await self.limits.first.wait()
                        if not await self._hold(row):
                            return
                        account = self.limits.held[key]
                        self.delivery.prepare(row)  # its folder, while the request runs
                        followed = row
                        try:
                            row = await self.follow(followed, deadline, account)
                        except AccountError as exc:
                            # The request stays recorded under its account: a later run follows it.
                            await self.limits.let_go(key)
                            await self.limits.stop_account(account, exc)
                            self.limits.wait_for_account(followed)
                            return
                        await self.limits.let_go(key)  # (follow gave them back on COMPLETED)
                    elif step == "completed":
                        async with self.limits.deliveries:
                            row = await within(self.deliver(row), left(deadline))
                    else:
                        if row.state == "downloaded":
                            self.state.done += 1
                        return
                except asyncio.TimeoutError:
                    self.over_deadline(key, step)
                    return
        except LeaseLost as exc:
            # Another worker may own the job now: record nothing, write nothing, just let go.
            self.state.dropped.add(key)
            self.emit({"type": "warning", "key": key, "message": exc.message})
        except AccountError as exc:
            self.state.fatal = self.state.fatal or exc
            self.emit({"type": "fatal", "message": exc.message})
            # Not forced: nothing new is sent, waits are abandoned, and a submit already on the
            # wire gets its answer (the same refusal, recorded as one) instead of being cut off
            # into an ambiguous submit that the next run would count as paid twice.
            if not self.state.stopping:
                self.stop()
        except StateError as exc:
            # The run's own files or state cannot be written: every further job would fail the same way.
            self.state.broken = self.state.broken or exc
            # Not forced: a submit in flight still gets to record its request id (if the disk lets
            # it), so that the rerun after the fix does not pay for it again.
            if not self.state.stopping:
                self.stop()
        except OutcomeUnknown as exc:
            self.fail(key, exc.message, "outcome_unknown")
        except JobRejected as exc:
            self.fail(key, exc.message, "rejected")
        except TransientError as exc:
            self.fail(
                key,
                f"gave up after {self.config.retry.attempts} attempts: {exc.message}",
                "transient",
            )
        finally:
            await self.limits.let_go(key)

    def over_deadline(self, key: str, step: str) -> None:
        """The job deadline cut `step` off: fail the job, saying what was not done."""
        sent = key in self.state.sending
        self.state.sending.discard(key)
        self.fail(key, *deadline_failure(step, sent, self.config.timeout))

    def fail(self, key: str, reason: str, kind: str) -> None:
        # A server may echo the key into anything it answers.
        reason = self.limits.client.scrub(reason)
        self.store.failed(key, reason, kind)
        self.state.failed += 1
        self.emit(
            {"type": "failed", "key": key, "reason": reason, "job": describe(self.store.get(key))}
        )

    def retry(self, row: Row, reason: str) -> None:
        """Resubmit after a runner failure or a lost request, within the attempt budget."""
        if row.attempts >= self.config.retry.attempts:
            raise JobRejected(f"{reason}; gave up after {row.attempts} submissions")
        self.store.resubmit(row.key, reason)
        self.emit({"type": "resubmit", "key": row.key, "reason": reason})

    async def submit(self, row: Row) -> Row | None:
        """Submit with the account whose slot the job holds; after a 401/403 there, with another."""
        if self.store.shared and row.submit_started is not None and row.request_id is None:
            # A worker stopped between sending this job's submit and recording its answer (that is
            # the submit→commit window): the provider may have it; sending again may pay twice.
            self.store.record_resubmit(row.key, "a worker stopped between a submit and its record")
        while True:
            account = self.limits.held[row.key]
            self.state.phase[row.key] = "limited"
            if account.limiter is not None or self.limits.limiter is not None:
                self.limits.deliveries.sent(row.key)  # a rate's wait does not hold deliveries back
            if account.limiter is not None:
                await account.limiter.acquire()
            if self.limits.limiter is not None:
                await self.limits.limiter.acquire()
            if self.state.stopping:
                return None
            handle = await self.send(row, account)
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
                **({"account": account.name} if self.limits.pooled else {}),
            }
        )
        account.slots.succeeded()
        self.state.phase[row.key] = "submitted"
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

    async def send(self, row: Row, account: Account) -> Handle | None:
        """One submit under `account`; None when it refused the key (401/403) and stopped."""
        self.state.phase[row.key] = "submitting"
        check_space(self.run_dir)

        def sending() -> (
            None
        ):  # the submit→commit window opens: a kill now leaves an ambiguous submit
            self.state.sending.add(row.key)
            self.store.submit_started(row.key)
            self.limits.deliveries.sent(row.key)  # on the wire: deliveries may go on

        def refused() -> None:  # a definite refusal (429, 401, ingress 502…): nothing was taken
            self.state.sending.discard(row.key)
            self.store.submit_refused(row.key)

        try:
            return await account.client.submit(
                row.endpoint, row.input, sending=sending, refused=refused
            )
        except AccountError as exc:
            self.store.submit_refused(row.key)  # a definite refusal is not an ambiguous submit
            await self.limits.let_go(row.key)
            await self.limits.stop_account(account, exc)  # raises when no account is left
            return None
        finally:
            self.state.sending.discard(row.key)
            self.limits.deliveries.sent(row.key)
            self.limits.first.answered(row.key)

    async def follow(self, row: Row, deadline: float, account: Account) -> Row | None:
        assert row.request_id and row.status_url and row.response_url and row.cancel_url
        handle = Handle(row.request_id, row.status_url, row.response_url, row.cancel_url)
        self.state.phase[row.key] = "waiting"
        watch = QueueWatch(row, self.state, self.config.queue_report, self.emit)
        try:
            status = await within(account.client.wait(handle, watch), left(deadline))
        except asyncio.TimeoutError:
            try:
                answer = await asyncio.wait_for(account.client.cancel(handle), CANCEL_WAIT)
            except asyncio.TimeoutError:
                answer = f"no answer within {CANCEL_WAIT:g} s"
            self.fail(
                row.key,
                f"no result within {self.config.timeout:g} s{watch.where()}; cancel: {answer}",
                "deadline",
            )
            return None
        except RequestGone:
            self.retry(row, "the provider no longer knows the request")
            return None
        finally:
            self.state.queued.pop(row.key, None)
        # COMPLETED: the request no longer runs at the provider, so its slots are free for the
        # next submit now; reading the result and downloading hold a delivery slot only.
        await self.limits.let_go(row.key)
        if status.error_type in RUNNER_ERRORS:
            self.retry(row, f"the provider's runner failed ({status.error_type}: {status.error})")
            return None
        # A read error here is retried as a read (client.result); only definite evidence that
        # this request will never deliver (a runner error_type, a 404) pays for a new one.
        try:
            async with self.limits.deliveries:
                result = await within(account.client.result(handle), left(deadline))
        except RunnerFailed as exc:
            self.retry(row, exc.message)
            return None
        except RequestGone:
            self.retry(row, "the provider no longer has the result")
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

    async def deliver(self, row: Row) -> Row | None:
        """The result's images written and recorded (delivery), counted for this run."""
        self.state.phase[row.key] = "downloading"
        delivered = await self.delivery.deliver(row, self.retry)
        if delivered is not None:
            entries = delivered.files or []
            self.state.images += len(entries)
            self.state.cost += sum(e.get("cost") or 0.0 for e in entries)
        return delivered
