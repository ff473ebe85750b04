"""The error boundary: the one place that turns an error into text and an exit code.

Each error becomes one message, an optional `hint:` line and an exit code (errors.py: 2 bad input,
3 auth/billing; 130 interrupted; 70 a bug). A traceback is printed only for a bug, or with --debug.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, NoReturn, TextIO

from renderer.errors import ManifestError, RendererError

EXIT_BUG = 70  # EX_SOFTWARE


class Exit(Exception):
    """argparse's exit (--help, --version) carried to the boundary instead of sys.exit."""

    def __init__(self, code: int) -> None:
        self.code = code


def json_error(exc: RendererError) -> str:
    """The error as one JSON object: what a script reading `--json` output gets on stdout."""
    body: dict[str, Any] = {
        "error": {
            "kind": type(exc).__name__,
            "message": exc.message,
            "hint": exc.hint,
            "exit_code": exc.exit_code,
        }
    }
    if isinstance(exc, ManifestError):
        body["error"]["problems"] = [
            {
                "file": p.file,
                "line": p.line,
                "col": p.col,
                "json_path": p.json_path,
                "message": p.message,
                "allowed": p.allowed,
                "suggestion": p.suggestion,
                "job": p.job,
            }
            for p in exc.problems
        ]
    return json.dumps(body, ensure_ascii=False)


@contextmanager
def error_boundary(
    err: TextIO, debug: bool, result: list[int], out: TextIO | None = None
) -> Iterator[None]:
    """Run the block; append its exit code to `result` when it ends by an error (or argparse's exit).

    `out`: the command's stdout when it was asked for `--json`; an error then also goes there as
    a JSON object, so a script never reads an empty answer.
    """
    try:
        yield
    except Exit as done:
        result.append(done.code)
    except ManifestError as exc:
        for problem in exc.problems:
            err.write(problem.render() + "\n")
        err.write(f"error: {exc.message}\n")
        if exc.hint:
            err.write(f"hint: {exc.hint}\n")
        if out is not None:
            out.write(json_error(exc) + "\n")
        result.append(exc.exit_code)
    except RendererError as exc:
        if debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=err)
        err.write(f"error: {exc.message}\n")
        if exc.hint:
            err.write(f"hint: {exc.hint}\n")
        if out is not None:
            out.write(json_error(exc) + "\n")
        result.append(exc.exit_code)
    except KeyboardInterrupt:
        err.write("interrupted\n")
        result.append(130)
    except BrokenPipeError:
        # `renderer plan --json | head`: the reader is done; that is not an error.
        with suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown quiet
        result.append(0)
    except Exception as exc:  # a bug: say so, with the traceback a maintainer needs
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=err)
        err.write("error: internal error (this is a bug in renderer; please report it)\n")
        result.append(EXIT_BUG)


def leave(code: int, argv: list[str]) -> NoReturn:
    """Exit the process with `code`; after `renderer run`, without the interpreter's teardown.

    A run has closed everything it wrote before it returns (images fsynced and renamed, the
    state committed and closed, run.json written, the summary printed; its threads joined), so
    what the teardown would add is only freeing ~470 modules' objects: 40-80 ms after the last
    image (aiohttp's alone ~80 ms under load; bench/concurrency.py, issue 23). The output
    streams are flushed first. Other commands exit as usual (their temporary folders and
    finalizers are the teardown's to clean up).
    """
    if argv[:1] == ["run"]:
        for stream in (sys.stdout, sys.stderr):
            # (a closed pipe: nothing more can be said there)
            with suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    sys.exit(code)
