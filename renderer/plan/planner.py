"""Manifest → the ordered list of jobs, each checked against its endpoint's schema.

Invariants:
  * Deterministic: the same manifest (and schemas) always gives the same jobs in the same
    order: prompt (slowest), model, axes in the order written, seed (fastest), then the
    combinations that `include` and `extra` create.
  * A job's key is `j1-` + sha256 of the canonical JSON of {endpoint, input}; its stem
    (layout.job_stem) depends only on the job's own values. Adding, removing or reordering
    other prompts, models or seeds changes neither.
  * No seed that a model could read as "random" is ever sent: seeds are 1 … 2**31-1.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice, product
from pathlib import Path
from typing import Any, overload

from renderer.errors import ManifestError, Problem, closest
from renderer.layout import image_path, job_stem, predicted_extension
from renderer.manifest.load import Located, Manifest, Model, Prompt, json_path
from renderer.models.schemas import SchemaRegistry, Violation
from renderer.models.sizes import PRESETS  # fal's size presets, (width, height)
from renderer.plan import matrix

KEY_VERSION = "j1"
SEED_MIN, SEED_MAX = 1, 2**31 - 1
RESERVED = ("prompt", "model", "seed")
RATIO_PRESET = {
    "1:1": "square_hd",
    "3:4": "portrait_4_3",
    "9:16": "portrait_16_9",
    "4:3": "landscape_4_3",
    "16:9": "landscape_16_9",
}


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

    def paths(self, ext: str | None = None) -> list[str]:
        ext = ext or predicted_extension(self.input.get("output_format", "png"))
        return [image_path(self.stem, i, ext) for i in range(self.num_images)]

    def describe(self) -> str:
        axes = "".join(f" {k}={json.dumps(v)}" for k, v in self.axes.items())
        return f"prompt={self.prompt_id} model={self.model} seed={self.seed}{axes}"


@dataclass(frozen=True, slots=True)
class _Who:
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
    # sha256 over the plan in order ("" = unknown): each job's key, model, source and tags, or for
    # a cell checked whole, its input text without the seed, its seeds, model, source and tags.
    # Either way a function of exactly the jobs (keys, models, sources, tags) and their order.
    digest: str = ""
    by_model: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # model → (jobs, images), plan order
    image_count: int | None = None
    distinct_axes: list[dict[str, Any]] | None = (
        None  # each distinct set of axis values, in plan order
    )

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


class Fingerprints:
    """A set of 64-bit fingerprints at ~8 bytes each (a Python set of ints costs ~70).

    Small sets are plain sets (65,536 empty buckets would cost ~4 MB); past SMALL members
    they move into 8-byte slots of 65,536 byte strings chosen by the low 16 bits, where a
    lookup is one C-level search of a short string.
    """

    SMALL = 50_000
    _MASK = 0xFFFFFFFFFFFFFFFF

    def __init__(self, buckets: int = 1 << 16) -> None:
        self._size = buckets
        self._small: set[int] | None = set()
        self.buckets: list[bytearray] = []

    def __contains__(self, fp: int) -> bool:
        if self._small is not None:
            return fp & self._MASK in self._small
        bucket = self.buckets[fp & 0xFFFF]
        item = (fp & self._MASK).to_bytes(8, "little")
        at = bucket.find(item)
        while at != -1:
            if at % 8 == 0:
                return True
            at = bucket.find(item, at + 1)
        return False

    def add(self, fp: int) -> None:
        if self._small is not None:
            self._small.add(fp & self._MASK)
            if len(self._small) > self.SMALL and self._size:
                small, self._small = self._small, None
                self.buckets = [bytearray() for _ in range(self._size)]
                for member in small:
                    self._add(member)
            return
        self._add(fp)

    def _add(self, fp: int) -> None:
        self.buckets[fp & 0xFFFF] += (fp & self._MASK).to_bytes(8, "little")


@dataclass
class _Tally:
    """What the checking pass learns about the whole plan without keeping its jobs."""

    combos: int = 0
    jobs: int = 0
    images: int = 0
    by_model: dict[str, tuple[int, int]] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    digest: Any = field(default_factory=hashlib.sha256)
    axes: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # distinct axis values, first seen first
    _last_axes: Any = None

    def add(self, job: Job) -> None:
        if job.axes is not self._last_axes:  # once per cell: its jobs share one axes dict
            self._last_axes = job.axes
            self.axes.setdefault(_freeze(job.axes), job.axes)
        self.jobs += 1
        self.images += job.num_images
        jobs, images = self.by_model.get(job.model, (0, 0))
        self.by_model[job.model] = (jobs + 1, images + job.num_images)
        self.digest.update(f"{job.key}\0{job.model}\0{job.where}\0{job.tags}\n".encode())

    def add_block(self, block: _Block, seeds: str) -> None:
        """A whole cell at once, without hashing a key: the digest takes the cell's own line.

        The cell text and the seeds (`seeds`: exactly which) determine every key of the cell,
        and a line starting `cell ` is never a key's (`j1-…`): different plans, different digests.
        """
        job, count = block.template.first, len(block.seeds)
        if job.axes is not self._last_axes:
            self._last_axes = job.axes
            self.axes.setdefault(_freeze(job.axes), job.axes)
        self.jobs += count
        self.images += job.num_images * count
        jobs, images = self.by_model.get(job.model, (0, 0))
        self.by_model[job.model] = (jobs + count, images + job.num_images * count)
        self.digest.update(
            f"cell {block.template.text}\0{seeds}\0{job.model}\0{job.where}\0{job.tags}\n".encode()
        )


_SENTINEL = 7340031999999999991  # stands for the seed in a key's text; never a real seed (> 2**31)
_TOKEN = str(_SENTINEL)


def _seed_ok(seed: Any) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool) and SEED_MIN <= seed <= SEED_MAX


def _cell_text(job: Job) -> str | None:
    """The text `job_key` hashes, with the job's seed replaced by a token; None if ambiguous.

    Two jobs have equal keys exactly when their cell texts and seeds are equal: the seed sits
    at one fixed place of the canonical JSON (`input.seed`, or `sample` when it is not sent).
    """
    payload = dict(job.input)
    identity: dict[str, Any] = {"endpoint": job.endpoint, "input": payload}
    if job.seed_sent:
        payload["seed"] = _SENTINEL
    else:
        identity["sample"] = _SENTINEL
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text if text.count(_TOKEN) == 1 else None


def _stem_prefix(stem: str) -> str | None:
    """`…/s` of a stem `…/s<digits>` (the part every seed of a cell shares); None otherwise.

    Segments hold no `/` and the seed part is digits only, so two stems are equal exactly
    when their prefixes and digits are: distinct prefixes mean distinct paths.
    """
    head, _, tail = stem.rpartition("/")
    if tail[:1] == "s" and tail[1:].isascii() and tail[1:].isdigit():
        return f"{head}/s"
    return None


@dataclass
class _Template:
    """Jobs of one cell (same prompt, model, axes) that differ only by seed, made cheaply.

    Built from a job made the long way; each seed then costs a string join and one sha256.
    The key's text is the canonical JSON with the seed spliced in, the same bytes `job_key`
    hashes (a template whose splice would be ambiguous is not made).
    """

    planner: _Planner
    first: Job
    before: str
    after: str
    stem: str  # the stem without the seed's digits: `…/s`
    check_seed: bool
    text: str  # the cell text (see _cell_text)

    @classmethod
    def of(cls, planner: _Planner, job: Job, model: Model) -> _Template | None:
        if not isinstance(job.seed, int):
            return None
        text = _cell_text(job)
        suffix = f"/s{job.seed}"
        if text is None or not job.stem.endswith(suffix):
            return None
        before, after = text.split(_TOKEN)
        made = cls(
            planner,
            job,
            before,
            after,
            job.stem[: -len(suffix) + 2],
            job.seed_sent and not model.unchecked and "seed" in job.input,
            text,
        )
        if made._key(job.seed) != job.key:
            return None
        return made

    def _key(self, seed: int) -> str:
        return (
            f"{KEY_VERSION}-"
            + hashlib.sha256(f"{self.before}{seed}{self.after}".encode()).hexdigest()[:40]
        )

    def make(self, n: int, seed: Any, check: bool) -> Job | None:
        """The job for `seed`, or None when it needs the long way (a problem to report)."""
        if not _seed_ok(seed):
            return None
        j = self.first
        if check and self.check_seed:
            found = self.planner.seed_verdict(j.model, seed)
            if found is None or found:
                return None
        payload = dict(j.input)
        if j.seed_sent:
            payload["seed"] = seed
        return Job(
            n,
            self._key(seed),
            j.endpoint,
            j.model,
            j.prompt_id,
            seed,
            j.axes,
            payload,
            f"{self.stem}{seed}",
            j.num_images,
            j.tags,
            j.where,
            j.seed_sent,
        )


@dataclass(frozen=True, slots=True)
class _Block:
    """A whole cell, checked at once: the template's jobs for `seeds`, in order."""

    template: _Template
    seeds: Sequence[Any]


