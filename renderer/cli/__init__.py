"""The command line (`renderer …`): the top layer, and the only code that prints."""

from renderer.cli.main import entrypoint, main

__all__ = ["entrypoint", "main"]
