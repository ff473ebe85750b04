"""A JSONL block of objects parsed by pyarrow's JSON reader, for a file with kept columns: its
rows as columns, or None on any doubt (the caller then reads the block its own way).

Why: a caption set keeping columns has several keys a line; the `json` module's C scanner builds
a dict of each line (four keys: ~1.5 µs a line, the most of a 1M-row `validate`), where Arrow's
reader parses the block into columns in ~0.5 µs a line. pyarrow is an extra (`datasets`, `hub`):
without it (or with ARROW False) every block goes the `json` way, which stays the reference.

Invariant: a block is accepted only where Arrow's reading is the `json` module's, value for
value, as rowfiles reads it: every line of the block is one JSON object (it starts with `{`, no
blank line, no lone CR, none over the row cap, and Arrow made exactly one row a line); every column
of the block is of strings, int64 integers, booleans or nulls (Arrow reads NaN and Infinity,
which `json` refuses here, as doubles; an integer beyond int64 as a double; a float's text may
not be Python's); nested values are refused too. Arrow itself refuses what `json` reads
differently: a key given twice in an object (`json` keeps the last), a lone surrogate escape
(`json` makes an unpaired surrogate), a value of another type than the same key's earlier ones.
Arrow reads an absent key as null, as dict.get does. tests/test_jsonarrow.py compares both ways.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from renderer.manifest.kept import SEPARATOR
from renderer.manifest.reading import MAX_ROW_CHARS

if TYPE_CHECKING:
    from renderer.manifest.kept import Kept

# False: no block through Arrow (tests compare both ways; an install without pyarrow is False).
ARROW = True

_BOM = b"\xef\xbb\xbf"


def _modules() -> Any:
    """(pyarrow, pyarrow.compute, pyarrow.json), or None when pyarrow is not installed."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pj
    except ImportError:
        return None
    return pa, pc, pj


_PLAIN = frozenset({"string", "int64", "bool", "null"})
# What encode_basestring escapes (control characters, quote, backslash): a string column with
# none of them is '"' + value + '"' each.
_ESCAPED = r'[\x00-\x1f"\\]'


class Block:
    """A block's rows as Arrow columns: its keys (first seen first) and each key's values."""

    __slots__ = ("_count", "_escapes", "_modules", "_table", "names")

    def __init__(self, table: Any, count: int, escapes: bool, modules: Any) -> None:
        self._table, self._count, self._modules = table, count, modules
        self._escapes = escapes
        self.names: list[str] = table.column_names

    def values(self, name: str) -> list[Any]:
        """A key's values, one a row (None where a row lacks the key)."""
        if name not in self.names:
            return [None] * self._count
        return self._table.column(name).to_pylist()

    def kept(self, kept: Kept) -> list[str]:
        """The stored texts of the rows' kept values, their kinds noted: Kept.rows of the
        values, made column-wise in Arrow where a column's JSON texts are plain to make."""
        pa, pc, _ = self._modules
        quote, empty, null, separator = _constants(self._modules)
        pool = pa.system_memory_pool()  # freed to malloc: mimalloc's pool keeps ~30 MB more
        texts: list[Any] = []
        kinds: list[tuple[str, str]] = []
        for name in kept.names:
            column = self._table.column(name) if name in self.names else None
            kind = "null" if column is None else str(column.type)
            if column is None or kind == "null" or column.null_count == self._count:
                texts.append(null)  # every row's value null (or absent): no kind noted
                continue
            if kind == "string":
                # A decoded string holds a character to escape only where its line had an
                # escape (a JSON string holds no raw control character): no backslash, none.
                if (
                    self._escapes
                    and pc.any(pc.match_substring_regex(column, _ESCAPED, memory_pool=pool)).as_py()
                ):
                    return kept.rows([self.values(k) for k in kept.names])
                encoded = pc.binary_join_element_wise(quote, column, quote, empty, memory_pool=pool)
            else:  # int64: str(value); bool: true, false
                encoded = pc.cast(column, pa.string(), memory_pool=pool)
            texts.append(pc.coalesce(encoded, null, memory_pool=pool))
            kinds.append((name, kind))
        for name, kind in kinds:
            kept.kinds[name].add(kind)  # the kind's name is Kept's: string, int64, bool
        if all(isinstance(t, pa.Scalar) for t in texts):
            return [SEPARATOR.join(["null"] * len(texts))] * self._count
        joined = (
            texts[0]
            if len(texts) == 1
            else pc.binary_join_element_wise(*texts, separator, memory_pool=pool)
        )
        return joined.to_pylist()


def _constants(modules: Any) -> Any:
    """Arrow's string scalars '"', "", "null" and SEPARATOR (made by the JSON reader: pa.scalar
    of a str imports pandas where it is installed, ~20 MB and 0.3 s)."""
    global _SCALARS
    if _SCALARS is None:
        pa, _, pj = modules
        row = pj.read_json(pa.py_buffer(b'{"q":"\\"","e":"","n":"null","s":"\\u001f"}\n'))
        _SCALARS = tuple(row.column(k)[0] for k in "qens")
    return _SCALARS


_SCALARS: Any = None


def columns(raw: bytes) -> Block | None:
    """The rows of a block of whole lines (`raw`, its bytes as read) when they are JSON objects
    of plain values as the module's docstring says, and none is longer than MAX_ROW_CHARS
    bytes (a longer line the caller refuses where it is); else None."""
    if not ARROW:
        return None
    modules = _modules()
    if modules is None:
        return None
    pa, _, pj = modules
    import numpy as np  # here, not at import: importing the manifest stage stays light

    data = raw[3:] if raw.startswith(_BOM) else raw
    if not data or (b"\r" in data and data.count(b"\r") != data.count(b"\r\n")):
        return None  # a lone CR ends a line to Arrow, not to the caller
    # Each line starts with "{" (a JSON string holds no raw line break): a top-level scalar
    # line would be a row of nulls to Arrow's reader (a first `null` line even crashes pyarrow
    # 26), and a blank line no row at all. A line of two values is two rows: the count below.
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == 10)
    if not len(ends) or ends[-1] != len(buf) - 1:
        ends = np.append(ends, len(buf))  # the last line has no line break
    starts = np.concatenate(([0], ends[:-1] + 1))
    if (buf[starts] != ord("{")).any() or (ends - starts).max() > MAX_ROW_CHARS:
        return None
    count = len(ends)
    options = pj.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 20))
    try:
        table = pj.read_json(
            pa.py_buffer(data), read_options=options, memory_pool=pa.system_memory_pool()
        )
    except Exception:  # ArrowInvalid: a parse error, a key given twice, a type changed
        return None
    if table.num_rows != count:
        return None  # more than one value on a line
    if any(str(field.type) not in _PLAIN for field in table.schema):
        return None
    if len(set(table.column_names)) != table.num_columns:
        return None
    return Block(table, count, b"\\" in data, modules)
