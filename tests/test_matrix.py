"""GitHub Actions include/exclude semantics, checked against GitHub's documented example."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from renderer.plan.matrix import apply, cartesian, stream


def test_githubs_worked_example():
    """fruit × animal with five includes gives exactly the six jobs GitHub documents."""
    base = cartesian([("fruit", ["apple", "pear"]), ("animal", ["cat", "dog"])])
    include = [
        {"color": "green"},
        {"color": "pink", "animal": "cat"},
        {"fruit": "apple", "shape": "circle"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]
    assert [c for c, _ in apply(base, include)] == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_first_variable_varies_slowest():
    """Jobs come in the order the variables are written."""
    assert cartesian([("a", [1, 2]), ("b", ["x", "y"])]) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]


def test_exclude_matches_partially_and_include_can_add_back():
    """An exclude with fewer keys drops every match; a later include brings one back as new."""
    base = cartesian([("os", ["linux", "mac"]), ("py", [3.10, 3.11])])
    result = apply(base, include=[{"os": "mac", "py": 3.11}], exclude=[{"os": "mac"}])
    assert result == [
        ({"os": "linux", "py": 3.10}, False),
        ({"os": "linux", "py": 3.11}, False),
        ({"os": "mac", "py": 3.11}, True),
    ]


def test_new_combinations_do_not_receive_later_includes():
    """Only original combinations are extended by later include entries."""
    base = cartesian([("a", [1])])
    result = [c for c, _ in apply(base, include=[{"a": 2}, {"extra": True}])]
    assert result == [{"a": 1, "extra": True}, {"a": 2}]


def test_without_base_keys_each_include_is_a_job():
    """An empty matrix with includes runs each include as one job."""
    assert [c for c, _ in apply([], include=[{"x": 1}, {"x": 2}])] == [{"x": 1}, {"x": 2}]


@given(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
    st.lists(
        st.dictionaries(
            st.sampled_from(["k", "v", "new"]), st.sampled_from(["a", "b", "z"]), min_size=1
        ),
        max_size=4,
    ),
)
def test_originals_never_change_their_matrix_values(values, include):
    """Whatever the includes, a kept original keeps its original k and v values."""
    base = cartesian([("k", values), ("v", ["a", "b"])])
    for combo, created in apply(base, include):
        if not created:
            assert combo["k"] in values and combo["v"] in ("a", "b")


_value = st.sampled_from(["a", "b", 1, 1.0, True])


@given(
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=3, unique=True),
    st.booleans(),
    st.lists(
        st.dictionaries(st.sampled_from(["k", "v", "w", "new"]), _value, min_size=1), max_size=4
    ),
    st.lists(st.dictionaries(st.sampled_from(["k", "v", "w"]), _value, min_size=1), max_size=3),
)
def test_stream_gives_what_apply_gives(values, ragged, include, exclude):
    """The streaming form (for plans too big to hold) yields exactly apply's combinations, in order."""
    base = cartesian([("k", values), ("v", ["a", 1])])
    if ragged:  # per-model axes: some originals carry a key others lack
        base += cartesian([("k", ["z"]), ("w", ["a", "b"])])
    assert list(stream(lambda: iter(base), include, exclude)) == apply(base, include, exclude)
