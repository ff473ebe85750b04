"""The command line (`renderer …`): the top layer, and the only code that prints.

Modules: `main` (the argument parser, `main`, `entrypoint`), `boundary` (each error → a message,
a `hint:` and an exit code), `context` (what a command is handed), and the commands by what they
act on: `models` (schemas build, models), `plans` (validate, plan), `runs` (run, status,
finalize), `emulator`, `views` (report, export, diff). Heavy libraries load only inside the
command that needs them (`renderer --version` start-up is measured).
"""

from renderer.cli.main import entrypoint, main

__all__ = ["entrypoint", "main"]
