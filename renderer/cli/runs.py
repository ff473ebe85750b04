"""Commands for runs: `run` (render a manifest), `status` (a run's state) and `finalize` (write
the dataset's files from the state).

Each setting is taken from its flag, else its RENDERER_* variable, else the manifest. The runner,
aiohttp, tqdm and Pillow are imported only when a command runs (~0.35 s that validate never needs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from renderer import settings
from renderer.cli.context import Context
from renderer.cli.plans import check_output, cmd_plan, load_plans
from renderer.errors import UsageError
from renderer.manifest import load as manifest_mod
from renderer.settings import is_remote, parse_s3


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


def cmd_run(ctx: Context) -> int:
    # Imported here: aiohttp, tqdm and Pillow cost ~0.35 s that validate, plan and models never need.
    from renderer.provider import tls

    tls.import_aiohttp()  # its CA certificates loaded in a thread, beside the plan and the state
    try:
        return _run(ctx)
    finally:
        tls.join()  # (a no-op once a client started: it waited for the load)


def _run(ctx: Context) -> int:
    from renderer import api, console

    a = ctx.args
    (plan,) = load_plans(ctx, [a.manifest])
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
    outage = _setting(a.outage, ctx.env, "RENDERER_OUTAGE", limits.outage, "outage")
    if a.dry_run:
        return cmd_plan(ctx)
    if a.output and is_remote(a.output):
        parse_s3(a.output)  # a mistake here is the user's: exit 2 before anything is sent
        plan.manifest = replace(plan.manifest, output_url=a.output)
    elif a.output:
        plan.manifest = replace(plan.manifest, output=Path(a.output), output_url=None)
    m = plan.manifest
    check_output(ctx, m)
    display = console.Display(ctx.err, quiet=a.quiet)
    listeners: list[Callable[[Any], None]] = [display]
    log = None
    if a.log:
        keys = [
            ctx.env.get(m.provider.key_env, ""),
            ctx.env.get("FAL_KEY_ID", ""),
            ctx.env.get("FAL_KEY_SECRET", ""),
            *(ctx.env.get(account.key_env, "") for account in m.provider.accounts),
        ]
        log = console.EventLog(Path(a.log), secrets=keys)
        listeners.append(log)

    def on_event(event: Any) -> None:
        if event.get("type") == "finished":
            return  # the CLI logs its own, fuller record of the end (below)
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
            models=ctx.models_dir(),
            state=state,
            lease=lease,
            outage=outage,
        )
        if log is not None:
            log({"type": "finished", **console.summary_record(summary, plan)})
    finally:
        display.close()
        if log is not None:
            log.close()
    return console.report(
        summary, plan, ctx.out, ctx.err, as_json=a.json, state=api.resolve_state(state or m.state)
    )


def cmd_status(ctx: Context) -> int:
    from renderer import api, console

    state = api.resolve_state(ctx.args.state or ctx.env.get("RENDERER_STATE") or None)
    return console.status(ctx.args.run, ctx.out, as_json=ctx.args.json, state=state, env=ctx.env)


def cmd_finalize(ctx: Context) -> int:
    from renderer import api
    from renderer.output.storage import open_storage
    from renderer.runner import RunConfig
    from renderer.runner import session as run_mod

    a = ctx.args
    (plan,) = load_plans(ctx, [a.manifest])
    if a.output and is_remote(a.output):
        parse_s3(a.output)
        plan.manifest = replace(plan.manifest, output_url=a.output)
    elif a.output:
        plan.manifest = replace(plan.manifest, output=Path(a.output), output_url=None)
    m = plan.manifest
    state = api.resolve_state(a.state or ctx.env.get("RENDERER_STATE") or m.state)
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
