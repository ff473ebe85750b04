"""What the `run`, `status` and `finalize` commands print: the progress display, the --log file,
the end-of-run report and the status of a run directory.

Only the CLI imports this (the runner reports through events; the Python API prints nothing).
It writes only to the streams it is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from renderer.errors import UsageError
from renderer.layout import DB_NAME
from renderer.output.source import RunSource, open_source
from renderer.output.storage import run_location
from renderer.plan.jobs import Plan
from renderer.runner import SINGLE_KEY, Event, Summary, iso_time
from renderer.state.pgconn import redact
from renderer.state.rows import sql_error
from renderer.state.store import Store

if TYPE_CHECKING:  # imported when a bar is shown (a terminal, not --quiet): ~40 ms otherwise spent
    from tqdm import tqdm


class Display:
    """Progress and log lines on stderr; silent with --quiet.

    On a terminal: a tqdm bar. Otherwise (piped, CI, a log file): a plain line every
    `interval` seconds and one at the end, never a carriage return. Either way the total is
    what this run will end at: jobs finished earlier plus the jobs this run will try.
    """

    def __init__(
        self,
        err: TextIO,
        *,
        quiet: bool,
        tty: bool | None = None,
        interval: float = 10.0,
    ) -> None:
        self.err = err
        self.quiet = quiet
        if tty is None:
            isatty = getattr(err, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.interval = interval
        self.bar: tqdm[Any] | None = None
        self.total = 0
        self.finished_before = 0  # jobs an earlier run finished: the count starts there
        self.last: Event | None = None
        self.last_line = 0.0
        self.started = time.monotonic()

    @staticmethod
    def describe(event: Event) -> str:
        """prompt, model, axes and seed of an event's job (the runner reads them from the state), and its key.

        Nothing is held per job: a plan of millions is never turned into a lookup table here.
        """
        job = event.get("job")
        return f"{job} ({event['key']})" if job else str(event["key"])

    def __call__(self, event: Event) -> None:
        kind = event["type"]
        if kind == "start":
            self.finished_before = event["done"]
            self.total = event["done"] + event["pending"]
            if self.quiet:
                pass
            elif self.tty:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=self.total,
                    initial=event["done"],
                    file=self.err,
                    unit="job",
                    mininterval=0.2,
                    dynamic_ncols=True,
                    leave=True,
                )
            else:
                self.line(event["done"], 0, 0, 0)
            if event["ambiguous"]:
                self.log(
                    f"note: {event['ambiguous']} submit(s) of an earlier run have no recorded outcome "
                    "and will be sent again"
                )
        elif kind == "progress":
            self.last = event
            done = self.finished_before + event["done"] + event["failed"]
            if self.bar is not None:
                self.bar.n = done
                self.bar.set_postfix(
                    failed=event["failed"],
                    in_flight=event["in_flight"],
                    queued=event["queued"],
                    refresh=False,
                )
                self.bar.update(0)
            elif (
                not self.quiet
                and not self.tty
                and time.monotonic() - self.last_line >= self.interval
            ):
                self.line(done, event["failed"], event["in_flight"], event["queued"])
        elif kind == "failed":
            self.log(f"failed: {self.describe(event)}: {event['reason']}")
        elif kind == "throttled":
            whose = f" for account {event['account']!r}" if event.get("account") is not None else ""
            self.log(
                f"throttled by the provider (429): in-flight limit{whose} now {event['limit']:.1f}"
            )
        elif kind == "queued":
            self.log(
                f"waiting in the provider's queue: {self.describe(event)} at position {event['position']}"
            )
        elif kind in ("fatal", "warning", "note"):
            self.log(f"{kind}: {event['message']}")

    def line(self, done: int, failed: int, in_flight: int, queued: int) -> None:
        self.last_line = time.monotonic()
        percent = f"{100 * done / self.total:.0f}%" if self.total else "-"
        self.err.write(
            f"progress: {done}/{self.total} jobs ({percent}), {failed} failed, {in_flight} in flight, "
            f"{queued} queued, {self.last_line - self.started:.0f} s\n"
        )
        with contextlib.suppress(AttributeError, OSError, ValueError):
            self.err.flush()

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
        elif not self.quiet and not self.tty and self.last is not None:
            e = self.last
            self.line(
                self.finished_before + e["done"] + e["failed"],
                e["failed"],
                e["in_flight"],
                e["queued"],
            )
            self.last = None


def summary_record(summary: Summary, plan: Plan) -> dict[str, Any]:
    """The run's outcome as data: `run --json` prints it, one JSON document on stdout."""
    return {
        "outcome": summary.outcome,
        "exit_code": summary.exit_code,
        "run": str(plan.manifest.run_dir),
        "output": (
            run_location(plan.manifest.output_url, plan.manifest.name)
            if plan.manifest.output_url
            else str(plan.manifest.run_dir)
        ),
        "manifest": str(plan.manifest.file),
        "jobs": len(plan.jobs),
        "counts": summary.counts,
        "images_this_run": summary.images,
        "started": summary.started,
        "finished": summary.finished,
        "started_at": iso_time(summary.started),
        "finished_at": iso_time(summary.finished),
        "seconds": round(summary.finished - summary.started, 3),
        "requests": summary.calls,
        "ambiguous_resubmits": summary.ambiguous_resubmits,
        "paid_twice": {
            "count": summary.paid_twice,
            "ambiguous": summary.ambiguous_resubmits,
            "resubmits": summary.resubmits,
        },
        "cost": {
            "currency": "USD",
            "this_run": summary.cost,
            "all_runs": summary.total_cost,
            "estimate": summary.estimate,
        },
        "error": summary.error,
        "hint": summary.hint,
        **({"accounts": summary.accounts} if summary.accounts else {}),
        **({"waiting_for_accounts": summary.waiting} if summary.waiting else {}),
    }


