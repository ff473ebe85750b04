"""A prompt file's kept columns (manifest/kept.py): values stored per row and given back as JSON, and their kinds."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.manifest.kept import SEPARATOR, Kept, kind_of, value_json

_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and infinities included: they are kept as null
    st.text(),  # control characters (U+001F too) and lone surrogates' neighbours included
)
_VALUE = st.one_of(
    _SCALAR,
    st.lists(st.integers() | st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers() | st.none(), max_size=3),
)
_NAMES = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4, unique=True)


def _expected(value: Any) -> Any:
    """What a kept value reads back as: scalars as they are, nested values as canonical JSON text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if type(value) is int and not -(2**63) <= value < 2**63:
        return str(value)
    return value


@settings(deadline=None)
@given(
    _NAMES.flatmap(
        lambda names: st.tuples(
            st.just(names),
            st.lists(st.lists(_VALUE, min_size=len(names), max_size=len(names)), max_size=5),
        )
    )
)
def test_a_row_reads_back_as_the_object_of_its_values(case: tuple[list[str], list[list[Any]]]):
    """Each row's stored text becomes a JSON object of exactly its values, in keep: order, whatever they hold."""
    names, rows = case
    kept = Kept(names)
    for values in rows:
        stored = kept.row(values)
        text = kept.text(stored)
        assert list(json.loads(text)) == names
        assert json.loads(text) == {n: _expected(v) for n, v in zip(names, values, strict=True)}
        assert stored.count(SEPARATOR) == len(names) - 1  # the separator never occurs in a value


@settings(deadline=None)
@given(
    _NAMES.flatmap(
        lambda names: st.tuples(
            st.just(names),
            st.lists(st.lists(_VALUE, min_size=len(names), max_size=len(names)), max_size=6),
        )
    )
)
def test_a_batch_read_by_columns_is_stored_as_row_by_row(case: tuple[list[str], list[list[Any]]]):
    """A Parquet batch (column by column) stores the same texts and notes the same kinds as its rows one by one."""
    names, rows = case
    by_row, by_column = Kept(names), Kept(names)
    texts = [by_row.row(values) for values in rows]
    columns = [[values[i] for values in rows] for i in range(len(names))]
    assert (by_column.rows(columns) if rows else []) == texts
    assert by_column.kinds == by_row.kinds


@given(_VALUE)
def test_a_value_kind_is_the_type_it_reads_back_as(value: Any):
    """kind_of names the Python type of the value read back (null: no kind), so a column is typed by its values."""
    back = json.loads(value_json(value))
    kinds = {bool: "bool", int: "int64", float: "float64", str: "string"}
    assert kind_of(value) == (None if back is None else kinds[type(back)])


@settings(deadline=None)
@given(
    st.one_of(
        st.lists(st.text(), max_size=6),
        st.lists(st.integers(-(2**64), 2**64), max_size=6),
        st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6),
        st.lists(st.floats(), max_size=6),
        st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=6),
        st.lists(st.booleans(), max_size=6),
    )
)
def test_a_column_of_one_kind_is_stored_as_value_by_value(values: list[Any]):
    """A kept column of only strings, integers or floats (its kind's own encoder) stores each value as value_json does."""
    assert Kept(["a"]).encode([values]) == [value_json(v) for v in values]
