"""The sweep language: prompt templates, `vars` (lists and wildcard files, nested with `__name__`),
inline alternations, `zip` groups, `sample` and `order`, read into typed values with every problem
located (the template's `file:line:col`, or the wildcard file's line and column).

Syntax of an inline prompt's text:
  {name}          the value of variable `name` (from `vars:` or a `zip:` group)
  __name__        the same, in the wildcard style (also how a wildcard line nests another variable)
  {a|b|c}         an inline alternation: a variable of its own, `alt1`, `alt2`… in the prompt
  \\{ \\} \\| \\_     a literal brace, bar or underscore
A wildcard file holds one value a line; blank lines and lines starting with `#` are skipped; a
line may nest `__other__` and alternations, expanded into more values (at most MAX_NESTING deep).
Prompt files (.txt, .csv, .jsonl) are literal text: dataset prompts are never templates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.errors import ManifestError, Problem, closest
from renderer.manifest.located import json_path
from renderer.manifest.sources import read_text_file
from renderer.manifest.types import Prompt, Ref, Sample, Template, Variable, ZipGroup

if TYPE_CHECKING:
    from renderer.manifest.located import Located, Path_


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_WILD = re.compile(r"__([A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}?[A-Za-z0-9])?)__")
_ALT = re.compile(r"alt[0-9]+")
_SPECIAL = re.compile(r"[{}\\]|__")
_ESCAPABLE = "{}|_\\"
MAX_NESTING = 8  # wildcard files naming wildcard files: deeper is a mistake, or a cycle
MAX_VALUES = 100_000  # values of one variable once nesting is expanded (counted before expanding)
MAX_WILDCARD_BYTES = 16 * 1024 * 1024
RESERVED = ("prompt", "model", "seed")
_FORMS = "{name} or __name__ for a variable, {a|b} for alternatives, \\{ or \\} for a literal brace"


class TemplateError(ValueError):
    def __init__(self, message: str, offset: int, allowed: str | None = None) -> None:
        super().__init__(message)
        self.message, self.offset, self.allowed = message, offset, allowed


# (kind, payload, offset): ("text", str), ("var", name; `wild` is True for __name__), ("alt", options)
Token = tuple[str, Any, int, bool]


def tokens(text: str) -> list[Token]:
    """The template cut into literal text, variables and alternations; TemplateError if malformed."""
    out: list[Token] = []
    buf: list[str] = []
    i, n = 0, len(text)

    def flush() -> None:
        if buf:
            out.append(("text", "".join(buf), i, False))
            buf.clear()

    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in _ESCAPABLE:
            buf.append(text[i + 1])
            i += 2
        elif c == "{":
            start, i = i, i + 1
            options: list[list[str]] = [[]]
            while i < n and text[i] != "}":
                if text[i] == "\\" and i + 1 < n and text[i + 1] in _ESCAPABLE:
                    options[-1].append(text[i + 1])
                    i += 2
                    continue
                if text[i] == "{":
                    raise TemplateError(
                        "a brace opens inside {…}; braces do not nest", i, allowed=_FORMS
                    )
                if text[i] == "|":
                    options.append([])
                else:
                    options[-1].append(text[i])
                i += 1
            if i >= n:
                raise TemplateError("this { is never closed", start, allowed=_FORMS)
            i += 1
            flush()
            words = ["".join(o) for o in options]
            if len(words) > 1:
                repeated = [w for k, w in enumerate(words) if w in words[:k]]
                if repeated:
                    raise TemplateError(
                        f"the alternation lists {repeated[0]!r} twice", start, allowed=_FORMS
                    )
                out.append(("alt", tuple(words), start, False))
            elif NAME.fullmatch(words[0]):
                out.append(("var", words[0], start, False))
            else:
                raise TemplateError(
                    f"{{{words[0]}}} is neither a variable name nor an alternation",
                    start,
                    allowed=_FORMS,
                )
        elif c == "}":
            raise TemplateError("this } closes nothing", i, allowed=_FORMS)
        elif c == "_" and text.startswith("__", i) and (m := _WILD.match(text, i)):
            flush()
            out.append(("var", m.group(1), i, True))
            i = m.end()
        else:
            buf.append(c)
            i += 1
    flush()
    return out


def parse_template(text: str) -> Template | None:
    """The text's template, or None when it names nothing (then it is sent exactly as written)."""
    if not _SPECIAL.search(text):
        return None
    parts: list[str | Ref] = []
    names: list[str] = []
    alternations: dict[str, tuple[str, ...]] = {}
    for kind, value, _, _ in tokens(text):
        if kind == "text":
            parts.append(value)
            continue
        if kind == "alt":
            name = f"alt{len(alternations) + 1}"
            alternations[name] = value
        else:
            name = value
        parts.append(Ref(name))
        if name not in names:
            names.append(name)
    if not names:
        return None if "".join(p for p in parts if isinstance(p, str)) == text else _literal(parts)
    return Template(tuple(parts), tuple(names), alternations)


