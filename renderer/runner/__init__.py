"""The run stage: a plan's jobs → images in the output, within the provider's limits.

Modules, from the outside in:
  session    one run wired: provider (or an in-process emulator), lock, store, client, runner
  runner     the task pool: claims jobs, runs each in a worker task, stops with a grace period
  reconcile  start-of-run: the state made to agree with the plan and the files (+ recover)
  recover    finished jobs rebuilt from their sidecars when the database lost them
  job        the per-job state machine: submit → status → result → deliver, retries, deadlines
  deliver    download, verify, write (image + sidecar), record; the dataset; publishing
  limits     provider slots (run, endpoint, account), the deliveries' bound, rates, which
             account holds a job
  lead       the queued lead of a provider limit, sized from what the run measures
  record     Summary and run_record, the one builder of run.json
  config     RunConfig, AccountLimit and the Event type

Importing this package is cheap (config and record only): aiohttp, the store and the
provider load when session or runner is imported.
"""

from renderer.runner.config import SINGLE_KEY, AccountLimit, Event, RunConfig
from renderer.runner.record import Summary, iso_time, run_record

__all__ = [
    "SINGLE_KEY",
    "AccountLimit",
    "Event",
    "RunConfig",
    "Summary",
    "iso_time",
    "run_record",
]
