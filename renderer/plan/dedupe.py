"""Jobs that collapse into one (two cells sending the same input) found at plan scale, and the
passes that check every job once.
"""

from __future__ import annotations

from typing import Any

from renderer.plan.jobs import (
    Job,
    Who,
)
from renderer.plan.template import CellTemplate, cell_text, stem_prefix
from renderer.plan.translate import Translation
from renderer.plan.unique import Fingerprints


class Dedupe(Translation):
    """Jobs that collapse into one (two cells sending the same input) found at plan scale, and the"""

    # The check pass's memory (planner._check_pass sets them; freed when it ends).
    _cross: bool  # cells taken whole: jobs made one by one also record cell prefixes and texts
    _stems: Fingerprints
    _keys: Fingerprints
    _cell_prefixes: Fingerprints
    _cell_texts: Fingerprints
    _job_prefixes: Fingerprints
    _job_texts: Fingerprints
    _first_stem: dict[str, Job]
    _first_key: dict[str, Job]

    def _unique(self, job: Job, where: tuple[Any, ...], template: CellTemplate | None) -> bool:
        """No two jobs share an output path (ignoring case) or an input (it would be paid twice)."""
        folded = job.stem.lower()
        stem_fp, key_fp = hash(folded), int(job.key[3:19], 16)
        if not self._exact:
            # Every fingerprint is checked and recorded, suspect or not: a job set aside here
            # may be kept by the exact pass, and whatever repeats it must be suspect too.
            clean = True
            if self._cross:  # cells taken whole are known by prefix and cell text only
                prefix = stem_prefix(folded)
                text = (
                    template.text
                    if template is not None and job.stem.startswith(template.stem)
                    else cell_text(job)
                )
                # (Jobs made one by one share prefixes and texts within a cell: compared exactly below.)
                if prefix is not None:
                    clean &= self._record(
                        hash(prefix),
                        self._job_prefixes,
                        (self._cell_prefixes,),
                        self._suspect_prefixes,
                    )
                if text is not None:
                    clean &= self._record(
                        hash(text), self._job_texts, (self._cell_texts,), self._suspect_texts
                    )
            clean &= self._record(stem_fp, self._stems, (self._stems,), self._suspect_stems)
            clean &= self._record(key_fp, self._keys, (self._keys,), self._suspect_keys)
            return bool(clean)
        # The exact pass: only fingerprints seen twice need the values themselves.
        suspect_stem = not self.shortcuts or stem_fp in self._suspect_stems
        if not suspect_stem and self._suspect_prefixes:
            prefix = stem_prefix(folded)
            suspect_stem = prefix is not None and hash(prefix) in self._suspect_prefixes
        suspect_key = not self.shortcuts or key_fp in self._suspect_keys
        if not suspect_key and self._suspect_texts:
            text = (
                template.text
                if template is not None and job.stem.startswith(template.stem)
                else cell_text(job)
            )
            suspect_key = text is not None and hash(text) in self._suspect_texts
        clash = self._first_stem.get(folded) if suspect_stem else None
        if clash is not None:
            who = Who(job.endpoint, job.model, job.prompt_id, job.seed, job.axes)
            self.at(
                where,
                f"two jobs map to one output path {job.stem!r}: {clash.describe()} and {who}",
                allowed="give them a distinguishing axis, label or prompt id",
            )
            return False
        twin = self._first_key.get(job.key) if suspect_key else None
        if twin is not None:
            who = Who(job.endpoint, job.model, job.prompt_id, job.seed, job.axes)
            self.at(
                where, f"{who} sends exactly the input of {twin.describe()}; it would be paid twice"
            )
            return False
        if suspect_stem:
            self._first_stem[folded] = job
        if suspect_key:
            self._first_key[job.key] = job
        return True

    def _unique_cell(self, template: CellTemplate) -> bool:
        """`_unique` for a whole cell of distinct seeds: its paths share one prefix, its inputs one text.

        Nothing else can share a prefix or a text with it; when something does, the exact pass
        (which takes no cell whole) names the jobs.
        """
        prefix, text = hash(template.stem.lower()), hash(template.text)
        clean = self._record(
            prefix,
            self._cell_prefixes,
            (self._cell_prefixes, self._job_prefixes),
            self._suspect_prefixes,
        )
        return (
            self._record(
                text, self._cell_texts, (self._cell_texts, self._job_texts), self._suspect_texts
            )
            and clean
        )

    @staticmethod
    def _record(
        fp: int, into: Fingerprints, against: tuple[Fingerprints, ...], suspects: set[int]
    ) -> bool:
        """Add `fp` to `into`; False (and `fp` suspect) when one of `against` already holds it."""
        seen = any(fp in seen_in for seen_in in against)
        if seen:
            suspects.add(fp)
        into.add(fp)
        return not seen

    def _reset_suspects(self) -> None:
        self._suspect_stems: set[int] = set()
        self._suspect_keys: set[int] = set()
        self._suspect_prefixes: set[int] = set()
        self._suspect_texts: set[int] = set()
