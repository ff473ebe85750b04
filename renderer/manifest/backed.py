"""A large prompt file's texts read again from the file when they are needed, instead of held.

Ten million captions are ~750 MB of text; a table over BACKED_BYTES of text (a .txt, .jsonl or
.csv file, or a .parquet file's text column and kept columns) keeps, per row, only its
fingerprints (and line, id or tags where the file gives them) and reads the texts again, a block
or a batch at a time, each time the rows are read (the check pass reads none: plan/columns.py).
Kept columns (`keep:`) are read again with the texts, not held: they are often as large.

Invariant: the texts read again are the texts checked. The file's size, modification time and
inode are recorded when it has been read; each .txt, .jsonl or .csv block's CRC-32 too. Anything
different when it is read again is a ManifestError (the file changed under the run), never
another text.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.errors import ManifestError, Problem

if TYPE_CHECKING:
    from renderer.manifest.kept import Kept

# Files with more text than this are read again instead of held (a module attribute: tests set it).
BACKED_BYTES = 256 << 20


def txt_rows(text: str, before: int, comments: bool) -> tuple[list[int] | None, list[str]]:
    """(line numbers, or None when they are before+1, before+2, …; texts) of a .txt block: each
    line stripped is a prompt, but blank lines and, with `comments`, lines starting with '#'."""
    lines = (text[:-1] if text.endswith("\n") else text).split("\n")
    bodies = [line.strip() for line in lines]
    if all(bodies) and not (comments and any(b[0] == "#" for b in bodies)):
        return None, bodies  # every line a prompt
    kept = [
        (n, body)
        for n, body in enumerate(bodies, before + 1)
        if body and not (comments and body[0] == "#")
    ]
    return [n for n, _ in kept], [body for _, body in kept]


def _stamp(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns, info.st_ino


# (index of its first row, texts, kept values as Kept.row stores them or None) of a chunk of rows
Chunk = tuple[int, list[str], list[str] | None]


class Backing(ABC):
    """Where a table's texts are read again: `chunks` gives (first row, texts, kept values) in
    row order."""

    def __init__(self, path: Path, shown: str) -> None:
        self.path, self.shown = path, shown
        self.stamp: tuple[int, int, int] | None = None

    def done(self) -> None:
        """The file has been read whole: what it is now is what its rows were checked from."""
        self.stamp = _stamp(self.path)

    def _check(self, same: bool = True) -> None:
        try:
            now = _stamp(self.path)
        except OSError:
            now = None
        if not same or now != self.stamp:
            raise ManifestError(
                [
                    Problem(
                        self.shown,
                        1,
                        1,
                        "the prompt file changed (or is gone) since its prompts were checked",
                        allowed="leave prompt files alone while a command reads them; "
                        "run the command again",
                    )
                ]
            )

    @abstractmethod
    def chunks(self, start: int, stop: int, kept: Kept | None = None) -> Iterator[Chunk]:
        """(index of its first row, texts, kept values) of consecutive rows covering start..stop-1
        (the first chunk may begin before `start`), in order; the kept values (as Kept.row
        stores them) only when `kept` is given and the file has kept columns, else None."""


class TextBacking(Backing):
    """A .txt file's blocks: offset, length, CRC-32 and first row of each, as it was read."""

    def __init__(self, path: Path, shown: str, comments: bool) -> None:
        super().__init__(path, shown)
        self.comments = comments
        self.offsets, self.lengths = array("Q"), array("Q")
        self.befores, self.firsts = array("Q"), array("Q")
        self.crcs = array("L")

    def block(self, offset: int, before: int, raw: bytes, first: int) -> None:
        """One block as read: its byte offset, the lines before it, its bytes, its first row."""
        self.offsets.append(offset)
        self.lengths.append(len(raw))
        self.befores.append(before)
        self.firsts.append(first)
        self.crcs.append(zlib.crc32(raw))

    def chunks(self, start: int, stop: int, kept: Kept | None = None) -> Iterator[Chunk]:
        # A .txt line is only a prompt's text: nothing is kept (keep: is refused on .txt).
        self._check()
        at = max(bisect_right(self.firsts, start) - 1, 0)
        with self.path.open("rb") as handle:
            for i in range(at, len(self.offsets)):
                first = self.firsts[i]
                if first >= stop:
                    return
                handle.seek(self.offsets[i])
                raw = handle.read(self.lengths[i])
                if zlib.crc32(raw) != self.crcs[i]:
                    self._check(same=False)
                text = raw.decode("utf-8-sig" if self.offsets[i] == 0 else "utf-8")
                _, texts = txt_rows(text, self.befores[i], self.comments)
                yield first, texts, None


