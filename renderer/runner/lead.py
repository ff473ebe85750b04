"""The lead: how many submits wait in the provider's queue beyond an account's limit (issue 23);
and what the run's own cap admits with it (`follows_accounts`, `run_lead`, `provider_capacity`).

fal runs an account's requests up to its limit and queues the rest, never refusing a submit for
concurrency (../shared/docs/fal-protocol.md §2.2). A request queued there starts the moment a
running one finishes; a request renderer has yet to send starts only after renderer has seen
the COMPLETED, taken the freed slot and sent the submit. So an account of limit S is given
S + lead requests at once, and the lead is sized from what the run measures:

  * the completions renderer sees within one round's work: the CPU time the process spent on
    the last round of S completions (their status, submit, result read, download and writes).
    A completion waits for renderer at most about that long, and its slot stands idle while it
    waits unless a request is queued for it; so each completion seen within that window of
    another needs one. Its most over the last round is the lead for the next. (renderer's own
    refill, slot to wire, takes ~0.1 ms; what it cannot see is when a completion happened: the
    statuses carry no time, and the completions of a burst reach it one by one as it works
    through them, ~0.3 s for 256.)
  * plus a floor, max(2, ⌈S/8⌉), for what the window does not see (the status stream's and the
    submit's trips to the provider).

The window is what the client's load makes it: S × the CPU a job costs (~3 ms). Requests that
take seconds and finish spread out meet few others in it (40 slots at ~5 s: ~1 of 8 a second
within 0.12 s): the lead stays near its floor. Requests that started together and take the
same time finish together (the first round always starts together), and a client busy most of
each round sees them all within it: S of them, and S queued requests are what keeps every slot
busy through the refills. The first round assumes that: once its S submits are answered
(`ramped`; before, the lead is its floor, so the S that start at once are not slowed by S more
being sent beside them), the lead is its cap; later, it rises within the round that needs more and falls back after a
whole round that needed less (its most over this round and the last).

Bound: the lead never exceeds `lead_cap(S)` = max(2, S) requests, so an account never has more
than 2 × S requests at the provider: S running and at most S queued, each of which starts within
one service time. That is also the most a stop or a `kill -9` leaves queued beyond the running
requests (about the floor, ⌈S/8⌉, when completions come spread out); each is recorded before anything
follows it and is followed by the next run, never paid for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable

from renderer.runner.config import RunConfig


def lead_for(limit: int) -> int:
    """The lead's floor for a provider limit of `limit`: max(2, ceil(limit / 8)).

    What the measured window cannot see (the status stream's and the submit's trips) needs a
    few queued requests whatever the measurements say; and a small share of the limit.
    """
    return max(2, math.ceil(limit / 8))


def lead_cap(limit: int) -> int:
    """The most the lead grows to: one queued request per slot, max(2, limit)."""
    return max(lead_for(limit), limit)


def follows_accounts(config: RunConfig) -> bool:
    """Whether the run's own cap is its accounts' (with their leads), not a cap of the user's own.

    Without provider.accounts `concurrency` is the account's limit, which the provider holds.
    With accounts the run's cap is their sum, unless --concurrency / RENDERER_CONCURRENCY caps it
    lower: a cap of the user's own, which no provider enforces, is kept exactly (no lead), as a
    per-endpoint cap is.
    """
    return not config.accounts or config.concurrency >= sum(a.concurrency for a in config.accounts)


def run_lead(config: RunConfig) -> int:
    """The most the run's own cap admits beyond `concurrency`: its accounts' leads at their caps."""
    if not follows_accounts(config):
        return 0
    if not config.accounts:
        return lead_cap(config.concurrency)
    return sum(lead_cap(a.concurrency) for a in config.accounts)


def provider_capacity(config: RunConfig) -> int:
    """Requests the run may have at the provider at once: its cap and that cap's lead at its most."""
    return config.concurrency + run_lead(config)


