"""The fast path of seed-heavy plans: one JSON template per cell, a job per seed by substitution
of a sentinel, checked once per cell instead of once per job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # the encoder json.dumps uses (ensure_ascii=False)
from typing import TYPE_CHECKING, Any

from renderer.canonical import canonical_json
from renderer.layout import bucket, segment_of
from renderer.manifest.types import Model, Prompt
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
            j.extra,
        )


@dataclass(frozen=True, slots=True)
class CellBlock:
    """A whole cell, checked at once: the template's jobs for `seeds`, in order."""

    template: CellTemplate
    seeds: Sequence[Any]


# Stands for the prompt text in a column's key text: the value position of "prompt" in the
# canonical JSON is fixed by the sorted keys, so any text splices in as its JSON string.
_PROMPT_TOKEN = "\u2063renderer-prompt-7340031\u2063"
_PROMPT_JSON = encode_basestring(_PROMPT_TOKEN)
MAX_COLUMNS = (
    4096  # columns kept per plan (random seeds make one per prompt: past this, the long way)
)


@dataclass
class PromptColumn:
    """Jobs that differ only by their literal prompt (same model, axes and seed), made cheaply.

    A caption set's jobs: one model and seed, a million texts. Built from a job made the long way
    with nothing to report; each further prompt then costs its text's JSON, one sha256 and a
    string join instead of assembling, checking and serialising its input. It applies only to
    prompts without params or a template (the input is then the same but for "prompt"), and
    checks each text against what the endpoint asks of a prompt (`check`, None: any string).
    """

    first: Job
    before: str
    after: str
    head: str  # the stem before the prompt's segment (model, and the bucket is added per prompt)
    tail: str  # the stem after it (axes, seed)
    sharded: bool
    check: Callable[[str], bool] | None

    @classmethod
    def of(
        cls, job: Job, check: Callable[[str], bool] | None, sharded: bool
    ) -> PromptColumn | None:
        payload = dict(job.input)
        payload["prompt"] = _PROMPT_TOKEN
        identity: dict[str, Any] = {"endpoint": job.endpoint, "input": payload}
        if not job.seed_sent:
            identity["sample"] = job.seed
        text = canonical_json(identity)
        if text.count(_PROMPT_JSON) != 1:
            return None
        before, after = text.split(_PROMPT_JSON)
        own = segment_of(job.prompt_id)
        head = job.stem.split("/", 1)[0] + "/"
        start = len(head) + (4 if sharded else 0)
        if job.stem[start : start + len(own)] != own:
            return None
        made = cls(job, before, after, head, job.stem[start + len(own) :], sharded, check)
        if made.key(job.input["prompt"]) != job.key or made.stem(job.prompt_id) != job.stem:
            return None
        return made

    def key(self, text: str) -> str:
        return key_of_text(f"{self.before}{encode_basestring(text)}{self.after}")

    def stem(self, prompt_id: str) -> str:
        own = segment_of(prompt_id)
        if self.sharded:
            return f"{self.head}{bucket(prompt_id)}/{own}{self.tail}"
        return f"{self.head}{own}{self.tail}"

    def make(self, n: int, prompt: Prompt, axes: dict[str, Any], check: bool) -> Job | None:
        """The job of `prompt` in this column, or None when it needs the long way (a problem)."""
        text = prompt.text
        if check and self.check is not None and not self.check(text):
            return None
        j = self.first
        payload = dict(j.input)
        payload["prompt"] = text
        return Job(
            n,
            self.key(text),
            j.endpoint,
            j.model,
            prompt.id,
            j.seed,
            axes,
            payload,
            self.stem(prompt.id),
            j.num_images,
            prompt.tags,
            f"{prompt.where[0]}:{prompt.where[1]}",
            j.seed_sent,
            prompt.extra,
        )
