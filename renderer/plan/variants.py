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


class Variants(Dedupe):
    """The plain matrix and its sampled / ordered form, as combinations (expand.py makes jobs)."""

    def _matrix(self) -> Iterator[tuple[Prompt, Model, dict[str, Any], Sequence[int]]]:
        """(prompt, model, axis values, seeds) of the plain matrix, in plan order: prompt, its
        own variants (template variables, alternations, zip groups), model, axes, seeds innermost."""
        for template in self.prompts.values():
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
                prompt = self._resolved(template, mine)
                for model in self.models.values():
                    variables = self.axes_global + list(model.axes.items())
                    names = [n for n, _ in variables]
                    seeds = self.seeds_for(prompt, model)
                    for values in product(*(vals for _, vals in variables)):
                        axis_values = dict(zip(names, values, strict=False))
                        yield prompt, model, {**mine, **axis_values} if mine else axis_values, seeds

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
