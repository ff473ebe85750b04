"""The check pass of a caption set, proved clean column by column without making its jobs; any
doubt falls back to the pass that makes and checks every job (planner._check_pass).

A caption set's plan is literal prompts (no template, no params) × columns: one column per model,
axes and seed (plan/template.PromptColumn), whose jobs differ only by the prompt's text and id.
Each column's first job is made and checked the long way; then, for the plan to be what the full
pass would find, it is enough that (`_column_pass` checks each, else the full pass runs):
  * each text passes what its column's endpoint asks of a prompt (PromptColumn.check);
  * no two jobs share a key. A key hashes the canonical JSON of {endpoint, input[, sample]}:
    equal texts are equal identities, whose prompt and the rest (the column's text) are then
    equal. So two columns' texts (before, after) differ, and no two prompts' texts are equal
    (their fingerprints, logged as the prompt files were read, repeat none);
  * no two jobs share a path ignoring case. A stem is head/[bucket/]segment(id)tail, one segment
    per part; with every id its own segment (ids derived from text always are), two stems are
    equal only if their ids are (check_names found no repeated id) and their columns' heads and
    tails are: the columns' (head, tail) differ ignoring case.
What the full pass tallies is then arithmetic on the columns; the digest (a hash of every job's
key, model, source, tags and kept values, the full pass's bytes) is made only when something asks
for it. Kept values (`keep:`, Prompt.extra) are in no key, stem or input: nothing above depends
on them, and each job is made with its own prompt's (PromptColumn.make).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from json.encoder import encode_basestring  # as PromptColumn.key
from typing import Any

from renderer.layout import segment_of
from renderer.manifest.table import Prompts, PromptTable, parts_log, text_fingerprint
from renderer.manifest.types import Model
from renderer.models.sizes import requested_size
from renderer.plan.cost import megapixels
from renderer.plan.expand import Expansion
from renderer.plan.jobs import KEY_VERSION, Job, freeze
from renderer.plan.template import PromptColumn, seed_ok
from renderer.plan.unique import Tally


class Columns(Expansion):
    """The caption set's check pass (see the module docstring) and the cost of a job."""

    def _prices(self, tally: Tally) -> dict[str, tuple[dict[str, float], dict[str, Any]]]:
        """Each priced model's price and its documented defaults (unset sizes are priced at
        the endpoint's default size); the tally's cost of each starts at 0."""
        prices = {}
        for name, model in self.models.items():
            price = self.m.prices.get(model.endpoint) or self.m.prices.get(name)
            if price:
                props = {} if model.unchecked else self.registry.properties(model.endpoint)
                prices[name] = (
                    price,
                    {k: v["default"] for k, v in props.items() if "default" in v},
                )
                tally.costs[name] = 0.0
        return prices

    def _job_cost(
        self,
        job: Job,
        priced: tuple[dict[str, float], dict[str, Any]],
        sizes: dict[tuple[Any, ...], float],
    ) -> float:
        price, documented = priced
        if "per_image" in price:
            return price["per_image"] * job.num_images
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
        return price["per_megapixel"] * job.num_images * sizes[memo]

    def _column_pass(self) -> tuple[Tally, Callable[[], str]] | None:
        """(tally, digest maker) of a caption set found clean; None: the full pass must run
        (another shape, or something to report: it reports it, as if this had not run)."""
        shared = self._caption_cells()
        if shared is None:
            return None
        kept = (dict(self.problems), dict(self.counts), set(self.unseeded), dict(self._columns))
        columns = self._first_columns(shared)
        if (
            columns is None
            or len({(c.before, c.after) for c in columns}) < len(columns)
            or len({(c.head.lower(), c.tail.lower()) for c in columns}) < len(columns)
            or not self._plain_ids()
            or self._texts_repeat()
            or not self._texts_pass(columns, shared)
        ):
            self.problems, self.counts = kept[0], defaultdict(int, kept[1])
            self.unseeded, self._columns = kept[2], kept[3]
            return None
        return self._tally(columns, len(shared)), lambda: self._digest(columns)

    def _caption_cells(self) -> list[tuple[Model, dict[str, Any], Sequence[int]]] | None:
        """Every prompt's cells (the same for each) when the plan is a caption set's: the plain
        matrix of literal prompts without params, one valid seed per cell, nothing reported yet."""
        if not self.shortcuts or self._exact or self.problems or self.prompts._skipped:
            return None
        shared = self._only_literal()
        if shared is None or any(len(s) != 1 or not seed_ok(s[0]) for _, _, s in shared):
            return None
        for part in self._parts():
            if isinstance(part, PromptTable):
                if part.with_params:
                    return None
            elif any(p.params or p.template is not None for p in part):
                return None
        return shared

    def _parts(self) -> tuple[Sequence[Any], ...]:
        prompts = self.m.prompts
        return prompts.parts if isinstance(prompts, Prompts) else (prompts,)

    def _first_columns(
        self, shared: list[tuple[Model, dict[str, Any], Sequence[int]]]
    ) -> list[PromptColumn] | None:
        """Each cell's column, from the first prompt's job made and checked the long way (the
        full pass makes it so too); None if that job has anything to report."""
        first = self.m.prompts[0]
        columns = []
        checks: dict[str, Callable[[str], bool] | None] = {}
        for model, axes, seeds in shared:
            before = len(self.problems)
            job = self._full(0, first, model, axes, {}, None, seeds[0], True)
            if job is None or len(self.problems) != before:
                return None
            if model.endpoint not in checks:
                checks[model.endpoint] = self.prompt_check(model)
            column = PromptColumn.of(job, checks[model.endpoint], self.sharded)
            if column is None:
                return None
            columns.append(column)
        return columns

    def _plain_ids(self) -> bool:
        """True when every id given is its own path segment (derived ids always are)."""
        for part in self._parts():
            ids = part.given_ids() if isinstance(part, PromptTable) else (p.id for p in part)
            if any(segment_of(pid) != pid for pid in ids):
                return False
        return True

    def _texts_repeat(self) -> bool:
        """True when two prompts' text fingerprints are equal (the load reports equal texts;
        the full pass then names the jobs that would be paid twice)."""
        return bool(
            parts_log(
                self._parts(),
                lambda table: table.texts_params,
                lambda p: text_fingerprint(p.text, p.params),
            ).repeated()
        )

    def _texts(self) -> Iterator[str]:
        for part in self._parts():
            if isinstance(part, PromptTable):
                yield from part.texts()
            else:
                yield from (p.text for p in part)

    def _texts_pass(
        self, columns: list[PromptColumn], shared: list[tuple[Model, dict[str, Any], Any]]
    ) -> bool:
        """Every text passes each endpoint's prompt check (one check per endpoint)."""
        checks = {
            model.endpoint: column.check
            for column, (model, _, _) in zip(columns, shared, strict=True)
            if column.check is not None
        }
        return all(all(map(check, self._texts())) for check in checks.values())

    def _tally(self, columns: list[PromptColumn], cells: int) -> Tally:
        """What the full pass would tally: each column's first job, once per prompt."""
        tally = Tally()
        count = len(self.m.prompts)
        tally.combos = count * cells
        tally.jobs = count * len(columns)
        for column in columns:
            job = column.first
            tally.axes.setdefault(freeze(job.axes), job.axes)
            tally.images += count * job.num_images
            jobs, images = tally.by_model.get(job.model, (0, 0))
            tally.by_model[job.model] = (jobs + count, images + count * job.num_images)
        prices, sizes = self._prices(tally), dict[tuple[Any, ...], float]()
        for name in prices:
            costs = [
                self._job_cost(c.first, prices[name], sizes)
                for c in columns
                if c.first.model == name
            ]
            total = 0.0
            for _ in range(count):  # in plan order, one job at a time, as the full pass rounds
                for cost in costs:
                    total += cost
            tally.costs[name] = total
        return tally

    def _digest(self, columns: list[PromptColumn]) -> str:
        """The digest the full pass makes: each job's key, model, source and tags, and its kept
        values where it has some (unique.Tally.add), in plan order (prompt, then column), a chunk
        of prompts at a time."""
        digest = hashlib.sha256()
        sha = hashlib.sha256
        for texts, wheres, tags, extras in self._literal_rows():
            ends = ["\n" if x is None else f"\0{x}\n" for x in extras]
            made = []
            for column in columns:
                before, after, model = column.before, column.after, column.first.model
                keys = [
                    sha(f"{before}{encode_basestring(t)}{after}".encode()).hexdigest()[:40]
                    for t in texts
                ]  # key_of_text, as PromptColumn.key
                made.append(
                    [
                        f"{KEY_VERSION}-{k}\0{model}\0{w}\0{g}{e}"
                        for k, w, g, e in zip(keys, wheres, tags, ends, strict=True)
                    ]
                )
            lines = (
                made[0] if len(made) == 1 else [x for row in zip(*made, strict=True) for x in row]
            )
            digest.update("".join(lines).encode())
        return digest.hexdigest()

    def _literal_rows(
        self,
    ) -> Iterator[tuple[list[str], list[str], list[tuple[str, ...]], list[str | None]]]:
        for part in self._parts():
            if isinstance(part, PromptTable):
                yield from part.literal_rows()
            else:
                rows = list(part)
                yield (
                    [p.text for p in rows],
                    [f"{p.where[0]}:{p.where[1]}" for p in rows],
                    [p.tags for p in rows],
                    [p.extra for p in rows],
                )
