"""aiohttp imported for the CLI with its CA certificates loaded beside the start, not before it.

aiohttp builds two default SSL contexts when it is imported (aiohttp.connector), and each loads
the system's CA bundle: 40-70 ms of OpenSSL parsing PEM on a run's critical path, before the
first submit, whether or not the run speaks HTTPS (the emulator and a local proxy do not).
That parsing is C code that releases the GIL (set_default_verify_paths since CPython 3.10.6),
so here it runs in a thread while the main thread goes on with the manifest, the plan and the
state.

How: while `import aiohttp` runs (on the calling thread, as usual), the two methods that load
CAs into a context (`SSLContext.load_default_certs`, `set_default_verify_paths`) only note
which context asked for what; a thread then makes those same calls on those same contexts.
`ready()` waits for it; the protocol client awaits `loaded()` before its first request.

Invariants:
  * Deferred only when this process has no other thread (nothing but the import itself can make
    an SSL context while the methods are swapped), aiohttp is not imported yet and the loading
    releases the GIL; otherwise a plain import.
  * The methods are restored, and the noted loads started, whatever the import did: an import
    cut short (Ctrl-C) after aiohttp.connector ran still leaves its contexts loaded.
  * A context's CAs are loaded before any request goes through the client (Client.__aenter__
    awaits `loaded`); an error of the load (none for a missing or garbage bundle: OpenSSL then
    loads no CA, as without deferral) is raised there.
  * Only `renderer run` defers, and waits for the load before it returns: a program that
    imports the Python API keeps aiohttp's own import (its other HTTPS users cannot be made to
    wait), and one that calls the CLI's main() finds the contexts loaded afterwards.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any

_METHODS = ("load_default_certs", "set_default_verify_paths")
_pending: list[Callable[[], None]] = []
_done = threading.Event()
_done.set()  # nothing deferred: ready at once
_failure: BaseException | None = None
_thread: threading.Thread | None = None


def import_aiohttp() -> bool:
    """Import aiohttp with its CA loading in a background thread; True if it was deferred."""
    if (
        "aiohttp" in sys.modules
        or threading.active_count() != 1
        or sys.version_info < (3, 10, 6)  # (the load holds the GIL there: nothing to gain)
    ):
        # Already imported, or another thread could make a context meanwhile: as usual.
        importlib.import_module("aiohttp")

        return False
    context_class: Any = ssl.SSLContext
    load_default_certs = context_class.load_default_certs
    set_default_verify_paths = context_class.set_default_verify_paths
    own = {name: context_class.__dict__.get(name) for name in _METHODS}
    noted: list[Callable[[], None]] = []

    def note_default_certs(self: ssl.SSLContext, purpose: Any = ssl.Purpose.SERVER_AUTH) -> None:
        noted.append(lambda: load_default_certs(self, purpose))

    def note_verify_paths(self: ssl.SSLContext) -> None:
        noted.append(lambda: set_default_verify_paths(self))

    context_class.load_default_certs = note_default_certs
    context_class.set_default_verify_paths = note_verify_paths
    try:
        importlib.import_module("aiohttp")
    finally:
        for name, method in own.items():
            if method is None:
                delattr(context_class, name)  # inherited (the C type's): the override goes
            else:
                setattr(context_class, name, method)
        if noted:
            _start(noted)
    return bool(noted)


def _start(calls: list[Callable[[], None]]) -> None:
    """Make `calls` in a thread; until they are done, `pending()` and `ready()` wait for it."""
    global _failure, _thread
    _pending[:] = calls
    _failure = None
    _done.clear()
    # Not a daemon: the interpreter waits for it at exit (OpenSSL cleaning up its tables under a
    # thread still loading certificates crashed the process, about one exit in eight).
    _thread = threading.Thread(target=_load, name="renderer-ca-load")
    _thread.start()


def _load() -> None:
    global _failure
    try:
        for call in _pending:
            call()
    except BaseException as exc:  # handed to whoever waits (ready)
        _failure = exc
    finally:
        _pending.clear()
        _done.set()


def pending() -> bool:
    """Is a deferred CA load still running?"""
    return not _done.is_set()


def join() -> None:
    """Wait for a deferred load to end, whatever it did (its error is `ready()`'s to raise)."""
    _done.wait()


def ready() -> None:
    """Wait for the deferred CA load (if any); raise what it raised."""
    _done.wait()
    if _failure is not None:
        raise _failure


async def loaded() -> None:
    """`ready()` for a coroutine: the event loop is not blocked while the load runs."""
    if pending():
        await asyncio.to_thread(ready)
    ready()
