"""The state stage: what a run has done, crash-safe, in SQLite (one machine) or PostgreSQL (many).

Modules:
  choose       open_store, read_store: the chooser above the backends (state URL → Store)
  store        Store, the one interface every caller uses, assembled from its parts:
    core         the connection, the dialect's differences, transactions, metadata
    plansync     the plan recorded into the state, or made to agree with it
    cells        a job's cell and form (how jobs are stored), for plansync
    leases       workers, claims, renewal and release
    transitions  a job's state changes, one transaction each, fenced by its lease
    queries      pending work by query, finished files, counts, costs, runs
  sqlite       the SQLite backend (the run directory's renderer.sqlite)
  postgres     the PostgreSQL backend (shared by workers; psycopg loads only when it is used)
  outage       riding out a lost connection (calls run again whole), the stall watchdog
  migrations   the schema: ordered migrations applied on open, each once
  keys         SQLite's job-key index and the triggers that refuse a second row for a key
  recording    the background plan recorder
  rows         Row, job states, key encodings, database errors as StateError
  lock         the run lock: one writer per run directory

Importing this package is cheap: sqlite3 and the standard library only.
"""

from renderer.state.choose import open_store, read_store
from renderer.state.rows import Claimed, LeaseLost, Row
from renderer.state.store import Store

__all__ = ["Claimed", "LeaseLost", "Row", "Store", "open_store", "read_store"]
