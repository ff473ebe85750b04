"""The `run` and `status` commands: part of the CLI layer (it writes only to the streams it is given).

`execute` wires the pieces: the provider (fal, a custom URL, or an emulator started in this
process), the run lock, the store, the protocol client and the runner, plus Ctrl-C handling:
the first stops new submissions and lets submits in flight record their ids; the second stops
at once. Either way everything recorded stays recorded, and the next run resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from tqdm import tqdm

from .client import Client
from .emulator import Emulator, EmulatorConfig, ServiceTime
from .errors import UsageError
from .manifest import PROVIDERS, ProviderConfig
from .plan import Plan
from .runner import Event, RunConfig, Runner, Summary
from .schemas import SchemaRegistry
from .store import DB_NAME, RunLock, Store


@dataclass(frozen=True)
class ProviderSettings:
    kind: str  # emulator | fal | custom
    url: str | None
    auth: str
    key_env: str
    key: str | None = field(default=None, repr=False)  # never printed, logged or stored
    emulator: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Who renders, as recorded beside each image: emulator, fal, or a custom provider's origin."""
        if self.kind != "custom" or not self.url:
            return self.kind
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def resolve_provider(config: ProviderConfig, override: str | None, env: Mapping[str, str]) -> ProviderSettings:
    kind, url = config.kind, config.url
    if override:
        if override in PROVIDERS:
            kind, url = override, PROVIDERS[override]
        elif override.startswith(("http://", "https://")):
            kind, url = "custom", override
        else:
            raise UsageError(f"--provider {override!r}: use emulator, fal, or a base URL (http://… or https://…)")
    key = None
    if kind != "emulator":
        key = env.get(config.key_env)
        if not key:
            raise UsageError(
                f"the API key variable {config.key_env} is not set",
                hint=f"export {config.key_env}=… (renderer reads keys only from the environment), "
                "or run on the built-in emulator with --provider emulator",
            )
    return ProviderSettings(kind, url, config.auth, config.key_env, key, dict(config.emulator))


class Display:
    """Progress bar and log lines on stderr; silent with --quiet."""

    def __init__(self, err: TextIO, *, quiet: bool, total: int) -> None:
        self.err = err
        self.quiet = quiet
        self.bar: tqdm[Any] | None = None
        self.total = total
        self.finished_before = 0  # jobs an earlier run finished: the bar starts there

    def __call__(self, event: Event) -> None:
        kind = event["type"]
        if kind == "start":
            self.finished_before = event["done"]
            if not self.quiet:
                self.bar = tqdm(total=self.total, initial=event["done"], file=self.err, unit="job",
                                mininterval=0.2, dynamic_ncols=True, leave=True)
            if event["ambiguous"]:
                self.log(f"note: {event['ambiguous']} submit(s) of an earlier run have no recorded outcome "
                         "and will be sent again")
        elif kind == "progress" and self.bar is not None:
            self.bar.n = self.finished_before + event["done"] + event["failed"]
            self.bar.set_postfix(failed=event["failed"], in_flight=event["in_flight"], queued=event["queued"],
                                 refresh=False)
            self.bar.update(0)
        elif kind == "failed":
            self.log(f"failed: {event['key']}: {event['reason']}")
        elif kind == "throttled":
            self.log(f"throttled by the provider (429): in-flight limit now {event['limit']:.1f}")
        elif kind == "queued":
            self.log(f"waiting in the provider's queue: {event['key']} at position {event['position']}")
        elif kind in ("fatal", "warning", "note"):
            self.log(f"{kind}: {event['message']}")

    def log(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.err)
        else:
            self.err.write(text + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _emulator_config(settings: Mapping[str, Any]) -> EmulatorConfig:
    return EmulatorConfig(workers=int(settings.get("workers", 2)),
                          service=ServiceTime("fixed", float(settings.get("latency", 0.05))),
                          max_side=int(settings.get("max_side", 256)),
                          variants=tuple(sorted(dict(settings.get("variants", {})).items())))


def execute(plan: Plan, provider: ProviderSettings, config: RunConfig, registry: SchemaRegistry,
            display: Display) -> Summary:
    run_dir = plan.manifest.run_dir
    with RunLock(run_dir):
        store = Store(run_dir)
        try:
            return asyncio.run(_execute(plan, provider, config, registry, display, store))
        finally:
            store.close()
            display.close()


async def _execute(plan: Plan, provider: ProviderSettings, config: RunConfig, registry: SchemaRegistry,
                   display: Display, store: Store) -> Summary:
    async with contextlib.AsyncExitStack() as stack:
        url = provider.url
        if provider.kind == "emulator":
            emulator = await stack.enter_async_context(Emulator(_emulator_config(provider.emulator), registry=registry))
            url = emulator.url
        assert url is not None
        client = await stack.enter_async_context(
            Client(url, auth_scheme=provider.auth, key=provider.key, retry=config.retry,
                   connections=max(8, config.concurrency * 2 + 4)))

        def check_output(endpoint: str, output: Any) -> list[Any]:
            return registry.check(endpoint, output, "output") if endpoint in registry else []

        runner = Runner(plan, store, client, config, events=display, output_check=check_output)
        presses = [0]

        def on_interrupt() -> None:
            presses[0] += 1
            if presses[0] == 1:
                display.log("stopping: no new submissions; waiting for submits in flight to record their "
                            "request ids (Ctrl-C again to stop at once)")
                runner.stop()
            else:
                runner.stop(force=True)

        loop = asyncio.get_running_loop()
        installed = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
            installed = True
        try:
            summary = await runner.run()
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)
        return summary


