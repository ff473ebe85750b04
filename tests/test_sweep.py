"""`sample:` (a deterministic, hash-chosen subset) and `order: sparse-first` (every prefix spread
over every axis), from the pure functions to a trial run on the emulator."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.manifest.load import parse, plan_size
from renderer.manifest.types import Sample
from renderer.models.schemas import SchemaRegistry
from renderer.plan import planner
from renderer.plan.sweep import draw, point_hash, sparse_first
from renderer.provider.emulator import ServiceTime

from .conftest import background_emulator, cli, write_manifest

COLORS = ["red", "blue", "green", "gold", "teal"]
SHAPES = ["cube", "cone", "ring", "star"]


def _sweep(
    sample: dict[str, Any] | None = None, reverse: bool = False, **more: Any
) -> dict[str, Any]:
    """A 5 colours × 4 shapes × 2 models × 3 seeds = 120-point template sweep."""
    flip = (lambda xs: list(reversed(xs))) if reverse else list
    data: dict[str, Any] = {
        "name": "t",
        "provider": "emulator",
        "vars": {"color": flip(COLORS), "shape": flip(SHAPES)},
        "prompts": [{"id": "toy", "text": "a {color} {shape} on a table"}],
        "models": flip(["fal-ai/flux-1/schnell", "fal-ai/imagen4/preview"]),
        "seeds": flip([1, 2, 3]),
        **more,
    }
    if sample is not None:
        data["sample"] = sample
    return data


def _jobs(registry: SchemaRegistry, data: dict[str, Any]) -> list[Any]:
    m = parse(yaml.safe_dump(data, sort_keys=False), Path("m.yaml"))
    return list(planner.build(m, registry).jobs)


def _cells(jobs: list[Any]) -> set[tuple[Any, ...]]:
    return {(j.input["prompt"], j.model, j.seed) for j in jobs}


def test_the_sampling_hash_is_pinned():
    """The draw is sha256 of the seed and the point's canonical JSON: the same on every machine."""
    point = {"prompt": "toy", "model": "m", "color": "red", "seed": 1}
    # sha256(b'7\0{"color":"red","model":"m","prompt":"toy","seed":1}'), first 8 bytes, big-endian
    assert point_hash(7, point) == 10579698818507015229
    assert point_hash(7, dict(reversed(point.items()))) == point_hash(7, point)


def test_a_sample_does_not_depend_on_the_order_things_are_written(registry: SchemaRegistry):
    """The same manifest with every list reversed (another machine, another editor) draws the
    same cells: the draw is by hash of each cell's values, never by position."""
    sample = {"count": 17, "seed": 7}
    first = _jobs(registry, _sweep(sample))
    second = _jobs(registry, _sweep(sample, reverse=True))
    assert len(first) == 17 and _cells(first) == _cells(second)
    assert {j.key for j in first} == {j.key for j in second}
    assert _cells(_jobs(registry, _sweep({"count": 17, "seed": 8}))) != _cells(first)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(small=st.integers(1, 60), more=st.integers(0, 60), seed=st.integers(0, 2**32))
def test_a_larger_count_keeps_every_cell_of_a_smaller_one(
    registry: SchemaRegistry, small: int, more: int, seed: int
):
    """Growing `count` only adds cells: the earlier sample is a subset of the larger one."""
    a = _jobs(registry, _sweep({"count": small, "seed": seed}))
    b = _jobs(registry, _sweep({"count": small + more, "seed": seed}))
    assert len(a) == small and len(b) == min(120, small + more)
    assert _cells(a) <= _cells(b)


def test_sample_keeps_plan_order_and_counts_by_arithmetic(registry: SchemaRegistry):
    """A sample keeps the plan's own order; its job count is `count`, and plan size says so first."""
    data = _sweep({"count": 30, "seed": 1})
    m = parse(yaml.safe_dump(data, sort_keys=False), Path("m.yaml"))
    plan = planner.build(m, registry)
    full = _jobs(registry, _sweep())
    position = {(j.input["prompt"], j.model, j.seed): n for n, j in enumerate(full)}
    picked = [position[(j.input["prompt"], j.model, j.seed)] for j in plan.jobs]
    assert picked == sorted(picked) and len(picked) == 30 == plan_size(m)


def test_fraction_draws_a_rounded_up_share(registry: SchemaRegistry):
    """`fraction: 0.1` of 120 points is 12 cells; 0.25 keeps those 12 and more (30)."""
    tenth = _jobs(registry, _sweep({"fraction": 0.1, "seed": 3}))
    quarter = _jobs(registry, _sweep({"fraction": 0.25, "seed": 3}))
    assert len(tenth) == 12 and len(quarter) == 30 and _cells(tenth) <= _cells(quarter)


def test_exhaustive_dimensions_are_kept_whole(registry: SchemaRegistry):
    """`exhaustive: [model, seed]` draws 4 (colour, shape) points and renders each with both
    models and all three seeds (Dynamic Prompts' combinatorial part beside a random part)."""
    jobs = _jobs(registry, _sweep({"count": 4, "seed": 5, "exhaustive": ["model", "seed"]}))
    assert len(jobs) == 4 * 2 * 3
    points = {(j.axes["color"], j.axes["shape"]) for j in jobs}
    assert len(points) == 4
    for point in points:
        assert {
            (j.model, j.seed) for j in jobs if (j.axes["color"], j.axes["shape"]) == point
        } == set(itertools.product(["fal-ai/flux-1/schnell", "fal-ai/imagen4/preview"], [1, 2, 3]))


