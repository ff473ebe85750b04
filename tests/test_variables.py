"""vars, zip, sample and order read from a manifest: the worked example, zip groups, each
prompt's own dimensions counted by arithmetic (plan size), variables in include and exclude."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.manifest.load import load, plan_size
from renderer.models.schemas import SchemaRegistry

from .conftest import MANIFESTS, cli
from .test_templates import _plan


def test_worked_example_counts_and_resolves(registry: SchemaRegistry):
    """manifests/sweeps.yaml without its sample: (2 colours × 5 animals × 2 finishes + 3 zipped
    pairs) × 2 models × 2 seeds = 92 jobs, each prompt resolved from its own values."""
    data = yaml.safe_load((MANIFESTS / "sweeps.yaml").read_text())
    del data["sample"], data["order"]
    p = _plan(registry, data)
    animals = [
        "cat",
        "dog",
        "owl",
        "red parrot",
        "blue parrot",
    ]  # __bird__ nested, {red|blue} in it
    assert len(p.jobs) == (2 * 5 * 2 + 3) * 2 * 2 == 92
    assert plan_size(p.manifest) == 92
    cars = {j.input["prompt"] for j in p.jobs if j.prompt_id == "car"}
    assert cars == {
        f"a {c} car shaped like a {a}, {f} finish"
        for c, a, f in product(["red", "blue"], animals, ["matte", "glossy"])
    }
    for j in p.jobs:
        if j.prompt_id == "car":
            assert set(j.axes) == {"color", "animal", "alt1"}
            assert j.input["prompt"].startswith(
                f"a {j.axes['color']} car shaped like a {j.axes['animal']}"
            )
            assert "negative_prompt" not in j.input
    assert p.manifest.variables["animal"].values == tuple(animals)


def test_zip_of_three_pairs_is_three_cells(registry: SchemaRegistry):
    """A zip group of 3 (subject, negative_prompt) pairs gives 3 cells, not 9, each pair together."""
    p = _plan(
        registry,
        {
            "prompts": [{"id": "pet", "text": "a portrait of a {subject}"}],
            "models": ["fal-ai/hidream-i1-fast"],
            "seeds": [1],
            "zip": [
                {"subject": ["cat", "dog", "owl"], "negative_prompt": ["dogs", "cats", "hawks"]}
            ],
        },
    )
    pairs = [(j.input["prompt"], j.input["negative_prompt"]) for j in p.jobs]
    assert pairs == [
        ("a portrait of a cat", "dogs"),
        ("a portrait of a dog", "cats"),
        ("a portrait of a owl", "hawks"),
    ]
    assert p.jobs[0].axes == {"subject": "cat", "negative_prompt": "dogs"}


def test_a_zip_of_parameters_only_applies_to_every_prompt(registry: SchemaRegistry):
    """A zip of parameters (a size with its steps) multiplies every prompt by its length only."""
    p = _plan(
        registry,
        {
            "prompts": [{"id": "a", "text": "a cat"}, {"id": "b", "text": "a {red|blue} dog"}],
            "models": ["fal-ai/flux-1/schnell"],
            "seeds": [1, 2],
            "zip": [{"image_size": ["square", "landscape_16_9"], "num_inference_steps": [2, 4]}],
        },
    )
    assert len(p.jobs) == (1 + 2) * 2 * 2 == plan_size(p.manifest)
    assert {(j.input["image_size"], j.input["num_inference_steps"]) for j in p.jobs} == {
        ("square", 2),
        ("landscape_16_9", 4),
    }


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    colors=st.integers(1, 4),
    sizes=st.integers(1, 3),
    alternatives=st.integers(2, 3),
    seeds=st.integers(1, 3),
    plain=st.booleans(),
)
def test_plan_size_counts_templates_exactly(
    registry: SchemaRegistry, colors: int, sizes: int, alternatives: int, seeds: int, plain: bool
):
    """The arithmetic plan size (before expansion) equals the expanded job count with templates."""
    alt = "|".join(f"o{i}" for i in range(alternatives))
    prompts = [{"id": "car", "text": f"a {{size}} {{color}} car, {{{alt}}}"}]
    if plain:
        prompts.append({"id": "cat", "text": "a cat"})
    p = _plan(
        registry,
        {
            "vars": {
                "color": [f"c{i}" for i in range(colors)],
                "size": [f"s{i}" for i in range(sizes)],
            },
            "prompts": prompts,
            "models": ["fal-ai/flux-1/schnell", "fal-ai/imagen4/preview"],
            "seeds": {"start": 1, "count": seeds},
        },
    )
    expected = (colors * sizes * alternatives + plain) * 2 * seeds
    assert len(p.jobs) == plan_size(p.manifest) == expected
    assert len({j.key for j in p.jobs}) == expected and len({j.stem for j in p.jobs}) == expected


def test_variables_work_in_exclude_and_include(registry: SchemaRegistry):
    """exclude drops a variable's value; include adds a value the list does not have."""
    p = _plan(
        registry,
        {
            "vars": {"color": ["red", "blue", "green"]},
            "prompts": [{"id": "car", "text": "a {color} car"}],
            "models": ["fal-ai/flux-1/schnell"],
            "seeds": [1],
            "exclude": [{"color": "blue"}],
            "include": [
                {"prompt": "car", "model": "fal-ai/flux-1/schnell", "seed": 1, "color": "gold"}
            ],
        },
    )
    assert [j.input["prompt"] for j in p.jobs] == ["a red car", "a green car", "a gold car"]
    assert p.jobs[2].axes == {"color": "gold"}


def test_worked_example_loads_its_wildcards():
    """The example's nested wildcard files load relative to the manifest, comments skipped."""
    m = load(MANIFESTS / "sweeps.yaml")
    assert m.variables["bird"].values == ("owl", "red parrot", "blue parrot")
    assert m.sample is not None and m.sample.count == 40 and m.order == "sparse-first"


def test_the_plan_cap_counts_template_variants_and_sampled_points(tmp_path: Path):
    """--max-plan-jobs counts a template's variants before expanding them, and a sample's whole
    matrix (every point is hashed to draw it): refused with the count, exit 2."""
    m = tmp_path / "m.yaml"
    body = {
        "name": "t",
        "provider": "emulator",
        "vars": {"color": ["red", "blue", "green"], "shape": ["cube", "cone"]},
        "prompts": [{"id": "toy", "text": "a {color} {shape}, {matte|glossy}"}],
        "models": ["fal-ai/flux-1/schnell"],
        "seeds": [1, 2],
    }
    m.write_text(yaml.safe_dump(body))
    code, _, err = cli("validate", str(m), "--max-plan-jobs", "23")
    assert code == 2 and "up to 24 jobs (12 prompt variants × 1 models × 2 seeds" in err
    assert cli("validate", str(m), "--max-plan-jobs", "24")[0] == 0
    m.write_text(yaml.safe_dump({**body, "sample": {"count": 5, "seed": 1}}))
    code, _, err = cli("validate", str(m), "--max-plan-jobs", "23")
    assert code == 2 and "sample is drawn from 24 combinations" in err
    code, out, err = cli("validate", str(m), "--max-plan-jobs", "24")
    assert code == 0 and "5 jobs" in out, err
