"""The matrix as combinations: plan order with template variants, and where sample and order sit
between exclude and include."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from renderer.manifest.load import parse
from renderer.models.schemas import SchemaRegistry
from renderer.plan import planner


def _jobs(registry: SchemaRegistry, **data: Any) -> list[Any]:
    body = {"name": "t", "provider": "emulator", "seeds": [1, 2], **data}
    return list(planner.build(parse(yaml.safe_dump(body), Path("m.yaml")), registry).jobs)


def test_variants_come_right_after_their_prompt(registry: SchemaRegistry):
    """Plan order: prompt, its variants, model, axes, seed (fastest); a plain prompt as before."""
    jobs = _jobs(
        registry,
        prompts=[{"id": "a", "text": "a {red|blue} cat"}, {"id": "b", "text": "a dog"}],
        models=["fal-ai/flux-1/schnell", "fal-ai/imagen4/preview"],
    )
    assert [(j.prompt_id, j.axes.get("alt1"), j.model[7:12], j.seed) for j in jobs] == [
        ("a", "red", "flux-", 1),
        ("a", "red", "flux-", 2),
        ("a", "red", "image", 1),
        ("a", "red", "image", 2),
        ("a", "blue", "flux-", 1),
        ("a", "blue", "flux-", 2),
        ("a", "blue", "image", 1),
        ("a", "blue", "image", 2),
        ("b", None, "flux-", 1),
        ("b", None, "flux-", 2),
        ("b", None, "image", 1),
        ("b", None, "image", 2),
    ]


def test_sample_and_order_come_after_exclude_and_before_include(registry: SchemaRegistry):
    """An excluded cell is never drawn, an included one always runs (last), and sparse-first
    only reorders: the same jobs as plan order."""
    base = {
        "vars": {"color": ["red", "blue", "green", "gold"]},
        "prompts": [{"id": "car", "text": "a {color} car"}],
        "models": ["fal-ai/flux-1/schnell"],
        "exclude": [{"color": "red"}],
        "include": [
            {"prompt": "car", "model": "fal-ai/flux-1/schnell", "seed": 9, "color": "teal"}
        ],
    }
    every = _jobs(registry, **base, sample={"count": 6, "seed": 1})
    assert len(every) == 6 + 1 and every[-1].axes == {"color": "teal"} and every[-1].seed == 9
    assert "red" not in {j.axes["color"] for j in every}
    plan = _jobs(registry, **base)
    sparse = _jobs(registry, **base, order="sparse-first")
    assert sorted(j.key for j in sparse) == sorted(j.key for j in plan) and len(plan) == 7
    assert [j.axes["color"] for j in sparse[:3]] != [j.axes["color"] for j in plan[:3]]
    assert {j.axes["color"] for j in sparse[:3]} == {"blue", "green", "gold"}
