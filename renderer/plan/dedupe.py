"""Jobs that collapse into one (two cells sending the same input) found at plan scale, and the
passes that check every job once.
"""

from __future__ import annotations

from typing import Any

from renderer.manifest.table import FingerprintLog, Fingerprints
from renderer.plan.jobs import (
    Job,
    Who,
)
from renderer.plan.template import CellTemplate, cell_text, stem_prefix
from renderer.plan.translate import Translation

MASK = Fingerprints.MASK


class Dedupe(Translation):
    """Jobs that collapse into one (two cells sending the same input) found at plan scale, and the"""

    # The check pass's memory (planner._check_pass sets them; freed when it ends).
    _cross: bool  # cells taken whole: jobs made one by one also record cell prefixes and texts
    # Logged in the first pass, compared when it ends (`_find_suspects`).
    _stems: FingerprintLog
    _keys: FingerprintLog
    _cell_prefixes: FingerprintLog
    _cell_texts: FingerprintLog
    _job_prefixes: FingerprintLog
    _job_texts: FingerprintLog
    _suspect_stems: set[int]
    _suspect_keys: set[int]
    _suspect_prefixes: set[int]
    _suspect_texts: set[int]
    _first_stem: dict[str, Job]
    _first_key: dict[str, Job]

    def _unique(self, job: Job, where: tuple[Any, ...], template: CellTemplate | None) -> bool:
        """No two jobs share an output path (ignoring case) or an input (it would be paid twice)."""
        folded = job.stem.lower()
        stem_fp, key_fp = hash(folded) & MASK, int(job.key[3:19], 16)
        if not self._exact:
            # Every fingerprint is logged; the pass's end finds which came twice (suspects),
            # and any suspect means the exact pass, which names the jobs.
            if self._cross:  # cells taken whole are known by prefix and cell text only
                prefix = stem_prefix(folded)
                text = (
                    template.text
                    if template is not None and job.stem.startswith(template.stem)
                    else cell_text(job)
                )
                # (Jobs made one by one share prefixes and texts within a cell: compared exactly below.)
                if prefix is not None:
                    self._job_prefixes.add(hash(prefix))
                if text is not None:
                    self._job_texts.add(hash(text))
            self._stems.add(stem_fp)
            self._keys.add(key_fp)
            return True
        # The exact pass: only fingerprints seen twice need the values themselves.
        suspect_stem = not self.shortcuts or stem_fp in self._suspect_stems
        if not suspect_stem and self._suspect_prefixes:
            prefix = stem_prefix(folded)
            suspect_stem = prefix is not None and hash(prefix) & MASK in self._suspect_prefixes
        suspect_key = not self.shortcuts or key_fp in self._suspect_keys
        if not suspect_key and self._suspect_texts:
            text = (
                template.text
                if template is not None and job.stem.startswith(template.stem)
                else cell_text(job)
            )
            suspect_key = text is not None and hash(text) & MASK in self._suspect_texts
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
        self._cell_prefixes.add(hash(template.stem.lower()))
        self._cell_texts.add(hash(template.text))
        return True

    def _find_suspects(self) -> None:
        """After the first pass: the fingerprints that came twice. A cell's prefix or text is
        suspect when another cell's, or a job's made one by one, is the same (jobs of one cell
        share theirs: the exact pass compares those); a stem or key when any other is."""
        self._suspect_stems = self._stems.repeated()
        self._suspect_keys = self._keys.repeated()
        self._suspect_prefixes = self._cell_prefixes.repeated() | self._cell_prefixes.common(
            self._job_prefixes
        )
        self._suspect_texts = self._cell_texts.repeated() | self._cell_texts.common(self._job_texts)

    def _reset_suspects(self) -> None:
        self._suspect_stems = set()
        self._suspect_keys = set()
        self._suspect_prefixes = set()
        self._suspect_texts = set()
