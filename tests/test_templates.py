"""Prompt templates: the syntax (variables, alternations, escapes), what a template resolves to,
and the identity of the jobs it makes (the resolved text is what is hashed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from renderer.manifest.load import parse
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


@given(st.text(alphabet="{}|_\\ab-", max_size=30))
def test_any_text_is_a_template_or_a_located_error(text: str):
    """Whatever a prompt says, it parses or is a TemplateError at a character inside the text."""
    try:
        template = parse_template(text)
    except TemplateError as exc:
        assert 0 <= exc.offset < len(text)
        return
    if template is not None:
        values = {name: f"<{name}>" for name in template.names}
        assert isinstance(template.resolve(values), str)
