"""Commands that read manifests and send nothing: `validate` and `plan`; and what `run` and
`finalize` share with them: planning every manifest (`load_plans`) and checking the output
directory (`check_output`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from renderer.cli.context import Context, table
from renderer.errors import ManifestError, Problem, StateError, UsageError
from renderer.layout import DB_NAME, LAYOUT_META
from renderer.manifest import load as manifest_mod
from renderer.plan import planner as plan_mod
from renderer.plan.jobs import job_keys
from renderer.state import read_store


def recorded_layout(run_dir: Path) -> str | None:
    """The layout a run on this machine was started with (plan paths then name where the run
    really writes); None when there is no run yet."""
    if not (run_dir / DB_NAME).is_file():
        return None
    try:
        with read_store(run_dir) as store:
            return store.meta(LAYOUT_META)
    except (StateError, sqlite3.Error):
        return None  # `run` reports a damaged state; the plan is the manifest's own


def load_plans(ctx: Context, paths: list[str]) -> list[plan_mod.Plan]:
    """Plan every manifest; collect all problems across all of them before failing.

    The plan's size is bounded by arithmetic first, so an enormous manifest is refused
    before a single job is expanded.
    """
    registry = ctx.registry()
    limit = getattr(ctx.args, "max_plan_jobs", None) or manifest_mod.MAX_PLAN_JOBS
    plans, problems = [], []
    for name in paths:
        try:
            manifest = manifest_mod.load(Path(name), ctx.env)  # HF_* for `hub:` entries
            manifest_mod.check_plan_size(manifest, limit)
            if not getattr(ctx.args, "output", None):
                check_output(ctx, manifest)  # what `run` would write into, reported by validate too
            plans.append(plan_mod.build(manifest, registry, recorded_layout(manifest.run_dir)))
        except ManifestError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    for plan in plans:
        for note in plan.notes:
            ctx.note(f"note: {plan.manifest.file}: {note}")
        unpriced = [name for name, cost in plan.costs.items() if cost is None]
        if unpriced and len(unpriced) < len(plan.costs):
            ctx.note(
                f"note: {plan.manifest.file}: the cost estimate leaves out {len(unpriced)} model(s) with no "
                f"price: {', '.join(unpriced)}"
            )
    return plans


def check_output(ctx: Context, m: manifest_mod.Manifest) -> None:
    """The output root and run directory must be directories or creatable as such."""
    given = "--output" if getattr(ctx.args, "output", None) else None
    text = str(m.output)
    reason = None
    if "\0" in text:
        reason = "contains a NUL character"
    else:
        for path in (m.run_dir, m.output, *m.output.absolute().parents):
            try:
                if path.exists():
                    if not path.is_dir():
                        reason = f"{path} exists and is not a directory"
                    break
            except OSError as exc:
                reason = f"{path}: {exc.strerror or exc}"
                break
    if reason is None:
        return
    if given:
        raise UsageError(
            f"--output {text!r}: {reason}", hint="give a directory (it is created if missing)"
        )
    raise ManifestError(
        [
            m.doc.problem(
                ("output",),
                f"output {text!r}: {reason}",
                allowed="a directory (created if missing)",
            )
        ]
    )


def hub_lines(plan: plan_mod.Plan) -> list[str]:
    """One line per `- hub:` prompt source: the dataset, config and split, and the commit its rows
    were read at (what the run records), from the listing loading the manifest already fetched.
    Where this run's state recorded another commit for the same words, the line says so: `run`
    refuses that (hub.keep_commits)."""
    from renderer.manifest.hub import meta_name

    m = plan.manifest
    recorded: list[str | None] = [None] * len(m.hub)
    if m.hub and (m.run_dir / DB_NAME).is_file():
        try:
            with read_store(m.run_dir) as store:
                for n, s in enumerate(m.hub):
                    recorded[n] = store.meta(meta_name(s))
        except (StateError, sqlite3.Error):
            pass  # `run` reports a damaged state
    lines = []
    for s, before in zip(m.hub, recorded, strict=True):
        asked = f", revision {s.revision}" if s.revision else ""
        line = f"hub: {s.repo} (config {s.config}, split {s.split}{asked}) at commit {s.sha}"
        if before and before != s.sha:
            line += f"; this run was planned from {before}: pin `revision:` to one (run refuses)"
        lines.append(line)
    return lines


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def problem_json(problem: Problem) -> dict[str, Any]:
    """One problem for editors and CI: where it is, what is wrong, and what would fix it."""
    hint = "; ".join(
        filter(
            None,
            [
                problem.allowed and f"allowed: {problem.allowed}",
                problem.suggestion and f"did you mean {problem.suggestion}?",
            ],
        )
    )
    return {
        "file": problem.file,
        "line": problem.line,
        "column": problem.col,
        "json_path": problem.json_path,
        "message": problem.message,
        "hint": hint or None,
        "job": problem.job,
    }


def cmd_validate(ctx: Context) -> int:
    try:
        plans = load_plans(ctx, ctx.args.manifests)
    except ManifestError as exc:
        if not ctx.args.json:
            raise
        ctx.print(
            json.dumps(
                {"ok": False, "problems": [problem_json(p) for p in exc.problems]},
                indent=2,
                ensure_ascii=False,
            )
        )
        return exc.exit_code
    if ctx.args.json:
        ctx.print(
            json.dumps(
                {
                    "ok": True,
                    "problems": [],
                    "manifests": [
                        {
                            "file": str(p.manifest.file),
                            "jobs": len(p.jobs),
                            "images": p.images,
                            "models": len(p.by_model)
                            if p.by_model
                            else len({j.model for j in p.jobs}),
                            **(
                                {"hub": [s.provenance() for s in p.manifest.hub]}
                                if p.manifest.hub
                                else {}
                            ),
                        }
                        for p in plans
                    ],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    for plan in plans:
        models = len(plan.by_model) if plan.by_model else len({j.model for j in plan.jobs})
        ctx.print(
            f"ok: {plan.manifest.file}: {len(plan.jobs)} jobs, {plan.images} images, {models} models"
        )
        for line in hub_lines(plan):
            ctx.print(f"  {line}")
    return 0


def cmd_plan(ctx: Context) -> int:
    (plan,) = load_plans(ctx, [ctx.args.manifest])
    if getattr(ctx.args, "output", None):  # `run --dry-run --output X` shows the paths under X
        plan.manifest = replace(plan.manifest, output=Path(ctx.args.output))
        check_output(ctx, plan.manifest)
    if ctx.args.json:
        for job in _as_recorded(plan, plan.jobs):
            ctx.print(
                json.dumps(
                    {
                        "key": job.key,
                        "endpoint": job.endpoint,
                        "model": job.model,
                        "prompt": job.prompt_id,
                        "seed": job.seed,
                        "axes": job.axes,
                        "input": job.input,
                        "paths": [f"{plan.manifest.run_dir / p}" for p in job.paths()],
                    },
                    ensure_ascii=False,
                    separators=(",", ":"),
                )
            )
        return 0
    m = plan.manifest
    # No pass over the jobs: the samples are located by counting, the counts come with the plan,
    # and only a state that recorded another plan needs every key (never a job).
    step = max(1, len(plan.jobs) // 5)
    picked = [plan.jobs[step * i] for i in range(5) if step * i < len(plan.jobs)]
    done_by_model = _done(plan)
    by_model = plan.by_model or {}
    if not by_model:
        for job in plan.jobs:
            jobs, images = by_model.get(job.model, (0, 0))
            by_model[job.model] = (jobs + 1, images + job.num_images)
    endpoints = {model.name: model.endpoint for model in m.models}
    ctx.print(f"plan for {m.file} → {m.run_dir}/")
    for line in hub_lines(plan):
        ctx.print(line)
    rows = []
    for name, (jobs, images) in by_model.items():
        rows.append(
            (
                name,
                endpoints.get(name, ""),
                str(jobs),
                str(images),
                str(done_by_model.get(name, 0)),
                _money(plan.costs.get(name)),
            )
        )
    rows.append(
        (
            "total",
            "",
            str(len(plan.jobs)),
            str(plan.images),
            str(sum(done_by_model.values())),
            _money(plan.total_cost),
        )
    )
    for line in table(("MODEL", "ENDPOINT", "JOBS", "IMAGES", "DONE", "EST. COST"), rows, right=2):
        ctx.print(line)
    if m.budget is not None:
        ctx.print(f"budget: {_money(m.budget)}")
    ctx.print("sample paths:")
    for job in _as_recorded(plan, picked):
        ctx.print(f"  {m.run_dir / job.paths()[0]}")
    return 0


def _as_recorded(plan: plan_mod.Plan, jobs: Iterable[Any]) -> Iterator[Any]:
    """The jobs with the paths they will really use: a state that recorded another plan may own
    a job's natural path (its job left the plan), and the job then writes to its own
    (state/rows.py distinct_stem)."""
    from renderer.layout import DB_NAME
    from renderer.state import read_store

    if not (plan.manifest.run_dir / DB_NAME).is_file():
        yield from jobs
        return
    with read_store(plan.manifest.run_dir) as store:
        for job, stem in store.real_stems(jobs):
            yield job if stem == job.stem else replace(job, stem=stem)


def _done(plan: plan_mod.Plan) -> dict[str, int]:
    """Jobs already downloaded per model (none without a state).

    When the run's state recorded this very plan (same digest), the counts come from one
    query; otherwise from the plan's keys (made without making the jobs) against the finished ones.
    """
    from renderer.layout import DB_NAME
    from renderer.state import read_store

    if not (plan.manifest.run_dir / DB_NAME).is_file():
        return {}
    with read_store(plan.manifest.run_dir) as store:
        if plan.digest and store.meta("plan_digest") == plan.digest:
            return store.done_by_model()
        keys = store.done_keys()
    done: dict[str, int] = {}
    if keys:
        for key, model in job_keys(plan.jobs):
            if key in keys:
                done[model] = done.get(model, 0) + 1
    return done