class Lead:
    """The lead of one provider limit, from the completions seen and the CPU a round takes.

    `freed(now)` on each slot freed by a request the provider ran (its COMPLETED seen, or given
    up), `now` a monotonic time; `value` is the lead now, floor ≤ value ≤ cap. `clock`: the
    process's CPU seconds (time.process_time; a test gives its own).
    """

    MIN_WINDOW = 0.01  # seconds: completions seen this close together always count together

    def __init__(self, limit: int, clock: Callable[[], float] = time.process_time) -> None:
        self.floor = lead_for(limit)
        self.cap = lead_cap(limit)
        self.round = max(1, limit)  # completions in one round of the limit's slots
        self.value = self.floor  # until the first round is on the wire (ramped)
        self.clock = clock
        self._cpu = clock()  # the CPU clock when this round began
        self.work: float | None = None  # CPU seconds of the last round (None: in the first)
        self._seen: deque[float] = deque()  # when the completions within the window were seen
        self._count = 0  # completions seen this round
        self._peak = 0  # most completions within one window, this round
        self._last = self.cap  # the same, the round before (the first round: assumed at the cap)

    @property
    def window(self) -> float:
        """Seconds within which completions count together: the last round's CPU (the first
        round: its CPU so far), at least 10 ms."""
        work = self.work if self.work is not None else self.clock() - self._cpu
        return max(self.MIN_WINDOW, work)

    def ramped(self) -> None:
        """The first round's submits are answered: the queued lead for its burst follows."""
        if self.work is None:
            self.value = max(self.value, self.cap)

    def freed(self, now: float) -> None:
        seen = self._seen
        seen.append(now)
        edge = now - self.window
        while seen[0] < edge:
            seen.popleft()
        self._peak = max(self._peak, len(seen))
        self._count += 1
        if self._count >= self.round:
            cpu = self.clock()
            self.work, self._cpu = cpu - self._cpu, cpu
            self._last, self._peak, self._count = self._peak, 0, 0
        self.value = min(self.cap, self.floor + max(self._peak, self._last))


class FirstRound:
    """The run's first round of submits, sent before any request is followed.

    At start every provider slot is free, and a request that has not been sent is a slot that
    waits. A job whose submit was answered follows it (status stream, result, download) only
    once every submit granted in the first round has been answered: following the first answers
    while the other slots' first submits were still being prepared put ~1 ms of work per answer
    between one slot's submit and the next, and the round's last slots (with every later round
    of theirs) started a fifth of a second late at S = 256. A request runs at the provider
    meanwhile; only seeing it finish waits.

    The round is what the task pool hands out up to the slots' capacity (or until the feed runs
    dry); it is over when each of its grants has been answered (or given up). A grant never waits
    for a slot (a job waits for its slots before it is granted), so the round never waits for a
    completion; and whatever happens to it (a rate, 429s, a stop), it is over after LONGEST.

    Armed only by a task pool that tells it what it hands out (`arm`, `took`, `ran_dry`); until
    then nothing waits (JobSteps alone, the tests that drive it).
    """

    LONGEST = 1.0  # seconds from arming after which nothing waits for the round any more
    ALONE = 0.02  # seconds the round's first submit is given alone (`alone`)

    def __init__(self, capacity: Callable[[], int]) -> None:
        """`capacity`: the provider slots that may be held now (the round's size)."""
        self.capacity = capacity
        self.handed = 0  # jobs the task pool took
        self.dry = False  # the feed had nothing more to hand out
        self.unanswered: set[str] = set()  # the round's grants whose submit has no answer yet
        self.over = asyncio.Event()
        self.over.set()
        self.first = asyncio.Event()  # a submit since arming has been answered (or given up)
        self.first.set()

    def arm(self) -> None:
        """A task pool starts (on the running loop): its first round is answered before any follow."""
        self.handed, self.dry = 0, False
        self.unanswered.clear()
        self.over.clear()
        self.first.clear()
        asyncio.get_running_loop().call_later(self.LONGEST, self.over.set)

    def took(self) -> None:
        """The task pool took a job (a worker's next key)."""
        self.handed += 1

    def ran_dry(self) -> None:
        """The feed has nothing to hand out now: the round is what was handed out."""
        self.dry = True
        self._check()

    def granted(self, key: str) -> None:
        """`key` holds its provider slots for a new submit."""
        if not self.over.is_set():
            self.unanswered.add(key)

    def answered(self, key: str) -> None:
        """`key`'s submit was answered, or it gave up sending one."""
        self.first.set()
        if not self.over.is_set():
            self.unanswered.discard(key)
            self._check()

    def _check(self) -> None:
        if not self.unanswered and (self.dry or self.handed >= self.capacity()):
            self.over.set()

    async def alone(self) -> None:
        """Until the round's first submit is answered, at most ALONE (the feed waits here after
        it hands out its first job). Prepared beside the others, that submit's connection took
        a turn of the loop for each of its steps (opened, connected, written) behind ~60 other
        jobs' preparation: it reached the provider ~25 ms after the run's start at S = 256
        instead of ~10, and the provider's first slot, with every round of its, started that
        late. A provider farther away than ALONE costs the other jobs that much of a head start.
        """
        if not self.first.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.first.wait(), self.ALONE)

    async def wait(self) -> float:
        """Until the first round is over (at once when it is, or when none was armed); the
        seconds waited (not the job's own time: JobSteps moves its deadline by them)."""
        self._check()
        if self.over.is_set():
            return 0.0
        started = time.monotonic()
        await self.over.wait()
        return time.monotonic() - started
