"""The limits a run keeps: provider slots (the run's, each endpoint's, each account's), the
deliveries' own bound, the submission rate, and which account a job's request belongs to.

What a limit counts (issue 23): fal counts an account's requests IN_PROGRESS; queued ones wait,
and a submit is never refused for concurrency (../shared/docs/fal-protocol.md §2.2). So a job
holds a *provider slot* (of the run, of its endpoint if capped, of its account) from just before
its submit until it sees its request COMPLETED, and no longer: the result read, the download and
the file writes hold only a *delivery* slot (`Limits.deliveries`), so a finished request's
provider slot is free while its files are still being fetched.

An account's limit N admits N + lead requests: the lead waits in the provider's queue, so when
one of the N running requests finishes, the provider starts a queued one at once instead of
idling for the round trip in which renderer sees COMPLETED and submits the next. The lead is
sized from what the run measures (lead.py: the completions seen within one round's CPU time),
between max(2, ceil(N / 8)) and N: an account never has more than 2 × N requests at the
provider, and a stop or a kill -9 leaves at most N queued beyond the N running (each recorded
and followed by the next run, never paid again). When the provider enforces the limit (fal
does, per account), at most N run at once; an account with more room than its `concurrency`
says may run the lead too. The lead is only for the limits a provider holds: an account's
`concurrency` (and `limits.concurrency`, the single account's); the run's own slots admit the
accounts' leads together. Caps of the user's own, which no provider enforces (`per_endpoint`,
and a --concurrency below the accounts' sum), are kept exactly: at most N at the provider.

Invariants:
  * A submitted request is followed only under the account recorded with it; a job whose
    account is missing or stopped waits (counted in `waiting`), never sent under another key.
  * A 429 halves only the allowance of the account it came from (additive increase after).
  * Slots are taken endpoint → run → account and given back together (`let_go`): no job waits
    for one while holding a later one, so no two jobs wait on each other.
  * With shared state (several workers), account slots and the rate are leased in the database
    (SharedSlots, SharedRate), so the limits hold across all workers together; those slots keep
    no lead (exactly N across the workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from renderer.errors import AccountError
from renderer.provider.client import Client
from renderer.runner.config import SINGLE_ACCOUNT, SINGLE_KEY, Event, RunConfig
from renderer.runner.deliver import Deliveries
from renderer.runner.lead import FirstRound, Lead, follows_accounts
from renderer.runner.lead import provider_capacity as provider_capacity  # (where it was)
from renderer.state.rows import Row
from renderer.state.store import Store

if TYPE_CHECKING:  # loaded only when a rate is set (make_limiter): ~8 ms of a run's start
    from aiolimiter import AsyncLimiter


def delivery_bound(concurrency: int) -> int:
    """Jobs reading a result or downloading, verifying and writing images at once.

    Separate from the provider's limit (a download holds no provider slot): enough to keep up
    with `concurrency` requests finishing (a CDN download takes ~0.1-0.5 s against seconds of
    rendering), capped so the images held in memory at once stay bounded (64 × a few MB).
    """
    return max(8, min(64, concurrency))


class AdaptiveLimit:
    """Provider slots with additive increase, multiplicative decrease on throttling (429).

    `capacity`: the allowance (the limit, halved by 429s) plus `lead` requests that wait in the
    provider's queue (module docstring). Waiters are served first come, first served, and a
    freed slot wakes exactly one of them (`_wake`): with a condition and notify_all, each release
    woke every waiting job (~S of them) to look again, a measurable share of the client's CPU.

    Invariant: while anyone waits, every slot is held (`_wake` runs on every change that frees
    room: a release, a raised allowance, a waiter that gives up).
    """

    def __init__(self, ceiling: int, lead: int = 0) -> None:
        self.ceiling = ceiling
        self.lead = lead
        self.limit = float(ceiling)  #: current allowance; 1 ≤ limit ≤ ceiling
        self.active = 0  #: slots held right now
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def capacity(self) -> int:
        """Slots that may be held now: the allowance and the lead."""
        return max(1, math.floor(self.limit)) + self.lead

    async def acquire(self) -> None:
        if self.active < self.capacity and not self._waiters:
            self.active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the slot is counted in `active` by whoever set the result (_wake)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.active -= 1  # granted, but cancelled before it could be used: given back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            self._wake()
            raise

    def _wake(self) -> None:
        while self._waiters and self.active < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)

    async def release(self) -> None:
        self.active -= 1
        self._wake()

    def grown(self) -> None:
        """The lead grew: the waiters it makes room for are served."""
        self._wake()

    def throttled(self) -> None:
        self.limit = max(1.0, self.limit / 2)

    def succeeded(self) -> None:
        self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)
        self._wake()


class AccountSlots(AdaptiveLimit):
    """The in-flight slots of one account: its own ceiling, halved on its own 429s.

    `acquire`, `try_acquire` and `release` are all the runner uses, so slots leased in shared
    state (one limit across several workers) can stand in for these in-process ones.
    `adaptive`: its lead is measured (lead.Lead) and kept in `lead`; else it has none.
    """

    def __init__(self, ceiling: int, adaptive: bool = False) -> None:
        self.gauge = Lead(ceiling) if adaptive else None
        super().__init__(ceiling, self.gauge.value if self.gauge else 0)
        self._answered = 0  # submits answered, until its first round's are (then the lead grows)
        self.on_grown: Callable[[], None] | None = None  # told when `lead` grows on its own

    def succeeded(self) -> None:
        """A submit was answered; once the first round's have been, the lead for its burst
        follows (lead.Lead.ramped): not before, so that the S requests that start at once are
        not slowed by S more being sent beside them."""
        super().succeeded()
        if self.gauge is None or self._answered >= self.ceiling:
            return
        self._answered += 1
        if self._answered == self.ceiling:
            self.gauge.ramped()
            self.lead = self.gauge.value
            self._wake()
            if self.on_grown is not None:
                self.on_grown()

    def freed(self) -> None:
        """A request it ran finished (or was given up): the lead as measured now."""
        if self.gauge is not None:
            self.gauge.freed(time.monotonic())
            self.lead = self.gauge.value

    @property
    def allowance(self) -> int:
        return max(1, math.floor(self.limit))

    async def try_acquire(self) -> bool:
        """Take a slot if one is free now (never waits for one, never ahead of a waiter)."""
        if self.active >= self.capacity or self._waiters:
            return False
        self.active += 1
        return True


class SharedSlots(AccountSlots):
    """An account's slots leased in the shared state (pgstore.acquire_slot): one limit across all workers.

    A slot is taken here first (this worker's own allowance, halved by its 429s), then in the
    database; a worker that dies holds its database slots only until its lease ends.
    """

    POLL = 0.2  # seconds between looks for a slot another worker freed

    def __init__(self, ceiling: int, store: Store, name: str) -> None:
        super().__init__(ceiling)
        self.store = store
        self.name = name
        self.numbers: list[int] = []  # database slots held now

    async def try_acquire(self) -> bool:
        if not await super().try_acquire():
            return False
        try:
            n = self.store.acquire_slot(self.name, "")
        except BaseException:
            await super().release()  # the state failed (an outage): this worker's slot is not kept
            raise
        if n is None:
            await super().release()
            return False
        self.numbers.append(n)
        return True

    async def acquire(self) -> None:
        while not await self.try_acquire():
            await asyncio.sleep(self.POLL)

    async def release(self) -> None:
        try:
            if self.numbers:
                self.store.release_slot(self.name, self.numbers.pop())
        finally:
            # Given back here even when the state failed (its database slot ends with its lease):
            # a slot kept would leave the jobs waiting for it waiting for good.
            await super().release()


class SharedRate:
    """Submissions per second across every worker of a shared run: evenly spaced turns taken in
    the database (Store.reserve, a GCRA on PostgreSQL), so N workers together keep one account's rate."""

    def __init__(self, store: Store, name: str, rate: float) -> None:
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


class _Stopped(Exception):
    """No live account is left to take a slot of (inside `Limits.hold` only)."""


def bucket_size(rate: float) -> int:
    """Tokens the submission bucket holds: 50 ms' worth, at least one.

    Any one-second window then sees at most rate + bucket submissions. A one-token bucket
    paid the event loop's timer lag on every token (-5.7 % at 50/s, bench/rate_precision.py);
    a bucket of a whole second's worth let 2 x rate through in the first second.
    """
    return max(1, math.floor(rate / 20))


def make_limiter(rate: float) -> AsyncLimiter:
    """The submission bucket for `rate` per second (sized by bucket_size)."""
    from aiolimiter import AsyncLimiter

    size = bucket_size(rate)
    return AsyncLimiter(size, size / rate)


def who(name: str | None) -> str:
    """An account as warnings and run.json name it (None: the single key of an earlier run)."""
    return f"account {name!r}" if name is not None else "the single key of an earlier run"


class Limits:
    """Every limit of one run, and which account's slot each job holds.

    Built from the RunConfig: the run's adaptive provider slots (`slots`), the per-endpoint
    caps, the deliveries' bound, the run's rate (`limiter`, none unless limits.rate is set) and
    the accounts (one, the client's key, without provider.accounts). `hold`/`let_go` take and
    give back a job's provider slots (endpoint, run, account).
    """

    def __init__(
        self,
        config: RunConfig,
        store: Store,
        client: Client,
        clients: Mapping[str, Client] | None,
        emit: Callable[[Event], None],
    ) -> None:
        """`clients`: with config.accounts, each account's client by name (Client.with_key)."""
        self.emit = emit
        self.client = client
        # The run's own slots admit its accounts' leads as they are measured (`_follow`), or none
        # when the run has a cap of the user's own (follows_accounts).
        self.slots = AdaptiveLimit(config.concurrency)
        self.follows = follows_accounts(config)
        # A per-endpoint cap counts what an account's does (requests at the provider), exactly:
        # it is the user's own (module docstring).
        self.endpoint_slots = {e: asyncio.Semaphore(n) for e, n in config.per_endpoint.items()}
        self.deliveries = Deliveries(delivery_bound(config.concurrency))  # (deliver.py)
        # The first round: answered before any request is followed (lead.FirstRound).
        self.first = FirstRound(lambda: self.slots.capacity)
        # No pacing unless the user sets limits.rate: fal limits what runs, not how fast it is asked.
        self.limiter: AsyncLimiter | SharedRate | None = (
            make_limiter(config.rate) if config.rate else None
        )
        self.pooled = bool(config.accounts)
        if config.accounts:
            self.accounts = Accounts(
                [
                    Account(
                        a.name,
                        (clients or {}).get(a.name) or client.with_key(None),
                        AccountSlots(a.concurrency, adaptive=True),
                        make_limiter(a.rate) if a.rate else None,
                    )
                    for a in config.accounts
                ]
            )
        else:
            self.accounts = Accounts(
                [Account(None, client, AccountSlots(config.concurrency, adaptive=True))]
            )
        if store.shared:
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
            # --rate: the run's total, all workers.
            if config.rate:
                self.limiter = SharedRate(store, "run", config.rate)
        for account in self.accounts.all:
            account.client.on_event = self._events_of(account)
        self._capped_said = False
        self.held: dict[str, Account] = {}  # key → the account whose slot the job holds
        # key → the endpoint cap whose slot the job holds beside (None: its endpoint has none)
        self.gates: dict[str, asyncio.Semaphore | None] = {}
        # Account name → its submitted jobs that wait for it.
        self.waiting: dict[str | None, int] = {}
        for account in self.accounts.all:
            account.slots.on_grown = self._grown
        self._follow()

    def _grown(self) -> None:
        """An account's lead grew outside a release (lead.Lead.ramped): room for the waiters."""
        self._follow()
        self.slots.grown()
        self.accounts.changed()

    def _follow(self) -> None:
        """The run's own slots admit the accounts' leads as they stand (or none: follows_accounts).

        With one account the run's capacity is exactly the account's, so a job that takes a run
        slot always finds an account slot (no job waits for an account while holding a run slot).
        """
        if self.follows:
            self.slots.lead = sum(a.slots.lead for a in self.accounts.all)

    def shared_ceilings(self) -> dict[str, int]:
        """Each account's ceiling by slot name, for the shared state (empty without one)."""
        return {
            a.slots.name: a.slots.ceiling
            for a in self.accounts.all
            if isinstance(a.slots, SharedSlots)
        }

    def _events_of(self, account: Account) -> Callable[[str], None]:
        """The client's event callback for `account` (its 429s count against it alone)."""

        def on_event(kind: str) -> None:
            self._client_event(kind, account)

        return on_event

    def _client_event(self, kind: str, account: Account) -> None:
        if kind == "throttled":
            account.slots.throttled()  # that account's 429: the others keep their allowance
            self.emit({"type": "throttled", "limit": account.slots.limit, "account": account.name})
        elif kind == "retry_after_capped" and not self._capped_said:
            self._capped_said = True
            cap = self.client.limits.retry_after
            self.emit(
                {
                    "type": "warning",
                    "message": "the provider asked to wait longer than "
                    f"{cap:g} s (Retry-After); waiting {cap:g} s instead",
                }
            )

    async def hold(self, row: Row) -> bool:
        """Take the provider slots this step needs; False when the job must wait (or the run stops).

        Its endpoint's (if capped), the run's, then an account's: a new submit takes a slot of
        whichever live account has room; following a submitted request takes a slot of the
        account recorded with it, and only of that one. Held until `let_go`.
        """
        if row.key in self.held or row.state not in ("planned", "submitted"):
            return True
        found = self.accounts.by_name.get(row.account) if row.state == "submitted" else None
        if row.state == "submitted" and found is None:
            self.wait_for_account(row)
            return False
        gate = self.endpoint_slots.get(row.endpoint)
        if gate is not None:
            await gate.acquire()
        taken: list[AdaptiveLimit] = []
        try:
            await self.slots.acquire()
            taken.append(self.slots)
            if found is None:
                account = await self.accounts.pick()
                if account is None:
                    raise _Stopped  # every account stopped: the run is stopping
            else:
                account = found
                await account.slots.acquire()
        except BaseException as exc:  # cancelled while waiting, or no account left
            for slots in taken:
                await slots.release()
            if gate is not None:
                gate.release()
            if isinstance(exc, _Stopped):
                return False
            raise
        self.held[row.key] = account
        self.gates[row.key] = gate
        if row.state == "planned":
            # Its submit goes before new deliveries (deliver.Deliveries).
            self.deliveries.granted(row.key)
            self.first.granted(row.key)
        return True

    async def let_go(self, key: str) -> None:
        """Give back the provider slots `key` holds, if any (its request finished or is given up)."""
        # Its new submit never went on the wire (or it waited for a rate's turn: see JobSteps.submit).
        unsent = key in self.deliveries.pending
        account = self.held.pop(key, None)
        self.deliveries.sent(key)
        self.first.answered(key)
        if account is None:
            return
        gate = self.gates.pop(key, None)
        if not unsent:  # a request the provider ran (or queued) is done with its slot
            account.slots.freed()
            self._follow()  # (before the releases below, which hand out the room it makes)
        await self.accounts.release(account)
        await self.slots.release()
        if gate is not None:
            gate.release()

    @property
    def in_flight(self) -> int:
        """Requests this run has at the provider now (submitted or being submitted, not COMPLETED)."""
        return len(self.held)

    async def stop_account(self, account: Account, exc: AccountError) -> None:
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

    def wait_for_account(self, row: Row) -> None:
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
                "message": f"jobs submitted by {who(name)} wait: {why}; they are followed "
                "only with the key that submitted them, never sent again under another",
            }
        )

    def waiting_record(self) -> dict[str, int]:
        """Submitted jobs left waiting for an account, by the account's name as run.json says it."""
        return {(name if name is not None else SINGLE_KEY): n for name, n in self.waiting.items()}

    def waiting_error(self) -> tuple[str, str]:
        """(error, hint) of a run that ends with submitted jobs waiting for an account."""
        error = "submitted jobs wait for an account: " + ", ".join(
            f"{n} for {who(name)}" for name, n in self.waiting.items()
        )
        hint = (
            "configure that account (provider.accounts, its key in the environment) or fix it, then rerun: "
            "its jobs are followed with its key, never paid for again under another"
        )
        return error, hint

    def account_record(self) -> dict[str, dict[str, Any]]:
        """provider.accounts only: each account's share of the run and whether it stopped."""
        if not self.pooled:
            return {}
        return {
            a.name: {
                "concurrency": a.slots.ceiling,
                "limit": round(a.slots.limit, 2),
                "submitted": a.submitted,
                "stopped": a.stopped.message if a.stopped else None,
            }
            for a in self.accounts.all
            if a.name is not None
        }
