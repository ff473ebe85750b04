"""A prompt file's rows held compactly, the manifest's prompts as one sequence, and compact sets
of 64-bit fingerprints (duplicates found at a million prompts or ten million jobs).

A million captions as Prompt objects cost ~600 bytes each; here a row costs its text and id as
UTF-8 in two shared buffers, three 8-byte offsets, and nothing more unless it has params or
tags. Prompt objects are made on demand, in file order, each time the rows are read.
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate, chain, pairwise
from typing import TYPE_CHECKING, Any, overload

from renderer.manifest.types import Prompt

if TYPE_CHECKING:
    from renderer.manifest.backed import Backing
    from renderer.manifest.kept import Kept
    from renderer.manifest.located import Path_


_sha256 = hashlib.sha256
_SEPARATORS = bytes(c if 48 <= c <= 57 or 97 <= c <= 122 else 32 for c in range(256))
_NO_PARAMS: dict[
    str, Any
] = {}  # shared by every row without params: nothing writes to a prompt's params


def text_id(body: str) -> str:
    """An id derived from a prompt's text: its first words and 48 bits of its hash.

    Stable on rerun and independent of every other row (inserting a row renames no prompt);
    distinct texts collide with odds of ~1 in 500 at a million prompts sharing their first
    words (24 bits collided ~12 times in 20,000). The words are the first four runs of
    [a-z0-9] in the lower-cased text, joined by '-' and cut at 40 characters.
    """
    lowered = body.lower()
    # Every byte but a-z and 0-9 (UTF-8's multi-byte characters included) separates words.
    words = lowered[:80].encode().translate(_SEPARATORS).split(None, 4)
    if len(words) < 5:  # the fourth word may run past the 80 characters looked at
        words = lowered.encode().translate(_SEPARATORS).split()
    pid = b"-".join(words[:4])[:40].decode() + "-" + hashlib.sha256(body.encode()).hexdigest()[:12]
    return pid.lstrip("-")


_HEX12 = re.compile(r"[0-9a-f]{12}")


def id_fingerprint(pid: str) -> int:
    """A 64-bit fingerprint of a prompt id ignoring case: ids equal but for case give equal ones.

    An id ending in 12 hex digits is fingerprinted by those digits: for an id derived from its
    text (text_id) they are the first 48 bits of the text's sha256, so a caption's id need not be
    made to be compared (see PromptTable.add_caption). Any other id by its folded text's hash.
    """
    folded = pid.lower()
    tail = folded[-12:]
    if len(tail) == 12 and _HEX12.fullmatch(tail):
        return int(tail, 16)
    return hash(folded) & Fingerprints.MASK


def parts_log(
    parts: Sequence[Sequence[Prompt]],
    of_table: Callable[[PromptTable], FingerprintLog],
    of_prompt: Callable[[Prompt], int],
) -> FingerprintLog:
    """One log of the prompts' fingerprints: a table's own log (`of_table`, taken as its file was
    read), not copied when it is the only part; else a new log of every part's."""
    if len(parts) == 1 and isinstance(parts[0], PromptTable):
        return of_table(parts[0])
    log = FingerprintLog()
    for part in parts:
        if isinstance(part, PromptTable):
            log.extend(of_table(part))
        else:
            log.extend_values(of_prompt(p) & Fingerprints.MASK for p in part)
    return log


class Fingerprints:
    """A set of 64-bit fingerprints at ~8 bytes each (a Python set of ints costs ~70).

    Small sets are plain sets (65,536 empty buckets would cost ~4 MB); past SMALL members
    they move into 8-byte slots of 65,536 byte strings chosen by the low 16 bits, where a
    lookup is one C-level search of a short string.
    """

    SMALL = 50_000
    MASK = 0xFFFFFFFFFFFFFFFF

    def __init__(self, buckets: int = 1 << 16) -> None:
        self._size = buckets
        self._small: set[int] | None = set()
        self.buckets: list[bytearray] = []

    def __contains__(self, fp: int) -> bool:
        if self._small is not None:
            return fp & self.MASK in self._small
        bucket = self.buckets[fp & 0xFFFF]
        item = (fp & self.MASK).to_bytes(8, "little")
        at = bucket.find(item)
        while at != -1:
            if at % 8 == 0:
                return True
            at = bucket.find(item, at + 1)
        return False

    def add(self, fp: int) -> None:
        if self._small is not None:
            self._small.add(fp & self.MASK)
            if len(self._small) > self.SMALL and self._size:
                small, self._small = self._small, None
                self.buckets = [bytearray() for _ in range(self._size)]
                for member in small:
                    self._add(member)
            return
        self._add(fp)

    def _add(self, fp: int) -> None:
        self.buckets[fp & 0xFFFF] += (fp & self.MASK).to_bytes(8, "little")


