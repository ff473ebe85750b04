"""Pairing two sides of a comparison by coordinates without holding either side whole, and the
lists a comparison hands back kept on disk (renderer/view/compare.py uses both).

`join` takes two streams of entries (each in its own side's order) and a key function per side,
and yields what a dict of each side would give: every coordinate of A once, in the order of its
first entry in A, with A's last entry of that coordinate and B's ("pair", or "only_a" when B has
none), then every coordinate of B that A lacks, in B's order ("only_b"). Up to PART entries it
does exactly that with two dicts. Beyond, each side is hash-partitioned by coordinates into
temporary files, each partition joined with two dicts (memory: one partition of each side), and
the partitions' results merged back into side order by each coordinate's first position, so
the outcome is the same, item for item, as the in-memory join.

`Spilled` is a sequence of JSON objects in a temporary file (offsets in memory, 8 bytes an
item): a million pairs cost ~8 MB of memory instead of ~2 GB of dicts; `json_chunks` writes a
result holding them exactly as `json.dumps(result, indent=2)` would.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import pickle
import tempfile
import weakref
from array import array
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import IO, Any, TypeVar, overload

PART = 20_000  # entries of one side per partition: ~40 MB of Python objects at most

T = TypeVar("T")
Key = Callable[[T], Hashable | None]  # None: the entry takes no part (an unmapped model)


class Spilled(Sequence[dict[str, Any]]):
    """A growing list of JSON objects stored in a temporary file (removed when this is collected)."""

    def __init__(self, items: Iterable[dict[str, Any]] = ()) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="renderer-diff-")  # noqa: SIM115 (lives with self)
        weakref.finalize(self, self._file.close)  # closed (and so removed) with the last reference
        self._at = array("q", [0])  # where each item starts, and where the next one will
        for item in items:
            self.append(item)

    def append(self, item: dict[str, Any]) -> None:
        data = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        os.pwrite(self._file.fileno(), data, self._at[-1])
        self._at.append(self._at[-1] + len(data))

    def __len__(self) -> int:
        return len(self._at) - 1

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = self._at[index], self._at[index + 1]
        loaded: dict[str, Any] = json.loads(os.pread(self._file.fileno(), end - start, start))
        return loaded

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Read in blocks of whole lines: one system call per ~1 MB, not per item.
        count, i = len(self), 0
        while i < count:
            j = i
            while j < count and self._at[j + 1] - self._at[i] < 1 << 20:
                j += 1
            j = max(j, i + 1)
            block = os.pread(self._file.fileno(), self._at[j] - self._at[i], self._at[i])
            for line in block.splitlines():
                yield json.loads(line)
            i = j

    def __repr__(self) -> str:
        return f"Spilled({len(self)} items)"


def json_chunks(value: dict[str, Any]) -> Iterator[str]:
    """`json.dumps(value, indent=2)` in pieces, a Spilled value streamed item by item."""
    if not value:
        yield "{}"
        return
    yield "{"
    for n, (key, item) in enumerate(value.items()):
        yield ("," if n else "") + "\n  " + json.dumps(key) + ": "
        if isinstance(item, Spilled):
            if not len(item):
                yield "[]"
                continue
            for i, element in enumerate(item):
                # JSON text holds no raw newline inside a string: each one here is indentation.
                yield (
                    ("," if i else "[")
                    + "\n    "
                    + json.dumps(element, indent=2).replace("\n", "\n    ")
                )
            yield "\n  ]"
        else:
            yield json.dumps(item, indent=2).replace("\n", "\n  ")
    yield "\n}"


def _next_keyed(entries: Iterator[T], key: Key[T]) -> tuple[T, Hashable] | None:
    """The next entry that takes part, with its key; None at the end."""
    for e in entries:
        k = key(e)
        if k is not None:
            return e, k
    return None


def _in_memory(
    a: Iterable[T], b: Iterable[T], key_a: Key[T], key_b: Key[T]
) -> Iterator[tuple[str, Hashable, T, T | None]]:
    index_a: dict[Hashable, T] = {}
    for e in a:
        k = key_a(e)
        if k is not None:
            index_a[k] = e
    index_b: dict[Hashable, T] = {}
    for e in b:
        k = key_b(e)
        if k is not None:
            index_b[k] = e
    for k, ea in index_a.items():
        eb = index_b.get(k)
        yield ("pair", k, ea, eb) if eb is not None else ("only_a", k, ea, None)
    for k, eb in index_b.items():
        if k not in index_a:
            yield ("only_b", k, eb, None)


BATCH = 256  # records per pickle: one call per batch, not per record (~15 µs each)


def _spread(entries: Iterable[T], key: Key[T], parts: int) -> list[IO[bytes]]:
    """Each entry (with its position) into the partition its coordinates hash to."""
    # Closed by _load once read through (they outlive this function).
    files: list[IO[bytes]] = [tempfile.TemporaryFile(prefix="renderer-pair-") for _ in range(parts)]  # noqa: SIM115
    held: list[list[tuple[int, Hashable, T]]] = [[] for _ in range(parts)]
    for position, e in enumerate(entries):
        k = key(e)
        if k is not None:
            part = hash(k) % parts
            held[part].append((position, k, e))
            if len(held[part]) >= BATCH:
                pickle.dump(held[part], files[part], pickle.HIGHEST_PROTOCOL)
                held[part] = []
    for f, rest in zip(files, held, strict=True):
        if rest:
            pickle.dump(rest, f, pickle.HIGHEST_PROTOCOL)
        f.seek(0)
    return files


def _load(f: IO[bytes]) -> Iterator[Any]:
    """The records of a file of pickled batches, in order; the file is closed when read through."""
    # One pickle per batch, each read by a fresh unpickler: a shared Pickler's memo would keep
    # every record alive (and clearing it desynchronises protocol 4's implicit memo indexes).
    while True:
        try:
            batch = pickle.load(f)
        except EOFError:
            f.close()
            return
        yield from batch


def _sorted_run(items: list[tuple[int, str, Hashable, T, T | None]]) -> IO[bytes]:
    items.sort(key=lambda item: item[0])
    f = tempfile.TemporaryFile(prefix="renderer-pair-")  # noqa: SIM115 (closed by _load)
    for start in range(0, len(items), BATCH):
        pickle.dump(items[start : start + BATCH], f, pickle.HIGHEST_PROTOCOL)
    f.seek(0)
    return f


def join(
    a: Iterable[T],
    b: Iterable[T],
    key_a: Key[T],
    key_b: Key[T],
    size: int,
    *,
    unique: bool = False,
) -> Iterator[tuple[str, Hashable, T, T | None]]:
    """(kind, coordinates, entry, B's entry or None) as two dicts would pair them (module docstring).

    `size`: about how many entries the larger side has (it picks the number of partitions).
    `unique`: the caller knows no coordinate occurs twice on a side (a run's jobs): then the
    leading entries that pair in step (two runs of one plan, in plan order) are paired as
    they come, and only the rest goes through the dicts or partitions.
    """
    if unique:
        it_a, it_b = iter(a), iter(b)
        for ea in it_a:
            ka = key_a(ea)
            if ka is None:
                continue
            head = _next_keyed(it_b, key_b)
            if head is not None and head[1] == ka:
                yield "pair", ka, ea, head[0]
                continue
            # Out of step: the rest (these two included) is paired in general. A coordinate
            # paired above occurs once on each side, so it cannot occur in the rest.
            rest_b = it_b if head is None else itertools.chain([head[0]], it_b)
            yield from join(itertools.chain([ea], it_a), rest_b, key_a, key_b, size)
            return
        yield from join((), it_b, key_a, key_b, size)
        return
    parts = -(-size // PART)
    if parts <= 1:
        yield from _in_memory(a, b, key_a, key_b)
        return
    files_a, files_b = _spread(a, key_a, parts), _spread(b, key_b, parts)
    runs_a: list[IO[bytes]] = []
    runs_b: list[IO[bytes]] = []
    for fa, fb in zip(files_a, files_b, strict=True):
        index_a: dict[Hashable, list[Any]] = {}  # coordinates → [first position, last entry]
        for position, k, e in _load(fa):
            seen = index_a.get(k)
            if seen is None:
                index_a[k] = [position, e]
            else:
                seen[1] = e
        index_b: dict[Hashable, list[Any]] = {}
        for position, k, e in _load(fb):
            seen = index_b.get(k)
            if seen is None:
                index_b[k] = [position, e]
            else:
                seen[1] = e
        out_a: list[tuple[int, str, Hashable, T, T | None]] = []
        for k, (position, ea) in index_a.items():
            found = index_b.get(k)
            if found is not None:
                out_a.append((position, "pair", k, ea, found[1]))
            else:
                out_a.append((position, "only_a", k, ea, None))
        out_b = [(p, "only_b", k, eb, None) for k, (p, eb) in index_b.items() if k not in index_a]
        runs_a.append(_sorted_run(out_a))
        runs_b.append(_sorted_run(out_b))
    for runs in (runs_a, runs_b):
        for _, kind, k, e, other in heapq.merge(*map(_load, runs), key=lambda item: item[0]):
            yield kind, k, e, other
