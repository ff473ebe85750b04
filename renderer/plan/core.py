"""What every part of the planner shares: the manifest, the registry, the prompts and models by
name, and the problems found so far (each with its manifest location).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from renderer.errors import ManifestError, Problem
from renderer.layout import resolve_layout
from renderer.manifest.located import Located
from renderer.manifest.table import Prompts
from renderer.manifest.types import Manifest, Model, Prompt
from renderer.models.schemas import SchemaRegistry, Violation

if TYPE_CHECKING:
    from renderer.plan.template import PromptColumn


# Keys of a property schema that constrain nothing.
_DESCRIPTIVE = frozenset({"type", "description", "x-source", "default"})


class PlannerCore:
    """The planner's inputs and its collected problems (see planner.Planner for the parts)."""

    # Set once by the planner's build() from the manifest, read by every part.
    prompts: PromptIndex
    models: dict[str, Model]
    axes_global: list[tuple[str, list[Any]]]
    endpoint_names: dict[str, str]
    defaults: dict[str, Any]
    model_params: dict[str, dict[str, Any]]
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]]
    axis_names: set[str]
    # The sweep: each prompt's own dimensions (names, value rows), the zip groups that send
    # parameters ((path, keys)), and the sampled / ordered originals once drawn (expand._swept).
    literal_dims: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]  # any literal prompt's
    zip_params: list[tuple[tuple[Any, ...], frozenset[str]]]
    _sweep: list[dict[str, Any]] | None
    text_names: set[str]  # axes that only make prompt text: variables, alternations, zip variables
    unseeded: set[str]
    _exact: bool

    # False plans the straightforward way (every job made, checked and compared one by one):
    # production never sets it; tests/test_plan.py subclasses the planner with it off as the
    # reference the shortcuts are compared against.
    shortcuts = True

    def __init__(
        self, manifest: Manifest, registry: SchemaRegistry, layout: str | None = None
    ) -> None:
        self.m = manifest
        # `layout`: the one a run already has (recorded with it), over the manifest's.
        self.layout = resolve_layout(layout or manifest.layout, len(manifest.prompts))
        self.sharded = self.layout == "sharded"
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
        # (check, model, axes, seed) → the column literal prompts' jobs are made from (None: the long way)
        self._columns: dict[tuple[Any, ...], PromptColumn | None] = {}

    def _plain_string_prompt(self, model: Model) -> bool:
        """True when the endpoint asks nothing of a prompt but that it be a string.

        Then a str needs no schema check: dataset-scale prompt lists stay fast.
        """
        schema = self.props(model).get("prompt", {})
        return schema.get("type") == "string" and set(schema) <= _DESCRIPTIVE

    def prompt_check(self, model: Model) -> Callable[[str], bool] | None:
        """A cheap per-text test of what the endpoint asks of a prompt (None: any string will do).

        Length and pattern limits are tested directly, so a million captions need no schema
        check each; a text that fails, or a schema asking more, is checked (and reported) the
        long way.
        """
        if model.unchecked or self._plain_string_prompt(model):
            return None
        schema = self.props(model).get("prompt", {})
        if schema.get("type") != "string" or not set(schema) <= {
            *_DESCRIPTIVE,
            "maxLength",
            "minLength",
            "pattern",
        }:
            return lambda text: False
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        pattern = re.compile(schema["pattern"]) if "pattern" in schema else None

        def ok(text: str) -> bool:
            # JSON Schema counts code points, as len() does.
            return (
                low <= len(text)
                and (high is None or len(text) <= high)
                and (pattern is None or pattern.search(text) is not None)
            )

        return ok

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


class PromptIndex(Mapping[str, Prompt]):
    """The plan's prompts by id, in manifest order, without the repeated ids (`skipped`).

    Iterating reads the manifest's prompts in order (a million captions are not held as a dict);
    the first lookup by id (include, exclude, extra name prompts) builds the dict.
    """

    def __init__(self, prompts: Sequence[Prompt], skipped: set[int]) -> None:
        self._prompts, self._skipped = prompts, skipped
        self._by_id: dict[str, Prompt] | None = None

    def values(self) -> Iterator[Prompt]:  # type: ignore[override]  # a one-pass view, in order
        if not self._skipped:
            return iter(self._prompts)
        return (p for i, p in enumerate(self._prompts) if i not in self._skipped)

    def templated(self) -> Iterator[Prompt]:
        """The prompts that may have a template (inline ones; a file's rows are literal)."""
        if isinstance(self._prompts, Prompts):
            return self._prompts.templated()
        return self.values()

    def __iter__(self) -> Iterator[str]:
        return (p.id for p in self.values())

    def __len__(self) -> int:
        return len(self._prompts) - len(self._skipped)

    def __getitem__(self, pid: str) -> Prompt:
        if self._by_id is None:
            self._by_id = {p.id: p for p in self.values()}
        return self._by_id[pid]

    def __contains__(self, pid: object) -> bool:
        try:
            self[pid]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True