def canonical(value: Any) -> Any:
    """Integral floats become ints so `5` and `5.0` name the same job."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def job_key(endpoint: str, payload: dict[str, Any], sample: int | None = None) -> str:
    """`sample` tells apart repeated requests to an endpoint that takes no seed.

    `payload` must already be canonical (see `canonical`); the planner builds it so.
    """
    identity: dict[str, Any] = {"endpoint": endpoint, "input": payload}
    if sample is not None:
        identity["sample"] = sample
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{KEY_VERSION}-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _freeze(values: dict[str, Any]) -> str:
    """A cheap hashable stand-in for a small dict of parameters (empty for the common case)."""
    return repr(sorted(values.items())) if values else ""


def random_seed(run: str, prompt_id: str, model: str, n: int) -> int:
    digest = hashlib.sha256(f"{run}\0{prompt_id}\0{model}\0{n}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (SEED_MAX - SEED_MIN + 1) + SEED_MIN


class _RandomSeeds(Sequence[int]):
    """A cell's `random: N` seeds, drawn on first use: counting a cell needs none of them.

    Every one is in SEED_MIN…SEED_MAX by construction (they may repeat, rarely).
    """

    __slots__ = ("_args", "_count", "_values")

    def __init__(self, run: str, prompt_id: str, model: str, count: int) -> None:
        self._args = (run, prompt_id, model)
        self._count = count
        self._values: list[int] | None = None

    def _drawn(self) -> list[int]:
        if self._values is None:
            # random_seed's bytes, with the shared beginning hashed once.
            run, prompt_id, model = self._args
            start = hashlib.sha256(f"{run}\0{prompt_id}\0{model}\0".encode())
            values = []
            for n in range(self._count):
                h = start.copy()
                h.update(str(n).encode())
                values.append(
                    int.from_bytes(h.digest()[:8], "big") % (SEED_MAX - SEED_MIN + 1) + SEED_MIN
                )
            self._values = values
        return self._values

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        return iter(self._drawn())

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        return self._drawn()[index]


def _same(key: str, a: Any, b: Any) -> bool:
    # 1 == True in Python; a seed of `true` must not match seed 1.
    return (type(a) is type(b) and a == b) or (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def ratio_size(ratio: str, area: int = 1024 * 1024) -> dict[str, int]:
    """A {width, height} near one megapixel for a ratio, in multiples of 16."""
    w, h = (int(x) for x in ratio.split(":"))
    width = round(math.sqrt(area * w / h) / 16) * 16
    height = round(math.sqrt(area * h / w) / 16) * 16
    return {"width": width, "height": height}


class _Planner:
    def __init__(self, manifest: Manifest, registry: SchemaRegistry, fast: bool = True) -> None:
        # fast=False plans the straightforward way (every job made, checked and compared one
        # by one): the reference the shortcuts are tested against (tests/test_plan.py).
        self.fast = fast
        self.m = manifest
        self.doc: Located = manifest.doc
        self.registry = registry
        self.problems: dict[tuple[Any, ...], Problem] = {}
        self.counts: dict[tuple[Any, ...], int] = defaultdict(int)
        self._checked: dict[tuple[Any, ...], list[Violation]] = {}
        self._props: dict[str, dict[str, Any]] = {}
        self._ratio: dict[tuple[str, str, bool], tuple[str, Any] | None] = {}
        self._seeds: Sequence[int] | None = None  # listed or counted seeds: the same for every cell
        self._seeds_line: str | None = None
        self._uniform: dict[str, bool] = {}  # endpoint → its seed check cannot depend on the value
        self._fit: set[tuple[str, bool]] = set()  # (endpoint, check_seed) for which self._seeds fit

    def _plain_string_prompt(self, model: Model) -> bool:
        """True when the endpoint asks nothing of a prompt but that it be a string.

        Then a str needs no schema check: dataset-scale prompt lists stay fast.
        """
        schema = self.props(model).get("prompt", {})
        return schema.get("type") == "string" and set(schema) <= {
            "type",
            "description",
            "x-source",
            "default",
        }

    def props(self, model: Model) -> dict[str, Any]:
        if model.endpoint not in self._props:
            self._props[model.endpoint] = (
                {} if model.unchecked else self.registry.properties(model.endpoint)
            )
        return self._props[model.endpoint]

    def add(self, problem: Problem) -> None:
        key = (problem.file, problem.line, problem.col, problem.json_path, problem.message)
        self.counts[key] += 1
        self.problems.setdefault(key, problem)

    def at(self, path: tuple[Any, ...], message: str, **kw: Any) -> None:
        self.add(self.doc.problem(path, message, **kw))

    # -------------------------------------------------- manifest-level checks

    def check_names(self) -> tuple[dict[str, Prompt], dict[str, Model]]:
        prompts: dict[str, Prompt] = {}
        folded: dict[str, Prompt] = {}
        for p in self.m.prompts:
            other = folded.get(p.id.lower())
            if other is not None:
                self.add(
                    Problem(
                        p.where[0],
                        p.where[1],
                        p.where[2],
                        f"duplicate prompt id {p.id!r} (first at {other.where[0]}:{other.where[1]}; "
                        "ids are compared ignoring case, as macOS and Windows file names are)",
                        json_path(p.path),
                    )
                )
                continue
            prompts[p.id] = p
            folded[p.id.lower()] = p
        models: dict[str, Model] = {}
        for model in self.m.models:
            if model.name.lower() in {n.lower() for n in models}:
                self.at(
                    model.path,
                    f"model {model.name!r} is listed twice",
                    allowed="give one of them a distinct `label`",
                )
                continue
            if model.endpoint not in self.registry and not model.unchecked:
                self.at(
                    (*model.path, "endpoint")
                    if isinstance(self.doc.data["models"][model.path[1]], dict)
                    else model.path,
                    f"unknown endpoint {model.endpoint!r}",
                    allowed="an endpoint from `renderer models`, or set `unchecked: true` to send it unchecked",
                    suggestion=closest(model.endpoint, self.registry.endpoints),
                )
                continue
            models[model.name] = model
        return prompts, models

    def seeds_for(self, prompt: Prompt, model: Model) -> Sequence[int]:
        spec = self.m.seeds
        if isinstance(spec, dict) and "random" in spec:
            return _RandomSeeds(self.m.name, prompt.id, model.name, spec["random"])
        return self._listed_seeds()

    def _listed_seeds(self) -> Sequence[int]:
        """The seeds of every cell when they are listed or counted (not random): made once."""
        if self._seeds is None:
            spec = self.m.seeds
            if isinstance(spec, dict):
                self._seeds = range(spec["start"], spec["start"] + spec["count"])
            else:
                self._seeds = tuple(
                    dict.fromkeys(spec)
                )  # a repeated seed is reported once, in check_seeds
        return self._seeds

    def _seeds_text(self, seeds: Sequence[Any]) -> str:
        """Which seeds a cell has, exactly, in a few bytes where possible (for the digest)."""
        if isinstance(seeds, range):
            return f"range {seeds.start} {seeds.stop} {seeds.step}"
        if isinstance(seeds, _RandomSeeds):  # drawn from these, by random_seed
            return "random " + json.dumps([*seeds._args, len(seeds)], ensure_ascii=False)
        if seeds is self._seeds and self._seeds_line is not None:
            return self._seeds_line
        line = " ".join(map(str, seeds))
        if seeds is self._seeds:
            self._seeds_line = line
        return line

    def _seeds_per_cell(self) -> int:
        spec = self.m.seeds
        return (
            int(spec["random"])
            if isinstance(spec, dict) and "random" in spec
            else len(self._listed_seeds())
        )

    def _uniform_seed(self, model: Model) -> bool:
        """True when the endpoint's seed check gives one answer for every int seed.

        So it is asked once, not once per distinct seed (`random: N` draws a new seed per job).
        Holds when the seed's schema is a bare integer and nothing else in the input schema
        can look at the seed's value.
        """
        if model.endpoint not in self._uniform:
            schema = {} if model.unchecked else self.registry.schema(model.endpoint)
            seed = schema.get("properties", {}).get("seed", {})
            self._uniform[model.endpoint] = bool(
                self.fast
                and seed.get("type") == "integer"
                and set(seed) <= {"type", "description", "title", "default", "examples", "x-source"}
                and all(
                    k
                    in {
                        "$schema",
                        "title",
                        "description",
                        "type",
                        "properties",
                        "required",
                        "additionalProperties",
                        "$defs",
                    }
                    or k.startswith("x-")
                    for k in schema
                )
                and isinstance(schema.get("additionalProperties", False), bool)
            )
        return self._uniform[model.endpoint]

    def _seed_check_key(self, model: Model, seed: Any) -> tuple[Any, ...]:
        if type(seed) is int and self._uniform_seed(model):
            return (
                model.endpoint,
                "seed",
                int,
            )  # the type stands for every int: no seed value is a type
        return (model.endpoint, "seed", seed)

    def seed_verdict(self, model: str, seed: Any) -> list[Violation] | None:
        """What the schema said of this seed for this model (None: not asked yet)."""
        return self._checked.get(self._seed_check_key(self.models[model], seed))

    def _fits(self, template: _Template, seeds: Sequence[Any]) -> bool:
        """True when every seed of the cell would give a template job with nothing to report.

        Then the cell can be taken whole: each seed valid and distinct, and (where the schema
        looks at seeds) each seed already found clean by the schema.
        """
        endpoint = template.first.endpoint
        shared = seeds is self._seeds
        if shared and (endpoint, template.check_seed) in self._fit:
            return True
        if isinstance(seeds, range):
            ok = seeds.step == 1 and (not seeds or (_seed_ok(seeds[0]) and _seed_ok(seeds[-1])))
        else:
            ok = (isinstance(seeds, _RandomSeeds) or all(_seed_ok(seed) for seed in seeds)) and len(
                set(seeds)
            ) == len(seeds)
        if ok and template.check_seed:
            model = self.models[template.first.model]
            if isinstance(seeds, (range, _RandomSeeds)) and self._uniform_seed(
                model
            ):  # ints: one verdict for all
                ok = self._checked.get((model.endpoint, "seed", int)) == []
            else:
                ok = all(
                    self._checked.get(self._seed_check_key(model, seed)) == [] for seed in seeds
                )
        if ok and shared:
            self._fit.add((endpoint, template.check_seed))
        return ok

    def check_seeds(self) -> None:
        spec = self.m.seeds
        values = []
        if isinstance(spec, list):
            values = [(("seeds", i), s) for i, s in enumerate(spec)]
            seen: dict[int, int] = {}
            for i, s in enumerate(spec):
                if s in seen:
                    self.at(("seeds", i), f"seed {s} is listed twice (also at index {seen[s]})")
                seen.setdefault(s, i)
        elif isinstance(spec, dict) and "start" in spec:
            values = [
                (("seeds", "start"), spec["start"]),
                (("seeds", "count"), spec["start"] + spec["count"] - 1),
            ]
        for path, s in values:
            if not SEED_MIN <= s <= SEED_MAX:
                self.at(
                    path,
                    f"seed {s} is out of range",
                    allowed=f"{SEED_MIN} to {SEED_MAX} (0 and -1 mean 'random' to some models)",
                )

    def check_references(self, prompts: dict[str, Prompt], models: dict[str, Model]) -> None:
        """include/exclude/extra values for prompt and model must name real ones."""
        by_endpoint = {m.endpoint: m.name for m in models.values()}
        for section in ("include", "exclude", "extra"):
            for i, entry in enumerate(getattr(self.m, section)):
                if "prompt" in entry and entry["prompt"] not in prompts:
                    self.at(
                        (section, i, "prompt"),
                        f"no prompt with id {entry['prompt']!r}",
                        suggestion=closest(entry["prompt"], prompts),
                    )
                if (
                    "model" in entry
                    and entry["model"] not in models
                    and entry["model"] not in by_endpoint
                ):
                    self.at(
                        (section, i, "model"),
                        f"no model named {entry['model']!r}",
                        allowed=", ".join(models),
                        suggestion=closest(entry["model"], list(models)),
                    )

    # -------------------------------------------------- job assembly

    def translate_ratio(
        self, model: Model, payload: dict[str, Any], origin: tuple[Any, ...], job: str
    ) -> None:
        """Give the portable `aspect_ratio` to a model in its own vocabulary."""
        if model.unchecked or "aspect_ratio" not in payload:
            return
        props = self.props(model)
        if "aspect_ratio" in props:
            return
        ratio = payload.pop("aspect_ratio")
        if not isinstance(ratio, str):
            self._translate(model, props, payload, ratio, origin, job)
            return
        memo = (model.endpoint, ratio, "image_size" in payload)
        if memo in self._ratio:
            result = self._ratio[memo]
            if result is not None:
                payload[result[0]] = result[1]
                return
        # Counted, not len(self.problems): a repeated problem is folded into an existing entry.
        before = sum(self.counts.values())
        self._translate(model, props, payload, ratio, origin, job)
        ok = sum(self.counts.values()) == before
        self._ratio[memo] = ("image_size", payload["image_size"]) if ok else None

    def _translate(
        self,
        model: Model,
        props: dict[str, Any],
        payload: dict[str, Any],
        ratio: Any,
        origin: tuple[Any, ...],
        job: str,
    ) -> None:
        size = props.get("image_size")
        if (
            not isinstance(ratio, str)
            or not all(p.isdigit() and int(p) > 0 for p in ratio.split(":"))
            or ratio.count(":") != 1
        ):
            self.at(origin, f"aspect_ratio {ratio!r} is not a ratio like 16:9", job=job)
            return
        if size is None:
            self.at(
                origin,
                f"{model.endpoint} cannot take an aspect ratio: it has neither aspect_ratio nor image_size",
                job=job,
            )
            return
        if "image_size" in payload:
            self.at(
                origin,
                f"both aspect_ratio and image_size are set for {model.endpoint}; keep one",
                job=job,
            )
            return
        presets = next((b.get("enum", []) for b in size.get("anyOf", [size]) if "enum" in b), [])
        takes_object = any(
            b.get("$ref") or b.get("type") == "object" for b in size.get("anyOf", [size])
        )
        preset = RATIO_PRESET.get(ratio)
        if preset in presets:
            payload["image_size"] = preset
        elif takes_object:
            payload["image_size"] = ratio_size(ratio)
        else:
            self.at(
                origin,
                f"{model.endpoint} cannot express aspect ratio {ratio}",
                job=job,
                allowed="image_size presets: " + ", ".join(presets),
            )

    def validate(
        self,
        model: Model,
        payload: dict[str, Any],
        layers: list[tuple[tuple[Any, ...], dict[str, Any]]],
        job: Any,
        shape: tuple[Any, ...],
    ) -> bool:
        """Check a job's input; each distinct shape, prompt and seed is validated once.

        `shape` identifies everything but prompt and seed (the layers the input was built
        from), so 100,000 jobs over a handful of shapes cost a handful of validations.
        """
        if model.unchecked:
            return True
        prompt = payload.get("prompt")
        checks: list[tuple[tuple[Any, ...], Any, Any]] = [
            (
                ("shape", *shape),
                lambda: {
                    **{k: v for k, v in payload.items() if k not in ("prompt", "seed")},
                    "prompt": "x",
                },
                "rest",
            ),
        ]
        if not (isinstance(prompt, str) and self._plain_string_prompt(model)):
            checks.append((("prompt", prompt), lambda: {"prompt": prompt}, "$.prompt"))
        if "seed" in payload:
            seed = payload["seed"]
            checks.append(
                (
                    self._seed_check_key(model, seed)[1:],
                    lambda: {"prompt": "x", "seed": seed},
                    "$.seed",
                )
            )
        ok = True
        for cache_key, body, part in checks:
            key = (model.endpoint, *cache_key)
            if key not in self._checked:
                found = self.registry.check(model.endpoint, body())
                self._checked[key] = [
                    v
                    for v in found
                    if (
                        v.json_path.startswith(part)
                        if part != "rest"
                        else v.json_path != "$.prompt"
                    )
                ]
            if self._checked[key] and not isinstance(job, str):
                job = str(job)
            for v in self._checked[key]:
                ok = False
                top = v.json_path[2:].replace("[", ".").split(".")[0]
                origin = next(
                    ((*path, top) for path, params in reversed(layers) if top in params), None
                )
                if origin is None:
                    origin = ("models", self.m.models.index(model))
                self.at(
                    origin,
                    f"{model.endpoint}: {v.json_path}: {v.message}",
                    job=job,
                    allowed=v.allowed,
                    suggestion=v.suggestion,
                )
        return ok

    def build(self) -> Plan:
        self.check_seeds()
        prompts, models = self.check_names()
        self.check_references(prompts, models)
        # Planning goes on past these problems so one run of `validate` lists them all;
        # combinations naming an unknown prompt or model are skipped below.
        self.prompts, self.models = prompts, models
        self.axes_global = list(self.m.axes.items())
        self.endpoint_names = {m.endpoint: m.name for m in models.values()}
        # Canonical layers make every assembled input canonical: keys are hashed as built.
        self.defaults = canonical(self.m.defaults)
        self.model_params = {name: canonical(m.params) for name, m in models.items()}
        self.prompt_params = {pid: canonical(p.params) for pid, p in prompts.items()}
        self.include = [dict(e) for e in self.m.include]
        for e in self.include:
            if "model" in e:
                e["model"] = self.endpoint_names.get(e["model"], e["model"])
        self.exclude = [
            {**e, "model": self.endpoint_names.get(e["model"], e["model"])} if "model" in e else e
            for e in self.m.exclude
        ]
        self.axis_names = {n for n, _ in self.axes_global} | {
            n for m in models.values() for n in m.axes
        }
        self.unseeded: set[str] = set()

        # One checking pass over every job, holding none of them: fingerprints catch repeated
        # paths and inputs; only if one repeats is the pass run again, exactly, to name both jobs.
        # (The straightforward way, fast=False, runs the exact pass only, comparing every job.)
        self._exact = not self.fast
        self._reset_suspects()
        found = (
            dict(self.problems),
            dict(self.counts),
        )  # the manifest-level problems, kept for a rerun
        tally = self._check_pass()
        if (
            self._suspect_stems
            or self._suspect_keys
            or self._suspect_prefixes
            or self._suspect_texts
        ):
            self.problems, self.counts = dict(found[0]), defaultdict(int, found[1])
            self._exact = True
            tally = self._check_pass()
        if not tally.combos and not self.problems:
            self.at(
                ("exclude",) if self.m.exclude else ("prompts",),
                "the matrix is empty: every combination was excluded",
            )
            self.fail()
        if self.problems:
            self.fail()
        costs = {name: tally.costs.get(name) for name in models}
        total = sum(c for c in costs.values() if c is not None)
        if self.m.budget is not None and total > self.m.budget:
            self.at(
                ("budget",),
                f"the estimated cost ${total:.2f} exceeds the budget ${self.m.budget:.2f}",
                allowed="raise the budget, or render fewer jobs (seeds, axes, exclude)",
            )
            self.fail()
        notes = [
            f"{name} takes no seed: its seeds only label repeated samples, and its images are not reproducible"
            for name in sorted(self.unseeded)
        ]
        jobs = Jobs(
            self._jobs,
            tally.jobs,
            self._locate if self.fast else None,
            self._plan_keys if self.fast else None,
        )
        return Plan(
            self.m,
            jobs,
            costs,
            notes,
            digest=tally.digest.hexdigest(),
            by_model=dict(tally.by_model),
            image_count=tally.images,
            distinct_axes=list(tally.axes.values()),
        )

    # -------------------------------------------------- generation (lazy, in plan order)

    def _matrix(self) -> Iterator[tuple[Prompt, Model, dict[str, Any], list[Any]]]:
        """(prompt, model, axis values, seeds) of the plain matrix, in plan order (seeds innermost)."""
        for prompt in self.prompts.values():
            for model in self.models.values():
                variables = self.axes_global + list(model.axes.items())
                names = [n for n, _ in variables]
                seeds = self.seeds_for(prompt, model)
                for values in product(*(vals for _, vals in variables)):
                    yield prompt, model, dict(zip(names, values, strict=False)), seeds

    def _originals(self) -> Iterator[dict[str, Any]]:
        for prompt, model, axis_values, seeds in self._matrix():
            for seed in seeds:
                yield {"prompt": prompt.id, "model": model.name, **axis_values, "seed": seed}

    def _cells(
        self, tally: _Tally | None
    ) -> Iterator[
        tuple[Prompt, Model, dict[str, Any], dict[str, Any], tuple[Any, ...] | None, list[Any]]
    ]:
        """(prompt, model, axes, extra params, source, seeds): jobs that differ only by seed, grouped."""
        if not self.include and not self.exclude:
            # The plain matrix: no combination dicts at all, seeds innermost.
            for prompt, model, axis_values, seeds in self._matrix():
                if tally is not None:
                    tally.combos += len(seeds)
                yield prompt, model, canonical(axis_values), {}, None, seeds
        else:
            for combo, created in matrix.stream(self._originals, self.include, self.exclude, _same):
                if tally is not None:
                    tally.combos += 1
                entry = (
                    next((i for i, e in enumerate(self.include) if e == combo), None)
                    if created
                    else None
                )
                cell = self._cell(combo, ("include", entry) if created else None)
                if cell is not None:
                    yield cell
        for i, e in enumerate(self.m.extra):
            if tally is not None:
                tally.combos += 1
            cell = self._cell(
                {**e, "model": self.endpoint_names.get(e["model"], e["model"])}, ("extra", i)
            )
            if cell is not None:
                yield cell

    def _cell(self, combo: dict[str, Any], source: tuple[Any, ...] | None) -> Any:
        missing = [k for k in RESERVED if k not in combo]
        if missing:
            self.at(
                source or ("include",),
                f"this entry creates a new combination but lacks {', '.join(missing)}",
                allowed="a new combination needs prompt, model and seed",
            )
            return None
        if combo["prompt"] not in self.prompts or combo["model"] not in self.models:
            return None  # already reported
        job_axes = canonical({k: v for k, v in combo.items() if k in self.axis_names})
        extra_params = canonical(
            {k: v for k, v in combo.items() if k not in self.axis_names and k not in RESERVED}
        )
        return (
            self.prompts[combo["prompt"]],
            self.models[combo["model"]],
            job_axes,
            extra_params,
            source,
            [combo["seed"]],
        )

    def _generate(
        self,
        check: bool,
        tally: _Tally | None = None,
        blocks: bool = False,
        cells: Iterator[tuple[Any, ...]] | None = None,
        start: int = 0,
    ) -> Iterator[Job | _Block]:
        """Every job in plan order; with `check`, validated and tested for repeats (problems recorded).

        With `blocks`, a cell whose seeds all fit its template (see `_fits`) is given as one
        `_Block` instead of its jobs: checking it needs its first job only.
        """
        n = start
        for prompt, model, job_axes, extra_params, source, seeds in cells or self._cells(tally):
            template: _Template | None = None
            for i, seed in enumerate(seeds):
                job = template.make(n, seed, check) if template is not None else None
                if job is None:
                    before = len(self.problems)
                    job = self._full(n, prompt, model, job_axes, extra_params, source, seed, check)
                    if (
                        job is not None
                        and template is None
                        and len(self.problems) == before
                        and self.fast
                    ):
                        template = _Template.of(self, job, model)
                        if (
                            blocks
                            and i == 0
                            and template is not None
                            and self._fits(template, seeds)
                        ):
                            if self._unique_cell(template):
                                yield _Block(template, seeds)
                                n += len(seeds)
                            break
                if job is None:
                    continue
                if check and not self._unique(job, source or prompt.path, template):
                    continue
                n += 1
                yield job

    def _jobs(self) -> Iterator[Job]:
        """The plan's jobs (the plan was checked: nothing to report)."""
        return self._generate(check=False)  # type: ignore[return-value]  # no blocks without `blocks`

    def _count(self, seeds: Sequence[Any]) -> int:
        """How many jobs a cell gives once checked: one per valid seed."""
        if isinstance(seeds, _RandomSeeds):
            return len(seeds)
        if (
            isinstance(seeds, range)
            and seeds.step == 1
            and (not seeds or (_seed_ok(seeds[0]) and _seed_ok(seeds[-1])))
        ):
            return len(seeds)
        return sum(1 for seed in seeds if _seed_ok(seed))

    def _locate(self, index: int) -> Job:
        """The job at plan position `index`: whole cells before it are skipped by counting."""
        n = 0
        for cell in self._cells(None):
            count = self._count(cell[5])
            if index < n + count:
                for job in self._generate(False, cells=iter([cell]), start=n):
                    if isinstance(job, Job) and job.index == index:
                        return job
                break
            n += count
        raise IndexError("job index out of range")

    def _plan_keys(self) -> Iterator[tuple[str, str]]:
        """(key, model) of every job in plan order, making a job only where a key needs one."""
        for prompt, model, job_axes, extra_params, source, seeds in self._cells(None):
            template: _Template | None = None
            for seed in seeds:
                if template is not None and _seed_ok(seed):
                    yield template._key(seed), model.name
                    continue
                before = len(self.problems)
                job = self._full(0, prompt, model, job_axes, extra_params, source, seed, False)
                if job is None:
                    continue
                if template is None and len(self.problems) == before and self.fast:
                    template = _Template.of(self, job, model)
                yield job.key, model.name

    def _full(
        self,
        n: int,
        prompt: Prompt,
        model: Model,
        job_axes: dict[str, Any],
        extra_params: dict[str, Any],
        source: tuple[Any, ...] | None,
        seed: Any,
        check: bool,
    ) -> Job | None:
        """One job assembled from its layers (the template path's reference)."""
        seed_ok = (
            isinstance(seed, int) and not isinstance(seed, bool) and SEED_MIN <= seed <= SEED_MAX
        )
        if (
            check and not seed_ok and source is not None
        ):  # listed seeds were checked once, in check_seeds
            self.at(
                (*source, "seed"),
                f"seed {seed!r} is out of range",
                allowed=f"integers {SEED_MIN} to {SEED_MAX}",
            )
        layers: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (("defaults",), self.defaults),
            ((*model.path, "params"), self.model_params[model.name]),
            ((*prompt.path, "params"), self.prompt_params[prompt.id]),
            (("axes",), {k: v for k, v in job_axes.items() if k in self.m.axes}),
            ((*model.path, "axes"), {k: v for k, v in job_axes.items() if k in model.axes}),
            (source or ("include",), extra_params),
        ]
        payload: dict[str, Any] = {}
        for _, params in layers:
            payload.update(params)
        payload["prompt"] = prompt.text
        seed_sent = model.unchecked or "seed" in self.props(model)
        if seed_sent and seed_ok:
            payload["seed"] = seed
        else:
            self.unseeded.add(model.name)
        who = _Who(
            model.endpoint, model.name, prompt.id, seed, job_axes
        )  # described only on a problem

        if "aspect_ratio" in payload:
            origin = next(
                (
                    (*path, "aspect_ratio")
                    for path, params in reversed(layers)
                    if "aspect_ratio" in params
                ),
                ("defaults",),
            )
            self.translate_ratio(model, payload, origin, str(who))
        shape = (
            model.name,
            prompt.id if prompt.params else "",
            _freeze(job_axes),
            _freeze(extra_params),
        )
        # A job with a bad seed is still checked, so one run lists all of its problems.
        if (check and not self.validate(model, payload, layers, who, shape)) or not seed_ok:
            return None
        stem = job_stem(model.name, prompt.id, job_axes, seed)
        return Job(
            n,
            job_key(model.endpoint, payload, None if seed_sent else seed),
            model.endpoint,
            model.name,
            prompt.id,
            seed,
            job_axes,
            payload,
            stem,
            int(payload.get("num_images", 1)),
            prompt.tags,
            f"{prompt.where[0]}:{prompt.where[1]}",
            seed_sent,
        )

    def _unique(self, job: Job, where: tuple[Any, ...], template: _Template | None) -> bool:
        """No two jobs share an output path (ignoring case) or an input (it would be paid twice)."""
        folded = job.stem.lower()
        stem_fp, key_fp = hash(folded), int(job.key[3:19], 16)
        if not self._exact:
            # Every fingerprint is checked and recorded, suspect or not: a job set aside here
            # may be kept by the exact pass, and whatever repeats it must be suspect too.
            clean = True
            if self._cross:  # cells taken whole are known by prefix and cell text only
                prefix = _stem_prefix(folded)
                text = (
                    template.text
                    if template is not None and job.stem.startswith(template.stem)
                    else _cell_text(job)
                )
                # (Jobs made one by one share prefixes and texts within a cell: compared exactly below.)
                if prefix is not None:
                    clean &= self._record(
                        hash(prefix),
                        self._job_prefixes,
                        (self._cell_prefixes,),
                        self._suspect_prefixes,
                    )
                if text is not None:
                    clean &= self._record(
                        hash(text), self._job_texts, (self._cell_texts,), self._suspect_texts
                    )
            clean &= self._record(stem_fp, self._stems, (self._stems,), self._suspect_stems)
            clean &= self._record(key_fp, self._keys, (self._keys,), self._suspect_keys)
            return bool(clean)
        # The exact pass: only fingerprints seen twice need the values themselves.
        suspect_stem = not self.fast or stem_fp in self._suspect_stems
        if not suspect_stem and self._suspect_prefixes:
            prefix = _stem_prefix(folded)
            suspect_stem = prefix is not None and hash(prefix) in self._suspect_prefixes
        suspect_key = not self.fast or key_fp in self._suspect_keys
        if not suspect_key and self._suspect_texts:
            text = (
                template.text
                if template is not None and job.stem.startswith(template.stem)
                else _cell_text(job)
            )
            suspect_key = text is not None and hash(text) in self._suspect_texts
        clash = self._first_stem.get(folded) if suspect_stem else None
        if clash is not None:
            who = _Who(job.endpoint, job.model, job.prompt_id, job.seed, job.axes)
            self.at(
                where,
                f"two jobs map to one output path {job.stem!r}: {clash.describe()} and {who}",
                allowed="give them a distinguishing axis, label or prompt id",
            )
            return False
        twin = self._first_key.get(job.key) if suspect_key else None
        if twin is not None:
            who = _Who(job.endpoint, job.model, job.prompt_id, job.seed, job.axes)
            self.at(
                where, f"{who} sends exactly the input of {twin.describe()}; it would be paid twice"
            )
            return False
        if suspect_stem:
            self._first_stem[folded] = job
        if suspect_key:
            self._first_key[job.key] = job
        return True

    def _unique_cell(self, template: _Template) -> bool:
        """`_unique` for a whole cell of distinct seeds: its paths share one prefix, its inputs one text.

        Nothing else can share a prefix or a text with it; when something does, the exact pass
        (which takes no cell whole) names the jobs.
        """
        prefix, text = hash(template.stem.lower()), hash(template.text)
        clean = self._record(
            prefix,
            self._cell_prefixes,
            (self._cell_prefixes, self._job_prefixes),
            self._suspect_prefixes,
        )
        return (
            self._record(
                text, self._cell_texts, (self._cell_texts, self._job_texts), self._suspect_texts
            )
            and clean
        )

    @staticmethod
    def _record(
        fp: int, into: Fingerprints, against: tuple[Fingerprints, ...], suspects: set[int]
    ) -> bool:
        """Add `fp` to `into`; False (and `fp` suspect) when one of `against` already holds it."""
        seen = any(fp in seen_in for seen_in in against)
        if seen:
            suspects.add(fp)
        into.add(fp)
        return not seen

    def _reset_suspects(self) -> None:
        self._suspect_stems: set[int] = set()
        self._suspect_keys: set[int] = set()
        self._suspect_prefixes: set[int] = set()
        self._suspect_texts: set[int] = set()

    def _check_pass(self) -> _Tally:
        self._stems, self._keys = Fingerprints(), Fingerprints()
        # Cells taken whole are compared by prefix and cell text; jobs made one by one then
        # also record theirs (`_cross`). Only the plain matrix has cells of several seeds (with
        # one seed a cell is one job: nothing to gain, so jobs are compared one by one).
        blocks = (
            self.fast
            and not self._exact
            and not self.include
            and not self.exclude
            and self._seeds_per_cell() > 1
        )
        self._cross = blocks
        self._cell_prefixes, self._cell_texts = Fingerprints(), Fingerprints()
        self._job_prefixes, self._job_texts = Fingerprints(), Fingerprints()
        self._first_stem: dict[str, Job] = {}
        self._first_key: dict[str, Job] = {}
        tally = _Tally()
        prices = {}
        for name, model in self.models.items():
            price = self.m.prices.get(model.endpoint) or self.m.prices.get(name)
            if price:
                # Unset sizes are priced at the endpoint's documented default size.
                props = {} if model.unchecked else self.registry.properties(model.endpoint)
                prices[name] = (
                    price,
                    {k: v["default"] for k, v in props.items() if "default" in v},
                )
                tally.costs[name] = 0.0
        sizes: dict[tuple[Any, ...], float] = {}
        for item in self._generate(check=True, tally=tally, blocks=blocks):
            if isinstance(item, _Block):
                tally.add_block(item, self._seeds_text(item.seeds))
                job, count = item.template.first, len(item.seeds)
            else:
                tally.add(item)
                job, count = item, 1
            priced = prices.get(job.model)
            if priced is None:
                continue
            price, documented = priced
            if "per_image" in price:
                cost = price["per_image"] * job.num_images
            else:
                size = job.input.get("image_size")
                memo = (
                    job.model,
                    _freeze(size) if isinstance(size, dict) else size,
                    job.input.get("resolution"),
                )
                if memo not in sizes:
                    sizes[memo] = megapixels({**documented, **job.input})
                cost = price["per_megapixel"] * job.num_images * sizes[memo]
            total = tally.costs[job.model]
            for _ in range(count):  # added one job at a time, as the straightforward way rounds
                total += cost
            tally.costs[job.model] = total
        # Freed: only the suspects matter from here.
        self._stems = self._keys = self._job_prefixes = self._job_texts = Fingerprints(0)
        self._cell_prefixes = self._cell_texts = Fingerprints(0)
        return tally

    def fail(self) -> None:
        problems = []
        for key, problem in self.problems.items():
            n = self.counts[key]
            if n > 1 and problem.job:
                problem = Problem(
                    problem.file,
                    problem.line,
                    problem.col,
                    problem.message,
                    problem.json_path,
                    f"{problem.job} (and {n - 1} more job{'s' if n > 2 else ''})",
                    problem.allowed,
                    problem.suggestion,
                )
            problems.append(problem)
        raise ManifestError(problems)


def megapixels(payload: dict[str, Any]) -> float:
    size = payload.get("image_size")
    if isinstance(size, dict):
        return size.get("width", 1024) * size.get("height", 1024) / 1e6
    if isinstance(size, str) and size in PRESETS:
        w, h = PRESETS[size]
        return w * h / 1e6
    scale = {"2K": 4.0}.get(str(payload.get("resolution", "1K")), 1.0)
    return 1.048576 * scale


def price_of(
    prices: dict[str, dict[str, float]], endpoint: str, model: str
) -> dict[str, float] | None:
    """The manifest's price for a model: by endpoint id, else by label; None when unpriced."""
    return prices.get(endpoint) or prices.get(model) or None


def image_cost(price: dict[str, float], width: int, height: int) -> float:
    """What one delivered image cost by the manifest's price: per image, or per megapixel of its real size."""
    if "per_image" in price:
        return float(price["per_image"])
    return float(price.get("per_megapixel", 0.0)) * width * height / 1e6


def build(manifest: Manifest, registry: SchemaRegistry) -> Plan:
    """Expand and check every job; raise ManifestError listing every problem."""
    return _Planner(manifest, registry).build()