SMALL_LOG = 200_000  # a log up to this size is compared in Python; a larger one with numpy


class FingerprintLog:
    """64-bit fingerprints appended at 8 bytes each and compared once, at the end, by sorting.

    For a pass that only needs to know, afterwards, which fingerprints came more than once:
    an append is far cheaper than a lookup in `Fingerprints`.
    """

    __slots__ = ("_repeated", "_values")

    def __init__(self) -> None:
        self._values = array("Q")
        # repeated()'s answer, kept until the next append: the load and the check pass both ask
        # (a sort of 8 MB at a million captions each time).
        self._repeated: set[int] | None = None

    def add(self, fp: int) -> None:
        self._values.append(fp & Fingerprints.MASK)
        self._repeated = None

    def extend(self, other: FingerprintLog) -> None:
        self._values.extend(other._values)
        self._repeated = None

    def extend_values(self, values: Iterable[int] | Any) -> None:
        """Each of `values` added (each already in 0 .. 2**64-1): ints, or a numpy uint64 array
        (its bytes appended, no Python int made)."""
        if hasattr(values, "tobytes"):
            self._values.frombytes(values.tobytes())
        else:
            self._values.extend(values)
        self._repeated = None

    def __len__(self) -> int:
        return len(self._values)

    def _sorted(self) -> Any:
        import numpy as np  # only here: importing the manifest stage stays light

        values = np.frombuffer(self._values, dtype=np.uint64) if self._values else None
        return np.sort(values) if values is not None else np.zeros(0, dtype=np.uint64)

    def repeated(self) -> set[int]:
        """The fingerprints added more than once (a new set each call)."""
        if self._repeated is None:
            if len(self._values) <= SMALL_LOG:  # not worth importing numpy for
                ordered = sorted(self._values)
                self._repeated = {a for a, b in pairwise(ordered) if a == b}
            else:
                values = self._sorted()
                self._repeated = set(values[1:][values[1:] == values[:-1]].tolist())
        return set(self._repeated)

    def common(self, other: FingerprintLog) -> set[int]:
        """The fingerprints added both here and to `other`."""
        if len(self._values) + len(other._values) <= SMALL_LOG:
            return set(self._values) & set(other._values)
        import numpy as np

        return set(np.intersect1d(self._sorted(), other._sorted()).tolist())


def text_fingerprint(text: str, params: dict[str, Any]) -> int:
    """What two prompts share when they would send the same input: text and params (this process).

    Without params, bytes 8-15 of the text's sha256: the hash a caption's id is made from gives
    both its id's fingerprint (bytes 0-5) and its text's (see PromptTable.add_captions).
    """
    if not params:
        return int.from_bytes(_sha256(text.encode()).digest()[8:16], "big")
    return hash((text, json.dumps(params, sort_keys=True, default=str)))


# A batch of captions at least this large has its fingerprints taken from its hashes by numpy.
_NUMPY_BATCH = 4096


def caption_fingerprints(encoded: Sequence[bytes]) -> tuple[Iterable[int], Iterable[int]]:
    """(text fingerprints, id fingerprints) of captions given as UTF-8: text_fingerprint(text, {})
    and the fingerprint of text_id(text) (id_fingerprint), from one sha256 each."""
    sha = _sha256
    if len(encoded) < _NUMPY_BATCH:
        digests = [sha(e).digest() for e in encoded]
        number = int.from_bytes
        return [number(d[8:16], "big") for d in digests], [number(d[:6], "big") for d in digests]
    import numpy as np  # only for large batches: importing the manifest stage stays light

    raw = np.frombuffer(b"".join([sha(e).digest() for e in encoded]), dtype=np.uint8)
    raw = raw.reshape(len(encoded), 32)
    texts = raw[:, 8:16].copy().view(">u8").astype(np.uint64).ravel()
    ids = np.zeros((len(encoded), 8), dtype=np.uint8)
    ids[:, 2:] = raw[:, :6]  # 48 bits, big-endian, in 8 bytes
    # Native uint64 arrays (FingerprintLog.extend_values takes their bytes); iterating one gives
    # the same numbers as the lists above.
    return texts, ids.view(">u8").astype(np.uint64).ravel()


