"""This worker's share of the plan: jobs claimed from the store in plan order, under lease.

Invariants:
  * Jobs come from `Store.claim`, in plan order, a batch of half the in-flight cap at a time
    (claimed jobs wait under lease: other workers are not starved).
  * Leases are renewed every third of their length; a job whose lease was lost is dropped here
    (its task cancelled, nothing recorded), unless its submit is on the wire.
  * The feed ends with one None per consumer, whatever stopped it, unless it was cancelled
    (then its consumers are cancelled too, and it never waits on its own queue).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping

from renderer.errors import OutageError, StateError
from renderer.runner.config import Event, RunConfig
from renderer.runner.job import RunState
from renderer.state.rows import LeaseLost
from renderer.state.store import Store

# Jobs handed out per turn of the loop. Handed out a batch at a time, the run's first S jobs
# (256 at S = 256) were all prepared (state read, submit recorded, connection opened) before the
# first of their submits was written: the provider's first slot waited ~0.15 s for the whole
# ramp, and every slot's round, to the last one, started that late. A few at a time, each
# group's submits go out while the next group is prepared, and the rounds start as the ramp goes.
FEED_STEP = 8


class Claims:
    """Feeds claimed jobs to the task pool and keeps their leases."""

    def __init__(
        self, store: Store, config: RunConfig, state: RunState, emit: Callable[[Event], None]
    ) -> None:
        self.store = store
        self.config = config
        self.state = state
        self.emit = emit
        self.dry: Callable[[], None] = lambda: None  # told when a claim finds nothing to hand out
        # Waited for once, after the first job is handed out (lead.FirstRound.alone).
        self.alone: Callable[[], Awaitable[None]] | None = None

    async def feed(self, queue: asyncio.Queue[str | None], consumers: int) -> None:
        """Claim jobs in plan order, a batch at a time, and hand them to the consumers; then one None each.

        Claimed jobs wait here under lease (renewed), so a batch is half the in-flight cap: other
        workers are not starved. With shared state, when nothing is claimable but jobs are still
        unfinished (held by other workers), wait: a dead worker's jobs come free when its lease ends.
        """
        batch = max(1, self.config.concurrency // 2)
        poll = min(2.0, self.config.lease / 4)
        recorder, bound = self.store.recorder, self.config.max_jobs
        cancelled = False
        try:
            while not self.state.stopping and self.state.broken is None:
                # Read before claiming: a recording that ended before an empty claim has nothing more.
                recording = (
                    recorder is not None
                    and not recorder.finished.is_set()
                    and (bound is None or recorder.recorded < bound)
                )
                claimed = self.store.claim(batch, before=bound)
                for n, c in enumerate(claimed, 1):
                    await queue.put(c.key)
                    if self.alone is not None:  # the run's first job: its submit goes alone
                        alone, self.alone = self.alone, None
                        await alone()
                    if n % FEED_STEP == 0:
                        # A turn of the loop for the jobs handed out so far: their submits go
                        # on the wire before the next ones are prepared (see FEED_STEP).
                        await asyncio.sleep(0)
                if claimed:
                    continue
                self.dry()
                if (
                    recording and recorder is not None
                ):  # the plan is still being recorded: more jobs come
                    recorder.start()  # (never waits for a recording not begun: Runner.run)
                    await asyncio.sleep(0.02)
                    continue
                if recorder is not None and recorder.error is not None:
                    raise recorder.error
                # Done when every unfinished job is this worker's own (in flight, or waiting for an
                # account it lacks: released at the end); else another worker holds some: wait.
                if (
                    not self.store.shared
                    or self.store.unfinished(self.config.max_jobs, others=True) == 0
                ):
                    break
                await asyncio.sleep(poll * (0.5 + secrets.randbelow(1000) / 1000))
        except StateError as exc:  # the state cannot be read or written: stop, say why
            self.state.broken = self.state.broken or exc
        except asyncio.CancelledError:
            # The pool cancels the feed when a worker raised: the workers are being cancelled too,
            # so nobody reads the queue any more and no end marker is owed (waiting to hand one
            # over to a full queue hung the worker for good).
            cancelled = True
            raise
        finally:
            if recorder is not None:
                recorder.start()  # (the runner starts it after its first round: maybe not yet)
                # Stopping, or a --max-jobs trial whose jobs are done: the recording ends after its
                # batch in hand and the next run records the rest (sync_plan resumes it; the plan's
                # digest is set only by a recording that got to the end). Otherwise it is waited
                # for, so the run ends on the whole plan's state. A trial of 20 jobs on a 1M-job
                # plan spent 93 % of its time waiting here for nobody.
                if (
                    cancelled
                    or self.state.stopping
                    or self.state.broken is not None
                    or bound is not None
                ):
                    recorder.halt()
                try:
                    await asyncio.get_running_loop().run_in_executor(None, recorder.thread.join)
                except asyncio.CancelledError:
                    recorder.halt()
                    recorder.thread.join()
                    raise
                if recorder.error is not None and self.state.broken is None:
                    self.state.broken = recorder.error
            if not cancelled:
                for _ in range(consumers):
                    await queue.put(None)

    def _finished(self, key: str) -> bool:
        """The job's outcome is committed: finishing releases its claim, so it is not among the
        held keys, while its task still does its last steps. Not a lost lease (dropping it
        then left its images uncounted: "images written this run" came out low under load)."""
        try:
            return self.store.get(key).state in ("downloaded", "failed")
        except (StateError, KeyError):
            return False

    async def renew(self, tasks: Mapping[str, asyncio.Task[None]]) -> None:
        """Renew this worker's leases every third of their length; drop the jobs whose lease was lost."""
        while True:
            await asyncio.sleep(self.config.lease / 3)
            try:
                held = self.store.renew()
            except LeaseLost:
                continue
            except OutageError as exc:  # unreachable past the outage window: the run stops
                self.state.broken = self.state.broken or exc
                return
            except (
                StateError
            ) as exc:  # the shared state is unreachable for now: the fences decide later
                self.emit({"type": "warning", "message": f"could not renew leases: {exc.message}"})
                continue
            for key, task in list(tasks.items()):
                if (
                    key not in held
                    and not task.done()
                    and self.state.phase.get(key) != "submitting"
                    and not self._finished(key)
                ):
                    self.state.dropped.add(key)
                    self.emit(
                        {
                            "type": "warning",
                            "key": key,
                            "message": f"{key}: lost its lease (another worker may "
                            "have it now); dropped here without recording anything",
                        }
                    )
                    task.cancel()
