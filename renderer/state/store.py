"""The run's state: one interface (Store), two databases. The state package owns the SQL; Store is
assembled here from its parts (core, plansync, leases, transitions, queries: one module each).

`sqlite.SQLiteStore` is the embedded default (a file in the run directory, one process at a time
under RunLock); `postgres.PostgresStore` is shared by any number of workers (`--state postgresql://…`).
Callers open either through `open_store` (state/choose.py) and use it as a context manager.
Both run the same statements (portable SQL, `?` placeholders) and pass one test suite; the few
dialect differences are class attributes and small overrides.

Invariants:
  * One row per job key: PostgreSQL's index on keys is unique; SQLite's holds the keys' first bytes
    only (m013), and its one writer inserts only the jobs the plan sync's lookup did not find.
    A job moves planned → submitted → completed → downloaded, or to failed; every move is one
    committed transaction.
  * `request_id` is committed before anything else happens after a submit. A submit whose
    outcome was not recorded leaves `submit_started` set with no request id: the rerun counts
    it as an ambiguous resubmission (the only way one input is ever paid twice).
  * Pending work is derived by query from the states; there is no separate to-do list.
  * Migrations are ordered, named and applied on open; a new and an old database behave alike.
  * WAL with synchronous=NORMAL: a killed process loses nothing committed; a power cut may lose
    the last commits (see README).
  * Leases: a worker works only on jobs it claimed (owner, lease_until by the database's clock),
    and every state change of a claimed job is fenced `WHERE owner = me AND lease_until > now`:
    a worker whose lease expired (killed, paused, partitioned) commits nothing (LeaseLost). A
    reclaimed job keeps its request id, so its new owner reattaches instead of paying again.
    Finished jobs release their lease and are never claimed again.
"""

from __future__ import annotations

from renderer.state.leases import Leases
from renderer.state.plansync import PlanSync
from renderer.state.queries import Queries
from renderer.state.transitions import Transitions


class Store(PlanSync, Leases, Transitions, Queries):
    """The run's state, whatever the database. Subclasses open the connection and set the dialect.

    `db` has sqlite3's `execute`/`executemany` (pgstore adapts psycopg to it); statements use `?`
    placeholders and SQL both databases run.
    """

    # -------------------------------------------------- plan sync

    # -------------------------------------------------- claims (leases)

    # -------------------------------------------------- state changes (one transaction each)

    # -------------------------------------------------- queries

    # -------------------------------------------------- runs
