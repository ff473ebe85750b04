"""Start-of-run reconciliation: the state made to agree with the plan and the files on disk
before anything is submitted.

In order: the plan recorded (or synced), partial files and leftovers removed, finished jobs
rebuilt from their sidecars (recover.py), emulator placeholders put back for a real provider,
--retry-failed applied, the in-process emulator's dead requests sent again (free), and finished
files checked (size + mtime, or re-hashed with --verify).

Invariants:
  * Nothing here submits or pays for anything; it only moves jobs back to an earlier state
    (rerender, redownload, resubmit) with a recorded reason, or forward on proof (a sidecar
    naming the job, an image hashing to its sha256).
  * With shared state, files are checked only with --verify (every worker would check every
    file at start otherwise), and claims are not voided (other workers hold theirs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from renderer.layout import DATA_DIR, DB_NAME, job_folder
from renderer.output import files, superseded
from renderer.output.storage import LocalStorage, Storage
from renderer.plan.jobs import Plan
from renderer.runner import recover
from renderer.runner.config import Event, RunConfig
from renderer.state.store import Store


@dataclass
class Reconciled:
    """What the start of the run found."""

    # The state changed (or may have): the dataset is rewritten, not appended to.
    plan_changed: bool
    # Failed downloads put back by --retry-failed (a dead URL there renders again).
    redownloads: set[str] = field(default_factory=set)


def reconcile(
    plan: Plan,
    store: Store,
    storage: Storage,
    config: RunConfig,
    emulator_url: str,
    emit: Callable[[Event], None],
) -> Reconciled:
    """Bring the state in line with the plan and the run's files (see the module docstring).

    `emulator_url`: the base URL this run's client talks to; requests of an in-process emulator
    recorded under another URL died with an earlier process.
    """
    run_dir = store.run_dir
    if not store.shared:
        store.void_claims()
    # A first run (no state, no files: nothing to find or mark out) renders while the rest of
    # the plan is recorded in the background; any other run records the plan first (the
    # output's files are looked up against the whole plan before anything is submitted).
    has_output = (run_dir / DATA_DIR).is_dir() or (storage.remote and storage.has_data())
    # (a caption set's digest is made by the recorder, when it ends: not before the first submit;
    # a trial records only the jobs it needs, and then no digest)
    recording = (
        None
        if has_output
        # (its thread is started by the runner, once the first round is out: Runner.run)
        else store.record_plan(plan.jobs, plan.digest_later(), upto=config.max_jobs, start=False)
    )
    found = Reconciled(recording is not None or store.sync_plan(plan.jobs, plan.digest))
    files.remove_partials(
        run_dir, {run_dir / job_folder(stem) for stem in store.unfinished_stems()}
    )
    recover.leftovers(run_dir)
    adopted = recover.from_sidecars(store, storage) if has_output else 0
    if adopted:
        found.plan_changed = True
        lost = f"the state in {store.where} was new" if store.shared else f"{DB_NAME} was missing"
        emit(
            {
                "type": "note",
                "message": f"rebuilt the state of {adopted} finished job(s) from their sidecars "
                f"and images in {storage.where(DATA_DIR)} ({lost} or had no record of them): "
                "they are not submitted again",
            }
        )
    if config.provider and config.provider != "emulator":
        # The emulator's placeholders are not images: for a real provider those jobs are not
        # done. (The other way round, real images are kept: an emulator run never replaces them;
        # and images from one real provider are not paid for again at another.)
        for key in store.rendered_by("emulator"):
            store.rerender(key, f"rendered by the emulator, not by {config.provider}")
            found.plan_changed = True
    if config.retry_failed:
        found.redownloads = {
            r.key for r in store.rows(in_plan=True, state="failed") if r.result is not None
        }
        store.retry_failed()
    if config.provider == "emulator" and not store.shared:
        # The emulator lives in this process: an earlier run's requests died with it. It is
        # free, so sending them again costs nothing (and is not counted as paying twice).
        for row in store.rows(in_plan=True, state="submitted") + store.rows(
            in_plan=True, state="completed"
        ):
            if not (row.status_url or "").startswith(emulator_url + "/"):
                store.resubmit(
                    row.key, "the in-process emulator of an earlier run is gone", paid=False
                )
    if check_files(store, storage, config):
        found.plan_changed = True
    return found


def check_files(store: Store, storage: Storage, config: RunConfig) -> bool:
    """Put back for download every finished job whose files are missing or changed; True if any."""
    changed_any = False
    if not store.shared and isinstance(storage, LocalStorage):
        # Images of jobs that left the plan out of data/, those of jobs back in it back first.
        superseded.settle(store, storage.root)
    if not store.shared and not config.verify and isinstance(storage, LocalStorage):
        # What Storage.intact checks on disk (size + mtime), in one tight loop: a rerun of a
        # million finished files costs a stat each, not a JSON decode and a call chain each.
        root, stat = os.path.join(storage.root, ""), os.stat
        for page in store.file_stats():
            changed = set()
            for ref, rel, size, mtime in page:
                try:
                    on_disk = stat(root + rel)
                except (OSError, TypeError, ValueError):
                    changed.add(ref)
                    continue
                if on_disk.st_size != size or on_disk.st_mtime_ns != mtime:
                    changed.add(ref)
            for key in sorted(store.key_of(ref) for ref in changed):
                store.redownload(key, "a finished file was missing or changed")
                changed_any = True
    elif not store.shared or config.verify:
        # With shared state every worker would check every file at start: only --verify does.
        for key, entries in store.downloaded_files():
            if not all(storage.intact(e, rehash=config.verify) for e in entries):
                store.redownload(key, "a finished file was missing or changed")
                changed_any = True
    return changed_any
