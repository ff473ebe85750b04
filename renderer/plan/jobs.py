"""A job and its identity: what is sent, where its images go, and the versioned key that names it.

The key is a hash of the canonical JSON of (endpoint, input[, sample]); `job_key` is the one place
it is computed, and `random_seed` the one place a random seed is drawn from a job's identity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from threading import Lock
from typing import Any, overload

from renderer.canonical import canonical_json
from renderer.layout import image_path, predicted_extension
from renderer.manifest.types import Manifest

KEY_VERSION = "j1"


SEED_MIN, SEED_MAX = 1, 2**31 - 1


RESERVED = ("prompt", "model", "seed")


@dataclass(frozen=True, slots=True)
class Job:
    index: int  # position in plan order
    key: str
    endpoint: str
    model: str
    prompt_id: str
    seed: int | None
    axes: dict[str, Any]
    input: dict[str, Any]
    stem: str  # identity of the job's files: layout.image_path places them in the run directory
    num_images: int
    tags: tuple[str, ...]
    where: str  # "file:line" of the prompt
    seed_sent: bool = True  # False: the endpoint has no seed; `seed` only labels a sample
    # The prompt's kept columns (`keep:`), a JSON object text (Prompt.extra); None: nothing kept.
    # Not part of the key or the stem (the same render); part of the plan's digest.
    extra: str | None = None

    def paths(self, ext: str | None = None) -> list[str]:
        ext = ext or predicted_extension(self.input.get("output_format", "png"))
        return [image_path(self.stem, i, ext) for i in range(self.num_images)]

    def describe(self) -> str:
        return describe_job(self.prompt_id, self.model, self.seed, self.axes)


def describe_job(prompt_id: str, model: str, seed: Any, axes: dict[str, Any]) -> str:
    """A job in one line for messages and failure lines: prompt, model, seed, then its axes."""
    text = "".join(f" {k}={json.dumps(v)}" for k, v in axes.items())
    return f"prompt={prompt_id} model={model} seed={seed}{text}"


@dataclass(frozen=True, slots=True)
class Who:
    """A job's identity for messages, turned into text only when there is something to say."""

    endpoint: str
    model: str
    prompt_id: str
    seed: Any
    axes: dict[str, Any]

    def __str__(self) -> str:
        return Job(
            0,
            "",
            self.endpoint,
            self.model,
            self.prompt_id,
            self.seed,
            self.axes,
            {},
            "",
            1,
            (),
            "",
        ).describe()


class Jobs(Sequence[Job]):
    """The plan's jobs, made on demand in plan order: re-iterable, with len() and indexing.

    A plan of ten million jobs is never held in memory: each iteration rebuilds the jobs from
    the manifest (the same jobs in the same order: planning is deterministic). Indexing one
    job skips whole cells by counting (`locate`) where the planner can, else walks from the
    start; `keys()` gives each job's (key, model) without making the jobs.
    """

    __slots__ = ("_count", "_keys", "_locate", "_make")

    def __init__(
        self,
        make: Callable[[], Iterator[Job]],
        count: int,
        locate: Callable[[int], Job] | None = None,
        keys: Callable[[], Iterator[tuple[str, str]]] | None = None,
    ) -> None:
        self._make = make
        self._count = count
        self._locate = locate
        self._keys = keys

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Job]:
        return self._make()

    def keys(self) -> Iterator[tuple[str, str]]:
        """(key, model) of every job, in plan order."""
        if self._keys is not None:
            return self._keys()
        return ((j.key, j.model) for j in self._make())

    @overload
    def __getitem__(self, index: int) -> Job: ...
    @overload
    def __getitem__(self, index: slice) -> list[Job]: ...
    def __getitem__(self, index: int | slice) -> Job | list[Job]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step < 0:
                return list(self)[index]
            return list(islice(self._make(), start, stop, step))
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("job index out of range")
        if self._locate is not None:
            return self._locate(index)
        return next(islice(self._make(), index, None))

    def __repr__(self) -> str:
        return f"<{self._count} jobs>"


