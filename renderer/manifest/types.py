"""A manifest as typed, frozen values: prompts, models, accounts, the provider, limits, and the
sweep language (templates, variables, zip groups, sampling, order)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.settings import RetryPolicy

if TYPE_CHECKING:
    from renderer.manifest.located import Located, Path_


SECRET_KEYS = {"key", "api_key", "apikey", "fal_key", "token", "secret", "authorization"}


PROVIDERS = {"fal": "https://queue.fal.run", "emulator": None}


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    text: str
    params: dict[str, Any]
    tags: tuple[str, ...]
    where: tuple[str, int, int]  # file, line, col
    path: Path_  # JSON path in the manifest (or ("prompts", i) for a prompt file's row)
    template: Template | None = None  # None: the text is sent as written (no variable in it)
    # A prompt file's kept columns (`keep:`) as one compact JSON object text, keys in `keep:`
    # order; None when the entry keeps nothing. Never sent, never part of a key or a path.
    extra: str | None = None


@dataclass(frozen=True)
class HubSource:
    """A `- hub:` entry as resolved (hub.py): the commit its rows were read at, recorded with
    the run so a later run of the same state sees the same rows."""

    repo: str
    config: str
    split: str
    revision: str | None  # as the manifest asks (None: the main branch when first resolved)
    sha: str  # the commit
    path: Path_  # ("prompts", i, "hub")

    def provenance(self) -> dict[str, str | None]:
        """Where the prompts came from, as run.json and the dataset card state it."""
        return {
            "repo": self.repo,
            "config": self.config,
            "split": self.split,
            "revision": self.revision,
            "commit": self.sha,
        }


@dataclass(frozen=True)
class Template:
    """A prompt text cut into literal text and the variables it names.

    `parts` holds literal strings and variable names (as `Ref`); an inline alternation is a
    variable of its own, named `alt1`, `alt2`… in order of appearance, whose values are its options.
    """

    parts: tuple[str | Ref, ...]
    names: tuple[str, ...]  # every variable named, alternations included, first appearance first
    alternations: dict[str, tuple[str, ...]]  # alt name → its options

    def resolve(self, values: dict[str, Any]) -> str:
        """The text with each variable replaced by its value in `values` (every name present)."""
        return "".join(p if isinstance(p, str) else str(values[p.name]) for p in self.parts)


@dataclass(frozen=True)
class Ref:
    name: str


@dataclass(frozen=True)
class Variable:
    """A template variable: its values, fully expanded (nested wildcards and alternations)."""

    name: str
    values: tuple[Any, ...]
    path: Path_  # ("vars", name)


@dataclass(frozen=True)
class ZipGroup:
    """Keys whose values vary together: one axis of `len(values)` cells, several parameters.

    A key some prompt names (`{key}`) is a template variable; any other key is a model input
    parameter, sent like an axis value.
    """

    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]  # one tuple per cell, in `keys` order
    params: frozenset[str]  # the keys sent as input parameters
    path: Path_  # ("zip", i)


@dataclass(frozen=True)
class Sample:
    """`sample:` a deterministic subset of the matrix, chosen by hash (see plan/sweep.py)."""

    seed: int
    count: int | None = None
    fraction: float | None = None
    exhaustive: tuple[str, ...] = ()  # dimensions kept whole: every value for each drawn point


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
    concurrency: int = 2  # requests running at the provider; a new fal account runs 2 at once
    per_endpoint: dict[str, int] = field(default_factory=dict)
    rate: float | None = None  # submissions per second; None: not paced (a 429 still slows them)
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
    prompts: Sequence[Prompt]  # a tuple, or table.Prompts (prompt files' rows held compactly)
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
    # Where images go under data/ (layout.py): auto | flat | sharded.
    layout: str = "auto"
    variables: dict[str, Variable] = field(default_factory=dict)  # `vars:`
    zips: tuple[ZipGroup, ...] = ()
    sample: Sample | None = None
    order: str = "plan"  # plan | sparse-first
    hub: tuple[HubSource, ...] = ()  # `- hub:` entries' commits (hub.keep_commits records them)

    @property
    def run_dir(self) -> Path:
        return self.output / self.name
