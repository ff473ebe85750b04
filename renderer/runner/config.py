"""What a run is told (RunConfig, AccountLimit) and the event type it reports with.

Cheap to import on purpose (the standard library and renderer.settings only): the Python API
and the CLI build a RunConfig before anything that talks to a provider is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from renderer.settings import RetryPolicy

# What the runner reports to its caller (progress bar, --log, on_event): a dict with a "type".
Event = dict[str, Any]

SINGLE_ACCOUNT = "default"  # the slots' name for a run without provider.accounts (one key)
# How run.json and status name the key of a run without provider.accounts.
SINGLE_KEY = "(single key)"


@dataclass(frozen=True)
class AccountLimit:
    """One of provider.accounts as the runner needs it: a name (never the key) and its own limits."""

    name: str
    concurrency: int
    # Submissions per second of this account (limits.rate, if set, still caps the run).
    rate: float | None = None


@dataclass(frozen=True)
class RunConfig:
    # Requests at the provider (submitted, COMPLETED not yet seen): what fal's limit counts.
    concurrency: int = 2
    per_endpoint: Mapping[str, int] = field(default_factory=dict)
    rate: float | None = None  # submissions per second; None: not paced (429s still slow it)
    # Seconds for one job, submit to download (a wait past it cancels the request).
    timeout: float = 900.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_failed: bool = False
    max_jobs: int | None = None
    verify: bool = False  # re-hash finished files instead of trusting size + mtime
    grace: float = 10.0  # after Ctrl-C: seconds for submits in flight to record their request ids
    queue_report: float = 30.0  # surface queue_position for jobs waiting longer than this
    # Who renders: emulator, fal, or the custom provider's origin (recorded per image).
    provider: str = ""
    # None: SQLite in the run directory; a postgresql:// URL: shared by many workers.
    state: str | None = None
    # Seconds a claimed job stays this worker's without renewal (renewed every third).
    lease: float = 30.0
    # Seconds the shared state or the bucket may stay unreachable before the run stops (exit 75).
    outage: float = 90.0
    # provider.accounts; empty: one account, the client's key.
    accounts: tuple[AccountLimit, ...] = ()
