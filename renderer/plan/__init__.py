"""The plan stage: a manifest → the ordered list of jobs, each checked against its endpoint's schema.

Modules:
  planner    build(manifest, registry) → Plan: the parts below, then one check pass
  core       the planner's inputs and its problems (each with its manifest location)
  checks     names, seeds and references that need the registry
  translate  the portable aspect ratio in each endpoint's own vocabulary; schema checks
  dedupe     cells or jobs that send the same input, found at plan scale
  expand     the matrix in plan order: cells, then a job per seed (template where it applies)
  template   a cell's jobs by substitution: one check per cell instead of per job
  jobs       Job, Plan, job_key (the versioned hash of canonical JSON), random_seed
  seeds      a cell's `random: N` seeds
  unique     Fingerprints and Tally: duplicate detection in little memory
  cost       prices and the one megapixel formula
  matrix     include/exclude with GitHub Actions' matrix rules
  variants   the matrix as combinations: prompt variants (templates), models, axes, seeds
  sweep      `sample:` (a subset chosen by hash) and `order: sparse-first`
  compare    how include/exclude compare values

Importing this package is cheap: it hands on the job types only.
"""

from renderer.plan.jobs import Job, Plan, job_key
from renderer.plan.unique import Fingerprints

__all__ = ["Fingerprints", "Job", "Plan", "job_key"]
