"""The matrix expanded lazily in plan order: cells (prompt × model × axes), then a job per seed,
through the per-cell template where it applies, else in full.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from renderer.layout import job_stem
from renderer.manifest.types import Model, Prompt
from renderer.plan import matrix
from renderer.plan.compare import same_value
from renderer.plan.jobs import (
    RESERVED,
    SEED_MAX,
    SEED_MIN,
    Job,
    Who,
    canonical,
    freeze,
    job_key,
)
from renderer.plan.seeds import RandomSeeds
from renderer.plan.template import MAX_COLUMNS, CellBlock, CellTemplate, PromptColumn, seed_ok
from renderer.plan.unique import Tally
from renderer.plan.variants import Variants


class Expansion(Variants):
    """The matrix expanded lazily in plan order: cells (prompt × model × axes), then a job per seed,"""

    def _cells(
        self, tally: Tally | None
    ) -> Iterator[
        tuple[Prompt, Model, dict[str, Any], dict[str, Any], tuple[Any, ...] | None, Sequence[int]]
    ]:
        """(prompt, model, axes, extra params, source, seeds): jobs that differ only by seed, grouped."""
        swept = self.m.sample is not None or self.m.order != "plan"
        if not self.include and not self.exclude and not swept:
            # The plain matrix: no combination dicts at all, seeds innermost.
            for prompt, model, job_axes, seeds in self._matrix(canonical_axes=True):
                if tally is not None:
                    tally.combos += len(seeds)
                yield prompt, model, job_axes, {}, None, seeds
        else:
            # A sample or an order is taken after exclude and before include (see _swept).
            for combo, created in matrix.stream(
                self._swept if swept else self._originals,
                self.include,
                () if swept else self.exclude,
                same_value,
            ):
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
        prompt = self.prompts[combo["prompt"]]
        if prompt.template is not None:
            lacking = [n for n in prompt.template.names if n not in combo]
            if lacking:
                self.at(
                    source or ("include",),
                    f"this entry creates a combination of prompt {prompt.id!r} but lacks "
                    f"{', '.join(lacking)}, which its text names",
                    allowed="a value for every variable the prompt's text names",
                )
                return None
            prompt = self._resolved(prompt, combo)
        job_axes = canonical({k: v for k, v in combo.items() if k in self.axis_names})
        extra_params = canonical(
            {k: v for k, v in combo.items() if k not in self.axis_names and k not in RESERVED}
        )
        return (
            prompt,
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
            # A literal prompt of the plain matrix: its input is its column's but for the text.
            literal = (
                self.shortcuts
                and prompt.template is None
                and not prompt.params
                and source is None
                and not extra_params
            )
            shape = freeze(job_axes) if literal else ""
            for i, seed in enumerate(seeds):
                job = template.make(n, seed, check) if template is not None else None
                if job is None:
                    column_key = (check, model.name, shape, seed)
                    column = self._columns.get(column_key) if literal else None
                    job = column.make(n, prompt, job_axes, check) if column is not None else None
                    clean = job is not None
                    if job is None:
                        before = len(self.problems)
                        job = self._full(
                            n, prompt, model, job_axes, extra_params, source, seed, check
                        )
                        clean = job is not None and len(self.problems) == before and self.shortcuts
                        if (
                            clean
                            and literal
                            and column_key not in self._columns
                            and len(self._columns) < MAX_COLUMNS
                        ):
                            self._columns[column_key] = PromptColumn.of(
                                job,  # type: ignore[arg-type]  # clean: a job was made
                                self.prompt_check(model),
                                self.sharded,
                            )
                    # A cell of one seed needs no template, unless cells are taken whole.
                    if clean and template is None and (blocks or len(seeds) > 1):
                        template = CellTemplate.of(self, job, model)  # type: ignore[arg-type]
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
        if isinstance(seeds, RandomSeeds):
            return len(seeds)
        if (
            isinstance(seeds, range)
            and seeds.step == 1
            and (not seeds or (seed_ok(seeds[0]) and seed_ok(seeds[-1])))
        ):
            return len(seeds)
        return sum(1 for seed in seeds if seed_ok(seed))

    def _locate(self, index: int) -> Job:
        """The job at plan position `index`: whole cells before it are skipped by counting.

        A plan of literal prompts only (a caption set) gives each prompt the same cells, so the
        prompt is found by division, not by walking the prompts before it.
        """
        n = 0
        cells: Iterator[Any] = self._cells(None)
        shared = self._only_literal()
        if shared:
            per_prompt = sum(self._count(seeds) for _, _, seeds in shared)
            if per_prompt:
                at = index // per_prompt
                if at >= len(self.m.prompts):
                    raise IndexError("job index out of range")
                prompt = self.m.prompts[at]
                n = at * per_prompt
                cells = iter(
                    [(prompt, model, axes, {}, None, seeds) for model, axes, seeds in shared]
                )
        for cell in cells:
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
                if template is None and len(self.problems) == before and self.shortcuts:
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
            ((*prompt.path, "params"), canonical(prompt.params) if prompt.params else {}),
            (("axes",), {k: v for k, v in job_axes.items() if k in self.m.axes}),
            ((*model.path, "axes"), {k: v for k, v in job_axes.items() if k in model.axes}),
        ]
        for path, keys in self.zip_params:
            layers.append((path, {k: v for k, v in job_axes.items() if k in keys}))
        if prompt.template is not None:
            # Not sent from here (payload["prompt"] is set below): it locates a schema problem
            # with the resolved text at the template that made it.
            layers.append(((*prompt.path, "text"), {"prompt": prompt.text}))
        layers.append((source or ("include",), extra_params))
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
        sent = (
            {k: v for k, v in job_axes.items() if k not in self.text_names}
            if self.text_names
            else job_axes
        )
        shape = (
            model.name,
            prompt.id if prompt.params else "",
            freeze(sent),  # values that only make prompt text never change the rest of the input
            freeze(extra_params),
        )
        # A job with a bad seed is still checked, so one run lists all of its problems.
        if (check and not self.validate(model, payload, layers, who, shape)) or not seed_ok:
            return None
        stem = job_stem(model.name, prompt.id, job_axes, seed, self.sharded)
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
            prompt.extra,
        )
