"""The chooser above the backends: which Store a run's state setting names (SQLite in the run
directory, or shared PostgreSQL), opened for writing or read-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from renderer.state.sqlite import SQLiteStore

if TYPE_CHECKING:
    from renderer.state.store import Store


def open_store(
    state: str | None, run_dir: Path, name: str, *, readonly: bool = False, outage: float = 0.0
) -> Store:
    """The run's state: SQLite in the run directory (state None), or shared PostgreSQL (a postgresql:// URL).

    `outage`: seconds a shared state may stay unreachable (connecting, or mid-run) before OutageError.
    """
    if not state:
        return SQLiteStore(run_dir, readonly=readonly)
    from renderer.state.pgconn import is_postgres
    from renderer.state.postgres import PostgresStore

    if not is_postgres(state):
        from renderer.errors import UsageError

        raise UsageError(
            f"--state {state.split('://')[0]}://…: not a state URL renderer knows",
            hint="give postgresql://USER@HOST/DB for state shared by several workers, or leave --state "
            "(RENDERER_STATE, manifest state:) unset for the SQLite file in the run directory",
        )
    return PostgresStore(state, run_dir, name, readonly=readonly, outage=outage)


def read_store(run_dir: Path, state: str | None = None, name: str = "") -> Store:
    """A run's state opened read-only, for the tools that only look (report, diff, export, status,
    open_run): `with read_store(run_dir) as store: ...`."""
    return open_store(state, run_dir, name, readonly=True)
