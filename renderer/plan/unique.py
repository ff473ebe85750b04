"""Duplicate detection at plan scale: compact sets of 64-bit fingerprints and the tally of jobs
that collapse into one (two cells that send the same input are one job).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from renderer.plan.jobs import freeze

if TYPE_CHECKING:
    from renderer.plan.jobs import Job
    from renderer.plan.template import CellBlock


class Fingerprints:
    """A set of 64-bit fingerprints at ~8 bytes each (a Python set of ints costs ~70).

    Small sets are plain sets (65,536 empty buckets would cost ~4 MB); past SMALL members
    they move into 8-byte slots of 65,536 byte strings chosen by the low 16 bits, where a
    lookup is one C-level search of a short string.
    """

    SMALL = 50_000
    _MASK = 0xFFFFFFFFFFFFFFFF

    def __init__(self, buckets: int = 1 << 16) -> None:
        self._size = buckets
        self._small: set[int] | None = set()
        self.buckets: list[bytearray] = []

    def __contains__(self, fp: int) -> bool:
        if self._small is not None:
            return fp & self._MASK in self._small
        bucket = self.buckets[fp & 0xFFFF]
        item = (fp & self._MASK).to_bytes(8, "little")
        at = bucket.find(item)
        while at != -1:
            if at % 8 == 0:
                return True
            at = bucket.find(item, at + 1)
        return False

    def add(self, fp: int) -> None:
        if self._small is not None:
            self._small.add(fp & self._MASK)
            if len(self._small) > self.SMALL and self._size:
                small, self._small = self._small, None
                self.buckets = [bytearray() for _ in range(self._size)]
                for member in small:
                    self._add(member)
            return
        self._add(fp)

    def _add(self, fp: int) -> None:
        self.buckets[fp & 0xFFFF] += (fp & self._MASK).to_bytes(8, "little")


@dataclass
class Tally:
    """What the checking pass learns about the whole plan without keeping its jobs."""

    combos: int = 0
    jobs: int = 0
    images: int = 0
    by_model: dict[str, tuple[int, int]] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    digest: Any = field(default_factory=hashlib.sha256)
    axes: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # distinct axis values, first seen first
    _last_axes: Any = None

    def add(self, job: Job) -> None:
        if job.axes is not self._last_axes:  # once per cell: its jobs share one axes dict
            self._last_axes = job.axes
            self.axes.setdefault(freeze(job.axes), job.axes)
        self.jobs += 1
        self.images += job.num_images
        jobs, images = self.by_model.get(job.model, (0, 0))
        self.by_model[job.model] = (jobs + 1, images + job.num_images)
        self.digest.update(f"{job.key}\0{job.model}\0{job.where}\0{job.tags}\n".encode())

    def add_block(self, block: CellBlock, seeds: str) -> None:
        """A whole cell at once, without hashing a key: the digest takes the cell's own line.

        The cell text and the seeds (`seeds`: exactly which) determine every key of the cell,
        and a line starting `cell ` is never a key's (`j1-…`): different plans, different digests.
        """
        job, count = block.template.first, len(block.seeds)
        if job.axes is not self._last_axes:
            self._last_axes = job.axes
            self.axes.setdefault(freeze(job.axes), job.axes)
        self.jobs += count
        self.images += job.num_images * count
        jobs, images = self.by_model.get(job.model, (0, 0))
        self.by_model[job.model] = (jobs + count, images + job.num_images * count)
        self.digest.update(
            f"cell {block.template.text}\0{seeds}\0{job.model}\0{job.where}\0{job.tags}\n".encode()
        )
