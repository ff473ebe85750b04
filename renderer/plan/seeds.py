"""A cell's seeds when the manifest says `random: N`: drawn from the job's identity on first use
(random_seed), the same on every machine and rerun.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import overload

from renderer.plan.jobs import (
    SEED_MAX,
    SEED_MIN,
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
            # random_seed's bytes, with the shared beginning hashed once.
            run, prompt_id, model = self._args
            start = hashlib.sha256(f"{run}\0{prompt_id}\0{model}\0".encode())
            values = []
            for n in range(self._count):
                h = start.copy()
                h.update(str(n).encode())
                values.append(
                    int.from_bytes(h.digest()[:8], "big") % (SEED_MAX - SEED_MIN + 1) + SEED_MIN
                )
            self._values = values
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
