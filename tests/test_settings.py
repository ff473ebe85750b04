"""Numeric settings: one parser for manifest, flags and environment; finite, in range, `5/s` everywhere."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from renderer import settings
from renderer.settings import SPECS, SettingError, parse


@pytest.mark.parametrize(
    "text,expected",
    [
        ("5/s", 5.0),
        ("120/min", 2.0),
        ("0.5/min", 0.5 / 60),
        ("7", 7.0),
        ("2.5", 2.5),
        (" 3 / sec ", 3.0),
    ],
)
def test_rate_strings_mean_submissions_per_second(text: str, expected: float):
    """A rate is a number per second or N/s, N/min: the same spellings the manifest documents."""
    assert parse("rate", text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "name,value",
    [
        ("rate", "0/s"),
        ("rate", "0.0/min"),
        ("rate", 0),
        ("rate", "-5"),
        ("rate", float("nan")),
        ("rate", float("inf")),
        ("concurrency", 0),
        ("concurrency", -1),
        ("concurrency", 10**9),
        ("timeout", -3),
        ("timeout", "nan"),
        ("budget", float("nan")),
        ("backoff", "inf"),
        ("attempts", 0),
        ("max_jobs", -1),
        ("port", 99999),
        ("probability", 2),
        ("max_sheet", 0),
        ("concurrency", 2.5),
        ("concurrency", True),
        ("concurrency", None),
        ("concurrency", [1]),
        ("rate", "fast"),
    ],
)
def test_values_outside_a_setting_are_refused_with_what_is_allowed(name: str, value: object):
    """Zero, negative, NaN, infinite, fractional counts and wrong types never pass; the error says what would."""
    with pytest.raises(SettingError) as info:
        parse(name, value)
    assert info.value.allowed


@given(
    name=st.sampled_from(sorted(SPECS)),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(),
        st.text(max_size=12),
        st.booleans(),
        st.none(),
    ),
)
def test_parse_is_total(name: str, value: object):
    """Any value either parses to a finite number inside the setting's range, or is a SettingError."""
    spec = SPECS[name]
    try:
        result = parse(name, value)
    except SettingError:
        return
    assert isinstance(result, spec.kind) and math.isfinite(result)
    assert spec.low < result <= spec.high if spec.low_open else spec.low <= result <= spec.high


@pytest.mark.parametrize(
    "url,ok",
    [
        ("https://queue.fal.run", True),
        ("http://127.0.0.1:8080/x", True),
        ("https://user:pw@proxy.example", False),
        ("https://h:99999", False),
        ("ftp://x", False),
        ("https://", False),
        ("https://a b", False),
    ],
)
def test_provider_urls_never_carry_credentials(url: str, ok: bool):
    """A base URL has a scheme, a host and a valid port, and no user:password@."""
    if ok:
        settings.check_url(url)
    else:
        with pytest.raises(SettingError):
            settings.check_url(url)
