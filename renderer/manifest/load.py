"""YAML manifest → a typed, structurally valid `Manifest`. Nothing here touches the network.

Every problem is located: YAML is composed into nodes first so each value keeps its
`line:col`, and a JSON path into the data. Structural problems (unknown keys, wrong types)
come from `schemas/manifest.schema.json`, the same schema editors use. All problems are
collected and raised together as one ManifestError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.errors import ManifestError, Problem
from renderer.manifest.checks import (
    numeric_settings,
    semantic_problems,
    structure_errors,
    structure_problems,
)
from renderer.manifest.hub import hub_prompts
from renderer.manifest.kept import axis_columns, keep_problems
from renderer.manifest.located import load_yaml
from renderer.manifest.sources import (
    MAX_MANIFEST_BYTES,
    duplicate_texts,
    prompt_file,
    read_text_file,
)
from renderer.manifest.table import Prompts, PromptTable
from renderer.manifest.templates import template_of
from renderer.manifest.types import (
    PROVIDERS,
    AccountConfig,
    HubSource,
    Limits,
    Manifest,
    Model,
    Prompt,
    ProviderConfig,
)
from renderer.manifest.variables import prompt_variants, read_sweep
from renderer.settings import RetryPolicy, is_remote

if TYPE_CHECKING:
    from renderer.manifest.located import Path_


# ---------------------------------------------------------------- YAML with locations


# ---------------------------------------------------------------- structure


# ---------------------------------------------------------------- values the schema cannot judge


# ---------------------------------------------------------------- the typed manifest


def _provider(raw: Any, numbers: dict[Path_, int | float]) -> ProviderConfig:
    if raw is None:
        return ProviderConfig()
    if isinstance(raw, str):
        raw = {"kind": raw}
    kind = raw.get("kind", "custom" if "url" in raw else "fal")
    url = raw.get("url", PROVIDERS.get(kind))
    accounts = tuple(
        AccountConfig(
            a.get("name", a["key_env"]),
            a["key_env"],
            int(numbers.get(("provider", "accounts", i, "concurrency"), AccountConfig.concurrency)),
            float(numbers[("provider", "accounts", i, "rate")])
            if ("provider", "accounts", i, "rate") in numbers
            else None,
        )
        for i, a in enumerate(raw.get("accounts", ()))
    )
    return ProviderConfig(
        kind,
        url,
        raw.get("auth", "Key"),
        raw.get("key_env", "FAL_KEY"),
        dict(raw.get("emulator", {})),
        accounts,
    )


def parse(text: str, file: Path, env: Mapping[str, str] | None = None) -> Manifest:
    """Structure-check a manifest and return it typed; raise ManifestError with every problem.

    `env`: the environment as the caller resolved it, read only for a `hub:` entry's HF_*
    settings (renderer/manifest/hub.py); None is an empty one (the Hub's defaults, no token).
    """
    doc = load_yaml(text, str(file))
    if not isinstance(doc.data, dict):
        raise ManifestError(
            [doc.problem((), "a manifest is a mapping with name, prompts, models and seeds")]
        )
    problems: list[Problem] = []
    for error in structure_errors(doc.data):
        problems.extend(structure_problems(doc, error))
    raw = doc.data
    numbers, found = numeric_settings(doc)
    problems += found
    provider = raw.get("provider")
    if (
        isinstance(provider, dict)
        and provider.get("kind", "custom" if "url" in provider else "fal") == "custom"
        and "url" not in provider
    ):
        problems.append(
            doc.problem(("provider",), "a custom provider needs a url", allowed="url: https://…")
        )
    if problems:
        raise ManifestError(problems)
    problems += semantic_problems(doc, file=file)
    if problems:
        raise ManifestError(problems)

    base = file.parent
    # Inline prompts in runs of a list each, prompt files as their tables: one sequence, in order.
    parts: list[Sequence[Prompt]] = []
    inline: list[Prompt] = []  # every inline prompt (only these may be templates)
    unread = 0  # prompts whose template could not be parsed
    files: list[tuple[int, dict[str, Any]]] = []  # read once the inline prompts' axes are known
    for i, item in enumerate(raw["prompts"]):
        if "file" in item or "hub" in item:
            files.append((i, item))
            parts.append(PromptTable("", ()))  # its place, filled below
        else:
            line, col = doc.where(("prompts", i))
            if not item["text"].strip():
                problems.append(
                    doc.problem(("prompts", i, "text"), f"prompt {item['id']!r} is only whitespace")
                )
                continue
            prompt = Prompt(
                item["id"],
                item["text"],
                dict(item.get("params", {})),
                tuple(item.get("tags", [])),
                (str(file), line, col),
                ("prompts", i),
            )
            # Inline prompts are templates; prompt files' rows are literal text.
            before = len(problems)
            prompt = template_of(doc, prompt, problems)
            unread += len(problems) > before
            inline.append(prompt)
            if not parts or isinstance(parts[-1], PromptTable):
                parts.append([])
            parts[-1].append(prompt)  # type: ignore[attr-defined]  # a list: the branch above
    axes = axis_columns(raw, inline) if any("keep" in item for _, item in files) else {}
    at = [n for n, part in enumerate(parts) if isinstance(part, PromptTable)]
    hub: list[HubSource] = []
    shards: dict[int, list[PromptTable]] = {}  # a `hub:` entry's place → a table per data file
    for n, (i, item) in zip(at, files, strict=True):
        wrong, keep = keep_problems(doc, i, item, axes)
        problems += wrong
        columns: dict[str, str] = {k: item[k] for k in ("text", "id", "tags") if k in item}
        if "hub" in item:
            shards[n], errs, source = hub_prompts(doc, i, item, keep, env or {})
            hub += [source] if source is not None else []
            problems.extend(p for p in errs if p.json_path not in {w.json_path for w in wrong})
            continue
        parts[n], errs = prompt_file(
            doc,
            base,
            i,
            item["file"],
            columns,
            bool(item.get("comments", True)),
            keep,
        )
        # A name refused above is not also "not in the file".
        refused = {p.json_path for p in wrong}
        problems.extend(p for p in errs if p.json_path not in refused)
    prompts = Prompts([t for n, p in enumerate(parts) for t in shards.get(n, [p])])
    models = []
    for i, item in enumerate(raw["models"]):
        item = {"endpoint": item} if isinstance(item, str) else item
        models.append(
            Model(
                item["endpoint"],
                item.get("label", item["endpoint"]),
                dict(item.get("params", {})),
                dict(item.get("axes", {})),
                bool(item.get("unchecked")),
                ("models", i),
            )
        )
    sweep = read_sweep(
        doc,
        base,
        inline,
        [*raw.get("axes", {}), *(a for m in models for a in m.axes)],
        unread=unread > 0,
    )
    problems += sweep.problems
    limits = raw.get("limits", {})
    manifest = Manifest(
        file=file,
        name=raw["name"],
        # Like the default outputs/, an explicit output is relative to the working directory.
        output=Path(
            "outputs" if is_remote(str(raw.get("output", ""))) else raw.get("output", "outputs")
        ),
        output_url=str(raw["output"]) if is_remote(str(raw.get("output", ""))) else None,
        state=raw.get("state"),
        provider=_provider(provider, numbers),
        limits=Limits(
            concurrency=int(numbers.get(("limits", "concurrency"), Limits.concurrency)),
            per_endpoint={
                e: int(numbers[("limits", "per_endpoint", e)])
                for e in limits.get("per_endpoint", {})
            },
            rate=float(numbers[("limits", "rate")]) if ("limits", "rate") in numbers else None,
            timeout=float(numbers.get(("limits", "timeout"), Limits.timeout)),
            outage=float(numbers.get(("limits", "outage"), Limits.outage)),
        ),
        retries=RetryPolicy(
            attempts=int(numbers.get(("retries", "attempts"), RetryPolicy.attempts)),
            backoff=float(numbers.get(("retries", "backoff"), RetryPolicy.backoff)),
            max_backoff=float(numbers.get(("retries", "max_backoff"), RetryPolicy.max_backoff)),
        ),
        budget=float(numbers[("budget",)]) if ("budget",) in numbers else None,
        license=raw.get("license"),
        layout=str(raw.get("layout", "auto")),
        prices=dict(raw.get("prices", {})),
        defaults=dict(raw.get("defaults", {})),
        prompts=prompts,
        models=tuple(models),
        seeds=raw["seeds"],
        axes=dict(raw.get("axes", {})),
        include=list(raw.get("include", [])),
        exclude=list(raw.get("exclude", [])),
        extra=list(raw.get("extra", [])),
        doc=doc,
        variables=sweep.variables,
        zips=sweep.zips,
        sample=sweep.sample,
        order=sweep.order,
        hub=tuple(hub),
    )
    shown = {
        str((base / item["file"]).resolve()): str(base / item["file"])
        for item in raw["prompts"]
        if "file" in item
    }
    problems += duplicate_texts(prompts, shown)  # duplicate ids are the planner's (check_names)
    if problems:
        raise ManifestError(problems)
    return manifest


def load(path: Path, env: Mapping[str, str] | None = None) -> Manifest:
    """The manifest file at `path`, parsed (`env`: as for `parse`)."""
    text, _ = read_text_file(path, "manifest", MAX_MANIFEST_BYTES)
    return parse(text, path, env)


# ---------------------------------------------------------------- plan size, before expansion

MAX_PLAN_JOBS = 10_000_000  # above this, `--max-plan-jobs` must say the user means it


def plan_size(manifest: Manifest) -> int:
    """An upper bound on the plan's job count, by arithmetic alone: nothing is expanded.

    Σ over prompts (the prompt's own variables, alternations and zip groups) × Σ over models
    (global axes × the model's axes × seeds), plus one per include entry (each extends
    combinations or adds exactly one) and one per extra entry; exclude only removes; `sample`
    keeps at most its count (× the exhaustive dimensions' sizes). Exact when there is no
    include, exclude or sample.
    """
    matrix = _points(manifest)
    sample = manifest.sample
    if sample is not None and sample.count is not None and not sample.exhaustive:
        matrix = min(matrix, sample.count)
    elif sample is not None and sample.fraction is not None and not sample.exhaustive:
        matrix = min(matrix, math.ceil(matrix * sample.fraction))
    return matrix + len(manifest.include) + len(manifest.extra)


def _points(manifest: Manifest) -> int:
    """The matrix's combinations before include, exclude and sample (a sample hashes every one)."""
    spec = manifest.seeds
    if isinstance(spec, list):
        seeds = len(set(spec))
    elif "random" in spec:
        seeds = spec["random"]
    else:
        seeds = spec["count"]
    shared = math.prod(len(v) for v in manifest.axes.values())
    per_model = sum(math.prod(len(v) for v in m.axes.values()) for m in manifest.models)
    variants = _variants(manifest)
    return variants * shared * per_model * seeds


def check_plan_size(manifest: Manifest, limit: int = MAX_PLAN_JOBS) -> int:
    """The bound from `plan_size`, or ManifestError (located at `seeds`) when it exceeds `limit`.

    With `sample:` the whole matrix counts: every one of its points is hashed to draw the sample.
    """
    size = bound = plan_size(manifest)
    if manifest.sample is not None:
        size = max(size, _points(manifest) + len(manifest.include) + len(manifest.extra))
    if size > limit:
        spec = manifest.seeds
        seeds = len(set(spec)) if isinstance(spec, list) else spec.get("random", spec.get("count"))
        axes = math.prod(len(v) for v in manifest.axes.values())
        variants = _variants(manifest)
        shown = (
            f"{len(manifest.prompts):,} prompts"
            if variants == len(manifest.prompts)
            else f"{variants:,} prompt variants"
        )
        raise ManifestError(
            [
                manifest.doc.problem(
                    ("seeds",),
                    (
                        f"this manifest's sample is drawn from {size:,} combinations, each hashed ("
                        if size > bound
                        else f"this manifest expands to up to {size:,} jobs ("
                    )
                    + f"{shown} × "
                    f"{len(manifest.models)} models × {seeds:,} seeds × {axes:,} axis combinations, "
                    "models' own axes aside); the limit is " + f"{limit:,}",
                    allowed="fewer prompts, seeds or axis values; or pass --max-plan-jobs N to go on",
                )
            ]
        )
    return bound


def _variants(manifest: Manifest) -> int:
    """Σ over prompts of their own cells: a literal prompt (every prompt file's row) makes the
    same number, counted once and multiplied."""
    prompts = manifest.prompts
    templated = list(prompts.templated()) if isinstance(prompts, Prompts) else list(prompts)
    literal = len(prompts) - len(templated)
    total = sum(prompt_variants(p, manifest.variables, manifest.zips) for p in templated)
    if literal:
        plain = Prompt("", "", {}, (), ("", 0, 0), ())
        total += literal * prompt_variants(plain, manifest.variables, manifest.zips)
    return total
