"""The emulator's configuration: where it listens, its slots and service time, its keys, its faults.

A running emulator's `config` may be replaced as a whole (a harness turns faults on, then off):
every part reads it from the emulator (`Emulator.config`), never from a copy taken at start.
Keys and variants are read once, when the emulator is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from renderer.provider.emulator.faults import Faults
from renderer.provider.emulator.queue import ServiceTime


@dataclass(frozen=True)
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 2  # the model's slots, shared by every account (fal gives new accounts 2)
    # Each account's own limit on requests IN_PROGRESS (fal's per-account concurrency); the rest
    # wait IN_QUEUE, never refused. None: only `workers` bounds them.
    account_slots: int | None = None
    account_limits: tuple[tuple[str, int], ...] = ()  # (label, slots): that account's own limit
    service: ServiceTime = ServiceTime()  # noqa: RUF009 (frozen: one shared default is safe)
    seed: int = 0
    key: str | None = (
        None  # when set, Authorization: Key/Bearer <key> is required (the account "key")
    )
    keys: tuple[tuple[str, str], ...] = ()  # (label, key): more accepted keys, each its own account
    locked: tuple[str, ...] = ()  # labels of accounts whose submits get 403 "User is locked"
    max_side: int | None = 256  # cap on the longest image side, for speed
    faults: Faults = Faults()  # noqa: RUF009 (frozen: one shared default is safe)
    file_latency: float = 0.0  # seconds before each generated file is served (a slow CDN)
    keepalive: float = 15.0  # seconds between SSE comment lines
    variants: tuple[tuple[str, str], ...] = ()  # (endpoint, salt): render that model differently
    noise: float = (
        0.0  # run-to-run picture noise (pictures.render): 0 none, 1 typical of a hosted model
    )
    allow_unknown: bool = False  # serve endpoints without a schema (generic output)
    schema_dir: Path | None = None
