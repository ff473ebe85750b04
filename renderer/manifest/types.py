"""A manifest as typed, frozen values: prompts, models, accounts, the provider, limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.settings import RetryPolicy

if TYPE_CHECKING:
    from renderer.manifest.located import Located, Path_


SECRET_KEYS = {"key", "api_key", "apikey", "fal_key", "token", "secret", "authorization"}


PROVIDERS = {"fal": "https://queue.fal.run", "emulator": None}


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    params: dict[str, Any]
    tags: tuple[str, ...]
    where: tuple[str, int, int]  # file, line, col
    path: Path_  # JSON path in the manifest (or ("prompts", i) for a prompt file's row)


@dataclass(frozen=True)
class Model:
    endpoint: str
    name: str  # label, or the endpoint id
    params: dict[str, Any]
    axes: dict[str, list[Any]]
    unchecked: bool
    path: Path_


@dataclass(frozen=True)
class AccountConfig:
    """One entry of provider.accounts: a key variable and that account's own limits."""

    name: str  # recorded with each job it submits (default: key_env); never the key itself
    key_env: str
    concurrency: int = 2  # a new fal account runs 2 requests at once
    rate: float | None = None  # submissions per second for this account; None: only limits.rate


@dataclass(frozen=True)
class ProviderConfig:
    kind: str = "fal"  # fal | emulator | custom
    url: str | None = "https://queue.fal.run"
    auth: str = "Key"
    key_env: str = "FAL_KEY"
    emulator: dict[str, Any] = field(default_factory=dict)
    accounts: tuple[AccountConfig, ...] = ()  # empty: the single key in key_env


@dataclass(frozen=True)
class Limits:
    concurrency: int = 2  # a new fal account runs 2 requests at once
    per_endpoint: dict[str, int] = field(default_factory=dict)
    rate: float = 10.0  # submissions per second
    timeout: float = 900.0  # seconds per job, from submit to downloaded
    outage: float = 90.0  # seconds the shared state or the bucket may be unreachable


@dataclass(frozen=True)
class Manifest:
    file: Path
    name: str
    output: Path
    provider: ProviderConfig
    limits: Limits
    retries: RetryPolicy
    budget: float | None
    license: str | None
    prices: dict[str, dict[str, float]]
    defaults: dict[str, Any]
    prompts: tuple[Prompt, ...]
    models: tuple[Model, ...]
    seeds: Any  # list[int] | {"start","count"} | {"random": n}
    axes: dict[str, list[Any]]
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]]
    extra: list[dict[str, Any]]
    doc: Located = field(repr=False, compare=False)
    # `output: s3://bucket/prefix`: the outputs go to the bucket (storage.py); the run's own
    # state and lock stay in `output` (then the default outputs/) on this machine.
    output_url: str | None = None
    # `state: postgresql://…`: the run's state is shared by every worker that names it (pgstore.py).
    state: str | None = None

    @property
    def run_dir(self) -> Path:
        return self.output / self.name
