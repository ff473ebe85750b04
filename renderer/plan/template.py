"""The fast path of seed-heavy plans: one JSON template per cell, a job per seed by substitution
of a sentinel, checked once per cell instead of once per job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from renderer.canonical import canonical_json
from renderer.manifest.types import Model
from renderer.plan.jobs import SEED_MAX, SEED_MIN, Job, key_of_text

if TYPE_CHECKING:
    from renderer.plan.expand import Expansion


_SENTINEL = 7340031999999999991  # stands for the seed in a key's text; never a real seed (> 2**31)


_TOKEN = str(_SENTINEL)


def seed_ok(seed: Any) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool) and SEED_MIN <= seed <= SEED_MAX


def cell_text(job: Job) -> str | None:
    """The text `job_key` hashes, with the job's seed replaced by a token; None if ambiguous.

    Two jobs have equal keys exactly when their cell texts and seeds are equal: the seed sits
    at one fixed place of the canonical JSON (`input.seed`, or `sample` when it is not sent).
    """
    payload = dict(job.input)
    identity: dict[str, Any] = {"endpoint": job.endpoint, "input": payload}
    if job.seed_sent:
        payload["seed"] = _SENTINEL
    else:
        identity["sample"] = _SENTINEL
    text = canonical_json(identity)
    return text if text.count(_TOKEN) == 1 else None


def stem_prefix(stem: str) -> str | None:
    """`…/s` of a stem `…/s<digits>` (the part every seed of a cell shares); None otherwise.

    Segments hold no `/` and the seed part is digits only, so two stems are equal exactly
    when their prefixes and digits are: distinct prefixes mean distinct paths.
    """
    head, _, tail = stem.rpartition("/")
    if tail[:1] == "s" and tail[1:].isascii() and tail[1:].isdigit():
        return f"{head}/s"
    return None


@dataclass
class CellTemplate:
    """Jobs of one cell (same prompt, model, axes) that differ only by seed, made cheaply.

    Built from a job made the long way; each seed then costs a string join and one sha256.
    The key's text is the canonical JSON with the seed spliced in, the same bytes `job_key`
    hashes (a template whose splice would be ambiguous is not made).
    """

    planner: Expansion
    first: Job
    before: str
    after: str
    stem: str  # the stem without the seed's digits: `…/s`
    check_seed: bool
    text: str  # the cell text (see cell_text)

    @classmethod
    def of(cls, planner: Expansion, job: Job, model: Model) -> CellTemplate | None:
        if not isinstance(job.seed, int):
            return None
        text = cell_text(job)
        suffix = f"/s{job.seed}"
        if text is None or not job.stem.endswith(suffix):
            return None
        before, after = text.split(_TOKEN)
        made = cls(
            planner,
            job,
            before,
            after,
            job.stem[: -len(suffix) + 2],
            job.seed_sent and not model.unchecked and "seed" in job.input,
            text,
        )
        if made._key(job.seed) != job.key:
            return None
        return made

    def _key(self, seed: int) -> str:
        return key_of_text(f"{self.before}{seed}{self.after}")

    def make(self, n: int, seed: Any, check: bool) -> Job | None:
        """The job for `seed`, or None when it needs the long way (a problem to report)."""
        if not seed_ok(seed):
            return None
        j = self.first
        if check and self.check_seed:
            found = self.planner.seed_verdict(j.model, seed)
            if found is None or found:
                return None
        payload = dict(j.input)
        if j.seed_sent:
            payload["seed"] = seed
        return Job(
            n,
            self._key(seed),
            j.endpoint,
            j.model,
            j.prompt_id,
            seed,
            j.axes,
            payload,
            f"{self.stem}{seed}",
            j.num_images,
            j.tags,
            j.where,
            j.seed_sent,
        )


@dataclass(frozen=True, slots=True)
class CellBlock:
    """A whole cell, checked at once: the template's jobs for `seeds`, in order."""

    template: CellTemplate
    seeds: Sequence[Any]
