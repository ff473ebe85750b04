"""Running a plan as the CLI shows it: a bar on a terminal, plain lines when piped, failures described."""

from __future__ import annotations

import io
from pathlib import Path

from renderer.cli import main
from renderer.emulator import ServiceTime

from .conftest import background_emulator, write_manifest

FAST = ServiceTime("fixed", 0.01)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_total_is_what_this_run_does(tmp_path: Path):
    """On a terminal the tqdm bar's total is this run's work: --max-jobs 3 of 8 shows /3, not /8."""
    m = write_manifest(tmp_path, seeds=[1, 2, 3, 4, 5, 6, 7, 8])
    err = Terminal()
    with background_emulator(service=FAST) as emu:
        code = main(["run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"), "--max-jobs", "3"],
                    stdout=io.StringIO(), stderr=err, environ={"FAL_KEY": "k"})
    assert code == 0
    frames = [f for f in err.getvalue().replace("\r", "\n").splitlines() if "job" in f]
    assert frames and all("/3" in f and "/8" not in f for f in frames)
    assert "3/3" in frames[-1]


def test_piped_output_has_plain_lines_and_described_failures(tmp_path: Path):
    """Piped: no carriage returns; a failure line names prompt, model, axes and seed, not only the key."""
    m = write_manifest(tmp_path, models=["fal-ai/flux-1/schnell", {"endpoint": "acme/missing", "unchecked": True}],
                       axes={"num_inference_steps": [2]}, seeds=[5])
    err = io.StringIO()
    with background_emulator(service=FAST) as emu:
        code = main(["run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o")],
                    stdout=io.StringIO(), stderr=err, environ={"FAL_KEY": "k"})
    text = err.getvalue()
    assert code == 1 and "\r" not in text
    failed = [line for line in text.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1
    assert "prompt=cat model=acme/missing seed=5 num_inference_steps=2 (j1-" in failed[0]
    assert text.splitlines()[0].startswith("progress: 0/2 jobs")