def _literal(parts: list[str | Ref]) -> Template:
    """A text with escapes only: a template with no variable (its resolved text differs from it)."""
    return Template(tuple(parts), (), {})


@dataclass(frozen=True)
class _Entry:
    value: Any
    file: str
    line: int
    col: int
    path: str  # JSON path (or "$" for a wildcard file's line)
    in_file: bool  # col is exact (a wildcard line); a YAML value's col is its start


class _Expander:
    """Variables' values with nesting expanded: counted first (arithmetic), then made."""

    def __init__(self, entries: dict[str, list[_Entry]], doc: Located) -> None:
        self.entries = entries
        self.doc = doc
        self.problems: list[Problem] = []
        self._tokens: dict[tuple[str, int], list[Token] | None] = {}
        self._counts: dict[str, int | None] = {}
        self._stack: list[str] = []

    def _at(self, e: _Entry, offset: int, message: str, **kw: Any) -> Problem:
        col = e.col + offset if e.in_file else e.col
        return Problem(e.file, e.line, col, message, e.path, **kw)

    def tokens_of(self, name: str, k: int) -> list[Token] | None:
        if (name, k) not in self._tokens:
            e = self.entries[name][k]
            found: list[Token] | None = None
            if not isinstance(e.value, str):
                found = [("text", e.value, 0, False)]
            else:
                try:
                    found = tokens(e.value)
                except TemplateError as exc:
                    self.problems.append(self._at(e, exc.offset, exc.message, allowed=exc.allowed))
                else:
                    for kind, value, offset, wild in found:
                        if kind == "var" and not wild:
                            self.problems.append(
                                self._at(
                                    e,
                                    offset,
                                    f"a value cannot name a variable with {{{value}}}; "
                                    f"nest it as __{value}__",
                                )
                            )
                            found = None
                            break
                        if kind == "var" and value not in self.entries:
                            self.problems.append(
                                self._at(
                                    e,
                                    offset,
                                    f"__{value}__ names no variable",
                                    allowed=", ".join(self.entries) or "declare it under vars:",
                                    suggestion=closest(value, list(self.entries)),
                                )
                            )
                            found = None
                            break
            self._tokens[(name, k)] = found
        return self._tokens[(name, k)]

    def count(self, name: str) -> int | None:
        """How many values `name` expands to, or None (a problem was recorded)."""
        if name in self._counts:
            return self._counts[name]
        self._stack.append(name)
        total: int | None = 0
        for k, e in enumerate(self.entries[name]):
            found = self.tokens_of(name, k)
            if found is None:
                total = None
                continue
            n = 1
            for kind, value, offset, _ in found:
                if kind == "alt":
                    n *= len(value)
                elif kind == "var":
                    if value in self._stack:
                        chain = " → ".join([*self._stack[self._stack.index(value) :], value])
                        self.problems.append(
                            self._at(e, offset, f"wildcards nest in a cycle: {chain}")
                        )
                        n = -1
                        break
                    if len(self._stack) >= MAX_NESTING:
                        self.problems.append(
                            self._at(
                                e,
                                offset,
                                f"wildcards nest more than {MAX_NESTING} deep here "
                                f"({' → '.join([*self._stack, value])})",
                            )
                        )
                        n = -1
                        break
                    inner = self.count(value)
                    if inner is None:
                        n = -1
                        break
                    n *= inner
            if n < 0 or total is None:
                total = None
                continue
            total += n
        self._stack.pop()
        if total is not None and total > MAX_VALUES:
            e = self.entries[name][0]
            self.problems.append(
                self._at(
                    e,
                    0,
                    f"variable {name!r} expands to {total:,} values; the limit is {MAX_VALUES:,}",
                    allowed="fewer lines or alternatives, or sample: to draw a subset",
                )
            )
            total = None
        self._counts[name] = total
        return total

    def values(self, name: str) -> list[Any]:
        """Every value of `name`, expanded (count() said it is finite and small enough)."""
        return [v for k in range(len(self.entries[name])) for v in self.expand(name, k)]

    def expand(self, name: str, k: int) -> list[Any]:
        """The values one written value of `name` expands to (itself, if it nests nothing)."""
        found = self.tokens_of(name, k) or []
        if len(found) == 1 and found[0][0] == "text":
            return [found[0][1]]
        choices: list[list[Any]] = []
        for kind, value, _, _ in found:
            if kind == "text":
                choices.append([value])
            elif kind == "alt":
                choices.append(list(value))
            else:
                choices.append(self.values(value))
        return ["".join(map(str, combo)) for combo in product(*choices)]

    def repeated(self, name: str) -> Problem | None:
        """The first value of `name` given twice, located where it is written the second time."""
        seen: set[Any] = set()
        for k, e in enumerate(self.entries[name]):
            for v in self.expand(name, k):
                if v in seen:
                    return self._at(
                        e,
                        0,
                        f"variable {name!r} has the value {v!r} twice; each copy would be "
                        "rendered and paid again",
                        allowed="list each value once",
                    )
                seen.add(v)
        return None


