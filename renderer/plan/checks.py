"""The manifest's checks that need the registry: names (did you mean), seeds per model, references
in include/exclude/extra. Every problem is collected with its location.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from renderer.errors import Problem, closest
from renderer.manifest.located import json_path
from renderer.manifest.table import Prompts, id_fingerprint, parts_log
from renderer.manifest.types import Model, Prompt
from renderer.models.schemas import Violation
from renderer.plan.core import PlannerCore, PromptIndex
from renderer.plan.jobs import (
    SEED_MAX,
    SEED_MIN,
)
from renderer.plan.seeds import RandomSeeds
from renderer.plan.template import CellTemplate, seed_ok


class PlanChecks(PlannerCore):
    """The manifest's checks that need the registry: names (did you mean), seeds per model, references"""

    def check_names(self) -> tuple[PromptIndex, dict[str, Model]]:
        # Ids are compared folded, by 64-bit fingerprints first; only the ids whose fingerprint
        # came twice are then compared exactly, in order (none, for distinct captions).
        prompts_ = self.m.prompts
        suspects = parts_log(
            prompts_.parts if isinstance(prompts_, Prompts) else (prompts_,),
            lambda table: table.folded_ids,  # taken as the file was read
            lambda p: id_fingerprint(p.id),
        ).repeated()
        skipped: set[int] = set()
        folded: dict[str, Prompt] = {}
        for i, p in enumerate(self.m.prompts if suspects else ()):
            if id_fingerprint(p.id) not in suspects:
                continue
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
                skipped.add(i)
                continue
            folded[p.id.lower()] = p
        prompts = PromptIndex(self.m.prompts, skipped)
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
            return RandomSeeds(self.m.name, prompt.id, model.name, spec["random"])
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
        if isinstance(seeds, RandomSeeds):  # drawn from these, by random_seed
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
                self.shortcuts
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
            ok = (isinstance(seeds, RandomSeeds) or all(seed_ok(seed) for seed in seeds)) and len(
                set(seeds)
            ) == len(seeds)
        if ok and template.check_seed:
            model = self.models[template.first.model]
            if isinstance(seeds, (range, RandomSeeds)) and self._uniform_seed(
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

    def check_references(self, prompts: Mapping[str, Prompt], models: dict[str, Model]) -> None:
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
