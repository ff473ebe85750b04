"""Accounting per credential: who submitted what, how much of it is in flight, and the peaks.

An "account" is named by a label, never by its key (the stats are served without credentials).
A request is in flight from its accepted submit until its outcome is handed over (the result, or
a status saying it failed), it is cancelled, its result expires, or it completes after the same
input was sent again (it was abandoned).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field

from renderer.provider.emulator.queue import ModelRequest


@dataclass(eq=False)
class Account:
    """What one credential did. Invariants: 0 <= in_flight <= peak_in_flight, same for running
    (IN_PROGRESS: what fal's concurrency limit counts) and queued (IN_QUEUE, not cancelled)."""

    submits: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    running: int = 0
    peak_running: int = 0
    queued: int = 0
    peak_queued: int = 0
    inputs: Counter[str] = field(default_factory=Counter)

    @property
    def duplicate_submits(self) -> int:
        return sum(n - 1 for n in self.inputs.values() if n > 1)

    def as_dict(self) -> dict[str, int]:
        return {
            "submits": self.submits,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "running": self.running,
            "peak_running": self.peak_running,
            "queued": self.queued,
            "peak_queued": self.peak_queued,
            "distinct_inputs": len(self.inputs),
            "duplicate_submits": self.duplicate_submits,
        }


class Accounts:
    """Every credential's `Account`, the totals across them, and the requests in flight.

    Invariants: `in_flight` is the number of requests in `open` plus the synchronous calls running
    (`enter_sync`/`leave_sync`), and equals the sum of the accounts' `in_flight`.
    """

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys  # accepted key → account label (empty: any caller is served)
        self.by_label: dict[str, Account] = {label: Account() for label in keys.values()}
        self.open: dict[str, ModelRequest] = {}  # requests in flight, by id
        self.in_flight = 0
        self.peak_in_flight = 0
        self.running = 0  # requests IN_PROGRESS (and synchronous calls) across accounts
        self.peak_running = 0
        self.last_closed_at: float | None = None  # time.monotonic() of the last one leaving flight

    def label_of(self, auth: str) -> str:
        """The label of the credential in an Authorization header.

        With keys configured only accepted keys get here; without, any caller is served and is
        told apart by a short hash of its token (so the stats never carry a key).
        """
        token = auth.partition(" ")[2]
        if token in self.keys:
            return self.keys[token]
        if not auth:
            return "anonymous"
        return "key-" + hashlib.sha256(token.encode()).hexdigest()[:10]

    def get(self, label: str) -> Account:
        acct = self.by_label.get(label)
        if acct is None:
            acct = self.by_label[label] = Account()
        return acct

    def _enter(self, acct: Account) -> None:
        acct.in_flight += 1
        acct.peak_in_flight = max(acct.peak_in_flight, acct.in_flight)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def open_request(self, req: ModelRequest) -> None:
        acct = self.get(req.account)
        acct.submits += 1
        self._enter(acct)
        req.open, req.opened_at = True, time.monotonic()
        self.open[req.id] = req

    def close(self, req: ModelRequest) -> None:
        """The request leaves flight (idempotent): its outcome was handed over (the result, or a status
        saying it failed), it was cancelled, or its result expired."""
        if not req.open:
            return
        req.open, req.closed_at = False, time.monotonic()
        self.open.pop(req.id, None)
        self.get(req.account).in_flight -= 1
        self.in_flight -= 1
        self.last_closed_at = time.monotonic()

    def enter_sync(self, label: str) -> None:
        """A synchronous call is in flight for exactly as long as it runs (it is no queue submit)."""
        self._enter(self.get(label))

    def leave_sync(self, label: str) -> None:
        self.get(label).in_flight -= 1
        self.in_flight -= 1

    def supersede(self, new: ModelRequest) -> None:
        """The same input was sent again (by any account): its earlier requests are abandoned.

        An abandoned request still occupies the provider while it runs, so it stays in flight
        until it completes (a client that resubmits too early is still seen over its limit);
        once completed, nobody will fetch it (a killed worker's unrecorded submit, say).
        """
        for old in [r for r in self.open.values() if r.digest == new.digest]:
            old.abandoned = True
            if old.status == "COMPLETED":
                self.close(old)

    def run_slot(self, label: str, delta: int) -> None:
        acct = self.get(label)
        acct.running += delta
        acct.peak_running = max(acct.peak_running, acct.running)
        self.running += delta
        self.peak_running = max(self.peak_running, self.running)

    def queue_step(self, label: str, delta: int) -> None:
        """One of the account's requests entered (+1) or left (-1) the queue (IN_QUEUE)."""
        acct = self.get(label)
        acct.queued += delta
        acct.peak_queued = max(acct.peak_queued, acct.queued)

    def kept_peaks(self, requests: list[ModelRequest]) -> dict[str, int]:
        """Per account, the peak in flight counting only requests never abandoned by a resend.

        Known only afterwards (a request is abandoned when its input comes again), so computed
        from the recorded intervals: what a client held on purpose, apart from the duplicate
        submissions that `duplicate_submits` counts (a dead worker's unrecorded submit, say).
        """
        events: list[tuple[float, int, str]] = []
        for req in requests:
            if req.opened_at is None or req.abandoned:
                continue
            events.append((req.opened_at, 1, req.account))
            if req.closed_at is not None:
                events.append((req.closed_at, -1, req.account))
        level: Counter[str] = Counter()
        peak: dict[str, int] = {}
        # A close before an open at one instant.
        for _, step, label in sorted(events, key=lambda e: (e[0], e[1])):
            level[label] += step
            peak[label] = max(peak.get(label, 0), level[label])
        return peak

    def as_dict(self, requests: list[ModelRequest]) -> dict[str, dict[str, int]]:
        kept = self.kept_peaks(requests)
        return {
            label: {**acct.as_dict(), "peak_in_flight_kept": kept.get(label, 0)}
            for label, acct in list(self.by_label.items())
        }
