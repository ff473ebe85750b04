"""PostgreSQL's URLs and connections for the shared state (postgres.py): which URLs name it,
their passwords kept out of messages, a run's schema name, and psycopg behind sqlite3's calls
(`?` placeholders, rows read by name or position) with its errors translated into StateError,
ConnectionLost for a broken connection (the store rides that out: outage.py).

Light to import (psycopg is imported by the calls that need it): the console and the API name
a shared state's URL without loading the store.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from renderer.errors import StateError
from renderer.state.outage import OUTAGE_HINT, ConnectionLost, Watchdog

_PLACEHOLDER = re.compile(r"\?")


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, for messages and status."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def schema_name(run: str) -> str:
    """The PostgreSQL schema of a run: readable, a valid identifier, distinct per run name."""
    slug = re.sub(r"[^a-z0-9_]", "_", run.lower())[:40]
    return f"run_{slug}_{hashlib.sha256(run.encode()).hexdigest()[:8]}"


class Record(tuple[Any, ...]):
    """A row read by position (r[0]) or by column name (r['key']), as sqlite3.Row allows."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Record:
        record = super().__new__(cls, values)
        record._names = names
        return record

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, str):
            index = self._names[index]
        return tuple.__getitem__(self, index)

    def keys(self) -> list[str]:
        return list(self._names)


def records(cursor: Any) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Record(values, names)


class Connection:
    """psycopg behind sqlite3's execute/executemany: `?` placeholders, errors as StateError."""

    def __init__(self, conn: Any, where: str) -> None:
        self.conn = conn
        self.where = where
        # A server that stops answering (paused, frozen) would hold a statement forever: see outage.py.
        self.watchdog = Watchdog()

    def socket(self) -> int:
        try:
            return int(self.conn.pgconn.socket)
        except Exception:  # a closed connection has none (the statement fails at once anyway)
            return -1

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        import psycopg

        # Waiting for another worker's advisory lock (a long plan sync) is not a stall.
        watched = "pg_advisory_lock(" not in sql
        if watched:
            self.watchdog.busy(self.socket())
        try:
            return self.conn.execute(_PLACEHOLDER.sub("%s", sql), tuple(args))
        except psycopg.Error as exc:
            raise state_error(self.where, exc, self.conn) from exc
        finally:
            if watched:
                self.watchdog.idle()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        import psycopg

        self.watchdog.busy(self.socket())
        try:
            cursor = self.conn.cursor()
            cursor.executemany(_PLACEHOLDER.sub("%s", sql), rows)
            return cursor
        except psycopg.Error as exc:
            raise state_error(self.where, exc, self.conn) from exc
        finally:
            self.watchdog.idle()

    def close(self) -> None:
        self.conn.close()


def lost(exc: Exception, conn: Any) -> bool:
    import psycopg

    if not isinstance(exc, psycopg.OperationalError):
        return False
    # A query cancelled or a lock not granted is an answer; a broken connection, a server shutting
    # down or not yet up is an outage.
    return bool(
        conn is None
        or conn.broken
        or conn.closed
        or isinstance(exc, (psycopg.errors.AdminShutdown, psycopg.errors.CannotConnectNow))
    )


def state_error(where: str, exc: Exception, conn: Any = None) -> StateError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if lost(exc, conn):
        return ConnectionLost(
            f"the shared state ({where}) is unreachable: {first}", hint=OUTAGE_HINT
        )
    return StateError(
        f"the shared state ({where}) failed: {first}",
        hint="check that the server is up and reachable (--state, RENDERER_STATE), then rerun the "
        "same command: what was committed stays committed and is not paid for again",
    )
