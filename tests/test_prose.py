"""renderer.models.prose: ranges, allowed values and defaults stated in words, by meaning."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from renderer.errors import DocumentError
from renderer.models import prose
from renderer.models.read import parse_text


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("Range value: 1-50", "integer", (1, 50)),
        ("Number of images, range: 1-4", "integer", (1, 4)),
        ("Range: 1-20", "integer", (1, 20)),
        ("must be between 0 and 35", "number", (0, 35)),
        ("Guidance (from 1.5 to 7.5).", "number", (1.5, 7.5)),
        ("默认值：1   范围值1-4", "integer", (1, 4)),
        ("取值范围：0~10", "integer", (0, 10)),
    ],
)
def test_ranges_in_several_wordings(text: str, kind: str, expected: tuple[float, float]):
    """A range written as proxies write it becomes minimum and maximum."""
    assert prose.read(text, kind).range == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Supported output image formats: jpeg, png", ("jpeg", "png")),
        ("Supported: jpeg, png, webp.", ("jpeg", "png", "webp")),
        (
            "enumerated values: square, square pro, landscape_4_3",
            ("square", "square pro", "landscape_4_3"),
        ),
        ("Options: `fast` or `quality`", ("fast", "quality")),
        ("支持default、png、jpeg", ("default", "png", "jpeg")),
        ("支持：21：9、16：9、1：1", ("21:9", "16:9", "1:1")),
    ],
)
def test_allowed_values_in_several_wordings(text: str, expected: tuple[str, ...]):
    """Allowed values listed in prose become an enum, full-width punctuation read as ASCII."""
    assert prose.read(text, "string").enum == expected


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("Default value: true", "boolean", True),
        ("Default: 28", "integer", 28),
        ('默认值："jpeg"', "string", "jpeg"),
        ("Default is 3.5.", "number", 3.5),
    ],
)
def test_defaults_are_typed(text: str, kind: str, expected: object):
    """A stated default is read as a value of the field's type."""
    hints = prose.read(text, kind)
    assert hints.has_default and hints.default == expected


def test_a_default_that_does_not_fit_is_an_error():
    """`Default: fast` on an integer field is refused, not kept as a string."""
    with pytest.raises(ValueError, match="not an integer"):
        prose.read("Default: 2.5", "integer")
    with pytest.raises(ValueError):
        prose.read("Default: fast", "integer")


def test_a_proxy_table_row_with_a_wrong_default_refuses_the_document():
    """A parameter table whose integer default is not a number names the file and line."""
    text = (
        "/owner/app\n\nParameterTypeRequiredDescription\n"
        "promptstringRequiredThe prompt\n"
        "stepsintegerOptionalSteps. Default value: many\n"
    )
    with pytest.raises(DocumentError) as caught:
        parse_text(text, "proxy.txt")
    assert str(caught.value).startswith("proxy.txt:5: steps: default 'many' is not of type integer")


def test_a_default_followed_by_prose_keeps_its_value():
    """`Default value: 28 Range: 0-50` on a table row: default 28, range 0 to 50."""
    text = (
        "/owner/app\n\nParameterTypeRequiredDescription\n"
        "promptstringRequiredThe prompt\n"
        "stepsintegerOptionalSteps. Default value: 28 Range: 0-50\n"
    )
    (doc,) = parse_text(text, "proxy.txt")
    steps = doc.inputs[1]
    assert (steps.default, steps.range) == (28, (0, 50))


@given(st.text(max_size=300), st.sampled_from(["string", "integer", "number", "boolean"]))
def test_any_description_is_read_or_refused_with_valueerror(text: str, kind: str):
    """No description makes the reader crash: it yields hints or a ValueError about the default."""
    try:
        hints = prose.read(text, kind)
    except ValueError:
        return
    if hints.range:
        assert hints.range[0] <= hints.range[1]
    if hints.enum:
        assert len(hints.enum) >= 2