def test_draw_with_exhaustive_counts_distinct_points():
    """`draw` keeps `count` distinct points, every combination of a point kept (the pure function)."""
    combos = [{"a": a, "b": b} for a in range(10) for b in range(3)]
    kept = draw(lambda: iter(combos), Sample(seed=1, count=4, exhaustive=("b",)))
    assert len(kept) == 12 and len({c["a"] for c in kept}) == 4
    assert draw(lambda: iter(combos), Sample(seed=1, fraction=0.5)) == [
        c for c in combos if c in draw(lambda: iter(combos), Sample(seed=1, count=15))
    ]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_sparse_first_covers_every_value_within_the_largest_axis(dims: list[int]):
    """On a full grid, sparse-first is a permutation whose first max(axis length) cells already
    hold every value of every axis (plan order needs nearly the whole grid for the last one)."""
    combos = [
        {f"d{i}": v for i, v in enumerate(values)}
        for values in itertools.product(*(range(d) for d in dims))
    ]
    order = sparse_first(combos)
    assert sorted(map(json.dumps, order)) == sorted(map(json.dumps, combos))
    prefix = order[: max(dims)]
    for i, d in enumerate(dims):
        assert {c[f"d{i}"] for c in prefix} == set(range(d))


def test_sparse_first_spreads_every_prefix_evenly():
    """Every prefix of a sparse-first 4 × 4 × 3 × 2 grid uses each value of each axis within 1.5
    of its even share (in plan order the first 24 jobs all have prompt 0)."""
    combos = [
        {"prompt": p, "model": m, "ratio": r, "seed": s}
        for p, m, r, s in itertools.product(range(4), range(4), range(3), range(2))
    ]
    order = sparse_first(combos)
    for n in range(1, len(order) + 1):
        for axis, size in (("prompt", 4), ("model", 4), ("ratio", 3), ("seed", 2)):
            counts = [sum(1 for c in order[:n] if c[axis] == v) for v in range(size)]
            assert all(abs(k - n / size) <= 1.5 for k in counts), (n, axis, counts)


def test_sparse_first_ignores_constant_dimensions_and_scales():
    """A dimension with one value (one model) does not slow or skew the order: 100 × 100 × 10
    points are ordered, and their first 100 cover both varying axes."""
    combos = [
        {"model": "m", "a": a, "b": b, "seed": s}
        for a, b, s in itertools.product(range(100), range(100), range(10))
    ]
    order = sparse_first(combos)
    assert len(order) == len(combos) and order[0] == combos[0]
    assert {c["a"] for c in order[:100]} == set(range(100))
    assert {c["b"] for c in order[:100]} == set(range(100))
    assert {c["seed"] for c in order[:10]} == set(range(10))


GRID = {
    "prompts": [
        {"id": "cat", "text": "a cat on a windowsill"},
        {"id": "fuji", "text": "Mount Fuji at dawn"},
        {"id": "tea", "text": "a teapot in studio light"},
        {"id": "bike", "text": "a {kind} bicycle"},  # a template: one variant
    ],
    "vars": {"kind": ["red"]},
    "models": [
        {"endpoint": "fal-ai/flux-1/schnell", "label": "flux"},
        {"endpoint": "fal-ai/imagen4/preview", "label": "imagen"},
        {"endpoint": "fal-ai/ideogram/v2", "label": "ideogram"},
        {"endpoint": "fal-ai/recraft/v2/text-to-image", "label": "recraft"},
    ],
    "axes": {"aspect_ratio": ["1:1", "16:9", "9:16"]},
    "seeds": [1, 2],
}


def _trial(tmp_path: Path, order: str) -> list[dict[str, Any]]:
    """Run the first 25 % (24 of 96 jobs) of the 4 × 4 × 3 × 2 grid; the finished images' rows."""
    tmp_path.mkdir()
    m = write_manifest(tmp_path, **GRID, order=order, output=str(tmp_path / "out"))
    with background_emulator(service=ServiceTime("fixed", 0.0)) as emu:
        code, _, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--quiet",
            "--max-jobs",
            "24",
            env={"FAL_KEY": "k"},
        )
    assert code == 0, err
    lines = (tmp_path / "out/t/data/metadata.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_quarter_of_a_sparse_first_plan_shows_the_whole_grid(tmp_path: Path):
    """After 25 % of a sparse-first 4 × 4 × 3 × 2 plan on the emulator, every value of every axis
    has at least one finished image; the same trial in plan order leaves most of them out."""
    rows = _trial(tmp_path / "sparse", "sparse-first")
    assert len(rows) == 24 == math.ceil(96 / 4)
    assert {r["prompt_id"] for r in rows} == {"cat", "fuji", "tea", "bike"}
    assert {r["model"] for r in rows} == {"flux", "imagen", "ideogram", "recraft"}
    assert {r["aspect_ratio"] for r in rows} == {"1:1", "16:9", "9:16"}
    assert {r["seed"] for r in rows} == {1, 2}
    planned = _trial(tmp_path / "plan", "plan")
    assert len(planned) == 24 and {r["prompt_id"] for r in planned} == {"cat"}
