"""GitHub Actions matrix semantics for include / exclude, as a pure function.

Rules (docs.github.com, `jobs.<id>.strategy.matrix`):
  1. The base combinations ("originals") are given; each knows which keys are original.
  2. `exclude` drops every original that agrees with an entry on all of the entry's keys
     (a partial match).
     (Exclusion happens once, against the originals; includes may add excluded ones back.)
  3. `include` runs after exclude. Each entry, in order, is merged into every remaining
     original where none of its keys would change an *original* value; values added by
     earlier includes may be overwritten. An entry that merges into no original becomes a
     new combination; new combinations never receive later includes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import product
from typing import Any

Combo = dict[str, Any]
Same = Callable[[str, Any, Any], bool]


def _equal(_key: str, a: Any, b: Any) -> bool:
    return bool(a == b)


def cartesian(variables: Sequence[tuple[str, Sequence[Any]]]) -> list[Combo]:
    """All combinations; the first variable varies slowest (GitHub's job order)."""
    names = [name for name, _ in variables]
    return [
        dict(zip(names, values, strict=False))
        for values in product(*(vals for _, vals in variables))
    ]


def matches(combo: Combo, entry: Combo, same: Same = _equal) -> bool:
    return all(key in combo and same(key, combo[key], value) for key, value in entry.items())


def apply(
    originals: Iterable[Combo],
    include: Sequence[Combo] = (),
    exclude: Sequence[Combo] = (),
    same: Same = _equal,
) -> list[tuple[Combo, bool]]:
    """Resolved combinations in order, each with `True` when an include created it."""
    kept = [dict(c) for c in originals if not any(matches(c, e, same) for e in exclude)]
    original_keys = [set(c) for c in kept]
    # Per-model axes make our matrix ragged: a key that is a matrix variable anywhere must be
    # present and equal for an entry to merge. On a uniform matrix this is GitHub's rule.
    matrix_keys = set().union(*original_keys) if original_keys else set()
    created: list[Combo] = []
    for entry in include:
        merged = False
        for combo, keys in zip(kept, original_keys, strict=False):
            if all(
                k in keys and same(k, combo[k], v) for k, v in entry.items() if k in matrix_keys
            ):
                combo.update(entry)
                merged = True
        if not merged:
            created.append(dict(entry))
    return [(c, False) for c in kept] + [(c, True) for c in created]


def stream(
    originals: Callable[[], Iterable[Combo]],
    include: Sequence[Combo] = (),
    exclude: Sequence[Combo] = (),
    same: Same = _equal,
) -> Iterator[tuple[Combo, bool]]:
    """`apply`, without holding the combinations: `originals()` is called twice (re-iterable).

    The first pass learns the matrix keys of the kept combinations (the ragged-matrix rule
    needs them); the second yields each kept combination with its includes merged, in order,
    then the includes that merged nowhere. Same result as `apply` (tests/test_matrix.py).
    """
    if not include and not exclude:
        yield from ((c, False) for c in originals())
        return
    matrix_keys: set[str] = set()
    if include:
        for c in originals():
            if not any(matches(c, e, same) for e in exclude):
                matrix_keys.update(c)
    merged = [False] * len(include)
    for original in originals():
        if any(matches(original, e, same) for e in exclude):
            continue
        combo = dict(original)
        for i, entry in enumerate(include):
            if all(
                k in original and same(k, combo[k], v) for k, v in entry.items() if k in matrix_keys
            ):
                combo.update(entry)
                merged[i] = True
        yield combo, False
    for entry, done in zip(include, merged, strict=True):
        if not done:
            yield dict(entry), True
