"""Manifest → the ordered list of jobs, each checked against its endpoint's schema.

Invariants:
  * Deterministic: the same manifest (and schemas) always gives the same jobs in the same
    order: prompt (slowest), its template variants, model, axes in the order written, seed
    (fastest), then the combinations that `include` and `extra` create; `sample:` keeps a
    subset of that order, and `order: sparse-first` permutes it (plan/sweep.py).
  * A job's key is `j1-` + sha256 of the canonical JSON of {endpoint, input}; its stem
    (layout.job_stem) depends only on the job's own values. Adding, removing or reordering
    other prompts, models or seeds changes neither.
  * No seed that a model could read as "random" is ever sent: seeds are 1 … 2**31-1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from renderer.manifest.table import FingerprintLog
from renderer.manifest.types import Manifest, Prompt
from renderer.manifest.variables import prompt_axes, sweep_names
from renderer.models.schemas import SchemaRegistry
from renderer.plan.columns import Columns
from renderer.plan.jobs import (
    Job,
    Jobs,
    Plan,
    canonical,
)
from renderer.plan.template import CellBlock
from renderer.plan.unique import Fingerprints as Fingerprints  # re-exported (tests, older imports)
from renderer.plan.unique import Tally


class Planner(Columns):
    # -------------------------------------------------- manifest-level checks

    # -------------------------------------------------- job assembly

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
        self.include = [dict(e) for e in self.m.include]
        for e in self.include:
            if "model" in e:
                e["model"] = self.endpoint_names.get(e["model"], e["model"])
        self.exclude = [
            {**e, "model": self.endpoint_names.get(e["model"], e["model"])} if "model" in e else e
            for e in self.m.exclude
        ]
        self.axis_names = (
            {n for n, _ in self.axes_global}
            | {n for m in models.values() for n in m.axes}
            | sweep_names(prompts.templated(), self.m.variables, self.m.zips)
        )
        literal = Prompt("", "", {}, (), ("", 0, 0), ())
        self.literal_dims = prompt_axes(literal, self.m.variables, self.m.zips)
        self.zip_params = [(g.path, g.params) for g in self.m.zips if g.params]
        self.text_names = sweep_names(prompts.templated(), self.m.variables, self.m.zips) - {
            k for g in self.m.zips for k in g.params
        }
        self._sweep = None
        self.unseeded: set[str] = set()

        # One checking pass over every job, holding none of them: fingerprints catch repeated
        # paths and inputs; only if one repeats is the pass run again, exactly, to name both jobs.
        # (The straightforward way, shortcuts off, runs the exact pass only, comparing every job.)
        self._exact = not self.shortcuts
        self._reset_suspects()
        found = (
            dict(self.problems),
            dict(self.counts),
        )  # the manifest-level problems, kept for a rerun
        # A caption set proved clean by its columns (plan/columns.py); else every job checked.
        quick = self._column_pass()
        digest: str | Callable[[], str]
        if quick is not None:
            tally, digest = quick
        else:
            tally = self._check_pass()
            digest = tally.digest.hexdigest()
        if quick is None and (
            self._suspect_stems
            or self._suspect_keys
            or self._suspect_prefixes
            or self._suspect_texts
        ):
            self.problems, self.counts = dict(found[0]), defaultdict(int, found[1])
            self._exact = True
            tally = self._check_pass()
            digest = tally.digest.hexdigest()
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
            self._locate if self.shortcuts else None,
            self._plan_keys if self.shortcuts else None,
        )
        return Plan(
            self.m,
            jobs,
            costs,
            notes,
            digest_source=digest,
            by_model=dict(tally.by_model),
            image_count=tally.images,
            distinct_axes=list(tally.axes.values()),
            layout=self.layout,
        )

    # -------------------------------------------------- generation (lazy, in plan order)

    def _check_pass(self) -> Tally:
        self._stems, self._keys = FingerprintLog(), FingerprintLog()
        # Cells taken whole are compared by prefix and cell text; jobs made one by one then
        # also record theirs (`_cross`). Only the plain matrix has cells of several seeds (with
        # one seed a cell is one job: nothing to gain, so jobs are compared one by one).
        blocks = (
            self.shortcuts
            and not self._exact
            and not self.include
            and not self.exclude
            and self._seeds_per_cell() > 1
        )
        self._cross = blocks
        self._cell_prefixes, self._cell_texts = FingerprintLog(), FingerprintLog()
        self._job_prefixes, self._job_texts = FingerprintLog(), FingerprintLog()
        self._first_stem: dict[str, Job] = {}
        self._first_key: dict[str, Job] = {}
        tally = Tally()
        prices = self._prices(tally)
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
            cost = self._job_cost(job, priced, sizes)
            total = tally.costs[job.model]
            for _ in range(count):  # added one job at a time, as the straightforward way rounds
                total += cost
            tally.costs[job.model] = total
        if not self._exact:
            self._find_suspects()
        # Freed: only the suspects matter from here.
        self._stems = self._keys = self._job_prefixes = self._job_texts = FingerprintLog()
        self._cell_prefixes = self._cell_texts = FingerprintLog()
        return tally


def build(manifest: Manifest, registry: SchemaRegistry, layout: str | None = None) -> Plan:
    """Expand and check every job; raise ManifestError listing every problem.

    `layout` (flat or sharded) replaces the manifest's: a run keeps the layout it was started with.
    """
    return Planner(manifest, registry, layout).build()
