"""The command line: exit codes, the error boundary, and what each command prints."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

from renderer.cli import main

from .conftest import ROOT, SCHEMAS


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ=env or {})
    return code, out.getvalue(), err.getvalue()


def test_schemas_check_passes_on_the_checkout():
    """The committed schemas are what the documents generate."""
    code, out, err = run("schemas", "build", "--check", "--dir", str(SCHEMAS))
    assert code == 0, out + err
    assert "12 endpoints" in out
    assert "warning: 003_4e5348b4711c43e9.txt:38:" in err


def test_schemas_check_names_stale_files(tmp_path: Path):
    """A hand-edited schema makes --check exit 1 and name that file; build repairs it."""
    shutil.copytree(SCHEMAS, tmp_path / "s")
    target = tmp_path / "s/endpoints/fal-ai/flux-1/schnell.json"
    target.write_text("{}\n")
    code, out, _ = run("schemas", "build", "--check", "--dir", str(tmp_path / "s"))
    assert code == 1
    assert out.strip() == f"stale: {target}"
    assert run("schemas", "build", "--dir", str(tmp_path / "s"))[0] == 0
    assert run("schemas", "build", "--check", "--dir", str(tmp_path / "s"))[0] == 0


def test_unknown_document_layout_exits_2(tmp_path: Path):
    """A document the generator cannot read is a user error naming file and line, no traceback."""
    (tmp_path / "s/docs").mkdir(parents=True)
    (tmp_path / "s/docs/notes.txt").write_text("hello\n")
    code, _out, err = run("schemas", "build", "--dir", str(tmp_path / "s"))
    assert code == 2
    assert err.startswith("error: notes.txt:1: unknown document layout")
    assert "hint: expected one of" in err
    assert "Traceback" not in err
    assert not (tmp_path / "s/index.json").exists()


def test_models_lists_endpoints_with_required_parameters():
    """`renderer models` prints one row per endpoint."""
    code, out, _ = run("models")
    assert code == 0
    rows = out.strip().splitlines()
    assert len(rows) == 13
    assert rows[1].split() == ["fal-ai/f-lite/standard", "prompt"]


def test_models_shows_one_endpoint():
    """`renderer models ENDPOINT` shows each parameter's type, default, allowed values and source."""
    code, out, _ = run("models", "fal-ai/imagen4/preview/ultra")
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("num_images"))
    assert "1 to 1" in line and "003_4e5348b4711c43e9.txt:38" in line
    size = next(ln for ln in run("models", "fal-ai/flux-1/schnell")[1].splitlines() if ln.startswith("image_size"))
    assert "{width, height} or square_hd" in size


def test_models_unknown_endpoint_suggests():
    """A misspelt endpoint is exit 2 with a did-you-mean hint."""
    code, _, err = run("models", "fal-ai/flux-1/schnel")
    assert code == 2
    assert "hint: did you mean fal-ai/flux-1/schnell?" in err


def test_usage_errors_exit_2_without_traceback():
    """An unknown command is a usage error on stderr, exit 2."""
    code, out, err = run("paint")
    assert code == 2 and out == ""
    assert err.startswith("error: renderer: argument COMMAND: invalid choice: 'paint'")


def test_help_exits_0_on_stdout():
    """--help goes to the injected stdout and exits 0."""
    code, out, _ = run("--help")
    assert code == 0 and "usage: renderer" in out


def test_python_dash_m_entry_point():
    """`python -m renderer` runs the same CLI in a real process."""
    done = subprocess.run(
        [sys.executable, "-m", "renderer", "models", "fal-ai/omnigen-v2", "--json"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"x-endpoint": "fal-ai/omnigen-v2"' in done.stdout


def test_version_flag():
    """`renderer --version` prints the package version and exits 0."""
    from renderer import __version__

    code, out, _ = run("--version")
    assert (code, out.strip()) == (0, f"renderer {__version__}")