# A Prompt made without its dataclass __init__ (which sets each field through the frozen
# class's guard): rows are made a million at a time. Same fields, same object.
_new = object.__new__
_id, _text, _params, _tags, _where, _path, _template, _extra = (
    getattr(Prompt, name).__set__ for name in Prompt.__dataclass_fields__
)


def _prompt(
    pid: str, text: str, params: Any, tags: Any, where: Any, path: Any, extra: str | None = None
) -> Prompt:
    p = _new(Prompt)
    _id(p, pid)
    _text(p, text)
    _params(p, params)
    _tags(p, tags)
    _where(p, where)
    _path(p, path)
    _template(p, None)
    _extra(p, extra)
    return p


def _position(index: int, size: int) -> int:
    """A sequence index (negative from the end) as a position in 0..size-1; IndexError outside."""
    position = index + size if index < 0 else index
    if not 0 <= position < size:
        raise IndexError("prompt index out of range")
    return position


class PromptTable(Sequence[Prompt]):
    """The prompts of one prompt file, in file order: `where` is (file, line or row, 1).

    A row whose id is derived from its text (a caption set's) stores no id: it is made again by
    text_id whenever the row is read, and compared by its fingerprint (id_fingerprint), which
    is 48 bits of the sha256 the id is made from.
    """

    __slots__ = (
        "_backing",
        "_count",
        "_ends",
        "_extra_ends",
        "_extras",
        "_id_ends",
        "_ids",
        "_lines",
        "_more",
        "_shift",
        "_texts",
        "file",
        "folded_ids",
        "kept",
        "path",
        "texts_params",
        "with_params",
    )

    def __init__(self, file: str, path: Path_, kept: Kept | None = None) -> None:
        self.file = file
        self.path = path
        self._count = 0
        # The texts as UTF-8 and each row's end in it; or, for a large file, read again from it.
        self._texts = bytearray()
        self._ends = array("Q")
        self._backing: Backing | None = None
        # The kept columns (`keep:`): each row's values as one text (kept.py) in a shared buffer
        # and its end in it; or, for a large file, read again from it with the texts.
        self.kept = kept
        self._extras = bytearray()
        self._extra_ends = array("Q")
        # Ids given by the file (an empty one: derived from the text); None while none was given.
        self._ids = bytearray()
        self._id_ends: array[int] | None = None
        # None while row i is at line i + 1 + _shift (a CSV's rows start after its header).
        self._lines: array[int] | None = None
        self._shift = 0
        self._more: dict[int, tuple[dict[str, Any], tuple[str, ...]]] = {}  # params, tags
        self.with_params = False  # some row has params (its input is not its column's)
        # Taken as rows are added (the strings are at hand then): repeated texts and ids are
        # found from these without reading the rows again (see text_fingerprint, id_fingerprint).
        self.texts_params = FingerprintLog()
        self.folded_ids = FingerprintLog()

    def back(self, backing: Backing) -> None:
        """Keep no text (nor kept values) from here on: the rows' texts and kept values are read
        again from `backing` (backed.py). Called before any row is added."""
        self._backing = backing

    def _add_lines(self, first: int, lines: Sequence[int] | None, count: int) -> None:
        """Record the lines of `count` rows being added: `lines`, or first, first+1, …"""
        if self._lines is None:
            start = (lines[0] if lines else first) if count else 0
            if not self._count and count:
                self._shift = start - 1  # the first rows set where row 0 is
            at = self._count + 1 + self._shift
            if lines and lines[0] == at and lines[-1] == at + count - 1:
                return  # lines increase (every caller's do): these are row + 1 + shift still
            if lines is None and first == at:
                return
            self._lines = array("Q", range(1 + self._shift, self._count + 1 + self._shift))
        self._lines.extend(range(first, first + count) if lines is None else lines)

    def _store(self, encoded: list[bytes], extras: Sequence[str] | None = None) -> None:
        """The texts and kept values (`extras`, as Kept.row stores them) of rows being added
        (nothing, when they are read again from the file)."""
        if self._backing is None:
            ends = accumulate(map(len, encoded), initial=len(self._texts))
            next(ends)
            self._ends.extend(ends)
            self._texts += b"".join(encoded)
            if self.kept is not None:
                # Every row has its values, or the offsets would not line up.
                if extras is None or len(extras) != len(encoded):
                    raise ValueError("each row of a table with kept columns needs its kept values")
                values = [e.encode() for e in extras]
                extra_ends = accumulate(map(len, values), initial=len(self._extras))
                next(extra_ends)
                self._extra_ends.extend(extra_ends)
                self._extras += b"".join(values)
        if self._id_ends is not None:
            self._id_ends.extend([len(self._ids)] * len(encoded))
        self._count += len(encoded)

    def add(
        self,
        line: int,
        pid: str,
        text: str,
        params: dict[str, Any] | None = None,
        tags: tuple[str, ...] = (),
        extra: str | None = None,
    ) -> None:
        """One row; an empty `pid` means the id is derived from the text (text_id). `extra` is
        its kept values as Kept.row stores them (a table with kept columns only)."""
        if params or tags:
            self._more[self._count] = (params or _NO_PARAMS, tags)
            self.with_params = self.with_params or bool(params)
        if not pid and not params and not tags:
            self.add_caption(line, text, extra)
            return
        self.texts_params.add(text_fingerprint(text, params or _NO_PARAMS))
        encoded = text.encode()
        self._add_lines(line, None, 1)
        if pid:
            if self._id_ends is None:  # the rows before this one derive theirs
                self._id_ends = array("Q", bytes(8 * self._count))
            self._ids += pid.encode()
            self._id_ends.append(len(self._ids))
            self.folded_ids.add(id_fingerprint(pid))
            ids, self._id_ends = self._id_ends, None  # stored: _store adds no "" for it
            self._store([encoded], None if extra is None else [extra])
            self._id_ends = ids
        else:
            self.folded_ids.add(int.from_bytes(_sha256(encoded).digest()[:6], "big"))
            self._store([encoded], None if extra is None else [extra])

    def add_caption(self, line: int, text: str, extra: str | None = None) -> None:
        """A row of text alone (no params or tags), its id derived from the text: add(line, "", text).

        The id's fingerprint is the first 48 bits of sha256(text), which id_fingerprint finds
        in the id text_id makes (its last 12 hex digits): equal for equal ids.
        """
        encoded = text.encode()
        digest = _sha256(encoded).digest()
        self.texts_params.add(int.from_bytes(digest[8:16], "big"))  # text_fingerprint(text, {})
        self.folded_ids.add(int.from_bytes(digest[:6], "big"))
        self._add_lines(line, None, 1)
        self._store([encoded], None if extra is None else [extra])

    def add_captions(
        self,
        first: int,
        lines: Sequence[int] | None,
        texts: Sequence[str],
        extras: Sequence[str] | None = None,
    ) -> None:
        """add_caption for each of `texts` (and `extras`, with kept columns) at once: the lines
        are `lines` (increasing), or first, first+1, …

        The same table as one add_caption a row, with the per-row work in a few comprehensions.
        """
        if not texts:
            return
        encoded = [t.encode() for t in texts]
        text_fps, id_fps = caption_fingerprints(encoded)
        self.texts_params.extend_values(text_fps)
        self.folded_ids.extend_values(id_fps)
        self._add_lines(first, lines, len(texts))
        self._store(encoded, extras)

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Prompt: ...
    @overload
    def __getitem__(self, index: slice) -> list[Prompt]: ...
    def __getitem__(self, index: int | slice) -> Prompt | list[Prompt]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = _position(index, len(self))
        return next(self._rows(index, index + 1))

    def __iter__(self) -> Iterator[Prompt]:
        return self._rows(0, len(self))

    def line(self, index: int) -> int:
        """The line (or row number) of row `index`."""
        return index + 1 + self._shift if self._lines is None else self._lines[index]

    def _line_numbers(self, rows: range) -> Sequence[int]:
        if self._lines is None:
            return range(rows.start + 1 + self._shift, rows.stop + 1 + self._shift)
        return self._lines[rows.start : rows.stop]

    def _rows(self, start: int, stop: int) -> Iterator[Prompt]:
        more, file, path = self._more, self.file, self.path
        ids = self._each_id(start, stop)
        for texts, extras, rows in self._chunks(start, stop):
            lines = self._line_numbers(rows)
            for i, text, line, extra in zip(rows, texts, lines, extras, strict=True):
                params, tags = more.get(i, (_NO_PARAMS, ()))
                pid = next(ids)
                yield _prompt(
                    pid or text_id(text), text, params, tags, (file, line, 1), path, extra
                )

    def _each_id(self, start: int, stop: int) -> Iterator[str]:
        """The ids the file gave rows start..stop-1, in order ("" for a row whose id is derived)."""
        id_ends = self._id_ends
        if id_ends is None:
            for _ in range(start, stop):
                yield ""
            return
        ids = self._ids
        id_at = id_ends[start - 1] if start else 0
        for i in range(start, stop):
            id_end = id_ends[i]
            yield ids[id_at:id_end].decode()
            id_at = id_end

    def ids(self) -> Iterator[str]:
        """Each row's id, in order, without making prompts."""
        for pid, text in zip(self._each_id(0, len(self)), self.texts(), strict=True):
            yield pid or text_id(text)

    def given_ids(self) -> Iterator[str]:
        """The ids the file gave (not the ones derived from text), in order."""
        if self._id_ends is None:  # none given: no row to look at
            return iter(())
        return (pid for pid in self._each_id(0, len(self)) if pid)

    def texts(self) -> Iterator[str]:
        """Each row's text, in order, without making prompts."""
        for texts, _, _ in self._chunks(values=False):
            yield from texts

    def _chunks(
        self, start: int = 0, stop: int | None = None, size: int = 8192, values: bool = True
    ) -> Iterator[tuple[list[str], list[str | None], range]]:
        """(texts, kept values (Prompt.extra) each, their row numbers) of rows start..stop-1, a
        chunk at a time, in order; the values are None without kept columns, or `values` False."""
        stop = self._count if stop is None else stop
        kept = self.kept if values else None
        if self._backing is not None:
            for first, texts, stored in self._backing.chunks(start, stop, kept):
                low, high = max(start, first), min(stop, first + len(texts))
                if low < high:
                    yield (
                        texts[low - first : high - first],
                        _extras(kept, stored, low - first, high - first),
                        range(low, high),
                    )
            return
        for low in range(start, stop, size):
            high = min(low + size, stop)
            texts = _slices(self._texts, self._ends, low, high)
            stored = None if kept is None else _slices(self._extras, self._extra_ends, low, high)
            yield texts, _extras(kept, stored, 0, high - low), range(low, high)

    def literal_rows(
        self,
    ) -> Iterator[tuple[list[str], list[str], list[tuple[str, ...]], list[str | None]]]:
        """(texts, "file:line" each, tags each, kept values each) of the rows, a chunk at a time,
        in order: what a job takes from its prompt besides the id (the plan's digest is made of
        these)."""
        more, file = self._more, self.file
        for texts, extras, rows in self._chunks():
            wheres = [f"{file}:{line}" for line in self._line_numbers(rows)]
            none: tuple[str, ...] = ()
            tags = [more[i][1] if i in more else none for i in rows] if more else [none] * len(rows)
            yield texts, wheres, tags, extras