def report(summary: Summary, plan: Plan, out: TextIO, err: TextIO) -> int:
    counts = summary.counts
    seconds = summary.finished - summary.started
    run_dir = plan.manifest.run_dir
    out.write(f"{summary.outcome}: {counts['downloaded']}/{len(plan.jobs)} jobs downloaded, {counts['failed']} failed, "
              f"{summary.images} images written this run in {seconds:.1f} s → {run_dir}/\n")
    if summary.outcome == "stopped":
        err.write(f"error: {summary.error}\n")
        if summary.hint:
            err.write(f"hint: {summary.hint}\n")
        err.write("hint: nothing further was sent; fix the account and rerun to resume\n")
    elif summary.outcome == "interrupted":
        err.write(f"interrupted: state saved in {run_dir / DB_NAME}; rerun the same command to resume\n")
    elif summary.outcome == "failed":
        err.write(f"hint: `renderer status {run_dir}` lists the failures; `--retry-failed` tries them again\n")
    return summary.exit_code


def status(run_dir: Path, out: TextIO, *, as_json: bool) -> int:
    if not (run_dir / DB_NAME).is_file():
        raise UsageError(f"{run_dir}: no run here (no {DB_NAME})", hint="pass a run directory such as outputs/NAME")
    store = Store(run_dir, readonly=True)
    try:
        counts = store.counts()
        failures = [(r.key, r.prompt_id, r.model, r.seed, r.error_kind, r.error) for r in store.rows(in_plan=True, state="failed")]
        stale = [(r.key, r.stem, r.state) for r in store.rows(in_plan=False)]
        ambiguous = store.ambiguous()
        last_run = store.db.execute("SELECT summary FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        store.close()
    rerun = {"submit": counts["planned"], "of_which_ambiguous": ambiguous, "reattach": counts["submitted"],
             "download": counts["completed"], "skip_failed": counts["failed"], "skip_done": counts["downloaded"]}
    if as_json:
        out.write(json.dumps({"run": str(run_dir), "counts": counts, "rerun": rerun,
                              "failures": [dict(zip(("key", "prompt", "model", "seed", "kind", "reason"), f, strict=True))
                                           for f in failures],
                              "no_longer_in_manifest": [dict(zip(("key", "stem", "state"), s, strict=True)) for s in stale],
                              "last_run": json.loads(last_run[0]) if last_run and last_run[0] else None},
                             indent=2) + "\n")
        return 0
    out.write(f"run: {run_dir}\n")
    out.write("  " + "  ".join(f"{k}={v}" for k, v in counts.items()) + "\n")
    out.write(f"a rerun would: submit {rerun['submit']} (ambiguous {ambiguous}), reattach {rerun['reattach']}, "
              f"download {rerun['download']}, leave {rerun['skip_failed']} failed (use --retry-failed)\n")
    for key, prompt, model, seed, kind, reason in failures:
        out.write(f"failed: {prompt} / {model} / seed {seed} [{kind}] {reason}  ({key})\n")
    for key, stem, state in stale:
        out.write(f"no longer in the manifest: {stem} ({state}, {key})\n")
    if last_run and last_run[0]:
        last = json.loads(last_run[0])
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["finished"]))
        out.write(f"last run: {last['outcome']} at {when}, {last['images_this_run']} images\n")
    return 0