def job_keys(jobs: Sequence[Job]) -> Iterator[tuple[str, str]]:
    """(key, model) of every job in plan order; a planned `Jobs` gives them without making jobs."""
    if isinstance(jobs, Jobs):
        return jobs.keys()
    return ((j.key, j.model) for j in jobs)


@dataclass
class Plan:
    manifest: Manifest
    jobs: Sequence[Job]  # a list, or `Jobs` (made on demand) from `build`
    costs: dict[str, float | None]  # per model name; None where no price is given
    notes: list[str]  # things worth knowing that are not errors
    # The digest (see `digest`), or the function that makes it when first asked.
    digest_source: str | Callable[[], str] = ""
    by_model: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # model → (jobs, images), plan order
    image_count: int | None = None
    distinct_axes: list[dict[str, Any]] | None = (
        None  # each distinct set of axis values, in plan order
    )
    layout: str = "flat"  # where images go under data/ (layout.py): flat or sharded
    _made: Lock = field(default_factory=Lock, init=False, repr=False, compare=False)

    @property
    def digest(self) -> str:
        """sha256 over the plan in order ("" = unknown): each job's key, model, source and tags,
        or for a cell checked whole, its input text without the seed, its seeds, model, source
        and tags; and its kept columns where it has some. Either way a function of exactly the
        jobs (keys, models, sources, tags, kept values) and their order. A caption set's is made
        when first asked (a pass over every job's key)."""
        with self._made:  # asked by the plan recorder's thread and the run's alike: made once
            if callable(self.digest_source):
                self.digest_source = self.digest_source()
            return self.digest_source

    def digest_later(self) -> str | Callable[[], str]:
        """The digest, or a function making it, for whoever needs it only later (a recorder)."""
        if isinstance(self.digest_source, str):
            return self.digest_source
        return lambda: self.digest

    @property
    def run_dir(self) -> Path:
        return self.manifest.run_dir

    @property
    def images(self) -> int:
        if self.image_count is not None:
            return self.image_count
        return sum(j.num_images for j in self.jobs)

    @property
    def total_cost(self) -> float | None:
        known = [c for c in self.costs.values() if c is not None]
        return sum(known) if known else None


def canonical(value: Any) -> Any:
    """Integral floats become ints so `5` and `5.0` name the same job."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def job_key(endpoint: str, payload: dict[str, Any], sample: int | None = None) -> str:
    """`sample` tells apart repeated requests to an endpoint that takes no seed.

    `payload` must already be canonical (see `canonical`); the planner builds it so.
    """
    identity: dict[str, Any] = {"endpoint": endpoint, "input": payload}
    if sample is not None:
        identity["sample"] = sample
    return key_of_text(canonical_json(identity))


def key_of_text(text: str) -> str:
    """The one job-key formula: `j1-` + the first 40 hex digits of sha256(identity text).

    `text` is the canonical JSON of {endpoint, input[, sample]} (see `job_key`); the per-cell
    template splices each seed into that same text and calls this directly.
    """
    return f"{KEY_VERSION}-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def freeze(values: dict[str, Any]) -> str:
    """A cheap hashable stand-in for a small dict of parameters (empty for the common case)."""
    return repr(sorted(values.items())) if values else ""


def seed_hash(run: str, prompt_id: str, model: str) -> Any:
    """sha256 fed with the part of a random seed's text that every seed of a cell shares."""
    return hashlib.sha256(f"{run}\0{prompt_id}\0{model}\0".encode())


def seed_of(start: Any, n: int) -> int:
    """The one random-seed formula: sha256(run \\0 prompt \\0 model \\0 n), 8 bytes, into range.

    `start` is seed_hash(run, prompt_id, model): a cell hashes its shared beginning once.
    """
    h = start.copy()
    h.update(str(n).encode())
    return int.from_bytes(h.digest()[:8], "big") % (SEED_MAX - SEED_MIN + 1) + SEED_MIN


def random_seed(run: str, prompt_id: str, model: str, n: int) -> int:
    """The n-th `random:` seed of a cell: the same number on every run of the same manifest."""
    return seed_of(seed_hash(run, prompt_id, model), n)
