"""The command line. The only module that prints.

`main(argv, stdout=…, stderr=…, environ=…)` returns an exit code; streams and environment are
injected so tests call it directly. Every error crosses `error_boundary`, which maps it to
one message, an optional `hint:` line and an exit code (2 bad input, 3 auth/billing, 130
interrupted). A traceback is printed only for a bug, or with --debug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TextIO

from renderer import __version__, settings
from renderer.errors import ManifestError, Problem, RendererError, UsageError, closest
from renderer.manifest import load as manifest_mod
from renderer.models import generate, schemas
from renderer.plan import planner as plan_mod
from renderer.settings import is_remote, parse_s3

EXIT_BUG = 70  # EX_SOFTWARE


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that reports through our streams and error boundary instead of sys.exit."""

    out: TextIO
    err: TextIO

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self.err.write(message)
        raise _Exit(status)

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            (self.err if file is sys.stderr else self.out).write(message)


class Context:
    """What a command needs from the outside world, resolved once."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO, env: Mapping[str, str]):
        self.args = args
        self.out = out
        self.err = err
        self.env = env

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        self.err.write(text + "\n")

    def schema_dir(self) -> Path:
        flag = getattr(self.args, "schemas", None)
        if flag:
            return _directory(Path(flag), "--schemas")
        if self.env.get("RENDERER_SCHEMAS"):
            return _directory(Path(self.env["RENDERER_SCHEMAS"]), "RENDERER_SCHEMAS")
        return schemas.default_schema_dir()

    def registry(self) -> schemas.SchemaRegistry:
        return schemas.SchemaRegistry(self.schema_dir())


def _directory(path: Path, source: str) -> Path:
    """`path` if it is a directory; otherwise a usage error naming the flag or variable it came from."""
    if "\0" in str(path) or not path.is_dir():
        raise UsageError(
            f"{source} {str(path)!r}: not a directory",
            hint="give the schema directory (it holds index.json), e.g. schemas",
        )
    return path


# ---------------------------------------------------------------- schemas and models


def cmd_schemas_build(ctx: Context) -> int:
    out_dir = Path(ctx.args.dir)
    if not (out_dir / "docs").is_dir():
        raise UsageError(
            f"{out_dir / 'docs'}: no model documents here",
            hint="run in the repository root, or give --dir SCHEMA_DIR (it needs a docs/ folder)",
        )
    result = generate.build(out_dir / "docs")
    for warning in result.warnings:
        ctx.note(f"warning: {warning}")
    if ctx.args.check:
        stale = generate.stale_files(result, out_dir)
        if stale:
            for rel in stale:
                ctx.print(f"stale: {out_dir / rel}")
            ctx.note("hint: run `renderer schemas build` and commit the result")
            return 1
        ctx.print(f"schemas up to date: {len(result.files) - 1} endpoints in {out_dir}")
        return 0
    changed = generate.write(result, out_dir)
    ctx.print(
        f"wrote {len(changed)} changed file(s); {len(result.files) - 1} endpoints in {out_dir}"
    )
    return 0


def _describe(prop: dict[str, Any]) -> tuple[str, str]:
    """(type, allowed) for a property, as a person reads them."""
    if "anyOf" in prop:
        presets = next((b["enum"] for b in prop["anyOf"] if "enum" in b), [])
        return "size", "{width, height} or " + ", ".join(presets)
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1], "object"
    kind = prop.get("type", "any")
    if kind == "array":
        items = prop.get("items", {})
        inner = items.get("type") or items.get("$ref", "any").rsplit("/", 1)[-1]
        return f"list<{inner}>", ""
    if "enum" in prop:
        return kind, ", ".join(map(str, prop["enum"]))
    if "minimum" in prop and "maximum" in prop:
        return kind, f"{prop['minimum']} to {prop['maximum']}"
    if "minimum" in prop:
        return kind, f">= {prop['minimum']}"
    return kind, ""


def cmd_models(ctx: Context) -> int:
    registry = ctx.registry()
    if ctx.args.endpoint is None:
        rows = [
            (e, ", ".join(registry.index["endpoints"][e]["required"])) for e in registry.endpoints
        ]
        if ctx.args.json:
            ctx.print(
                json.dumps([{"endpoint": e, "required": r.split(", ")} for e, r in rows], indent=2)
            )
            return 0
        width = max(len(e) for e, _ in rows)
        ctx.print(f"{'ENDPOINT':<{width}}  REQUIRED")
        for endpoint, required in rows:
            ctx.print(f"{endpoint:<{width}}  {required}")
        return 0
    endpoint = ctx.args.endpoint
    if endpoint not in registry:
        guess = closest(endpoint, registry.endpoints)
        raise UsageError(
            f"unknown endpoint {endpoint!r}",
            hint=f"did you mean {guess}?" if guess else "run `renderer models` to list endpoints",
        )
    schema = registry.schema(endpoint)
    if ctx.args.json:
        ctx.print(json.dumps(schema, indent=2, ensure_ascii=False))
        return 0
    required = set(schema.get("required", []))
    ctx.print(f"{endpoint}  (documented in {', '.join(schema['x-sources'])})")
    rows = []
    for name, prop in schema["properties"].items():
        kind, allowed = _describe(prop)
        default = json.dumps(prop["default"], ensure_ascii=False) if "default" in prop else ""
        mark = "required" if name in required else ""
        rows.append((name, kind, mark, default[:30], allowed, ", ".join(prop.get("x-source", []))))
    for line in _table(("PARAMETER", "TYPE", "", "DEFAULT", "ALLOWED", "SOURCE"), rows, clip=60):
        ctx.print(line)
    return 0


def _table(
    headers: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    *,
    right: int | None = None,
    clip: int | None = None,
) -> list[str]:
    """Aligned columns; columns from index `right` on are right-aligned; the last is never padded."""
    text = [[str(c)[:clip] if clip else str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    lines = []
    for row in text:
        cells = [
            c
            if i == len(row) - 1 and right is None
            else (c.rjust(widths[i]) if right is not None and i >= right else c.ljust(widths[i]))
            for i, c in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


# ---------------------------------------------------------------- validate and plan


def _load_plans(ctx: Context, paths: list[str]) -> list[plan_mod.Plan]:
    """Plan every manifest; collect all problems across all of them before failing.

    The plan's size is bounded by arithmetic first, so an enormous manifest is refused
    before a single job is expanded.
    """
    registry = ctx.registry()
    limit = getattr(ctx.args, "max_plan_jobs", None) or manifest_mod.MAX_PLAN_JOBS
    plans, problems = [], []
    for name in paths:
        try:
            manifest = manifest_mod.load(Path(name))
            manifest_mod.check_plan_size(manifest, limit)
            if not getattr(ctx.args, "output", None):
                _check_output(
                    ctx, manifest
                )  # what `run` would write into, reported by validate too
            plans.append(plan_mod.build(manifest, registry))
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
        plans = _load_plans(ctx, ctx.args.manifests)
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
    return 0


def cmd_plan(ctx: Context) -> int:
    (plan,) = _load_plans(ctx, [ctx.args.manifest])
    if getattr(ctx.args, "output", None):  # `run --dry-run --output X` shows the paths under X
        plan.manifest = replace(plan.manifest, output=Path(ctx.args.output))
        _check_output(ctx, plan.manifest)
    if ctx.args.json:
        for job in plan.jobs:
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
    for line in _table(("MODEL", "ENDPOINT", "JOBS", "IMAGES", "DONE", "EST. COST"), rows, right=2):
        ctx.print(line)
    if m.budget is not None:
        ctx.print(f"budget: {_money(m.budget)}")
    ctx.print("sample paths:")
    for job in picked:
        ctx.print(f"  {m.run_dir / job.paths()[0]}")
    return 0


def _done(plan: plan_mod.Plan) -> dict[str, int]:
    """Jobs already downloaded per model (none without a state).

    When the run's state recorded this very plan (same digest), the counts come from one
    query; otherwise from the plan's keys (made without making the jobs) against the finished ones.
    """
    from renderer.state.store import DB_NAME, SQLiteStore

    if not (plan.manifest.run_dir / DB_NAME).is_file():
        return {}
    store = SQLiteStore(plan.manifest.run_dir, readonly=True)
    try:
        if plan.digest and store.meta("plan_digest") == plan.digest:
            return store.done_by_model()
        keys = store.done_keys()
    finally:
        store.close()
    done: dict[str, int] = {}
    if keys:
        for key, model in plan_mod.job_keys(plan.jobs):
            if key in keys:
                done[model] = done.get(model, 0) + 1
    return done


def cmd_emulator(ctx: Context) -> int:
    """Run the emulator in the foreground until interrupted."""
    import asyncio
    import ssl

    from renderer.provider.emulator import Emulator, EmulatorConfig, Faults, ServiceTime

    a = ctx.args
    # Each --key-env is one account, named in the stats by its variable (never by the key).
    keys: list[tuple[str, str]] = []
    for name in a.key_env:
        key = ctx.env.get(name)
        if not key:
            raise UsageError(
                f"--key-env {name}: that environment variable is not set",
                hint=f"export {name}=… first, or drop --key-env to accept any caller",
            )
        if any(key == k for _, k in keys):
            raise UsageError(
                f"--key-env {name}: holds the same key as another --key-env",
                hint="give each account its own key",
            )
        keys.append((name, key))
    for label in a.lock_account:
        if label not in a.key_env:
            raise UsageError(
                f"--lock-account {label}: not one of the --key-env accounts",
                hint=f"allowed: {', '.join(a.key_env) or 'none (give --key-env first)'}",
            )
    try:
        service = ServiceTime.parse(a.latency)
        for value in (service.a, service.b):  # seconds (or lognormal's sigma): finite, 0 to an hour
            settings.parse("latency", value)
        if service.kind == "uniform" and service.a > service.b:
            raise ValueError(f"service time {a.latency!r}: LOW is above HIGH")
    except settings.SettingError as exc:
        raise UsageError(
            f"--latency {a.latency!r}: {exc.message}", hint=f"allowed: {exc.allowed}"
        ) from None
    except ValueError as exc:
        raise UsageError(f"--latency {a.latency!r}: {exc}") from None
    faults = Faults(
        submit_429=a.fault_429,
        ingress_5xx=a.fault_ingress,
        runner_error=a.fault_runner,
        drop_download=a.fault_drop,
        truncate_image=a.fault_truncate,
        corrupt_image=a.fault_corrupt,
        stuck=a.fault_stuck,
        retention=a.retention,
        lock_after=a.lock_after,
        result_500=a.fault_result_500,
        submit_html=a.fault_submit_html,
        submit_500_with_id=a.fault_submit_500,
    )
    variants = tuple(tuple(v.split("=", 1)) for v in a.variant)  # type: ignore[misc]
    config = EmulatorConfig(
        host=a.host,
        port=a.port,
        workers=a.workers,
        service=service,
        seed=a.seed,
        keys=tuple(keys),
        locked=tuple(a.lock_account),
        max_side=a.max_side or None,
        faults=faults,
        keepalive=a.keepalive,
        variants=variants,
        allow_unknown=a.allow_unknown,
    )  # type: ignore[arg-type]
    context = None
    if a.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(a.tls_cert, a.tls_key)

    async def serve() -> None:
        async with Emulator(config, ssl_context=context, registry=ctx.registry()) as emu:
            ctx.print(emu.url)
            ctx.out.flush()
            ctx.note(
                f"emulator: {config.workers} worker slots, service time {a.latency}; Ctrl-C stops it"
            )
            await asyncio.Event().wait()

    asyncio.run(serve())
    return 0


# ---------------------------------------------------------------- run and status


def _setting(
    flag: Any, env: Mapping[str, str], name: str, manifest_value: Any, setting: str
) -> Any:
    """flag > environment > manifest (whose own default applies when it says nothing).

    Flags were checked by argparse (`_number`); the environment is checked here, by the same
    `settings.parse`, and reported as the variable it came from.
    """
    if flag is not None:
        return flag
    if env.get(name):
        try:
            return settings.parse(setting, env[name])
        except settings.SettingError as exc:
            raise UsageError(
                f"{name}={env[name]!r}: {exc.message}",
                hint=f"allowed: {exc.allowed}; or unset {name}",
            ) from None
    return manifest_value


def _number(setting: str) -> Callable[[str], Any]:
    """An argparse `type` that parses a flag with `settings.parse`."""

    def convert(text: str) -> Any:
        try:
            return settings.parse(setting, text)
        except settings.SettingError as exc:
            raise argparse.ArgumentTypeError(f"{exc.message} (allowed: {exc.allowed})") from None

    convert.__name__ = setting
    return convert


def _provider_override(ctx: Context) -> str | None:
    """--provider, else RENDERER_PROVIDER, checked and reported under the name the user gave."""
    value, source = ctx.args.provider, "--provider"
    if not value:
        value, source = ctx.env.get("RENDERER_PROVIDER") or None, "RENDERER_PROVIDER"
    if value is None or value in manifest_mod.PROVIDERS:
        return value
    if not value.startswith(("http://", "https://")):
        raise UsageError(
            f"{source} {value!r}: use emulator, fal, or a base URL (http://… or https://…)"
        )
    try:
        settings.check_url(value)
    except settings.SettingError as exc:
        raise UsageError(f"{source}: {exc.message}", hint=exc.allowed) from None
    return value


def _check_output(ctx: Context, m: manifest_mod.Manifest) -> None:
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


def cmd_run(ctx: Context) -> int:
    # Imported here: aiohttp, tqdm and Pillow cost ~0.35 s that validate, plan and models never need.
    from renderer import api
    from renderer.runner import session as run_mod

    a = ctx.args
    (plan,) = _load_plans(ctx, [a.manifest])
    # Resolved before --dry-run returns, so a dry run reports a bad flag or RENDERER_* variable too.
    limits = plan.manifest.limits
    # With provider.accounts the total is the accounts' sum unless a flag or RENDERER_CONCURRENCY caps it.
    concurrency = _setting(
        a.concurrency,
        ctx.env,
        "RENDERER_CONCURRENCY",
        None if plan.manifest.provider.accounts else limits.concurrency,
        "concurrency",
    )
    rate = _setting(a.rate, ctx.env, "RENDERER_RATE", limits.rate, "rate")
    timeout = _setting(a.timeout, ctx.env, "RENDERER_TIMEOUT", limits.timeout, "timeout")
    provider = _provider_override(ctx)
    state = (
        a.state or ctx.env.get("RENDERER_STATE") or None
    )  # (the manifest's `state:` applies below it)
    lease = _setting(a.lease, ctx.env, "RENDERER_LEASE", None, "lease")
    if a.dry_run:
        return cmd_plan(ctx)
    if a.output and is_remote(a.output):
        parse_s3(a.output)  # a mistake here is the user's: exit 2 before anything is sent
        plan.manifest = replace(plan.manifest, output_url=a.output)
    elif a.output:
        plan.manifest = replace(plan.manifest, output=Path(a.output), output_url=None)
    m = plan.manifest
    _check_output(ctx, m)
    display = run_mod.Display(ctx.err, quiet=a.quiet, jobs=plan.jobs)
    listeners: list[Callable[[Any], None]] = [display]
    log = None
    if a.log:
        keys = [
            ctx.env.get(m.provider.key_env, ""),
            ctx.env.get("FAL_KEY_ID", ""),
            ctx.env.get("FAL_KEY_SECRET", ""),
            *(ctx.env.get(account.key_env, "") for account in m.provider.accounts),
        ]
        log = run_mod.EventLog(Path(a.log), secrets=keys)
        listeners.append(log)

    def on_event(event: Any) -> None:
        for listener in listeners:
            listener(event)

    try:
        summary = api.run(
            plan,
            provider=provider,
            concurrency=concurrency,
            rate=rate,
            timeout=timeout,
            retry_failed=a.retry_failed,
            max_jobs=a.max_jobs,
            verify=a.verify,
            on_event=on_event,
            env=ctx.env,
            schemas=ctx.schema_dir(),
            state=state,
            lease=lease,
        )
        if log is not None:
            log({"type": "finished", **run_mod.summary_record(summary, plan)})
    finally:
        display.close()
        if log is not None:
            log.close()
    return run_mod.report(summary, plan, ctx.out, ctx.err, as_json=a.json)


def cmd_status(ctx: Context) -> int:
    from renderer import api
    from renderer.runner import session as run_mod

    state = api._state(ctx.args.state or ctx.env.get("RENDERER_STATE") or None)
    return run_mod.status(Path(ctx.args.run), ctx.out, as_json=ctx.args.json, state=state)


def cmd_finalize(ctx: Context) -> int:
    from renderer import api
    from renderer.output.storage import open_storage
    from renderer.runner import session as run_mod
    from renderer.runner.runner import RunConfig

    a = ctx.args
    (plan,) = _load_plans(ctx, [a.manifest])
    if a.output and is_remote(a.output):
        parse_s3(a.output)
        plan.manifest = replace(plan.manifest, output_url=a.output)
    elif a.output:
        plan.manifest = replace(plan.manifest, output=Path(a.output), output_url=None)
    m = plan.manifest
    state = api._state(a.state or ctx.env.get("RENDERER_STATE") or m.state)
    storage = open_storage(m.output_url, m.name, ctx.env) if m.output_url else None
    record = run_mod.finalize(plan, RunConfig(state=state), storage)
    if a.json:
        ctx.print(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        counts = record["counts"]
        where = m.output_url or str(m.run_dir)
        ctx.print(
            f"finalized: {counts['downloaded']} finished jobs in metadata.jsonl and the card, "
            f"{counts['failed']} failed, {record['unfinished']} unfinished → {where}/"
        )
    return 0 if record["outcome"] == "done" else 1


# ---------------------------------------------------------------- report, export and diff


def cmd_export(ctx: Context) -> int:
    from renderer.output import export

    a = ctx.args
    done = export.export(Path(a.run), a.format, Path(a.out) if a.out else None, a.shard_size)
    if a.json:
        ctx.print(json.dumps(done, indent=2))
        return 0
    ctx.print(
        f"export: {done['rows']} images, {done['bytes']:,} bytes in {len(done['shards'])} {a.format} "
        f"shard(s) → {done['dir']}/"
    )
    return 0


def cmd_report(ctx: Context) -> int:
    from renderer.view import report

    a = ctx.args
    axes = a.axes.split(",")
    if len(axes) != 2 or not all(axes):
        raise UsageError(
            f"--axes {a.axes!r}: give two axes, ROW,COL",
            hint="e.g. --axes prompt,model or seed,model",
        )
    from renderer.state.store import DB_NAME

    if not (Path(a.run) / DB_NAME).is_file():
        raise UsageError(
            f"{a.run}: no run here (no {DB_NAME})", hint="pass a run directory such as outputs/NAME"
        )
    done = report.build(
        Path(a.run),
        row_axis=axes[0],
        col_axis=axes[1],
        tags=set(a.tag) or None,
        models=set(a.model) or None,
        seeds=set(a.seed) or None,
        max_side=a.max_sheet,
    )
    ctx.print(
        f"report: {done['index']} ({done['pages']} page(s), {done['cells']} cells, "
        f"{done['thumbnails_made']} new thumbnails)"
    )
    for sheet in done["sheets"]:
        ctx.print(f"sheet: {sheet}")
    return 0


def cmd_diff(ctx: Context) -> int:
    from renderer.view import compare

    a = ctx.args
    mapping = None
    if a.map:
        mapping = {}
        for item in a.map:
            left, sep, right = item.partition("=")
            if not sep or not left or not right:
                raise UsageError(f"--map {item!r}: use MODEL_A=MODEL_B (labels or endpoint ids)")
            mapping[left] = right
    if a.html:
        folder = Path(a.html).parent
        if not folder.is_dir():
            raise UsageError(
                f"--html {a.html}: the folder {folder} does not exist",
                hint="create it first, or write the page into an existing folder",
            )
    result = compare.compare(
        Path(a.run_a),
        Path(a.run_b),
        mapping=mapping,
        hash_limit=a.hash_limit,
        rmse_limit=a.rmse_limit,
    )
    if a.html:
        compare.write_html(result, Path(a.html))
    if a.json:
        ctx.print(json.dumps(result, indent=2))
    else:
        counts = result["counts"]
        ctx.print("  ".join(f"{k}={v}" for k, v in counts.items()))
        for pair in result["pairs"]:
            if pair["verdict"] in ("changed", "missing"):
                metrics = (
                    ""
                    if pair["hash_distance"] is None
                    else f"  dHash {pair['hash_distance']}  RMSE {pair['rmse']:.3f}"
                )
                ctx.print(f"{pair['verdict']:8} {pair['label']} #{pair['index']}{metrics}")
        if a.html:
            ctx.print(f"html: {a.html}")
    # A CI gate: anything changed, or an image missing on either side, fails it.
    counts = result["counts"]
    return (
        1
        if counts["changed"] or counts["missing"] or counts["only_in_a"] or counts["only_in_b"]
        else 0
    )


# ---------------------------------------------------------------- parser and boundary

Command = Callable[[Context], int]


def build_parser(out: TextIO, err: TextIO) -> _Parser:
    def parser(*args: Any, **kw: Any) -> _Parser:
        p = _Parser(*args, **kw)
        p.out, p.err = out, err
        return p

    root = parser(
        prog="renderer", description="Declarative batch renderer for fal.ai text-to-image models."
    )
    root.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    root.add_argument("--version", action="version", version=f"renderer {__version__}")
    sub = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, func: Command, help: str) -> _Parser:
        p = sub.add_parser(name, help=help, description=help)
        p.out, p.err = out, err
        p.set_defaults(func=func)
        return p

    p_schemas = command(
        "schemas", lambda ctx: 0, "generate the endpoint JSON Schemas from model documents"
    )
    schema_sub = p_schemas.add_subparsers(
        dest="schemas_command", metavar="ACTION", parser_class=_Parser
    )
    schema_sub.required = True
    p_build = schema_sub.add_parser(
        "build", help="read schemas/docs/ and write one schema per endpoint"
    )
    p_build.out, p_build.err = out, err
    p_build.set_defaults(func=cmd_schemas_build)
    p_build.add_argument("--dir", default="schemas", help="schema directory (default: ./schemas)")
    p_build.add_argument(
        "--check", action="store_true", help="exit 1 if the committed schemas are stale"
    )

    p_models = command("models", cmd_models, "list endpoints, or show one endpoint's parameters")
    p_models.add_argument("endpoint", nargs="?", help="e.g. fal-ai/imagen4/preview")
    p_models.add_argument("--json", action="store_true", help="machine-readable output")
    p_models.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")

    p_validate = command(
        "validate", cmd_validate, "check manifests and every job they expand to; send nothing"
    )
    p_validate.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p_validate.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")
    p_validate.add_argument(
        "--json",
        action="store_true",
        help="machine-readable result: problems with file, line, column, json_path, message, hint",
    )

    p_plan = command("plan", cmd_plan, "show what a run would do: jobs, images, cost, output paths")
    p_plan.add_argument("manifest", metavar="MANIFEST")
    p_plan.add_argument("--json", action="store_true", help="one JSON line per job")
    p_plan.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")
    for p in (p_validate, p_plan):
        p.add_argument(
            "--max-plan-jobs",
            type=_number("max_plan_jobs"),
            metavar="N",
            help=f"refuse plans above N jobs (default {manifest_mod.MAX_PLAN_JOBS:,})",
        )

    p_emu = command(
        "emulator",
        cmd_emulator,
        "run the built-in fal emulator on this machine and print its base URL",
    )
    p_emu.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: loopback only)"
    )
    p_emu.add_argument("--port", type=_number("port"), default=0, help="port (default: a free one)")
    p_emu.add_argument(
        "--workers",
        type=_number("workers"),
        default=2,
        help="concurrent worker slots (default 2, like a new fal account)",
    )
    p_emu.add_argument(
        "--latency",
        default="0.05",
        help="service time: S, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA",
    )
    p_emu.add_argument("--seed", type=int, default=0, help="seed for service times and faults")
    p_emu.add_argument(
        "--key-env",
        action="append",
        default=[],
        metavar="VAR",
        help="require the key held in this environment variable; repeat for several accounts "
        "(each counted apart at /_emulator/stats, under the variable's name)",
    )
    p_emu.add_argument(
        "--lock-account",
        action="append",
        default=[],
        metavar="VAR",
        help="answer this --key-env account's submits 403 'User is locked'",
    )
    p_emu.add_argument(
        "--max-side",
        type=_number("max_side"),
        default=256,
        help="cap on the longest image side (0: none)",
    )
    p_emu.add_argument(
        "--keepalive",
        type=_number("keepalive"),
        default=15.0,
        help="seconds between SSE keep-alive comments",
    )
    p_emu.add_argument(
        "--allow-unknown", action="store_true", help="serve endpoints that have no schema"
    )
    p_emu.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ENDPOINT=SALT",
        help="render this endpoint differently (to exercise `renderer diff`)",
    )
    p_emu.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    p_emu.add_argument("--tls-key", help="private key for --tls-cert")
    for flag, dest, what in (
        ("--fault-429", "fault_429", "429 on submit"),
        ("--fault-ingress", "fault_ingress", "ingress 502/503/504"),
        ("--fault-runner", "fault_runner", "runner_server_error results"),
        ("--fault-drop", "fault_drop", "downloads dropped half-way"),
        ("--fault-truncate", "fault_truncate", "truncated downloads"),
        ("--fault-corrupt", "fault_corrupt", "corrupted downloads"),
        ("--fault-stuck", "fault_stuck", "requests stuck IN_QUEUE"),
        ("--fault-result-500", "fault_result_500", "a bare 500 on a finished result"),
        ("--fault-submit-html", "fault_submit_html", "a submit taken but answered as HTML"),
        (
            "--fault-submit-500",
            "fault_submit_500",
            "a submit taken but answered 500 with its request id",
        ),
    ):
        p_emu.add_argument(
            flag,
            dest=dest,
            type=_number("probability"),
            default=0.0,
            metavar="P",
            help=f"probability of {what}",
        )
    p_emu.add_argument(
        "--retention",
        type=_number("retention"),
        help="seconds results live after completion (then 404)",
    )
    p_emu.add_argument(
        "--lock-after",
        type=_number("lock_after"),
        help="answer 403 'User is locked' after this many submits",
    )
    p_emu.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")

    p_run = command(
        "run", cmd_run, "render a manifest: submit, wait, download and verify every image"
    )
    p_run.add_argument("manifest", metavar="MANIFEST")
    p_run.add_argument(
        "--provider", help="emulator, fal, or a base URL (env RENDERER_PROVIDER; default: manifest)"
    )
    p_run.add_argument(
        "--output",
        help="output root: a directory, or s3://bucket/prefix (AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION); default: the manifest's, else outputs/",
    )
    p_run.add_argument(
        "--state",
        metavar="URL",
        help="where the run's state lives: postgresql://… shares it with "
        "every worker that runs this command (env RENDERER_STATE; default: the manifest's `state:`, "
        "else renderer.sqlite in the run directory)",
    )
    p_run.add_argument(
        "--lease",
        type=_number("lease"),
        metavar="SECONDS",
        help="with shared state: how long a claimed job stays this worker's without renewal; a dead "
        "worker's jobs are taken over after it (env RENDERER_LEASE; default 30)",
    )
    p_run.add_argument(
        "--concurrency",
        type=_number("concurrency"),
        help="jobs in flight (env RENDERER_CONCURRENCY)",
    )
    p_run.add_argument(
        "--rate",
        type=_number("rate"),
        help="submissions per second, or 5/s, 120/min (env RENDERER_RATE)",
    )
    p_run.add_argument(
        "--timeout",
        type=_number("timeout"),
        help="seconds per job before it is cancelled (env RENDERER_TIMEOUT)",
    )
    p_run.add_argument("--retry-failed", action="store_true", help="try failed jobs again")
    p_run.add_argument(
        "--max-jobs",
        type=_number("max_jobs"),
        help="render only the first N jobs of the plan (a trial)",
    )
    p_run.add_argument(
        "--verify",
        action="store_true",
        help="re-hash finished files instead of trusting size+mtime",
    )
    p_run.add_argument("--dry-run", action="store_true", help="show the plan; send nothing")
    p_run.add_argument(
        "--json",
        action="store_true",
        help="print the run's summary as JSON on stdout (with --dry-run: one JSON line per job)",
    )
    p_run.add_argument(
        "--log", metavar="FILE", help="append a JSON-lines log of the run's events to FILE"
    )
    p_run.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p_run.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")
    p_run.add_argument(
        "--max-plan-jobs",
        type=_number("max_plan_jobs"),
        metavar="N",
        help=f"refuse plans above N jobs (default {manifest_mod.MAX_PLAN_JOBS:,})",
    )

    p_status = command(
        "status", cmd_status, "show a run directory's state and what a rerun would do"
    )
    p_status.add_argument(
        "run",
        metavar="RUN",
        help="a run directory, e.g. outputs/quickstart (its last part names "
        "the run in shared state)",
    )
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_status.add_argument(
        "--state",
        metavar="URL",
        help="the run's shared state, postgresql://… (env RENDERER_STATE): "
        "workers, accounts and jobs of a distributed run",
    )

    p_final = command(
        "finalize",
        cmd_finalize,
        "write metadata.jsonl, the dataset card and run.json from the state "
        "(a distributed run whose last worker stopped, or a partial dataset)",
    )
    p_final.add_argument("manifest", metavar="MANIFEST")
    p_final.add_argument(
        "--state",
        metavar="URL",
        help="postgresql://… (env RENDERER_STATE; default: the manifest's, "
        "else the SQLite file in the run directory)",
    )
    p_final.add_argument(
        "--output", help="output root: a directory, or s3://bucket/prefix (default: the manifest's)"
    )
    p_final.add_argument("--json", action="store_true", help="print run.json")
    p_final.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")

    p_report = command(
        "report", cmd_report, "write a static HTML contact sheet and PNG sheets for a run"
    )
    p_report.add_argument("run", metavar="RUN", help="a run directory, e.g. outputs/design-sweep")
    p_report.add_argument(
        "--axes", default="prompt,model", help="ROW,COL axes (default prompt,model)"
    )
    p_report.add_argument(
        "--tag", action="append", default=[], help="only prompts with this tag (repeatable)"
    )
    p_report.add_argument(
        "--model", action="append", default=[], help="only this model (repeatable)"
    )
    p_report.add_argument(
        "--seed", action="append", default=[], type=int, help="only this seed (repeatable)"
    )
    p_report.add_argument(
        "--max-sheet",
        type=_number("max_sheet"),
        default=4096,
        help="largest PNG sheet side in pixels",
    )

    p_export = command(
        "export", cmd_export, "write a run's dataset as Parquet shards or WebDataset tars"
    )
    p_export.add_argument("run", metavar="RUN", help="a run directory, e.g. outputs/design-sweep")
    p_export.add_argument(
        "--format",
        required=True,
        choices=("parquet", "webdataset"),
        help="parquet (images embedded; what the Hub serves) or webdataset (tar shards)",
    )
    p_export.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="images per shard (default 1000)"
    )
    p_export.add_argument("--out", metavar="DIR", help="destination (default: RUN/export/FORMAT/)")
    p_export.add_argument("--json", action="store_true", help="machine-readable output")

    p_diff = command(
        "diff",
        cmd_diff,
        "compare two runs image by image; exit 1 if anything changed or is missing",
    )
    p_diff.add_argument("run_a", metavar="RUN_A")
    p_diff.add_argument("run_b", metavar="RUN_B")
    p_diff.add_argument(
        "--map",
        action="append",
        metavar="MODEL_A=MODEL_B",
        help="compare model A in RUN_A with model B in RUN_B (same prompt, seed, axes)",
    )
    p_diff.add_argument("--json", action="store_true", help="machine-readable output")
    p_diff.add_argument("--html", help="also write an HTML page with changed pairs side by side")
    p_diff.add_argument(
        "--hash-limit",
        type=_number("hash_limit"),
        default=6,
        help="largest dHash distance still 'same' (of 64)",
    )
    p_diff.add_argument(
        "--rmse-limit",
        type=_number("rmse_limit"),
        default=0.04,
        help="largest RMSE (0-1) still 'same'",
    )

    return root


@contextmanager
def error_boundary(err: TextIO, debug: bool, result: list[int]) -> Iterator[None]:
    try:
        yield
    except _Exit as done:
        result.append(done.code)
    except ManifestError as exc:
        for problem in exc.problems:
            err.write(problem.render() + "\n")
        err.write(f"error: {exc.message}\n")
        if exc.hint:
            err.write(f"hint: {exc.hint}\n")
        result.append(exc.exit_code)
    except RendererError as exc:
        if debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=err)
        err.write(f"error: {exc.message}\n")
        if exc.hint:
            err.write(f"hint: {exc.hint}\n")
        result.append(exc.exit_code)
    except KeyboardInterrupt:
        err.write("interrupted\n")
        result.append(130)
    except BrokenPipeError:
        # `renderer plan --json | head`: the reader is done; that is not an error.
        with suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown quiet
        result.append(0)
    except Exception as exc:  # a bug: say so, with the traceback a maintainer needs
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=err)
        err.write("error: internal error (this is a bug in renderer; please report it)\n")
        result.append(EXIT_BUG)


def main(
    argv: list[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    env = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else argv
    result: list[int] = []
    with error_boundary(err, "--debug" in argv, result):
        args = build_parser(out, err).parse_args(argv)
        result.append(args.func(Context(args, out, err, env)))
    return result[-1]


def entrypoint() -> None:
    sys.exit(main())
