"""The limits a run keeps: in-flight slots (the run's, each endpoint's, each account's), the
submission rate, and which account a job's request belongs to.

Invariants:
  * A job holds a run slot from submit until its files are written, and a slot of its account
    from submit until its result is read (what the account's limit counts).
  * A submitted request is followed only under the account recorded with it; a job whose
    account is missing or stopped waits (counted in `waiting`), never sent under another key.
  * A 429 halves only the allowance of the account it came from (additive increase after).
  * With shared state (several workers), account slots and the rate are leased in the database
    (SharedSlots, SharedRate), so the limits hold across all workers together.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiolimiter import AsyncLimiter

from renderer.errors import AccountError
from renderer.provider.client import Client
from renderer.runner.config import SINGLE_ACCOUNT, SINGLE_KEY, Event, RunConfig
from renderer.state.rows import Row
from renderer.state.store import Store


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


def bucket_size(rate: float) -> int:
    """Tokens the submission bucket holds: 50 ms' worth, at least one.

    Any one-second window then sees at most rate + bucket submissions. A one-token bucket
    paid the event loop's timer lag on every token (-5.7 % at 50/s, bench/rate_precision.py);
    a bucket of a whole second's worth let 2 x rate through in the first second.
    """
    return max(1, math.floor(rate / 20))


def make_limiter(rate: float) -> AsyncLimiter:
    """The submission bucket for `rate` per second (sized by bucket_size)."""
    size = bucket_size(rate)
    return AsyncLimiter(size, size / rate)


def who(name: str | None) -> str:
    """An account as warnings and run.json name it (None: the single key of an earlier run)."""
    return f"account {name!r}" if name is not None else "the single key of an earlier run"


class Limits:
    """Every limit of one run, and which account's slot each job holds.

    Built from the RunConfig: the run's adaptive in-flight cap (`slots`), the per-endpoint caps,
    the run's rate (`limiter`) and the accounts (one, the client's key, without
    provider.accounts). `hold`/`let_go` take and give back a job's account slot.
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
        self.slots = AdaptiveLimit(config.concurrency)
        self.endpoint_slots = {e: asyncio.Semaphore(n) for e, n in config.per_endpoint.items()}
        self.limiter: AsyncLimiter | SharedRate = make_limiter(config.rate)
        self.pooled = bool(config.accounts)
        if config.accounts:
            self.accounts = Accounts(
                [
                    Account(
                        a.name,
                        (clients or {}).get(a.name) or client.with_key(None),
                        AccountSlots(a.concurrency),
                        make_limiter(a.rate) if a.rate else None,
                    )
                    for a in config.accounts
                ]
            )
        else:
            self.accounts = Accounts([Account(None, client, AccountSlots(config.concurrency))])
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
            self.limiter = SharedRate(store, "run", config.rate)
        for account in self.accounts.all:
            account.client.on_event = self._events_of(account)
        self._capped_said = False
        self.held: dict[str, Account] = {}  # key → the account whose slot the job holds
        # Account name → its submitted jobs that wait for it.
        self.waiting: dict[str | None, int] = {}

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
        """Take the account slot this step needs; False when the job must wait (or the run stops).

        A new submit takes a slot of whichever live account has room; following a submitted
        request takes a slot of the account recorded with it, and only of that one.
        """
        if row.key in self.held or row.state not in ("planned", "submitted"):
            return True
        if row.state == "planned":
            account = await self.accounts.pick()
            if account is None:
                return False  # every account stopped: the run is stopping
        else:
            found = self.accounts.by_name.get(row.account)
            if found is None:
                self.wait_for_account(row)
                return False
            account = found
            await account.slots.acquire()
        self.held[row.key] = account
        return True

    async def let_go(self, key: str) -> None:
        """Give back the account slot `key` holds, if any."""
        account = self.held.pop(key, None)
        if account is not None:
            await self.accounts.release(account)

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
