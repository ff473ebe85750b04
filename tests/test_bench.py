"""Benchmark scripts still run (tiny sizes); they assert that the script works, never a timing."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plan_scale_smoke():
    """bench/plan_scale.py prints its reproduce line and a table row with the job count."""
    out = _run("bench/plan_scale.py", "--prompts", "3", "--seeds", "2", "--runs", "1")
    assert "# reproduce: python bench/plan_scale.py" in out
    assert "| 60 " in out
