"""Which combinations of the matrix are rendered, and in what order: `sample:` (a deterministic
subset chosen by hash) and `order: sparse-first` (every prefix spread over every axis's values).

Invariants:
  * A combination's draw depends only on its own values and the sample's seed, never on its
    position: the same manifest draws the same cells on every machine, and reordering prompts,
    models or values changes nothing drawn.
  * `count: N` keeps the N points of smallest hash, so a larger N keeps every cell a smaller
    one kept (a superset); `fraction: f` keeps ceil(f × points) the same way.
  * Sparse-first is a permutation: the same combinations as plan order, none added or lost.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Iterable
from typing import Any

from renderer.canonical import canonical_json
from renderer.manifest.types import Sample

Combo = dict[str, Any]


def point_hash(seed: int, point: Combo) -> int:
    """The one sampling formula: sha256(seed \\0 canonical JSON of the point), 8 bytes."""
    text = f"{seed}\0{canonical_json(point)}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def _point(combo: Combo, exhaustive: tuple[str, ...]) -> Combo:
    return {k: v for k, v in combo.items() if k not in exhaustive} if exhaustive else combo


def draw(combos: Callable[[], Iterable[Combo]], sample: Sample) -> list[Combo]:
    """The sampled combinations, in the order `combos()` gives them (it is called twice).

    A point is a combination without its exhaustive dimensions: the chosen points are kept
    with every value of those.
    """
    hashes = (point_hash(sample.seed, _point(c, sample.exhaustive)) for c in combos())
    if sample.exhaustive:
        distinct: Iterable[int] = set(hashes)
    else:
        distinct = hashes  # every combination is its own point
    if sample.count is not None:
        wanted = heapq.nsmallest(sample.count, distinct)
    else:
        every = sorted(distinct)
        wanted = every[: math.ceil(len(every) * (sample.fraction or 0.0))]
    if not wanted:
        return []
    threshold = wanted[-1]
    return [
        c for c in combos() if point_hash(sample.seed, _point(c, sample.exhaustive)) <= threshold
    ]


def sparse_first(combos: list[Combo]) -> list[Combo]:
    """The combinations reordered so each prefix covers every value of every dimension as evenly
    as it can; a permutation of `combos`, deterministic.

    Each next combination is, where it exists and is not yet taken, the one made of each
    dimension's least-used value (or that with one dimension at its second least-used value),
    the fewest uses in all winning, then the earlier in `_deal`'s order; where none of those
    exists it is the next one of `_deal`'s order. About O(n · dims²): a 100 × 100 × 10 grid
    takes about a second, where a greedy over every remaining combination is quadratic.
    """
    names = list(dict.fromkeys(k for c in combos for k in c))
    keyed = [tuple(canonical_json(c.get(k)) for k in names) for c in combos]
    at = {key: i for i, key in enumerate(keyed)}  # combinations are distinct (the planner's)
    if len(at) != len(keyed):
        return list(combos)
    base = _deal(keyed, list(range(len(names))))
    rank = {key: i for i, key in enumerate(base)}
    dims = range(len(names))
    values = [list(dict.fromkeys(key[d] for key in keyed)) for d in dims]
    used = [dict.fromkeys(vs, 0) for vs in values]
    # Per dimension, (uses, first seen, value), stale entries skipped: uses only grow.
    heaps = [[(0, i, v) for i, v in enumerate(vs)] for vs in values]
    first = [{v: i for i, v in enumerate(vs)} for vs in values]

    def least(d: int) -> list[str]:
        found: list[tuple[int, int, str]] = []
        while heaps[d] and len(found) < 2:
            entry = heapq.heappop(heaps[d])
            if entry[0] == used[d][entry[2]]:
                found.append(entry)
        for entry in found:
            heapq.heappush(heaps[d], entry)
        return [v for _, _, v in found]

    taken: set[tuple[str, ...]] = set()
    order: list[Combo] = []
    next_base = 0
    while len(order) < len(base):
        lows = [least(d) for d in dims]
        ideal = tuple(low[0] for low in lows)
        candidates = [ideal] + [
            (*ideal[:d], lows[d][1], *ideal[d + 1 :]) for d in dims if len(lows[d]) > 1
        ]
        best: tuple[tuple[int, int], tuple[str, ...]] | None = None
        for key in candidates:
            if key in rank and key not in taken:
                score = (sum(used[d][key[d]] for d in dims), rank[key])
                if best is None or score < best[0]:
                    best = (score, key)
        if best is None:
            while base[next_base] in taken:
                next_base += 1
            chosen = base[next_base]
        else:
            chosen = best[1]
        taken.add(chosen)
        order.append(combos[at[chosen]])
        for d in dims:
            used[d][chosen[d]] += 1
            heapq.heappush(heaps[d], (used[d][chosen[d]], first[d][chosen[d]], chosen[d]))
    return order


def _deal(points: list[tuple[str, ...]], dims: list[int]) -> list[tuple[str, ...]]:
    """Recursive round-robin: the dimension with the most values is dealt out in turn (one point
    of each value per round, so any prefix holds its values evenly); each value's points are
    ordered the same way over the other dimensions and rotated by the value's position, so the
    points of one round differ in the other dimensions too (sparse_first's fallback order).
    """
    sizes = {d: len({p[d] for p in points}) for d in dims}
    varying = [d for d in dims if sizes[d] > 1]
    if len(points) <= 1 or not varying:
        return points
    widest = max(varying, key=lambda d: (sizes[d], -varying.index(d)))
    groups: dict[str, list[tuple[str, ...]]] = {}
    for p in points:
        groups.setdefault(p[widest], []).append(p)
    rest = [d for d in varying if d != widest]
    dealt = []
    for i, group in enumerate(groups.values()):
        inner = _deal(group, rest)
        k = i % len(inner)
        dealt.append(inner[k:] + inner[:k])
    return [
        lane[r] for r in range(max(len(lane) for lane in dealt)) for lane in dealt if r < len(lane)
    ]
