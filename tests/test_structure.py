"""The house rules of renderer/: stage folders, module and class sizes, lazy heavy imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "renderer"
STAGES = ("models", "manifest", "plan", "provider", "runner", "state", "output", "view")
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_modules_stay_readable(path: Path) -> None:
    """No module over 600 lines and no class over 300: a reader can hold one in their head."""
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_MODULE_LINES, f"{_name(path)}: {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            span = (node.end_lineno or node.lineno) - node.lineno + 1
            assert span <= MAX_CLASS_LINES, f"{_name(path)}: class {node.name} is {span} lines"


def test_every_stage_is_a_folder() -> None:
    """The pipeline's stages are the package's folders, each with its own docstring."""
    for stage in STAGES:
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), stage
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), (
            f"{stage}/__init__.py"
        )


def test_importing_the_stages_loads_nothing_heavy() -> None:
    """`import renderer.<stage>` (and the CLI, and the Python API) loads no aiohttp, Pillow, psycopg or pyarrow."""
    stages = [s for s in STAGES if s != "provider"]
    code = (
        "import sys\n"
        + "".join(f"import renderer.{s}\n" for s in stages)
        + "import renderer.cli\n"
        + "import renderer.api\n"
        + "heavy = [m for m in ('aiohttp', 'PIL', 'psycopg', 'pyarrow', 'obstore') if m in sys.modules]\n"
        + "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"loaded at import: {out}"


def test_only_the_provider_speaks_aiohttp() -> None:
    """aiohttp's exceptions are translated in the protocol client: no other stage imports it."""
    for path in MODULES:
        if path.is_relative_to(PACKAGE / "provider"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "aiohttp" for n in names), _name(path)
