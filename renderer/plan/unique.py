"""Duplicate detection at plan scale: compact sets of 64-bit fingerprints and the tally of jobs
that collapse into one (two cells that send the same input are one job).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from renderer.manifest.table import Fingerprints
from renderer.plan.jobs import freeze

__all__ = ["Fingerprints", "Tally"]

if TYPE_CHECKING:
    from renderer.plan.jobs import Job
    from renderer.plan.template import CellBlock


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
        line = f"{job.key}\0{job.model}\0{job.where}\0{job.tags}"
        # Kept values are added only where there are some: a plan without `keep:` keeps its digest.
        self.digest.update(
            f"{line}\n".encode() if job.extra is None else f"{line}\0{job.extra}\n".encode()
        )

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
        line = f"cell {block.template.text}\0{seeds}\0{job.model}\0{job.where}\0{job.tags}"
        self.digest.update(
            f"{line}\n".encode() if job.extra is None else f"{line}\0{job.extra}\n".encode()
        )
