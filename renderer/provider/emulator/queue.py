"""The emulator's queue: requests, the slots that run them, and their service time.

fal's model (../shared/docs/fal-protocol.md §1.4, §2.2): an account may have at most its limit of
requests IN_PROGRESS; beyond it, requests wait IN_QUEUE (a submit is never refused for
concurrency). Here a request is queued on submit and started, in submit order, as soon as one of
the model's `workers` slots is free *and* its account has a free slot (`EmulatorConfig.account_slots`,
or its `account_limits` entry; none: only `workers` bounds it). A request whose account is full
never holds up another account's (each account has its own line). A slot holds a request for a
service time drawn from the seeded generator (`ServiceTime`), renders its images meanwhile in a
thread (`Outputs.prerender`), then completes it. A queued request can be cancelled before a slot
takes it. `slot_time` records how long slots were held and how much of that was asked for.

Invariants: `busy` <= workers; an account's `running` <= its limit; every queued request is in
exactly one account's line until it starts or is cancelled (counted by Accounts.queue_step).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: these import from here
    from renderer.provider.emulator.accounts import Accounts
    from renderer.provider.emulator.config import EmulatorConfig
    from renderer.provider.emulator.outputs import Outputs

NAMESPACES = ("workflows", "comfy")  # app ids with one extra segment


@dataclass(frozen=True)
class ServiceTime:
    """How long the model 'runs': fixed:S, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA (seconds)."""

    kind: str = "fixed"
    a: float = 0.05
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> ServiceTime:
        parts = text.split(":")
        try:
            if len(parts) == 1:
                return cls("fixed", float(parts[0]))
            if parts[0] == "fixed" and len(parts) == 2:
                return cls("fixed", float(parts[1]))
            if parts[0] in ("uniform", "lognormal") and len(parts) == 3:
                return cls(parts[0], float(parts[1]), float(parts[2]))
        except ValueError:
            pass
        raise ValueError(
            f"service time {text!r}: use S, fixed:S, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA"
        )

    def draw(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "lognormal":
            return rng.lognormvariate(math.log(max(self.a, 1e-9)), self.b)
        return self.a


@dataclass(eq=False)
class ModelRequest:
    id: str
    endpoint: str
    app: str
    payload: Any
    base: str
    seq: int
    status: str = "IN_QUEUE"
    cancelled: bool = False
    completed_at: float | None = None
    started_at: float | None = None
    inference: float = 0.0
    result_status: int = 200
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    auth: str = ""  # the Authorization header of the submit (echoed by the echo_key fault)
    files: str = ""  # the origin serving this request's files (base may name another origin)
    account: str = ""  # the label of the credential that submitted it
    open: bool = False  # in flight: submitted, and its result not yet handed over (nor cancelled, nor expired)
    digest: str = ""  # of endpoint + input: the same digest submitted again is a duplicate
    abandoned: bool = (
        False  # the same input was submitted again: it leaves flight once it completes
    )
    opened_at: float | None = None  # time.monotonic() of the accepted submit
    closed_at: float | None = None  # and of leaving flight
    pictures: list[tuple[bytes, str]] | None = (
        None  # rendered while the slot slept (Outputs.prerender)
    )
    taken: bool = False  # a slot took it (it runs, or ran)
    waiting: bool = False  # counted as queued in its account's stats (Accounts.queue_step)

    def touch(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def app_id(endpoint: str) -> str:
    """The app part of an endpoint (`owner/app`, or three segments in a namespace)."""
    parts = endpoint.split("/")
    n = 3 if parts[0] in NAMESPACES else 2
    return "/".join(parts[:n])


class Queue:
    """The queued requests and the slots that run them (`start` makes the slots' tasks)."""

    def __init__(
        self,
        config: EmulatorConfig,
        rng: random.Random,
        accounts: Accounts,
        outputs: Outputs,
    ) -> None:
        self.config = config  # the emulator's, replaced with it (workers, service time, retention)
        self.rng = rng
        self.accounts = accounts
        self.outputs = outputs
        self.requests: dict[str, ModelRequest] = {}  # every request kept, by id
        self.lines: dict[
            str, deque[ModelRequest]
        ] = {}  # account label → its queued requests, in order
        self.running: Counter[str] = Counter()  # account label → its requests IN_PROGRESS now
        self.seq = 0  # the last submit's sequence number
        self.started = 0  # the highest sequence number a slot has taken
        self.busy = 0  # slots (and synchronous calls) running now
        # Slot accounting (bench/throughput.py): seconds slots were held, of which asked-for service
        # time; held minus asked is this emulator's own lag (its event loop late on a timer).
        self.slot_time: dict[str, Any] = {
            "first_start": None,
            "last_end": None,
            "held": 0.0,
            "service": 0.0,
        }
        self.tasks: set[asyncio.Task[None]] = set()  # the requests running now
        self.open = False  # between start() and stop()

    def start(self) -> None:
        self.open = True
        self.dispatch()

    async def stop(self) -> None:
        self.open = False
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for req in self.requests.values():
            req.touch()  # wake any open status streams so they can finish

    @property
    def stopped(self) -> bool:
        return not self.open

    @property
    def queued(self) -> int:
        """Requests waiting for a slot (cancelled ones leave their line when next looked at)."""
        return sum(1 for line in self.lines.values() for r in line if not r.cancelled)

    def limit_of(self, label: str) -> int | None:
        """The account's slots (fal's concurrency limit); None: only the model's workers bound it."""
        for name, n in self.config.account_limits:
            if name == label:
                return n
        return self.config.account_slots

    def put(self, req: ModelRequest) -> None:
        """A submitted request waits IN_QUEUE in its account's line; it starts as soon as it may
        (counted as queued only if it must wait: a request a slot takes at once never queued)."""
        self.lines.setdefault(req.account, deque()).append(req)
        self.dispatch()
        if not req.taken:
            self.hold(req)

    def hold(self, req: ModelRequest) -> None:
        """`req` waits IN_QUEUE: counted in its account's queued requests until it starts or is cancelled."""
        req.waiting = True
        self.accounts.queue_step(req.account, 1)

    def unhold(self, req: ModelRequest) -> None:
        if req.waiting:
            req.waiting = False
            self.accounts.queue_step(req.account, -1)

    def dispatch(self) -> None:
        """Start queued requests while a worker slot is free: the earliest submitted among the
        accounts with a free slot of their own (a full account never blocks another's line)."""
        while self.open and self.busy < self.config.workers:
            best: ModelRequest | None = None
            for label, line in self.lines.items():
                while line and line[0].cancelled:
                    line.popleft()  # cancelled while queued: it never runs
                if not line:
                    continue
                limit = self.limit_of(label)
                if limit is not None and self.running[label] >= limit:
                    continue
                if best is None or line[0].seq < best.seq:
                    best = line[0]
            if best is None:
                return
            self.lines[best.account].popleft()
            best.taken = True
            self.busy += 1
            self.running[best.account] += 1
            self.accounts.run_slot(best.account, 1)
            self.unhold(best)
            task = asyncio.ensure_future(self._work(best))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def position(self, req: ModelRequest) -> int:
        """Requests ahead of a queued one (0 once a slot has it)."""
        return max(0, req.seq - self.started - 1) if req.status == "IN_QUEUE" else 0

    def expired(self, req: ModelRequest) -> bool:
        keep = self.config.faults.retention  # seconds a completed result lives
        return (
            keep is not None
            and req.completed_at is not None
            and time.monotonic() - req.completed_at > keep
        )

    async def _work(self, req: ModelRequest) -> None:
        """Run one started request for its service time, then complete it and free its slots."""
        self.started = max(self.started, req.seq)
        try:
            req.status, req.started_at = "IN_PROGRESS", time.monotonic()
            req.logs.append(
                {
                    "message": "Starting generation",
                    "level": "INFO",
                    "source": "USER",
                    "timestamp": now_iso(),
                }
            )
            req.touch()
            req.inference = self.config.service.draw(self.rng)
            if self.slot_time["first_start"] is None:
                self.slot_time["first_start"] = req.started_at
            pictures = self.outputs.prerender(req)
            await asyncio.sleep(req.inference)
            if pictures is not None:
                with contextlib.suppress(Exception):  # rendered again, inline, by output()
                    req.pictures = await pictures
            self.finish(req)
            assert req.completed_at is not None  # finish() sets it
            self.slot_time["held"] += req.completed_at - req.started_at
            self.slot_time["service"] += req.inference
            self.slot_time["last_end"] = req.completed_at
        finally:
            self.busy -= 1
            self.running[req.account] -= 1
            self.accounts.run_slot(req.account, -1)
            self.dispatch()

    def finish(self, req: ModelRequest) -> None:
        """The request completes with its outcome (an output, a 422 or a runner error)."""
        req.result_status, req.result = self.outputs.outcome(req)
        if req.result_status == 500:
            req.error, req.error_type = "Internal Server Error", "runner_server_error"
        req.logs.append(
            {
                "message": "Generation finished",
                "level": "INFO",
                "source": "USER",
                "timestamp": now_iso(),
            }
        )
        req.status, req.completed_at = "COMPLETED", time.monotonic()
        req.touch()
        if req.abandoned:
            self.accounts.close(req)

    def cancel(self, req: ModelRequest) -> None:
        """A request cancelled before a slot took it completes as cancelled (499)."""
        self.unhold(req)
        req.cancelled = True
        req.result_status = 499
        req.result = {
            "detail": "Request was cancelled by the client",
            "error_type": "client_cancelled",
        }
        req.error, req.error_type = "Request was cancelled by the client", "client_cancelled"
        req.status, req.completed_at = "COMPLETED", time.monotonic()
        req.touch()