class ParquetBacking(Backing):
    """A .parquet file's text column (and kept columns, `kept_names`), read again a batch at a
    time: table row i is the file's row `line(i)` (1-based, increasing: the rows that were
    prompts)."""

    def __init__(
        self,
        path: Path,
        shown: str,
        column: str,
        line: Callable[[int], int],
        kept_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__(path, shown)
        self.column, self.line, self.kept_names = column, line, kept_names

    def chunks(self, start: int, stop: int, kept: Kept | None = None) -> Iterator[Chunk]:
        import pyarrow.parquet as pq

        names = self.kept_names if kept is not None else ()

        self._check()
        if start >= stop:
            return
        handle = pq.ParquetFile(self.path, buffer_size=1 << 20, pre_buffer=False)
        # Whole row groups before the first row wanted are skipped, not decoded.
        sizes = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
        group, row, wanted = 0, 0, self.line(start)
        while group < len(sizes) and row + sizes[group] < wanted:
            row += sizes[group]
            group += 1
        i = start
        batches = handle.iter_batches(
            columns=[self.column, *names], batch_size=16384, row_groups=range(group, len(sizes))
        )
        for batch in batches:
            if i >= stop:
                return
            n = batch.num_rows
            if self.line(i) > row + n:
                row += n
                continue
            values = batch.column(0).to_pylist()
            first, texts, at = i, [], []
            while i < stop and (number := self.line(i)) <= row + n:
                value = values[number - row - 1]
                if not isinstance(value, str):
                    self._check(same=False)
                texts.append(value)
                at.append(number - row - 1)
                i += 1
            row += n
            stored = None
            if kept is not None and names:
                # The kept values of the rows taken, stored as when the file was first read.
                columns = [batch.column(j).take(at).to_pylist() for j in range(1, len(names) + 1)]
                stored = kept.encode(columns)
            yield first, texts, stored
        if i < stop:
            self._check(same=False)


# (line, text, kept values in `keep:` order) of each record of a .jsonl or .csv file's text,
# given as (lines before, text) of consecutive blocks from one that starts a record.
Records = Callable[[Iterator[tuple[int, str]]], Iterator[tuple[int, Any, list[Any]]]]


class RowsBacking(Backing):
    """A .jsonl or .csv file's blocks as read (offset, length, CRC-32, lines before) and, for each
    block that starts a record, the table row it starts with: its rows are found again by their
    lines (table row i is the record at line `line(i)`; the file's other records, a header or a
    row that was not a prompt, are at no row's line)."""

    def __init__(
        self, path: Path, shown: str, line: Callable[[int], int], records: Records
    ) -> None:
        super().__init__(path, shown)
        self.line, self.records = line, records
        self.offsets, self.lengths, self.befores = array("Q"), array("Q"), array("Q")
        self.crcs = array("L")
        self.starts, self.firsts = array("Q"), array("Q")  # blocks that start a record

    def block(self, offset: int, before: int, raw: bytes, first: int | None) -> None:
        """One block as read: its byte offset, the lines before it, its bytes, and the table row
        of its first record (None: a record may run into it from the block before)."""
        if first is not None:
            self.starts.append(len(self.offsets))
            self.firsts.append(first)
        self.offsets.append(offset)
        self.lengths.append(len(raw))
        self.befores.append(before)
        self.crcs.append(zlib.crc32(raw))

    def _blocks(self, at: int) -> Iterator[tuple[int, str]]:
        with self.path.open("rb") as handle:
            for i in range(at, len(self.offsets)):
                handle.seek(self.offsets[i])
                raw = handle.read(self.lengths[i])
                if zlib.crc32(raw) != self.crcs[i]:
                    self._check(same=False)
                yield self.befores[i], raw.decode("utf-8-sig" if self.offsets[i] == 0 else "utf-8")

    def chunks(self, start: int, stop: int, kept: Kept | None = None) -> Iterator[Chunk]:
        self._check()
        if start >= stop or not self.starts:
            return
        at = max(bisect_right(self.firsts, start) - 1, 0)
        i = first = self.firsts[at]
        texts: list[str] = []
        values: list[list[Any]] = []
        wanted = self.line(i)
        for line, text, row in self.records(self._blocks(self.starts[at])):
            if line < wanted:
                continue  # not a prompt's record
            if line > wanted or not isinstance(text, str):
                self._check(same=False)
            texts.append(text)
            values.append(row)
            i += 1
            if i >= stop or len(texts) >= 8192:
                columns = list(map(list, zip(*values, strict=True)))
                yield first, texts, None if kept is None else kept.encode(columns)
                first, texts, values = i, [], []
                if i >= stop:
                    return
            wanted = self.line(i)
        self._check(same=False)  # rows the file no longer has
