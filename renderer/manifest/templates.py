"""Prompt templates and variables' values: the template syntax, wildcard files, and nesting
expanded (counted by arithmetic first), every problem located (the template's `file:line:col`,
or the wildcard file's line and column). variables.py reads the sections that use them.

Syntax of an inline prompt's text:
  {name}          the value of variable `name` (from `vars:` or a `zip:` group)
  __name__        the same, in the wildcard style (also how a wildcard line nests another variable)
  {a|b|c}         an inline alternation: a variable of its own, `alt1`, `alt2`… in the prompt
  \\{ \\} \\| \\_ \\\\  a literal brace, bar, underscore or backslash
A wildcard file holds one value a line; blank lines and lines starting with `#` are skipped; a
line may nest `__other__` and alternations, expanded into more values (at most MAX_NESTING deep).
Prompt files (.txt, .csv, .jsonl) are literal text: dataset prompts are never templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.errors import ManifestError, Problem, closest
from renderer.manifest.located import json_path
from renderer.manifest.reading import read_text_file
from renderer.manifest.types import Prompt, Ref, Template

if TYPE_CHECKING:
    from renderer.manifest.located import Located, Path_


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_WILD = re.compile(r"__([A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}?[A-Za-z0-9])?)__")
ALT_NAME = re.compile(r"alt[0-9]+")
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
class Entry:
    value: Any
    file: str
    line: int
    col: int
    path: str  # JSON path (or "$" for a wildcard file's line)
    in_file: bool  # col is exact (a wildcard line); a YAML value's col is its start


class Expander:
    """Variables' values with nesting expanded: counted first (arithmetic), then made."""

    def __init__(self, entries: dict[str, list[Entry]], doc: Located) -> None:
        self.entries = entries
        self.doc = doc
        self.problems: list[Problem] = []
        self._tokens: dict[tuple[str, int], list[Token] | None] = {}
        self._counts: dict[str, int | None] = {}
        self._stack: list[str] = []
        self._values: dict[str, list[Any]] = {}

    def _at(self, e: Entry, offset: int, message: str, **kw: Any) -> Problem:
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
        if name not in self._values:
            self._values[name] = [
                v for k in range(len(self.entries[name])) for v in self.expand(name, k)
            ]
        return self._values[name]

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
) -> list[Entry]:
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
        Entry(
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


def entries_of(
    doc: Located, base: Path, path: Path_, raw: Any, problems: list[Problem]
) -> list[Entry]:
    """A variable's values as written: a list in the manifest, or a wildcard file's lines."""
    if isinstance(raw, dict):
        return _wildcard_entries(doc, base, (*path, "file"), raw["file"], problems)
    found = []
    for i, value in enumerate(raw):
        line, col = doc.where((*path, i))
        found.append(Entry(value, doc.file, line, col, json_path((*path, i)), False))
    return found


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
