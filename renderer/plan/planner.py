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
from collections import defaultdict
from collections.abc import Iterator, Sequence
from itertools import product
from typing import Any, overload

from renderer.errors import ManifestError, Problem, closest
from renderer.layout import job_stem
from renderer.manifest.located import Located, json_path
from renderer.manifest.types import Manifest, Model, Prompt
from renderer.models.schemas import SchemaRegistry, Violation
from renderer.models.sizes import requested_size
from renderer.plan import matrix
from renderer.plan.cost import RATIO_PRESET, megapixels, ratio_size
from renderer.plan.jobs import (
    RESERVED,
    SEED_MAX,
    SEED_MIN,
    Job,
    Jobs,
    Plan,
    Who,
    canonical,
    freeze,
    job_key,
)
from renderer.plan.template import CellBlock, CellTemplate, cell_text, seed_ok, stem_prefix
from renderer.plan.unique import Fingerprints, Tally


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

    def _fits(self, template: CellTemplate, seeds: Sequence[Any]) -> bool:
        """True when every seed of the cell would give a template job with nothing to report.

        Then the cell can be taken whole: each seed valid and distinct, and (where the schema
        looks at seeds) each seed already found clean by the schema.
        """
        endpoint = template.first.endpoint
        shared = seeds is self._seeds
        if shared and (endpoint, template.check_seed) in self._fit:
            return True
        if isinstance(seeds, range):
            ok = seeds.step == 1 and (not seeds or (seed_ok(seeds[0]) and seed_ok(seeds[-1])))
        else:
            ok = (isinstance(seeds, _RandomSeeds) or all(seed_ok(seed) for seed in seeds)) and len(
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
        values: list[tuple[tuple[str, int | str], Any]] = []
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
        presets: list[Any] = next(
            (b.get("enum", []) for b in size.get("anyOf", [size]) if "enum" in b), []
        )
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

    def _matrix(self) -> Iterator[tuple[Prompt, Model, dict[str, Any], Sequence[int]]]:
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
        self, tally: Tally | None
    ) -> Iterator[
        tuple[Prompt, Model, dict[str, Any], dict[str, Any], tuple[Any, ...] | None, Sequence[int]]
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
        tally: Tally | None = None,
        blocks: bool = False,
        cells: Iterator[tuple[Any, ...]] | None = None,
        start: int = 0,
    ) -> Iterator[Job | CellBlock]:
        """Every job in plan order; with `check`, validated and tested for repeats (problems recorded).

        With `blocks`, a cell whose seeds all fit its template (see `_fits`) is given as one
        `CellBlock` instead of its jobs: checking it needs its first job only.
        """
        n = start
        for prompt, model, job_axes, extra_params, source, seeds in cells or self._cells(tally):
            template: CellTemplate | None = None
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
                        template = CellTemplate.of(self, job, model)
                        if (
                            blocks
                            and i == 0
                            and template is not None
                            and self._fits(template, seeds)
                        ):
                            if self._unique_cell(template):
                                yield CellBlock(template, seeds)
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
            and (not seeds or (seed_ok(seeds[0]) and seed_ok(seeds[-1])))
        ):
            return len(seeds)
        return sum(1 for seed in seeds if seed_ok(seed))

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
            template: CellTemplate | None = None
            for seed in seeds:
                if template is not None and seed_ok(seed):
                    yield template._key(seed), model.name
                    continue
                before = len(self.problems)
                job = self._full(0, prompt, model, job_axes, extra_params, source, seed, False)
                if job is None:
                    continue
                if template is None and len(self.problems) == before and self.fast:
                    template = CellTemplate.of(self, job, model)
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
        who = Who(
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
            freeze(job_axes),
            freeze(extra_params),
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

    def _unique(self, job: Job, where: tuple[Any, ...], template: CellTemplate | None) -> bool:
        """No two jobs share an output path (ignoring case) or an input (it would be paid twice)."""
        folded = job.stem.lower()
        stem_fp, key_fp = hash(folded), int(job.key[3:19], 16)
        if not self._exact:
            # Every fingerprint is checked and recorded, suspect or not: a job set aside here
            # may be kept by the exact pass, and whatever repeats it must be suspect too.
            clean = True
            if self._cross:  # cells taken whole are known by prefix and cell text only
                prefix = stem_prefix(folded)
                text = (
                    template.text
                    if template is not None and job.stem.startswith(template.stem)
                    else cell_text(job)
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
            prefix = stem_prefix(folded)
            suspect_stem = prefix is not None and hash(prefix) in self._suspect_prefixes
        suspect_key = not self.fast or key_fp in self._suspect_keys
        if not suspect_key and self._suspect_texts:
            text = (
                template.text
                if template is not None and job.stem.startswith(template.stem)
                else cell_text(job)
            )
            suspect_key = text is not None and hash(text) in self._suspect_texts
        clash = self._first_stem.get(folded) if suspect_stem else None
        if clash is not None:
            who = Who(job.endpoint, job.model, job.prompt_id, job.seed, job.axes)
            self.at(
                where,
                f"two jobs map to one output path {job.stem!r}: {clash.describe()} and {who}",
                allowed="give them a distinguishing axis, label or prompt id",
            )
            return False
        twin = self._first_key.get(job.key) if suspect_key else None
        if twin is not None:
            who = Who(job.endpoint, job.model, job.prompt_id, job.seed, job.axes)
            self.at(
                where, f"{who} sends exactly the input of {twin.describe()}; it would be paid twice"
            )
            return False
        if suspect_stem:
            self._first_stem[folded] = job
        if suspect_key:
            self._first_key[job.key] = job
        return True

    def _unique_cell(self, template: CellTemplate) -> bool:
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

    def _check_pass(self) -> Tally:
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
        tally = Tally()
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
            if isinstance(item, CellBlock):
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
                    freeze(size) if isinstance(size, dict) else size,
                    job.input.get("resolution"),
                    job.input.get("aspect_ratio"),
                )
                if memo not in sizes:
                    # The size the model will produce (the same arithmetic as the emulator's
                    # pictures), so the estimate prices the image that `image_cost` later bills:
                    # a 16:9 request is 1024x576 = 0.59 MP, not a flat 1.05 MP.
                    sizes[memo] = megapixels(*requested_size(job.input, documented))
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


def build(manifest: Manifest, registry: SchemaRegistry) -> Plan:
    """Expand and check every job; raise ManifestError listing every problem."""
    return _Planner(manifest, registry).build()
