"""One run, wired: the provider, the run lock, the store, the protocol client and the runner.

(Not `run.py`: `renderer.run` is the Python API's function.) `execute_async` wires the pieces:
the provider (fal, a custom URL, or an emulator started in this process), the run lock, the
store, the protocol client and the runner, plus Ctrl-C handling: the first stops new
submissions and lets submits in flight record their ids; the second stops at once. Either way
everything recorded stays recorded, and the next run resumes. Also `resolve_provider` (the
provider and its keys from the manifest, a flag and the environment) and `finalize`.
What the commands print is renderer/console.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from renderer.errors import UsageError
from renderer.layout import DB_NAME, LAYOUT_META
from renderer.manifest.hub import keep_commits
from renderer.manifest.types import PROVIDERS, ProviderConfig
from renderer.models.quickcheck import QuickCheck
from renderer.models.schemas import SchemaRegistry
from renderer.output.storage import LocalStorage, Storage
from renderer.plan import planner as plan_mod
from renderer.plan.jobs import Plan
from renderer.provider.client import FAL_QUEUE_ORIGINS, Client
from renderer.runner.config import Event, RunConfig
from renderer.runner.deliver import write_dataset, write_record
from renderer.runner.limits import delivery_bound, provider_capacity
from renderer.runner.record import Summary, run_record
from renderer.runner.runner import Runner
from renderer.state.choose import open_store
from renderer.state.lock import RunLock
from renderer.state.rows import sql_error
from renderer.state.store import Store

if TYPE_CHECKING:  # the emulator (its server, images, faults) loads only when it renders
    from renderer.provider.emulator import EmulatorConfig

T = TypeVar("T")


@dataclass(frozen=True)
class AccountSettings:
    """One of provider.accounts, its key read from the environment."""

    name: str
    key_env: str
    concurrency: int
    rate: float | None
    key: str | None = field(default=None, repr=False)  # never printed, logged or stored


@dataclass(frozen=True)
class ProviderSettings:
    kind: str  # emulator | fal | custom
    url: str | None
    auth: str
    key_env: str
    key: str | None = field(default=None, repr=False)  # never printed, logged or stored
    emulator: Mapping[str, Any] = field(default_factory=dict)
    accounts: tuple[AccountSettings, ...] = ()  # provider.accounts; empty: the single key above

    @property
    def secrets(self) -> list[str]:
        """Every key this run may send (for the log's last line of defence)."""
        return [k for k in (self.key, *(a.key for a in self.accounts)) if k]

    @property
    def label(self) -> str:
        """Who renders, as recorded beside each image: emulator, fal, or a custom provider's origin."""
        if self.kind != "custom" or not self.url:
            return self.kind
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def resolve_provider(
    config: ProviderConfig, override: str | None, env: Mapping[str, str]
) -> ProviderSettings:
    kind, url = config.kind, config.url
    if override:
        if override in PROVIDERS:
            kind, url = override, PROVIDERS[override]
        elif override.startswith(("http://", "https://")):
            kind, url = "custom", override
        else:
            raise UsageError(
                f"--provider {override!r}: use emulator, fal, or a base URL (http://… or https://…)"
            )
    if config.accounts:
        return ProviderSettings(
            kind,
            url,
            config.auth,
            config.key_env,
            None,
            dict(config.emulator),
            _accounts(config, kind, env),
        )
    key = None
    if kind != "emulator":
        key = env.get(config.key_env)
        split = config.key_env == "FAL_KEY"  # fal's own clients also accept the key as id + secret
        if not key and split and env.get("FAL_KEY_ID") and env.get("FAL_KEY_SECRET"):
            key = f"{env['FAL_KEY_ID']}:{env['FAL_KEY_SECRET']}"
        if not key and not _loopback(url or ""):
            raise UsageError(
                f"the API key variable {config.key_env} is not set"
                + (" (nor FAL_KEY_ID and FAL_KEY_SECRET)" if split else ""),
                hint=f"export {config.key_env}=… (renderer reads keys only from the environment), "
                "or run on the built-in emulator with --provider emulator",
            )
    return ProviderSettings(kind, url, config.auth, config.key_env, key, dict(config.emulator))


def _loopback(url: str) -> bool:
    """A provider on this machine (`renderer emulator`, a local test server): it may take no key.
    fal and every hosted proxy are elsewhere, so a missing key is still caught for them."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _accounts(
    config: ProviderConfig, kind: str, env: Mapping[str, str]
) -> tuple[AccountSettings, ...]:
    """Each account with its key; every missing variable named at once (the built-in emulator needs none)."""
    accounts = tuple(
        AccountSettings(a.name, a.key_env, a.concurrency, a.rate, env.get(a.key_env) or None)
        for a in config.accounts
    )
    missing = [a for a in accounts if a.key is None]
    if missing and kind != "emulator":
        names = ", ".join(
            a.key_env if a.name == a.key_env else f"{a.key_env} (account {a.name})" for a in missing
        )
        raise UsageError(
            f"the API key variable{'s' if len(missing) > 1 else ''} {names} of provider.accounts "
            f"{'are' if len(missing) > 1 else 'is'} not set",
            hint=f"export {missing[0].key_env}=… (renderer reads keys only from the environment), remove the "
            "account from provider.accounts, or run on the built-in emulator with --provider emulator",
        )
    seen: dict[str, str] = {}
    for a in accounts:
        if a.key is not None and a.key in seen:
            # One key counted as two accounts would double that account's limits.
            raise UsageError(
                f"{seen[a.key]} and {a.key_env} hold the same key; one key is one account",
                hint="give each account of provider.accounts its own key, or list it once",
            )
        if a.key is not None:
            seen[a.key] = a.key_env
    return accounts


def _emulator_config(settings: Mapping[str, Any]) -> EmulatorConfig:
    from renderer.provider.emulator import EmulatorConfig, ServiceTime

    return EmulatorConfig(
        workers=int(settings.get("workers", 2)),
        service=ServiceTime("fixed", float(settings.get("latency", 0.05))),
        max_side=int(settings.get("max_side", 256)),
        variants=tuple(sorted(dict(settings.get("variants", {})).items())),
        # The run's own emulator serves what the manifest asks for: an endpoint marked
        # `unchecked: true` has no schema, and gets a generic image instead of a 404.
        allow_unknown=True,
    )


def room_for_connections(connections: int) -> None:
    """Raise this process's open-file limit, if it must and may, to hold `connections` sockets.

    A request at the provider holds a status stream (one connection) and, with its lead, an
    account of limit S may have 2 × S there (lead.py): 580 connections at S = 256, beside the
    run's files. Many systems start a process with a soft limit of 1,024 files under a far
    higher hard limit, which a process may raise itself (as servers do). Never lowered; where
    the hard limit is lower, the run keeps it and a connection beyond it fails as a transport
    error (retried), as before.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows: no such limit
        return
    need = connections + 256  # the run's own files, the state and the log
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _run_on_new_loop(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop where it is installed (a dependency except on Windows).

    uvloop's loop and transports cost less CPU per request than asyncio's; the run does not
    depend on which loop it gets. (In the suite, runs through the CLI or the API get uvloop, with
    an in-process emulator on the same loop; tests that call asyncio.run themselves, and the
    background emulators, use asyncio's loop.)
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


def run_sync(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop.

    Outside a loop this is asyncio.run. Inside one (a Jupyter cell, an async framework) the
    loop cannot be re-entered, so the coroutine runs on a fresh loop in a worker thread while
    this call waits; `await run_async(...)` is the non-blocking alternative there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_on_new_loop(work)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = _run_on_new_loop(work)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="renderer-run", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return cast(T, box["result"])


async def execute_async(
    plan: Plan,
    provider: ProviderSettings,
    config: RunConfig,
    registry: SchemaRegistry,
    events: Callable[[Event], None],
    *,
    interrupts: bool = True,
    storage: Storage | None = None,
) -> Summary:
    """The whole run on the caller's event loop: lock, state, provider, runner.

    `interrupts`: take over Ctrl-C for a graceful stop while the run lasts (only when this
    process owns the loop: a notebook kernel's own interrupt handling must stay in place).
    """
    run_dir = plan.manifest.run_dir
    # Shared state: any number of workers, anywhere; leases (not a lock file) keep them apart.
    with contextlib.nullcontext() if config.state else RunLock(run_dir):
        store = open_store(config.state, run_dir, plan.manifest.name, outage=config.outage)
        try:
            plan = keep_layout(plan, store, registry)
            if plan.manifest.hub:  # `- hub:` entries: refuse a commit other than the run's
                keep_commits(plan.manifest.hub, store.meta, store.set_meta, plan.manifest.doc)
            return await _execute(
                plan, provider, config, registry, events, store, interrupts, storage
            )
        except sqlite3.Error as exc:
            # A damaged page shows only when it is read: say what, where and what to do.
            raise sql_error(Path(store.where), exc) from exc
        finally:
            store.close()


def keep_layout(plan: Plan, store: Store, registry: SchemaRegistry) -> Plan:
    """The plan in the layout its run started with (recorded in the state on the first run).

    `layout: auto` shards above 10,000 prompts: a caption set that grows past that must not move
    the images already written, nor split one run between two layouts. A run recorded before
    layouts existed is flat.
    """
    recorded = store.meta(LAYOUT_META)
    if recorded is None:
        recorded = "flat" if sum(store.counts().values()) else plan.layout
        store.set_meta(LAYOUT_META, recorded)
    if recorded != plan.layout:
        return plan_mod.build(plan.manifest, registry, recorded)
    return plan


async def _execute(
    plan: Plan,
    provider: ProviderSettings,
    config: RunConfig,
    registry: SchemaRegistry,
    events: Callable[[Event], None],
    store: Store,
    interrupts: bool = True,
    storage: Storage | None = None,
) -> Summary:
    async with contextlib.AsyncExitStack() as stack:
        url = provider.url
        if provider.kind == "emulator":
            # Imported here: a run on a real provider never loads the emulator.
            from renderer.provider.emulator import Emulator

            emulator = await stack.enter_async_context(
                Emulator(_emulator_config(provider.emulator), registry=registry)
            )
            url = emulator.url
        assert url is not None
        # A status stream per request at the provider, plus every delivery: none waits for a
        # connection (a pool smaller than that would be a hidden limit).
        connections = provider_capacity(config) + delivery_bound(config.concurrency) + 4
        room_for_connections(connections)
        client = await stack.enter_async_context(
            Client(
                url,
                auth_scheme=provider.auth,
                key=provider.key,
                retry=config.retry,
                connections=connections,
                # fal's answers must stay on fal's queue hosts; a proxy's are rebased onto the proxy
                rebase=provider.kind != "fal",
                trusted_origins=FAL_QUEUE_ORIGINS if provider.kind == "fal" else frozenset(),
            )
        )

        # Each endpoint's output schema as a QuickCheck (None: only the full validator decides).
        quick: dict[str, QuickCheck | None] = {}

        def check_output(endpoint: str, output: Any) -> list[Any]:
            if endpoint not in registry:
                return []
            if endpoint not in quick:
                schema = registry.schema(endpoint)
                defs = schema.get("$defs", {})
                quick[endpoint] = (
                    QuickCheck.of({"$ref": "#/$defs/Output", "$defs": defs})
                    if "Output" in defs
                    else None
                )
            fast = quick[endpoint]
            if fast is not None and fast.valid(output):
                return []  # the common case, decided as the full validator would (quickcheck.py)
            return registry.check(endpoint, output, "output")

        # provider.accounts: one client per account, sharing the pool, each sending its own key.
        clients = {a.name: client.with_key(a.key) for a in provider.accounts}
        runner = Runner(
            plan,
            store,
            client,
            config,
            events=events,
            output_check=check_output,
            storage=storage,
            clients=clients,
        )
        presses = [0]

        def on_interrupt(signum: int) -> None:
            # SIGTERM (a service manager, `kill`, a CI timeout) is handled like Ctrl-C.
            presses[0] += 1
            if presses[0] == 1:
                events(
                    {
                        "type": "note",
                        "message": "stopping: no new submissions; waiting for submits in flight "
                        "to record their request ids (Ctrl-C again to stop at once)",
                    }
                )
                runner.stop(signal=signum)
            else:
                runner.stop(force=True, signal=signum)

        loop = asyncio.get_running_loop()
        installed = []
        if interrupts:
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signum, on_interrupt, int(signum))
                    installed.append(signum)
        try:
            summary = await runner.run()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
        return summary


def finalize(plan: Plan, config: RunConfig, storage: Storage | None) -> dict[str, Any]:
    """`renderer finalize`: metadata.jsonl, the card and run.json from the state, as it stands now.

    For a distributed run whose finishing worker died, or to publish a partial dataset; the
    workers may still be running (each row is a committed, finished job).
    """
    run_dir = plan.manifest.run_dir
    if not config.state and not (run_dir / DB_NAME).is_file():
        raise UsageError(
            f"{run_dir}: no run here (no {DB_NAME})",
            hint="run the manifest first, or give the --state of its distributed run",
        )
    store = open_store(config.state, run_dir, plan.manifest.name, readonly=True)
    try:
        out = storage or LocalStorage(run_dir)
        if not out.remote:
            run_dir.mkdir(parents=True, exist_ok=True)
        write_dataset(plan, store, out, config.provider or None)
        counts, unfinished = store.counts(), store.unfinished()
        outcome = "incomplete" if unfinished else ("failed" if counts["failed"] else "done")
        record = run_record(
            plan,
            outcome,
            store=store,
            counts=counts,
            unfinished=unfinished,
            finalized=time.time(),
        )
        write_record(out, run_dir, record)
        return record
    finally:
        store.close()
