"""The report's space: every job a point in dimensions (prompt, model, each parameter axis,
seed, and "sample" where seeds are drawn per prompt and model), collected one row at a time.

Value indexes are given by first appearance (seed and sample renumbered in numeric order at
the end) and kept as one 4-byte int per job per dimension: a million jobs cost a few columns
of ints, the distinct labels, and one small entry per (prompt, model, axes) group.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class _Point(Protocol):
    """What the space reads of a job (a state Row, the report's record, a diff's coordinates)."""

    @property
    def prompt_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def axes(self) -> dict[str, Any]: ...


def _label(value: Any) -> str:
    return (
        value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    )


@dataclass
class Space:
    """The run's dimensions and each job's value index in each (cols[d][n]; -1 = not set)."""

    names: list[str]
    values: list[list[str]]
    missing: list[bool]
    cols: list[np.ndarray]
    sample: bool  # "sample" is a dimension: seeds differ between prompts/models

    def index(self, name: str) -> int:
        return self.names.index(name) if name in self.names else -1

    @property
    def coords(self) -> list[list[int]]:
        """Each job's point (small runs and tests; a large report reads the columns)."""
        return [list(p) for p in zip(*(c.tolist() for c in self.cols), strict=True)]


@dataclass
class _Collector:
    """Value indexes by first appearance, collected one row at a time (seed and sample are
    renumbered in numeric order at the end). Memory: one int per job per dimension, the
    distinct labels, and one small entry per (prompt, model, axes) group for "sample"."""

    axes: list[str] = field(default_factory=list)
    index: dict[str, dict[str, int]] = field(default_factory=dict)
    cols: dict[str, array] = field(default_factory=dict)
    groups: dict[int, Any] = field(default_factory=dict)  # group -> its seed, or list of seeds
    combos: dict[tuple[int, ...], int] = field(default_factory=dict)
    first_seed: dict[int, Any] = field(default_factory=dict)  # sample -> its first seed
    sample: bool = False
    n: int = 0

    def __post_init__(self) -> None:
        for name in ("prompt", "model", "seed", "sample"):
            self.index[name] = {}
            self.cols[name] = array("i")

    def _put(self, name: str, label: str | None) -> int:
        if label is None:
            self.cols[name].append(-1)
            return -1
        known = self.index[name]
        v = known.get(label)
        if v is None:
            v = known[label] = len(known)
        self.cols[name].append(v)
        return v

    def add(self, r: _Point) -> None:
        p = self._put("prompt", r.prompt_id)
        m = self._put("model", r.model)
        for name in r.axes:
            if name not in self.index:
                self.axes.append(name)
                self.index[name] = {}
                self.cols[name] = array("i", [-1]) * self.n
        combo = [m]
        for name in self.axes:
            combo.append(self._put(name, _label(r.axes[name]) if name in r.axes else None))
        self._put("seed", None if r.seed is None else str(r.seed))
        # A seed's position among its prompt/model/axes group's seeds, in plan order.
        c = self.combos.setdefault(tuple(combo), len(self.combos))
        group = (p << 32) | c
        seeds = self.groups.get(group, _NONE)
        if seeds is _NONE:
            self.groups[group] = r.seed
            s = 0
        elif isinstance(seeds, list):
            if r.seed not in seeds:
                seeds.append(r.seed)
            s = seeds.index(r.seed)
        elif seeds == r.seed:
            s = 0
        else:
            self.groups[group] = [seeds, r.seed]
            s = 1
        first = self.first_seed.setdefault(s, r.seed)
        self.sample = self.sample or first != r.seed
        self._put("sample", str(s))
        self.n += 1

    def finish(self) -> Space:
        names = ["prompt", "model", *self.axes, "seed", *(["sample"] if self.sample else [])]
        values, cols, missing = [], [], []
        for name in names:
            labels = list(self.index[name])
            raw = (
                np.frombuffer(self.cols[name], dtype=np.int32) if self.n else np.zeros(0, np.int32)
            )
            if name in ("seed", "sample") and labels:
                order = sorted(range(len(labels)), key=lambda i: int(labels[i]))
                rank = np.empty(len(labels), dtype=np.int32)
                rank[order] = np.arange(len(labels), dtype=np.int32)
                labels = [labels[i] for i in order]
                raw = np.where(raw < 0, -1, rank[np.maximum(raw, 0)]).astype(np.int32)
            values.append(labels)
            cols.append(raw)
            missing.append(bool((raw < 0).any()))
        return Space(names, values, missing, cols, self.sample)


_NONE = object()


def space(rows: Iterable[_Point]) -> Space:
    """Dimensions in a fixed order (prompt, model, axes by first appearance, seed, sample)."""
    collect = _Collector()
    for r in rows:
        collect.add(r)
    return collect.finish()
