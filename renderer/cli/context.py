"""What every command is handed (`Context`: its arguments, streams and environment) and the
small helpers commands share (`table` for aligned columns).

Commands print only through `Context.print` (stdout) and `Context.note` (stderr): the streams and
the environment are injected, so tests call `main` directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from renderer.errors import UsageError
from renderer.models import schemas


class Context:
    """What a command needs from the outside world, resolved once."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO, env: Mapping[str, str]):
        self.args = args
        self.out = out
        self.err = err
        self.env = env

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        self.err.write(text + "\n")

    def schema_dir(self) -> Path:
        flag = getattr(self.args, "schemas", None)
        if flag:
            return directory(Path(flag), "--schemas")
        if self.env.get("RENDERER_SCHEMAS"):
            return directory(Path(self.env["RENDERER_SCHEMAS"]), "RENDERER_SCHEMAS")
        return schemas.default_schema_dir()

    def models_dir(self) -> Path:
        """The user's added models: --models-dir > RENDERER_MODELS > the per-user default."""
        flag = getattr(self.args, "models_dir", None)
        if flag:
            return Path(flag)
        if self.env.get("RENDERER_MODELS"):
            return Path(self.env["RENDERER_MODELS"])
        return schemas.default_models_dir(self.env)

    def registry(self) -> schemas.SchemaRegistry:
        """The bundled schemas (or --schemas), with the user's added models layered over them."""
        return schemas.SchemaRegistry(self.schema_dir(), self.models_dir())


def directory(path: Path, source: str) -> Path:
    """`path` if it is a directory; otherwise a usage error naming the flag or variable it came from."""
    if "\0" in str(path) or not path.is_dir():
        raise UsageError(
            f"{source} {str(path)!r}: not a directory",
            hint="give the schema directory (it holds index.json), e.g. schemas",
        )
    return path


def table(
    headers: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    *,
    right: int | None = None,
    clip: int | None = None,
) -> list[str]:
    """Aligned columns; columns from index `right` on are right-aligned; the last is never padded."""

    def cut(cell: Any) -> str:
        text = str(cell)
        return text[: clip - 1] + "…" if clip and len(text) > clip else text

    text = [[cut(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    lines = []
    for row in text:
        cells = [
            c
            if i == len(row) - 1 and right is None
            else (c.rjust(widths[i]) if right is not None and i >= right else c.ljust(widths[i]))
            for i, c in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
