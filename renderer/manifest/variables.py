"""The sweep sections of a manifest read into typed values: `vars` (through templates.py's
wildcard expansion), `zip`, `sample` and `order`, each checked against the prompts that name them;
and each prompt's own dimensions, counted by arithmetic (plan size) or listed (the planner).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.errors import Problem, closest
from renderer.manifest.templates import ALT_NAME, RESERVED, Entry, Expander, entries_of
from renderer.manifest.types import Prompt, Sample, Variable, ZipGroup

if TYPE_CHECKING:
    from renderer.manifest.located import Located


@dataclass
class Sweep:
    """What load.parse needs from the sweep sections."""

    variables: dict[str, Variable]
    zips: tuple[ZipGroup, ...]
    sample: Sample | None
    order: str
    problems: list[Problem]


def read_sweep(
    doc: Located, base: Path, prompts: list[Prompt], axes: Iterable[str], *, unread: bool = False
) -> Sweep:
    """`vars`, `zip`, `sample` and `order` read and checked against the prompts that name them.

    `unread`: some prompt's template could not be parsed (already reported), so a variable no
    prompt seems to name may be named there: that is not reported.
    """
    raw = doc.data
    problems: list[Problem] = []
    axis_names = set(axes)
    raw_vars: dict[str, Any] = raw.get("vars") or {}
    raw_zip: list[dict[str, Any]] = raw.get("zip") or []
    entries: dict[str, list[Entry]] = {}
    for name, spec in raw_vars.items():
        where = ("vars", name)
        if name in RESERVED or ALT_NAME.fullmatch(name) or name in axis_names:
            why = (
                "is reserved"
                if name in RESERVED
                else "is an inline alternation's name"
                if ALT_NAME.fullmatch(name)
                else "is already an axis"
            )
            problems.append(
                doc.problem(where, f"a variable cannot be named {name!r}: it {why}", key=True)
            )
            continue
        entries[name] = entries_of(doc, base, where, spec, problems)
    zip_keys: dict[str, int] = {}
    for g, group in enumerate(raw_zip):
        for key in group:
            if key in zip_keys or key in entries or key in RESERVED or key in axis_names:
                other = (
                    f"zip[{zip_keys[key]}]"
                    if key in zip_keys
                    else "vars"
                    if key in entries
                    else "axes"
                    if key in axis_names
                    else "the reserved names"
                )
                problems.append(
                    doc.problem(
                        ("zip", g, key), f"{key!r} is already defined (in {other})", key=True
                    )
                )
            zip_keys.setdefault(key, g)
    used: set[str] = set()  # the names prompts use directly
    for p in prompts:
        if p.template is None:
            continue
        for name in p.template.names:
            if name in p.template.alternations:
                continue
            used.add(name)
            if name not in raw_vars and name not in zip_keys:
                unread = True  # the variable meant here may be one that seems unused
                known = [*entries, *zip_keys]
                problems.append(
                    doc.problem(
                        (*p.path, "text"),
                        f"prompt {p.id!r} names the variable {name!r}, which is not defined",
                        allowed=", ".join(known) if known else "define it under vars:",
                        suggestion=closest(name, known),
                    )
                )
    expander = Expander(entries, doc)
    for name in entries:
        expander.count(name)
    problems += expander.problems
    variables: dict[str, Variable] = {}
    if not expander.problems:
        nested = {
            t[1]
            for name in entries
            for k in range(len(entries[name]))
            for t in expander.tokens_of(name, k) or []
            if t[0] == "var"
        }
        for name, found in entries.items():
            if not found:
                continue
            if name not in used and name not in nested and not unread:
                problems.append(
                    doc.problem(
                        ("vars", name),
                        f"no prompt names the variable {name!r}",
                        key=True,
                        allowed="use it in a prompt's text as {" + name + "}, or remove it",
                    )
                )
            dup = expander.repeated(name)
            if dup is not None:
                problems.append(dup)
            values = expander.values(name)
            variables[name] = Variable(name, tuple(values), ("vars", name))
    zips = _zip_groups(doc, base, raw_zip, used, problems)
    spec = raw.get("sample")
    if isinstance(spec, dict) and ("count" in spec) == ("fraction" in spec):
        problems.append(
            doc.problem(
                ("sample",),
                "sample needs exactly one of count and fraction",
                allowed="sample: {count: 200, seed: 7} or sample: {fraction: 0.1, seed: 7}",
            )
        )
    if isinstance(spec, dict):
        dims = ["prompt", "model", "seed", *axis_names, *variables, *zip_keys]
        dims += sorted(sweep_names(prompts, {}, ()))
        for i, name in enumerate(spec.get("exhaustive", ())):
            if name not in dims:
                problems.append(
                    doc.problem(
                        ("sample", "exhaustive", i),
                        f"{name!r} is not a dimension of this matrix",
                        allowed=", ".join(dict.fromkeys(dims)),
                        suggestion=closest(name, dims),
                    )
                )
    return Sweep(variables, zips, _sample(raw), raw.get("order", "plan"), problems)


def _zip_groups(
    doc: Located, base: Path, raw_zip: list[dict[str, Any]], used: set[str], problems: list[Problem]
) -> tuple[ZipGroup, ...]:
    groups: list[ZipGroup] = []
    for g, group in enumerate(raw_zip):
        columns: dict[str, list[Any]] = {}
        for key, spec in group.items():
            found = entries_of(doc, base, ("zip", g, key), spec, problems)
            columns[key] = [e.value for e in found]
        lengths = {k: len(v) for k, v in columns.items()}
        if any(not v for v in columns.values()):
            continue
        if len(set(lengths.values())) > 1:
            problems.append(
                doc.problem(
                    ("zip", g),
                    "zipped values vary together, so each key needs as many values: "
                    + ", ".join(f"{k} has {n}" for k, n in lengths.items()),
                    allowed="lists of equal length (or a wildcard file with as many lines)",
                )
            )
            continue
        keys = tuple(columns)
        rows = [tuple(columns[k][i] for k in keys) for i in range(len(columns[keys[0]]))]
        seen: set[str] = set()
        for row in rows:
            text = repr(row)
            if text in seen:
                problems.append(
                    doc.problem(
                        ("zip", g),
                        f"zip[{g}] lists the same values {dict(zip(keys, row, strict=True))} twice",
                    )
                )
                break
            seen.add(text)
        params = frozenset(k for k in keys if k not in used)
        groups.append(ZipGroup(keys, tuple(rows), params, ("zip", g)))
    return tuple(groups)


def _sample(raw: dict[str, Any]) -> Sample | None:
    spec = raw.get("sample")
    if spec is None:
        return None
    return Sample(
        seed=int(spec.get("seed", 0)),
        count=spec.get("count"),
        fraction=float(spec["fraction"]) if "fraction" in spec else None,
        exhaustive=tuple(spec.get("exhaustive", ())),
    )


def prompt_axes(
    prompt: Prompt, variables: dict[str, Variable], zips: tuple[ZipGroup, ...]
) -> list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    """The prompt's own dimensions: each variable it names, each alternation, each zip group it
    takes, as (names, value tuples). A zip group is taken by the prompts that name one of its
    keys; a group of parameters only (no key is a variable) by every prompt."""
    names = set(prompt.template.names) if prompt.template else set()
    dims: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]] = []
    for group in zips:
        if names & set(group.keys) or group.params == frozenset(group.keys):
            dims.append((group.keys, list(group.values)))
    if prompt.template is not None:
        for name in prompt.template.names:
            if name in prompt.template.alternations:
                dims.append(((name,), [(v,) for v in prompt.template.alternations[name]]))
            elif name in variables:
                dims.append(((name,), [(v,) for v in variables[name].values]))
    return dims


def prompt_variants(
    prompt: Prompt, variables: dict[str, Variable], zips: tuple[ZipGroup, ...]
) -> int:
    """How many cells the prompt's own dimensions make (1 for a plain prompt): arithmetic only."""
    return math.prod(len(values) for _, values in prompt_axes(prompt, variables, zips))


def sweep_names(
    prompts: Iterable[Prompt], variables: dict[str, Variable], zips: tuple[ZipGroup, ...]
) -> set[str]:
    """Every name the sweep adds as an axis: variables, zip keys, the prompts' alternations."""
    names = set(variables) | {k for g in zips for k in g.keys}
    for p in prompts:
        if p.template is not None:
            names |= set(p.template.alternations)
    return names
