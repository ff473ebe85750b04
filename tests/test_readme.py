"""README.md and docs/: every Python block meant to run runs, as written, in a fresh folder with the repository's manifests."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A block preceded by `<!-- not run: why -->` is an illustration (it needs a package the tests do
# not install, or a server of its own); every other ```python block is run.
BLOCK = re.compile(r"(<!-- not run[^>]*-->\n)?```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        found += [
            (f"{name}:{text.count(chr(10), 0, m.start()) + 1}", m.group(2))
            for m in BLOCK.finditer(text)
            if not m.group(1)
        ]
    return found


BLOCKS = _blocks()


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_python_block_runs_as_written(line: str, code: str, tmp_path: Path):
    """The block runs without an error (top-level await allowed, as in a notebook cell)."""
    shutil.copytree(ROOT / "manifests", tmp_path / "manifests")
    compiled = compile(code, line, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    scope: dict[str, Any] = {"__name__": "__readme__"}
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(None):
            result = eval(compiled, scope)
            if asyncio.iscoroutine(result):
                asyncio.run(result)
    finally:
        os.chdir(before)


def test_there_are_python_blocks_to_run():
    """The README's Python API example is among the blocks run."""
    assert any("renderer.load_manifest" in code for _, code in BLOCKS)


def test_every_relative_link_resolves():
    """Links between the README, docs/ and the repository's files point at files that exist."""
    broken = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for url in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if url.startswith(("http:", "https:", "#", "mailto:")):
                continue
            if not (path.parent / url.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}: {url}")
    assert not broken
