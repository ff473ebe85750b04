"""The run lock: one writer per run directory (flock on POSIX, msvcrt on Windows)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from renderer.errors import RunLocked, StateError
from renderer.layout import LOCK_NAME


class RunLock:
    """An exclusive lock on a run directory for the length of a run (advisory, per file system)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(
                f"{self.path.parent}: cannot use this folder for a run: {exc.strerror or exc}",
                hint="give the run a writable folder (--output), or make this one writable",
            ) from exc
        try:
            _lock(fd)
        except OSError as exc:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is in use by another renderer run ({holder})",
                hint="wait for it to finish, or give this run another output directory",
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def _lock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
