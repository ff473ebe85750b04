"""The run's outcome as data: `Summary` (what `run` returns) and `run_record`, the one builder of
run.json (also kept in the state as the run's last summary, which `status` reads).

run.json is written three times in a run's life, always by `run_record`: "running" when a run
starts (a crash never leaves "done" behind), the outcome when it ends, and the state's view when
`renderer finalize` writes it. A run that stops on its own files keeps an "error" record in the
state only (run.json cannot be written then). Cheap to import: no provider, no database driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from renderer.plan.jobs import Plan
    from renderer.state.store import Store


def iso_time(epoch: float | None) -> str | None:
    """ISO 8601 in UTC (for people and other tools), beside the epoch seconds that are kept."""
    if epoch is None:
        return None
    return (
        datetime.fromtimestamp(epoch, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass
class Summary:
    outcome: (
        str  # done | partial (a --max-jobs trial, plan unfinished) | failed | interrupted | stopped
    )
    counts: dict[str, int]
    started: float
    finished: float
    images: int
    ambiguous_resubmits: int
    calls: dict[str, int]
    error: str | None = None
    hint: str | None = None
    cost: float | None = None  # what this run's finished jobs cost by the manifest's prices (USD)
    total_cost: float | None = None  # every finished job of the plan, all runs
    estimate: float | None = None  # the plan's estimate for all its jobs
    run_dir: Path | None = None
    # This run's paid resubmissions, by reason.
    resubmits: dict[str, int] = field(default_factory=dict)
    signal: int = 2  # what interrupted the run: SIGINT (Ctrl-C) or SIGTERM
    # provider.accounts only: name → submitted this run, limit, and why it stopped (null if it did not)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Submitted jobs left waiting for an account, by name.
    waiting: dict[str, int] = field(default_factory=dict)
    provider: str = ""  # who rendered: emulator, fal, or a custom provider's origin

    @property
    def paid_twice(self) -> int:
        """Submissions of this run that paid (or may have paid) for an input again."""
        return self.ambiguous_resubmits + sum(self.resubmits.values())

    @property
    def exit_code(self) -> int:
        return {
            "done": 0,
            "partial": 0,
            "failed": 1,
            "stopped": 3,
            "interrupted": 128 + self.signal,
        }[self.outcome]


def run_record(
    plan: Plan,
    outcome: str,
    *,
    provider: str = "",
    started: float | None = None,
    pending: int | None = None,
    summary: Summary | None = None,
    store: Store | None = None,
    unpriced: Sequence[str] = (),
    error: str | None = None,
    counts: dict[str, int] | None = None,
    finished: float | None = None,
    images: int = 0,
    finalized: float | None = None,
    unfinished: int | None = None,
) -> dict[str, Any]:
    """run.json for one moment of a run, chosen by `outcome` and what is given:

    * "running" (`provider`, `started`, `pending`): a run has begun;
    * "error" (`error`, `counts`, `finished`, `images`): the run's own files or state failed
      (kept in the state only);
    * `summary` with `store` and `unpriced`: a run ended with `outcome` (the all-runs figures
      are read from the store);
    * `finalized` with `store`, `counts` and `unfinished` (those the outcome was judged by):
      `renderer finalize`, the state's view as it stands now.
    """
    if outcome == "error":
        return {
            "outcome": "error",
            "error": error,
            "counts": counts,
            "finished": finished,
            "images_this_run": images,
        }
    head: dict[str, Any] = {
        "manifest": str(plan.manifest.file),
        "name": plan.manifest.name,
        "outcome": outcome,
    }
    if plan.manifest.hub:  # `- hub:` prompt sources: the commit each was read at
        head["hub"] = [s.provenance() for s in plan.manifest.hub]
    if finalized is not None:
        assert store is not None
        resubmits = store.resubmit_reasons()
        cost = [
            e["cost"] for _, entries in store.downloaded_files() for e in entries if "cost" in e
        ]
        return {
            **head,
            "finalized": finalized,
            "finalized_at": iso_time(finalized),
            "counts": counts,
            "unfinished": unfinished,
            "paid_twice": {
                "all_runs": store.total_ambiguous() + sum(resubmits.values()),
                "resubmits_all_runs": resubmits,
            },
            "cost": {"currency": "USD", "all_runs": round(sum(cost), 6) if cost else None},
            "workers": store.workers(),
        }
    head["provider"] = provider or plan.manifest.provider.kind
    if summary is None:
        return {**head, "started": started, "started_at": iso_time(started), "pending": pending}
    assert store is not None
    all_runs = store.resubmit_reasons()
    ambiguous = summary.ambiguous_resubmits
    return {
        **head,
        "started": summary.started,
        "finished": summary.finished,
        "started_at": iso_time(summary.started),
        "finished_at": iso_time(summary.finished),
        "seconds": round(summary.finished - summary.started, 3),
        "counts": summary.counts,
        "images_this_run": summary.images,
        "ambiguous_resubmits": ambiguous,
        "ambiguous_resubmits_all_runs": store.total_ambiguous(),
        "requests": summary.calls,
        # Every input paid for more than once, and why: kills between a submit and its commit
        # (ambiguous) and resubmissions after the provider lost a request or its runner failed.
        "paid_twice": {
            "this_run": summary.paid_twice,
            "ambiguous": ambiguous,
            "resubmits": summary.resubmits,
            "all_runs": store.total_ambiguous() + sum(all_runs.values()),
            "resubmits_all_runs": all_runs,
        },
        "cost": {
            "currency": "USD",
            "this_run": summary.cost,
            "all_runs": summary.total_cost,
            "estimate": summary.estimate,
            "unpriced_models": list(unpriced),
        },
        "error": summary.error,
        # provider.accounts: each account's share and whether it stopped (by name, never by key)
        **({"accounts": summary.accounts} if summary.accounts else {}),
        **({"waiting_for_accounts": summary.waiting} if summary.waiting else {}),
    }
