"""A cell's seeds when the manifest says `random: N`: drawn from the job's identity on first use
(random_seed), the same on every machine and rerun.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

from renderer.plan.jobs import (
    seed_hash,
    seed_of,
)


class RandomSeeds(Sequence[int]):
    """A cell's `random: N` seeds, drawn on first use: counting a cell needs none of them.

    Every one is in SEED_MIN…SEED_MAX by construction (they may repeat, rarely).
    """

    __slots__ = ("_args", "_count", "_values")

    def __init__(self, run: str, prompt_id: str, model: str, count: int) -> None:
        self._args = (run, prompt_id, model)
        self._count = count
        self._values: list[int] | None = None

    def _drawn(self) -> list[int]:
        if self._values is None:
            # random_seed's numbers, with the shared beginning hashed once.
            start = seed_hash(*self._args)
            self._values = [seed_of(start, n) for n in range(self._count)]
        return self._values

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        return iter(self._drawn())

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        return self._drawn()[index]