def _wildcard_entries(
    doc: Located, base: Path, path: Path_, rel: str, problems: list[Problem]
) -> list[_Entry]:
    if "\0" in rel:
        problems.append(doc.problem(path, "the wildcard file path contains a NUL character"))
        return []
    target = base / rel
    if not target.exists():
        problems.append(
            doc.problem(path, f"wildcard file not found: {rel} (relative to the manifest's folder)")
        )
        return []
    try:
        text, shown = read_text_file(target, "wildcard file", MAX_WILDCARD_BYTES)
    except ManifestError as exc:
        problems.extend(exc.problems)
        return []
    entries = [
        _Entry(
            line.strip(), shown, n, len(line) - len(line.lstrip()) + 1, json_path(path[:-1]), True
        )
        for n, line in enumerate(text.split("\n"), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not entries:
        problems.append(
            Problem(
                shown,
                1,
                1,
                "the wildcard file holds no values",
                allowed="one value a line (blank lines and # comments are skipped)",
            )
        )
    return entries


def _entries(
    doc: Located, base: Path, path: Path_, raw: Any, problems: list[Problem]
) -> list[_Entry]:
    """A variable's values as written: a list in the manifest, or a wildcard file's lines."""
    if isinstance(raw, dict):
        return _wildcard_entries(doc, base, (*path, "file"), raw["file"], problems)
    found = []
    for i, value in enumerate(raw):
        line, col = doc.where((*path, i))
        found.append(_Entry(value, doc.file, line, col, json_path((*path, i)), False))
    return found


@dataclass
class Sweep:
    """What load.parse needs from the sweep sections."""

    variables: dict[str, Variable]
    zips: tuple[ZipGroup, ...]
    sample: Sample | None
    order: str
    prompts: list[Prompt]
    problems: list[Problem]


def template_of(doc: Located, prompt: Prompt, problems: list[Problem]) -> Prompt:
    """The prompt with its template parsed (a malformed one is a problem at its text)."""
    try:
        template = parse_template(prompt.text)
    except TemplateError as exc:
        problems.append(
            doc.problem(
                (*prompt.path, "text"),
                f"prompt {prompt.id!r}: {exc.message} (at character {exc.offset + 1})",
                allowed=exc.allowed,
            )
        )
        return prompt
    return replace(prompt, template=template) if template is not None else prompt


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
    entries: dict[str, list[_Entry]] = {}
    for name, spec in raw_vars.items():
        where = ("vars", name)
        if name in RESERVED or _ALT.fullmatch(name) or name in axis_names:
            why = (
                "is reserved"
                if name in RESERVED
                else "is an inline alternation's name"
                if _ALT.fullmatch(name)
                else "is already an axis"
            )
            problems.append(
                doc.problem(where, f"a variable cannot be named {name!r}: it {why}", key=True)
            )
            continue
        entries[name] = _entries(doc, base, where, spec, problems)
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
    # Which names the prompts use (directly), and where each template is.
    used: dict[str, list[Prompt]] = {}
    for p in prompts:
        if p.template is None:
            continue
        for name in p.template.names:
            if name in p.template.alternations:
                continue
            used.setdefault(name, []).append(p)
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
    expander = _Expander(entries, doc)
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
    zips = _zip_groups(doc, base, raw_zip, set(used), problems)
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
    return Sweep(variables, zips, _sample(raw), raw.get("order", "plan"), prompts, problems)


def _zip_groups(
    doc: Located, base: Path, raw_zip: list[dict[str, Any]], used: set[str], problems: list[Problem]
) -> tuple[ZipGroup, ...]:
    groups: list[ZipGroup] = []
    for g, group in enumerate(raw_zip):
        columns: dict[str, list[Any]] = {}
        for key, spec in group.items():
            found = _entries(doc, base, ("zip", g, key), spec, problems)
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