def _slices(buffer: bytearray, ends: array[int], low: int, high: int) -> list[str]:
    """The texts of rows low..high-1 of a shared UTF-8 buffer and its rows' ends."""
    at = ends[low - 1] if low else 0
    chunk = buffer[at : ends[high - 1]].decode()
    bounds = [e - at for e in ends[low:high]]
    if chunk.isascii():  # byte offsets are character offsets: one decode for the chunk
        return [chunk[a:b] for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]
    raw = buffer[at : ends[high - 1]]
    return [raw[a:b].decode() for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]


def _extras(kept: Kept | None, stored: list[str] | None, low: int, high: int) -> list[str | None]:
    """Prompt.extra of rows low..high-1 of a chunk's stored kept values (None each: none kept)."""
    if kept is None or stored is None:
        return [None] * (high - low)
    text = kept.text
    return [text(values) for values in stored[low:high]]


class Prompts(Sequence[Prompt]):
    """The manifest's prompts in order: inline prompts and prompt files' tables, chained."""

    __slots__ = ("_parts", "_starts", "_total")

    def __init__(self, parts: Sequence[Sequence[Prompt]]) -> None:
        self._parts = tuple(p for p in parts if len(p))
        self._starts: list[int] = []
        total = 0
        for part in self._parts:
            self._starts.append(total)
            total += len(part)
        self._total = total

    @property
    def parts(self) -> tuple[Sequence[Prompt], ...]:
        return self._parts

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[Prompt]:
        return chain.from_iterable(self._parts)

    @overload
    def __getitem__(self, index: int) -> Prompt: ...
    @overload
    def __getitem__(self, index: slice) -> list[Prompt]: ...
    def __getitem__(self, index: int | slice) -> Prompt | list[Prompt]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = _position(index, self._total)
        for start, part in zip(reversed(self._starts), reversed(self._parts), strict=True):
            if index >= start:
                return part[index - start]
        raise IndexError("prompt index out of range")  # unreachable: index >= 0 = starts[0]

    def templated(self) -> Iterator[Prompt]:
        """The prompts that may have a template: inline ones (a file's rows are literal text)."""
        for part in self._parts:
            if not isinstance(part, PromptTable):
                yield from part

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"<{self._total} prompts>"
