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
from collections import defaultdict
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
    as it can: each next one is the combination whose values have been used least so far (the
    sum of their counts; plan order breaks ties).

    Scores only grow as combinations are taken, so a heap of possibly stale scores is exact: a
    popped entry whose score is still current is the true minimum (lazy greedy).
    """
    keys = [[(k, canonical_json(v)) for k, v in c.items()] for c in combos]
    used: dict[tuple[str, str], int] = defaultdict(int)
    heap = [(0, i) for i in range(len(combos))]
    order: list[Combo] = []
    while heap:
        score, i = heapq.heappop(heap)
        now = sum(used[k] for k in keys[i])
        if now != score:
            heapq.heappush(heap, (now, i))
            continue
        order.append(combos[i])
        for k in keys[i]:
            used[k] += 1
    return order
