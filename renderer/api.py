"""The Python API: what the CLI does, callable from scripts and notebooks.

    plan = renderer.load_manifest("manifests/quickstart.yaml")   # or a dict
    summary = renderer.run(plan)                 # blocks; works inside a running loop too
    summary = await renderer.run_async(plan)     # in a notebook cell or async code
    run = renderer.open_run(plan.run_dir)        # rows with paths and metadata

Settings: an argument given here wins over the manifest, which wins over the defaults. The
environment is read only for the provider's API key, where added models live and a `hub:`
entry's HF_* settings (at call time, from `env`, default os.environ); the CLI resolves its flags
and RENDERER_* variables and passes them in here.
Errors are raised as renderer.errors exceptions (ManifestError lists every problem).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from renderer.errors import UsageError
from renderer.layout import DATA_DIR, RUN_RECORD
from renderer.manifest import load as manifest_mod
from renderer.models.schemas import SchemaRegistry, default_models_dir, default_schema_dir
from renderer.output import dataset
from renderer.output import storage as storage_mod
from renderer.output.storage import Storage
from renderer.plan import planner as plan_mod
from renderer.plan.jobs import Plan
from renderer.runner import AccountLimit, Event, RunConfig, Summary

__all__ = ["Plan", "Run", "Summary", "load_manifest", "open_run", "run", "run_async"]


def _registry(
    schemas: str | os.PathLike[str] | None,
    models: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> SchemaRegistry:
    """The bundled schemas (or `schemas`) with the user's added models over them: `models`, else
    RENDERER_MODELS, else the per-user folder (`renderer models add` writes there)."""
    env = os.environ if env is None else env
    added = Path(models) if models is not None else None
    if added is None:
        added = (
            Path(env["RENDERER_MODELS"]) if env.get("RENDERER_MODELS") else default_models_dir(env)
        )
    return SchemaRegistry(Path(schemas) if schemas is not None else default_schema_dir(), added)


def load_manifest(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    output: str | os.PathLike[str] | None = None,
    schemas: str | os.PathLike[str] | None = None,
    models: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Plan:
    """Validate a manifest (a YAML file, or the same structure as a dict) and plan its jobs.

    `output` replaces the manifest's output root. Prompt files named in a dict are read
    relative to the working directory. `env` (default os.environ, read now): RENDERER_MODELS,
    and a `hub:` entry's HF_ENDPOINT, HF_HOME / HF_HUB_CACHE and HF_TOKEN. Raises
    ManifestError listing every problem.
    """
    environ = os.environ if env is None else env
    if isinstance(source, Mapping):
        text = yaml.safe_dump(dict(source), sort_keys=False, allow_unicode=True)
        manifest = manifest_mod.parse(text, Path("<manifest>"), environ)
    else:
        manifest = manifest_mod.load(Path(source), environ)
    if output is not None:
        manifest = replace(manifest, output=Path(output))
    manifest_mod.check_plan_size(manifest)  # by arithmetic, before a single job is expanded
    return plan_mod.build(manifest, _registry(schemas, models, environ))


def _checked(name: str, value: Any) -> Any:
    """None, or `value` as `settings.parse` allows it; UsageError naming the argument otherwise."""
    from renderer import settings as settings_mod

    if value is None:
        return None
    try:
        return settings_mod.parse(name, value)
    except settings_mod.SettingError as exc:
        raise UsageError(
            f"{name}={value!r}: {exc.message}", hint=f"allowed: {exc.allowed}"
        ) from None


def _prepare(
    plan: Plan,
    *,
    provider: str | None,
    output: str | os.PathLike[str] | None,
    concurrency: int | None,
    rate: float | None,
    timeout: float | None,
    retry_failed: bool,
    max_jobs: int | None,
    verify: bool,
    env: Mapping[str, str] | None,
    state: str | None = None,
    lease: float | None = None,
    outage: float | None = None,
) -> tuple[Plan, Any, RunConfig, Storage | None]:
    from renderer.runner.session import (
        resolve_provider,  # aiohttp and friends load only when something runs
    )

    # The same checks as the manifest, flags and environment (renderer/settings.py).
    checked = {
        name: _checked(name, value)
        for name, value in (
            ("concurrency", concurrency),
            ("rate", rate),
            ("timeout", timeout),
            ("max_jobs", max_jobs),
            ("lease", lease),
            ("outage", outage),
        )
    }
    concurrency, rate, timeout, max_jobs, lease, outage = (
        checked[n] for n in ("concurrency", "rate", "timeout", "max_jobs", "lease", "outage")
    )
    environ = os.environ if env is None else env
    if output is not None and storage_mod.is_remote(str(output)):
        storage_mod.parse_s3(str(output))
        plan = replace(plan, manifest=replace(plan.manifest, output_url=str(output)))
    elif output is not None:
        plan = replace(plan, manifest=replace(plan.manifest, output=Path(output), output_url=None))
    m = plan.manifest
    # A bucket when the output is s3://…, configured by the standard AWS variables.
    outage = m.limits.outage if outage is None else outage
    storage = (
        storage_mod.open_storage(m.output_url, m.name, environ, outage=outage)
        if m.output_url
        else None
    )
    settings = resolve_provider(m.provider, provider, environ)
    # With provider.accounts each account has its own limit; the run's total is their sum
    # unless a flag (or argument) caps it for this run.
    accounts = tuple(AccountLimit(a.name, a.concurrency, a.rate) for a in settings.accounts)
    total = sum(a.concurrency for a in accounts) if accounts else m.limits.concurrency
    config = RunConfig(
        concurrency=total if concurrency is None else concurrency,
        accounts=accounts,
        per_endpoint=dict(m.limits.per_endpoint),
        rate=m.limits.rate if rate is None else rate,
        timeout=m.limits.timeout if timeout is None else timeout,
        retry=m.retries,
        retry_failed=retry_failed,
        max_jobs=max_jobs,
        verify=verify,
        provider=settings.label,
        state=resolve_state(state if state is not None else m.state),
        lease=30.0 if lease is None else lease,
        outage=outage,
    )
    return plan, settings, config, storage


def resolve_state(url: str | None) -> str | None:
    """The state URL as given (None: SQLite in the run directory); anything else than PostgreSQL is refused."""
    if not url:
        return None
    from renderer.state.pgconn import is_postgres, redact

    if not is_postgres(url):
        raise UsageError(
            f"state {redact(url)!r}: not a PostgreSQL URL",
            hint="give postgresql://USER@HOST/DB for state shared by several workers, or leave --state "
            "(RENDERER_STATE, manifest state:) unset for the SQLite file in the run directory",
        )
    return url


async def run_async(
    plan: Plan,
    *,
    provider: str | None = None,
    output: str | os.PathLike[str] | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    timeout: float | None = None,
    retry_failed: bool = False,
    max_jobs: int | None = None,
    verify: bool = False,
    on_event: Callable[[Event], None] | None = None,
    env: Mapping[str, str] | None = None,
    schemas: str | os.PathLike[str] | None = None,
    models: str | os.PathLike[str] | None = None,
    state: str | None = None,
    lease: float | None = None,
    outage: float | None = None,
) -> Summary:
    """Render the plan on the running event loop; resumable like the CLI (finished jobs are skipped).

    `provider`: "emulator", "fal", or a base URL (default: the manifest's). `on_event` receives
    each progress event (dicts with a "type"). Ctrl-C handling is left to the caller's loop.
    """
    from renderer.runner.session import execute_async

    plan, settings, config, storage = _prepare(
        plan,
        provider=provider,
        output=output,
        concurrency=concurrency,
        rate=rate,
        timeout=timeout,
        retry_failed=retry_failed,
        max_jobs=max_jobs,
        verify=verify,
        env=env,
        state=state,
        lease=lease,
        outage=outage,
    )
    return await execute_async(
        plan,
        settings,
        config,
        _registry(schemas, models, env),
        on_event or (lambda event: None),
        interrupts=False,
        storage=storage,
    )


def run(
    plan: Plan,
    *,
    provider: str | None = None,
    output: str | os.PathLike[str] | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
    timeout: float | None = None,
    retry_failed: bool = False,
    max_jobs: int | None = None,
    verify: bool = False,
    on_event: Callable[[Event], None] | None = None,
    env: Mapping[str, str] | None = None,
    schemas: str | os.PathLike[str] | None = None,
    models: str | os.PathLike[str] | None = None,
    state: str | None = None,
    lease: float | None = None,
    outage: float | None = None,
) -> Summary:
    """Render the plan and wait for it. Inside a running event loop (Jupyter) it runs on a worker thread."""
    from renderer.runner.session import execute_async, run_sync

    plan, settings, config, storage = _prepare(
        plan,
        provider=provider,
        output=output,
        concurrency=concurrency,
        rate=rate,
        timeout=timeout,
        retry_failed=retry_failed,
        max_jobs=max_jobs,
        verify=verify,
        env=env,
        state=state,
        lease=lease,
        outage=outage,
    )
    return run_sync(
        execute_async(
            plan,
            settings,
            config,
            _registry(schemas, models, env),
            on_event or (lambda event: None),
            storage=storage,
        )
    )


@dataclass(frozen=True)
class Run:
    """A run directory, read: one row per image (metadata plus `path`), failures, the last summary."""

    dir: Path
    # The dataset's columns, plus `path`: the image's absolute path (its s3:// URL in a bucket).
    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]  # key, prompt_id, model, seed, axes, kind, reason
    summary: dict[str, Any] | None = field(default=None)  # run.json of the last run

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    @property
    def data_dir(self) -> Path:
        return self.dir / DATA_DIR


def open_run(
    run_dir: str | os.PathLike[str],
    *,
    state: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Run:
    """Read a run (read-only; safe while another process runs it).

    `run_dir`: the run directory (outputs/NAME), or its bucket folder (s3://BUCKET/PREFIX/NAME).
    `state`: the postgresql:// URL of a distributed run (default: SQLite in the run directory).
    A run whose images are in a bucket gives each row's `path` as its s3:// URL (read it with
    the AWS variables in `env`, default os.environ).
    """
    from renderer.output.source import open_source

    environ = os.environ if env is None else env
    with open_source(str(run_dir), resolve_state(state), environ) as source:
        with dataset.reading(source) as (_, found):
            rows = []
            for row, path in found:
                row["path"] = (
                    source.where(path) if source.remote else (source.run_dir / path).resolve()
                )
                rows.append(row)
        with source.store() as store:
            failures = [
                {
                    "key": r.key,
                    "prompt_id": r.prompt_id,
                    "model": r.model,
                    "seed": r.seed,
                    "axes": r.axes,
                    "kind": r.error_kind,
                    "reason": r.error,
                }
                for r in store.rows(in_plan=True, state="failed")
            ]
        summary = None
        with contextlib.suppress(ValueError):
            summary = json.loads(source.read(RUN_RECORD) or b"null")
    return Run(source.run_dir.resolve(), rows, failures, summary)
