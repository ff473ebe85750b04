"""Prompt templates, vars, wildcard files and zip groups: what each resolves to and how many jobs
it makes (checked by arithmetic), and the identity of the jobs it makes."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.manifest.load import load, parse, plan_size
from renderer.manifest.templates import TemplateError, parse_template, tokens
from renderer.models.schemas import SchemaRegistry
from renderer.plan import planner

from .conftest import MANIFESTS, cli


def _plan(registry: SchemaRegistry, data: dict[str, Any], folder: Path = MANIFESTS) -> Any:
    text = yaml.safe_dump({"name": "t", "provider": "emulator", **data}, sort_keys=False)
    return planner.build(parse(text, folder / "m.yaml"), registry)


def _escape(text: str) -> str:
    return "".join("\\" + c if c in "{}|_\\" else c for c in text)


@given(st.text(max_size=40))
def test_escaped_text_resolves_to_itself(text: str):
    """Any text with its braces, bars, underscores and backslashes escaped is sent exactly as meant."""
    template = parse_template(_escape(text))
    resolved = template.resolve({}) if template is not None else _escape(text)
    assert resolved == text
    assert template is None or template.names == ()


@given(
    st.lists(st.from_regex(r"[a-z ]{0,6}", fullmatch=True), min_size=1, max_size=4),
    st.lists(st.sampled_from(["color", "size"]), min_size=1, max_size=4),
)
def test_template_substitutes_each_variable_where_it_stands(literals: list[str], names: list[str]):
    """`{name}` and `__name__` are replaced by the variable's value, literal text kept around them."""
    text, expected = "", ""
    values = {"color": "red", "size": "big"}
    for i, name in enumerate(names):
        literal = literals[i % len(literals)]
        text += literal + ("{" + name + "}" if i % 2 else f"__{name}__") + " "
        expected += literal + values[name] + " "
    template = parse_template(text)
    assert template is not None and set(template.names) == set(names)
    assert template.resolve(values) == expected


def test_alternations_are_named_in_order_and_escapes_stay_literal():
    """`{a|b}` makes the prompt's variables alt1, alt2…; `\\|` inside one is a literal bar."""
    template = parse_template(r"a {matte|glossy} {x\|y|z} car \{not a variable\}")
    assert template is not None
    assert template.alternations == {"alt1": ("matte", "glossy"), "alt2": ("x|y", "z")}
    assert template.resolve({"alt1": "matte", "alt2": "x|y"}) == "a matte x|y car {not a variable}"
    assert parse_template("a plain prompt, 16:9 at f/2.8") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a {color car", "this { is never closed"),
        ("a color} car", "this } closes nothing"),
        ("{a|a}", "the alternation lists 'a' twice"),
        ("{ color }", "{ color } is neither a variable name nor an alternation"),
        ("{a{b}}", "a brace opens inside {…}; braces do not nest"),
    ],
)
def test_malformed_templates_say_what_is_wrong(text: str, message: str):
    """A malformed template names the mistake (the manifest's errors add file:line:col)."""
    with pytest.raises(TemplateError) as exc:
        tokens(text)
    assert exc.value.message == message


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


def test_the_resolved_text_is_the_identity(registry: SchemaRegistry):
    """A template and a plain prompt resolving to the same text are one job: the same key."""
    plain = _plan(
        registry,
        {
            "prompts": [{"id": "car", "text": "a red car"}],
            "models": ["fal-ai/flux-1/schnell"],
            "seeds": [3],
        },
    )
    templated = _plan(
        registry,
        {
            "vars": {"color": ["red", "blue"]},
            "prompts": [{"id": "car", "text": "a {color} car"}],
            "models": ["fal-ai/flux-1/schnell"],
            "seeds": [3],
        },
    )
    alternation = _plan(
        registry,
        {
            "prompts": [{"id": "x", "text": "a {red|green} car"}],
            "models": ["fal-ai/flux-1/schnell"],
            "seeds": [3],
        },
    )
    key = plain.jobs[0].key
    assert [j.key for j in templated.jobs if j.axes["color"] == "red"] == [key]
    assert [j.key for j in alternation.jobs if j.axes["alt1"] == "red"] == [key]


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


def test_prompt_files_are_literal_text(tmp_path: Path, registry: SchemaRegistry):
    """A prompt file's rows are never templates: braces in them are sent as written."""
    (tmp_path / "p.txt").write_text("a {red|blue} car with __wheels__\n")
    p = _plan(
        registry,
        {"prompts": [{"file": "p.txt"}], "models": ["fal-ai/flux-1/schnell"], "seeds": [1]},
        tmp_path,
    )
    assert [j.input["prompt"] for j in p.jobs] == ["a {red|blue} car with __wheels__"]


def test_plan_json_shows_each_resolved_prompt_and_its_values(tmp_path: Path):
    """`renderer plan --json` gives every job's resolved prompt and its variables' values."""
    (tmp_path / "w").mkdir()
    (tmp_path / "w/sizes.txt").write_text("small\n# skipped\n\nhuge __color__\n")
    (tmp_path / "m.yaml").write_text(
        "name: t\nprovider: emulator\nvars:\n  color: [red, blue]\n  size: {file: w/sizes.txt}\n"
        "prompts:\n  - {id: car, text: 'a {size} car'}\nmodels: [fal-ai/flux-1/schnell]\nseeds: [1]\n"
    )
    code, out, err = cli("plan", "--json", str(tmp_path / "m.yaml"))
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["input"]["prompt"], r["axes"]) for r in rows] == [
        ("a small car", {"size": "small"}),
        ("a huge red car", {"size": "huge red"}),
        ("a huge blue car", {"size": "huge blue"}),
    ]


def test_worked_example_loads_its_wildcards():
    """The example's nested wildcard files load relative to the manifest, comments skipped."""
    m = load(MANIFESTS / "sweeps.yaml")
    assert m.variables["bird"].values == ("owl", "red parrot", "blue parrot")
    assert m.sample is not None and m.sample.count == 40 and m.order == "sparse-first"
