"""The matrix's combinations in plan order: each prompt's own variants (template variables,
alternations, zip groups), then models, axes and seeds; drawn and ordered as `sample:` and
`order:` say (sweep.py) before include is applied.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from itertools import product
from typing import Any

from renderer.manifest.types import Model, Prompt
from renderer.manifest.variables import prompt_axes
from renderer.plan import matrix, sweep
from renderer.plan.compare import same_value
from renderer.plan.dedupe import Dedupe
from renderer.plan.jobs import canonical


class Variants(Dedupe):
    """The plain matrix and its sampled / ordered form, as combinations (expand.py makes jobs)."""

    def _matrix(
        self, canonical_axes: bool = False
    ) -> Iterator[tuple[Prompt, Model, dict[str, Any], Sequence[int]]]:
        """(prompt, model, axis values, seeds) of the plain matrix, in plan order: prompt, its
        own variants (template variables, alternations, zip groups), model, axes, seeds innermost.

        With `canonical_axes` the axis values are canonical (jobs.canonical), and the literal
        prompts of a caption set share one list of (model, axes, seeds): the same for each.
        """
        shared: list[tuple[Model, dict[str, Any], Sequence[int]]] | None = None
        for template in self.prompts.values():
            if (
                canonical_axes
                and template.template is None
                and not self.literal_dims
                and not self._random_seeds()
            ):
                if shared is None:
                    shared = self._shared(template)
                for model, axis_values, seeds in shared:
                    yield template, model, axis_values, seeds
                continue
            own = (
                self.literal_dims
                if template.template is None
                else prompt_axes(template, self.m.variables, self.m.zips)
            )
            for picks in product(*(rows for _, rows in own)):
                mine = {
                    k: v
                    for (keys, _), row in zip(own, picks, strict=True)
                    for k, v in zip(keys, row, strict=True)
                }
                for prompt, model, axis_values, seeds in self._cells_of(template, mine):
                    yield (
                        prompt,
                        model,
                        canonical(axis_values) if canonical_axes else axis_values,
                        seeds,
                    )

    def _shared(self, literal: Prompt) -> list[tuple[Model, dict[str, Any], Sequence[int]]]:
        """(model, canonical axes, seeds) of every literal prompt's cells, in plan order."""
        return [
            (model, canonical(axis_values), seeds)
            for _, model, axis_values, seeds in self._cells_of(literal, {})
        ]

    def _only_literal(self) -> list[tuple[Model, dict[str, Any], Sequence[int]]] | None:
        """Every prompt's cells when the plan is the plain matrix of literal prompts only (each
        prompt then has the same cells, jobs and count); else None."""
        if (
            self.include
            or self.exclude
            or self.m.extra
            or self.m.sample is not None
            or self.m.order != "plan"
            or self.literal_dims
            or self._random_seeds()
            or not self.m.prompts
            or any(p.template is not None for p in self.prompts.templated())
        ):
            return None
        return self._shared(self.m.prompts[0])

    def _cells_of(
        self, template: Prompt, mine: dict[str, Any]
    ) -> Iterator[tuple[Prompt, Model, dict[str, Any], Sequence[int]]]:
        """One variant of a prompt (its own values `mine`) across models and axes."""
        prompt = self._resolved(template, mine)
        for model in self.models.values():
            variables = self.axes_global + list(model.axes.items())
            names = [n for n, _ in variables]
            seeds = self.seeds_for(prompt, model)
            for values in product(*(vals for _, vals in variables)):
                axis_values = dict(zip(names, values, strict=False))
                yield prompt, model, {**mine, **axis_values} if mine else axis_values, seeds

    def _random_seeds(self) -> bool:
        """`seeds: {random: N}`: each cell draws its own (from its prompt and model)."""
        return isinstance(self.m.seeds, dict) and "random" in self.m.seeds

    def _resolved(self, prompt: Prompt, values: dict[str, Any]) -> Prompt:
        """The prompt with its template's variables replaced by `values` (each name present)."""
        if prompt.template is None:
            return prompt
        return replace(prompt, text=prompt.template.resolve(values))

    def _originals(self) -> Iterator[dict[str, Any]]:
        for prompt, model, axis_values, seeds in self._matrix():
            for seed in seeds:
                yield {"prompt": prompt.id, "model": model.name, **axis_values, "seed": seed}

    def _swept(self) -> Iterator[dict[str, Any]]:
        """The originals after exclude, `sample` and `order`: drawn and ordered once, kept."""
        if self._sweep is None:

            def kept() -> Iterator[dict[str, Any]]:
                for c in self._originals():
                    if not any(matrix.matches(c, e, same_value) for e in self.exclude):
                        yield c

            chosen = sweep.draw(kept, self.m.sample) if self.m.sample else list(kept())
            if self.m.order == "sparse-first":
                chosen = sweep.sparse_first(chosen)
            self._sweep = chosen
        return iter(self._sweep)