def _why(summary: Summary) -> str:
    """The reasons inputs were paid for again this run, most frequent first."""
    reasons = [f"{n} x {reason}" for reason, n in summary.resubmits.items()]
    if summary.ambiguous_resubmits:
        reasons.append(
            f"{summary.ambiguous_resubmits} x an earlier run stopped between a submit and its record"
        )
    return "; ".join(reasons)


def _usd(value: float | None) -> str:
    return "unpriced" if value is None else f"${value:,.2f}"


def report(
    summary: Summary,
    plan: Plan,
    out: TextIO,
    err: TextIO,
    *,
    as_json: bool = False,
    state: str | None = None,
) -> int:
    """Print a run's summary; `state` is the shared state's URL when the run used one."""
    counts = summary.counts
    seconds = summary.finished - summary.started
    run_dir = plan.manifest.run_dir
    m = plan.manifest
    where = run_location(m.output_url, m.name) if m.output_url else str(run_dir)
    if as_json:
        out.write(json.dumps(summary_record(summary, plan), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(
            f"{summary.outcome}: {counts['downloaded']}/{len(plan.jobs)} jobs downloaded, {counts['failed']} failed, "
            f"{summary.images} images written this run in {seconds:.1f} s → {where}/\n"
        )
        if summary.outcome == "partial" and summary.hint:
            out.write(f"note: {summary.hint}\n")
        if summary.paid_twice:
            out.write(f"paid twice: {summary.paid_twice} ({_why(summary)})\n")
        if summary.total_cost is not None and summary.provider == "emulator":
            # Placeholder images are free: what is shown is what fal would charge by the prices.
            out.write(
                f"cost: $0.00 (the emulator's placeholder images are free; on fal by the manifest's "
                f"prices: {_usd(summary.cost)} this run, estimate for the plan {_usd(summary.estimate)})\n"
            )
        elif summary.total_cost is not None:
            out.write(
                f"cost: {_usd(summary.cost)} this run, {_usd(summary.total_cost)} for all finished jobs "
                f"(estimate for the plan {_usd(summary.estimate)})\n"
            )
    for name, account in summary.accounts.items():
        if account["stopped"] and summary.outcome != "stopped":
            err.write(
                f"warning: account {name!r} stopped: {account['stopped']}; the other accounts did its work\n"
            )
    if summary.outcome == "stopped":
        err.write(f"error: {summary.error}\n")
        if summary.hint:
            err.write(f"hint: {summary.hint}\n")
        if not summary.waiting:
            err.write("hint: nothing further was sent; fix the account and rerun to resume\n")
    elif summary.outcome == "interrupted":
        # Shared state lives in the database; its URL is shown without the password.
        saved = f"the shared state {redact(state)}" if state else str(run_dir / DB_NAME)
        err.write(f"interrupted: state saved in {saved}; rerun the same command to resume\n")
    elif summary.outcome == "failed":
        err.write(
            f"hint: `renderer status {where}` lists the failures; `--retry-failed` tries them again\n"
        )
    return summary.exit_code


class EventLog:
    """`--log FILE`: one JSON object per line for each event of the run (not the per-job progress ticks).

    Lines carry `time` (epoch) and `at` (ISO 8601). Any secret given (the API key, its parts)
    is replaced by "***" wherever it appears, as a last line of defence.
    """

    def __init__(self, path: Path, secrets: Sequence[str] = ()) -> None:
        # Checked now, opened at the first event: bad input elsewhere must leave no file behind.
        folder = path.parent if str(path.parent) else Path(".")
        if (
            path.is_dir()
            or not folder.is_dir()
            or not os.access(folder, os.W_OK)
            or (path.exists() and not os.access(path, os.W_OK))
        ):
            raise UsageError(
                f"--log {path}: not a writable file path",
                hint="give a file in an existing, writable folder",
            )
        self.path = path
        self.handle: TextIO | None = None
        self.closed = False
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, event: Event) -> None:
        if self.closed or event.get("type") == "progress":
            return
        if self.handle is None:
            try:
                self.handle = self.path.open("a", encoding="utf-8")
            except OSError as exc:
                raise UsageError(
                    f"--log {self.path}: cannot open it for writing: {exc.strerror or exc}"
                ) from exc
        now = time.time()
        line = json.dumps(
            {"time": round(now, 3), "at": iso_time(now), **event}, ensure_ascii=False, default=str
        )
        for secret in self.secrets:
            line = line.replace(secret, "***")
        self.handle.write(line + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.closed = True
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def status(
    run: str | Path | RunSource,
    out: TextIO,
    *,
    as_json: bool,
    state: str | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """`renderer status`: a run directory (or s3://…/NAME), its SQLite state or the shared `state`."""
    source = run if isinstance(run, RunSource) else open_source(run, state, env)
    with source:
        store = source.store()
        try:
            return _status(source, store, out, as_json=as_json)
        except sqlite3.Error as exc:
            raise sql_error(Path(store.where), exc) from exc


_SAID = {"live": "live", "silent": "no heartbeat: stopped or killed", "finished": "finished"}
LIVE_AFTER = 120.0  # s: a worker whose heartbeat is older (and that never said it ended) was stopped or killed


def _worker_state(worker: dict[str, Any], now: float) -> str:
    if worker.get("left") is not None:
        return "finished"
    return "live" if now - worker["heartbeat"] < LIVE_AFTER else "silent"


def _status(source: RunSource, store: Store, out: TextIO, *, as_json: bool) -> int:
    run_dir = source.label
    try:
        counts = store.counts()
        failures = [
            (r.key, r.prompt_id, r.model, r.seed, r.axes, r.error_kind, r.error)
            for r in store.rows(in_plan=True, state="failed")
        ]
        stale = [(r.key, r.stem, r.state) for r in store.rows(in_plan=False)]
        # Which account holds each submitted request (only that account's key can follow it).
        by_account: dict[str, int] = {}
        for account, n in store.submitted_by_account().items():  # counted by the database
            name = account if account is not None else SINGLE_KEY
            by_account[name] = by_account.get(name, 0) + n
        ambiguous = store.ambiguous()
        # What a rerun would fetch again: finished jobs whose files are gone or changed (on disk:
        # size + mtime; in a bucket: size + stored sha256). (Shared state with local output: the
        # files are on the workers' disks, not here; `run --verify` checks them there.)
        missing = (
            []
            if store.shared and not source.remote
            else [
                (key, e["path"])
                for key, entries in store.downloaded_files()
                for e in entries
                if not source.intact(e)
            ]
        )
        workers = store.workers()
        accounts = store.accounts()
        last = store.last_summary()
        resubmits = store.resubmit_reasons()
        paid_twice = store.total_ambiguous() + sum(resubmits.values())
    finally:
        store.close()
    damaged_jobs = len({key for key, _ in missing})
    rerun = {
        "submit": counts["planned"],
        "of_which_ambiguous": ambiguous,
        "reattach": counts["submitted"],
        "download": counts["completed"] + damaged_jobs,
        "of_which_missing_on_disk": damaged_jobs,
        "skip_failed": counts["failed"],
        "skip_done": counts["downloaded"] - damaged_jobs,
    }
    if as_json:
        out.write(
            json.dumps(
                {
                    "run": run_dir,
                    "counts": counts,
                    "rerun": rerun,
                    "missing_on_disk": [{"key": k, "path": p} for k, p in missing],
                    "failures": [
                        dict(
                            zip(
                                ("key", "prompt", "model", "seed", "axes", "kind", "reason"),
                                f,
                                strict=True,
                            )
                        )
                        for f in failures
                    ],
                    "no_longer_in_manifest": [
                        dict(zip(("key", "stem", "state"), s, strict=True)) for s in stale
                    ],
                    "paid_twice": {"count": paid_twice, "resubmits": resubmits},
                    "workers": [{**w, "state": _worker_state(w, time.time())} for w in workers],
                    "accounts": accounts,
                    "submitted_by_account": by_account,
                    "last_run": last,
                },
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )
        return 0
    out.write(f"run: {run_dir}\n")
    out.write("  " + "  ".join(f"{k}={v}" for k, v in counts.items()) + "\n")
    out.write(
        f"a rerun would: submit {rerun['submit']} (ambiguous {ambiguous}), reattach {rerun['reattach']}, "
        f"download {rerun['download']} ({damaged_jobs} with files missing or changed on disk), "
        f"leave {rerun['skip_failed']} failed (use --retry-failed)\n"
    )
    if paid_twice:
        reasons = "; ".join(f"{n} x {reason}" for reason, n in resubmits.items())
        ambiguous_all = paid_twice - sum(resubmits.values())
        if ambiguous_all:
            reasons += (
                "; " if reasons else ""
            ) + f"{ambiguous_all} x a run stopped between a submit and its record"
        out.write(f"paid twice: {paid_twice} over all runs ({reasons})\n")
    now = time.time()
    ended = 0
    for w in workers:
        alive = _worker_state(w, now)
        if alive == "finished" and not w["held"]:
            ended += 1  # counted, not listed: a long run has had many
        elif store.shared or w["held"]:
            out.write(
                f"worker {w['id']} on {w['host']} ({_SAID[alive]}): "
                f"{w['held']} job(s) held, last heartbeat {now - w['heartbeat']:.0f} s ago\n"
            )
    if ended and store.shared:
        out.write(f"finished workers: {ended}\n")
    for a in accounts:
        out.write(f"account {a['name']}: {a['in_flight']} of {a['limit']} in flight\n")
    if set(by_account) - {SINGLE_KEY}:
        out.write(
            "submitted, by account: "
            + ", ".join(f"{name}={n}" for name, n in by_account.items())
            + "\n"
        )
    for name, n in ((last or {}).get("waiting_for_accounts") or {}).items():
        out.write(
            f"waiting for an account: {n} submitted job(s) of {name!r} could not be followed in the last run "
            "(that account was not configured or was stopped); rerun with it to finish them\n"
        )
    for name, account in ((last or {}).get("accounts") or {}).items():
        if account.get("stopped"):
            out.write(f"account {name!r} stopped in the last run: {account['stopped']}\n")
    for key, path in missing:
        out.write(
            f"missing or changed {'in the bucket' if source.remote else 'on disk'}: {path} ({key})\n"
        )
    for key, prompt, model, seed, axes, kind, reason in failures:
        described = "".join(f" {k}={json.dumps(v, ensure_ascii=False)}" for k, v in axes.items())
        out.write(
            f"failed: prompt={prompt} model={model} seed={seed}{described} [{kind}] {reason}  ({key})\n"
        )
    for key, stem, state in stale:
        out.write(f"no longer in the manifest: {stem} ({state}, {key})\n")
    if last:
        out.write(
            f"last run: {last['outcome']} at {iso_time(last['finished'])}, {last['images_this_run']} images\n"
        )
        cost = last.get("cost") or {}
        if cost.get("all_runs") is not None:
            out.write(
                f"cost: {_usd(cost.get('this_run'))} last run, {_usd(cost['all_runs'])} for all finished jobs "
                f"(estimate {_usd(cost.get('estimate'))})\n"
            )
    return 0
