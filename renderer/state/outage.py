"""Riding out an outage of the shared state: which calls run again after a lost connection, and
the watchdog that turns a server that stopped answering (paused, frozen, cut off without a
word) into a lost connection, so that no call waits on it forever.

The database side (reconnecting, what counts as a lost connection) is postgres.py's; this module
holds what does not depend on the driver.

Invariants:
  * A call is run again only whole and only at the outermost level: a call made inside
    another call's transaction is never retried on its own (the outer one is).
  * Once an outage outlasted its window (`store.down`), every call fails at once.
  * A statement that has waited on the server longer than the stall limit has its connection shut
    down (not closed: the driver still owns the descriptor), which makes the driver report it
    lost; every wait on the database is therefore bounded.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from renderer.errors import OutageError

OUTAGE_HINT = (
    "rerun the same command once the server is back (exit 75 means: try again later); "
    "everything committed stays committed and nothing is paid for again; --outage SECONDS "
    "(RENDERER_OUTAGE, limits.outage) sets how long a worker waits"
)
STALL = 60.0  # seconds one call may wait on the database before its connection counts as lost


class ConnectionLost(OutageError):
    """The connection to the shared state broke (a restart, a failover, a cut network).

    Ridden out by the store's calls (see postgres.py); one that escapes (a call not retried)
    is an outage too: exit 75.
    """


class Watchdog:
    """Shuts down the connection of a statement that has waited longer than `limit` seconds.

    `busy(fd)` when a statement starts (fd: the connection's socket), `idle()` when it ends.
    One daemon thread per connection owner, started with its first statement.
    """

    def __init__(self, limit: float = STALL) -> None:
        self.limit = limit
        self._since: float | None = None
        self._fd = -1
        self._depth = 0  # a transaction is watched whole, its statements within it
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.fired = 0  # connections shut down (for tests and the run's warnings)

    def busy(self, fd: int) -> None:
        with self._lock:
            self._depth += 1
            if self._depth == 1:
                self._since, self._fd = time.monotonic(), fd
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name="renderer-pg-watchdog", daemon=True
            )
            self._thread.start()

    def idle(self) -> None:
        with self._lock:
            self._depth = max(0, self._depth - 1)
            if self._depth == 0:
                self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.limit / 4))
            with self._lock:
                stalled = self._since is not None and time.monotonic() - self._since > self.limit
                fd = self._fd
                if stalled:
                    self._since = None
            if stalled and fd >= 0:
                self.fired += 1
                with contextlib.suppress(OSError):
                    # A socket object over the same descriptor, detached again so that it is not
                    # closed here: shutdown() ends the blocked read or write for its owner.
                    sock = socket.socket(fileno=fd)
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    finally:
                        sock.detach()


def _riding_out(method: Callable[..., Any]) -> Callable[..., Any]:
    """A store call that reconnects and runs again, whole, when its connection broke."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.down is not None:
            raise self.down
        if self._depth:
            return method(self, *args, **kwargs)  # inside another call: that one is retried
        while True:
            self._depth += 1
            try:
                return method(self, *args, **kwargs)
            except ConnectionLost as exc:
                lost = exc
            finally:
                self._depth -= 1
            self._reconnect(lost)

    return call


# Every call of the Store interface that is one transaction or one query (generators, which
# read in pages, and the lock are not: an outage there ends the call with ConnectionLost).
_NOT_RETRIED = {"close", "reopen", "exclusive", "gone", "record_plan"}


def ride_out(cls: type) -> None:
    """Make every public call of a store class ride out outages (the class has `down`, `_depth`
    and `_reconnect(lost)`)."""
    for name, method in inspect.getmembers(cls, inspect.isfunction):
        if (
            not name.startswith("_")
            and name not in _NOT_RETRIED
            and not inspect.isgeneratorfunction(method)
        ):
            setattr(cls, name, _riding_out(method))
