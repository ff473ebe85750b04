"""Running a plan as the CLI shows it: a bar on a terminal, plain lines when piped, failures described."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from renderer.cli import main
from renderer.console import Display
from renderer.errors import UsageError
from renderer.layout import bucket
from renderer.manifest.types import AccountConfig, ProviderConfig
from renderer.provider.emulator import ServiceTime
from renderer.runner.session import resolve_provider

from .conftest import ROOT, background_emulator, cli, write_manifest

FAST = ServiceTime("fixed", 0.01)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_total_is_what_this_run_does(tmp_path: Path):
    """On a terminal the tqdm bar's total is this run's work: --max-jobs 3 of 8 shows /3, not /8."""
    m = write_manifest(tmp_path, seeds=[1, 2, 3, 4, 5, 6, 7, 8])
    err = Terminal()
    with background_emulator(service=FAST) as emu:
        code = main(
            [
                "run",
                str(m),
                "--provider",
                emu.url,
                "--output",
                str(tmp_path / "o"),
                "--max-jobs",
                "3",
            ],
            stdout=io.StringIO(),
            stderr=err,
            environ={"FAL_KEY": "k"},
        )
    assert code == 0
    frames = [f for f in err.getvalue().replace("\r", "\n").splitlines() if "job" in f]
    assert frames and all("/3" in f and "/8" not in f for f in frames)
    assert "3/3" in frames[-1]


def test_piped_output_has_plain_lines_and_described_failures(tmp_path: Path):
    """Piped: no carriage returns; a failure line names prompt, model, axes and seed, not only the key."""
    m = write_manifest(
        tmp_path,
        models=["fal-ai/flux-1/schnell", {"endpoint": "acme/missing", "unchecked": True}],
        axes={"num_inference_steps": [2]},
        seeds=[5],
    )
    err = io.StringIO()
    with background_emulator(service=FAST) as emu:
        code = main(
            ["run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o")],
            stdout=io.StringIO(),
            stderr=err,
            environ={"FAL_KEY": "k"},
        )
    text = err.getvalue()
    assert code == 1 and "\r" not in text
    failed = [line for line in text.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1
    assert "prompt=cat model=acme/missing seed=5 num_inference_steps=2 (j1-" in failed[0]
    assert text.splitlines()[0].startswith("progress: 0/2 jobs")


def test_failures_are_described_from_the_event_without_the_plan():
    """A failure line names prompt, model, seed and axes from the event itself (the display holds no plan)."""
    err = io.StringIO()
    display = Display(err, quiet=False, tty=False)
    display(
        {
            "type": "failed",
            "key": "j1-abc",
            "reason": "boom",
            "job": "prompt=cat model=m seed=3 steps=2",
        }
    )
    display(
        {"type": "failed", "key": "j1-def", "reason": "other"}
    )  # an event from elsewhere: the key alone
    assert err.getvalue().splitlines() == [
        "failed: prompt=cat model=m seed=3 steps=2 (j1-abc): boom",
        "failed: j1-def: other",
    ]


def test_run_json_summary_pipes_into_json_tool(tmp_path: Path):
    """`renderer run --json | python -m json.tool` works: one JSON document on stdout, no \\r on stderr."""
    m = write_manifest(tmp_path, seeds=[1, 2], output=str(tmp_path / "o"))
    proc = subprocess.run(
        [sys.executable, "-m", "renderer", "run", str(m), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    tool = subprocess.run(
        [sys.executable, "-m", "json.tool"], input=proc.stdout, capture_output=True, text=True
    )
    assert tool.returncode == 0, tool.stderr
    summary = json.loads(proc.stdout)
    assert (
        summary["outcome"] == "done"
        and summary["counts"]["downloaded"] == 2
        and summary["images_this_run"] == 2
    )
    assert summary["started_at"].endswith("Z") and "T" in summary["started_at"]


def test_split_key_log_file_and_costs(tmp_path: Path):
    """FAL_KEY_ID + FAL_KEY_SECRET authenticate; --log has the events and never the key; costs are recorded."""
    key_id, secret = "id-5f1e2d", "secret-9a8b7c6d5e"
    m = write_manifest(
        tmp_path,
        models=[
            "fal-ai/flux-1/schnell",
            "fal-ai/imagen4/preview",
            {"endpoint": "acme/missing", "label": "gone", "unchecked": True},
        ],
        prices={
            "fal-ai/flux-1/schnell": {"per_megapixel": 0.25},
            "fal-ai/imagen4/preview": {"per_image": 0.05},
        },
        seeds=[1, 2],
    )
    log = tmp_path / "events.jsonl"
    out = io.StringIO()
    with background_emulator(service=FAST, key=f"{key_id}:{secret}") as emu:
        code = main(
            [
                "run",
                str(m),
                "--provider",
                emu.url,
                "--output",
                str(tmp_path / "o"),
                "--log",
                str(log),
                "--json",
            ],
            stdout=out,
            stderr=io.StringIO(),
            environ={"FAL_KEY_ID": key_id, "FAL_KEY_SECRET": secret},
        )
    assert code == 1  # acme/missing fails
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finished"
    assert (
        kinds.count("submitted") == 4
        and kinds.count("downloaded") == 4
        and kinds.count("failed") == 2
    )
    assert all(e["at"].endswith("Z") for e in events)
    assert key_id not in log.read_text() and secret not in log.read_text()
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "o/t/data").rglob("*.json")]
    assert len(sidecars) == 4 and all(s["timings"]["downloaded"].endswith("Z") for s in sidecars)
    expected = sum(
        0.05 if s["endpoint"] == "fal-ai/imagen4/preview" else 0.25 * s["width"] * s["height"] / 1e6
        for s in sidecars
    )
    assert all(s["cost"] > 0 for s in sidecars)
    record = json.loads((tmp_path / "o/t/run.json").read_text())
    assert record["cost"]["this_run"] == pytest.approx(expected, abs=1e-5)
    assert record["cost"]["all_runs"] == pytest.approx(expected, abs=1e-5)
    assert record["cost"]["unpriced_models"] == ["gone"] and record["cost"]["estimate"] > 0
    assert record["started_at"].endswith("Z") and isinstance(record["started"], float)
    assert json.loads(out.getvalue())["cost"]["this_run"] == pytest.approx(expected, abs=1e-5)


def test_missing_key_names_both_forms(tmp_path: Path):
    """Without FAL_KEY (or only half of the id/secret pair) the run refuses, naming both ways to give a key."""
    m = write_manifest(tmp_path, provider="fal")
    err = io.StringIO()
    code = main(
        ["run", str(m), "--output", str(tmp_path / "o")],
        stdout=io.StringIO(),
        stderr=err,
        environ={"FAL_KEY_ID": "only-the-id"},
    )
    assert code == 2 and "FAL_KEY_ID and FAL_KEY_SECRET" in err.getvalue()
    assert not (tmp_path / "o").exists()


def test_status_checks_files_on_disk_and_shows_axes(tmp_path: Path):
    """status notices a deleted image (a rerun downloads it) and names a failed job's axes."""
    m = write_manifest(
        tmp_path,
        models=["fal-ai/flux-1/schnell", {"endpoint": "acme/missing", "unchecked": True}],
        axes={"num_inference_steps": [3]},
        seeds=[1, 2],
    )
    with background_emulator(service=FAST) as emu:
        main(
            ["run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"), "--quiet"],
            stdout=io.StringIO(),
            stderr=io.StringIO(),
            environ={"FAL_KEY": "k"},
        )
    victim = next((tmp_path / "o/t/data").rglob("*.png"))
    victim.unlink()
    out = io.StringIO()
    assert (
        main(["status", str(tmp_path / "o/t")], stdout=out, stderr=io.StringIO(), environ={}) == 0
    )
    text = out.getvalue()
    assert "download 1 (1 with files missing or changed on disk)" in text
    assert f"missing or changed on disk: {victim.relative_to(tmp_path / 'o/t')}" in text
    assert "failed: prompt=cat model=acme/missing seed=1 num_inference_steps=3 [" in text
    assert "last run: failed at 20" in text
    out = io.StringIO()
    main(["status", str(tmp_path / "o/t"), "--json"], stdout=out, stderr=io.StringIO(), environ={})
    data = json.loads(out.getvalue())
    assert data["rerun"]["download"] == 1 and data["failures"][0]["axes"] == {
        "num_inference_steps": 3
    }


def test_log_path_problems_are_usage_errors(tmp_path: Path):
    """--log into a missing folder exits 2 before anything runs; a key error leaves no log file behind."""
    m = write_manifest(tmp_path)
    err = io.StringIO()
    code = main(
        ["run", str(m), "--output", str(tmp_path / "o"), "--log", str(tmp_path / "nope/x.log")],
        stdout=io.StringIO(),
        stderr=err,
        environ={},
    )
    assert code == 2 and "--log" in err.getvalue() and not (tmp_path / "o").exists()
    fal = write_manifest(tmp_path, provider="fal")
    code = main(
        ["run", str(fal), "--output", str(tmp_path / "o"), "--log", str(tmp_path / "run.log")],
        stdout=io.StringIO(),
        stderr=io.StringIO(),
        environ={},
    )
    assert code == 2 and not (tmp_path / "run.log").exists()


ACCOUNTS = ProviderConfig(
    accounts=(
        AccountConfig("FAL_KEY_A", "FAL_KEY_A", 40),
        AccountConfig("team-b", "FAL_KEY_B", 10, 5.0),
    )
)


def test_accounts_resolve_their_keys_once_and_never_show_them():
    """Each account's key is read from its variable; the settings' repr shows names and limits, never a key."""
    env = {
        "FAL_KEY_A": "secret-aaaa-1111",
        "FAL_KEY_B": "secret-bbbb-2222",
        "FAL_KEY": "plain-key-not-used",
    }
    settings = resolve_provider(ACCOUNTS, None, env)
    assert [(a.name, a.key_env, a.concurrency, a.rate, a.key) for a in settings.accounts] == [
        ("FAL_KEY_A", "FAL_KEY_A", 40, None, "secret-aaaa-1111"),
        ("team-b", "FAL_KEY_B", 10, 5.0, "secret-bbbb-2222"),
    ]
    assert settings.key is None and sorted(settings.secrets) == [
        "secret-aaaa-1111",
        "secret-bbbb-2222",
    ]
    assert "secret" not in repr(settings)
    # --provider emulator needs no keys at all; the accounts' limits still apply.
    assert [a.key for a in resolve_provider(ACCOUNTS, "emulator", {}).accounts] == [None, None]


def test_missing_or_shared_account_keys_are_usage_errors_naming_the_variables():
    """Every unset account variable is named (with its account name); two variables holding one key are refused."""
    with pytest.raises(UsageError) as info:
        resolve_provider(ACCOUNTS, None, {"FAL_KEY": "x" * 20})
    assert (
        "FAL_KEY_A, FAL_KEY_B (account team-b) of provider.accounts are not set"
        in info.value.message
    )
    assert "export FAL_KEY_A=" in (info.value.hint or "")
    with pytest.raises(UsageError) as info:
        resolve_provider(
            ACCOUNTS, None, {"FAL_KEY_A": "same-secret-123", "FAL_KEY_B": "same-secret-123"}
        )
    assert info.value.message == "FAL_KEY_A and FAL_KEY_B hold the same key; one key is one account"
    assert "same-secret" not in info.value.message + (info.value.hint or "")


def test_a_missing_account_key_exits_2_before_anything_is_written(tmp_path: Path):
    """`renderer run` with an account whose variable is unset: exit 2 naming it, no run folder, nothing sent."""
    m = write_manifest(
        tmp_path,
        provider={"kind": "fal", "accounts": [{"key_env": "FAL_KEY_A"}, {"key_env": "FAL_KEY_B"}]},
    )
    with background_emulator(service=FAST) as emu:
        err = io.StringIO()
        code = main(
            ["run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o")],
            stdout=io.StringIO(),
            stderr=err,
            environ={"FAL_KEY_A": "only-the-first-key"},
        )
        assert emu.stats()["submit_attempts"] == 0
    assert code == 2 and "FAL_KEY_B of provider.accounts is not set" in err.getvalue()
    assert "only-the-first-key" not in err.getvalue() and not (tmp_path / "o").exists()


def test_runs_get_uvloop_where_installed_and_asyncio_without_it(monkeypatch: pytest.MonkeyPatch):
    """run_sync uses uvloop when it imports (the dependency, except on Windows) and asyncio's own loop when not."""
    import asyncio

    from renderer.runner.session import run_sync

    async def loop_module() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    assert run_sync(loop_module()).startswith("uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on Windows: the import fails
    assert run_sync(loop_module()).startswith("asyncio")


def test_a_provider_on_this_machine_needs_no_key(tmp_path: Path):
    """`--provider http://127.0.0.1:…` (a standalone `renderer emulator`) runs without FAL_KEY; a remote URL does not."""
    m = write_manifest(tmp_path, provider="fal", output=str(tmp_path / "o"))
    with background_emulator() as emu:
        code, _, err = cli("run", str(m), "--provider", emu.url)
        assert code == 0, err
    code, _, err = cli("run", str(m), "--provider", "https://proxy.example.com")
    assert code == 2 and "FAL_KEY is not set" in err


def test_the_built_in_emulator_renders_an_unchecked_endpoint(tmp_path: Path):
    """`unchecked: true` on an endpoint with no schema: the run's emulator answers it with an image, not 404."""
    m = write_manifest(
        tmp_path,
        output=str(tmp_path / "o"),
        models=[{"endpoint": "acme/brand-new", "unchecked": True}],
    )
    code, _, err = cli("run", str(m))
    assert code == 0, err
    assert len(list((tmp_path / "o/t/data/acme--brand-new").rglob("*.png"))) == 1


def test_a_run_keeps_the_layout_it_started_with(tmp_path: Path):
    """A run started flat stays flat when the manifest later asks for sharded; a new run shards."""
    out = str(tmp_path / "o")
    m = write_manifest(tmp_path, output=out)
    assert cli("run", str(m))[0] == 0
    m = write_manifest(
        tmp_path,
        output=out,
        layout="sharded",
        prompts=[{"id": "cat", "text": "a cat"}, {"id": "dog", "text": "a dog"}],
    )
    assert cli("run", str(m))[0] == 0
    assert sorted(
        p.relative_to(tmp_path / "o/t/data").as_posix()
        for p in (tmp_path / "o/t/data").rglob("*.png")
    ) == [
        "fal-ai--flux-1--schnell/cat/s1-0.png",
        "fal-ai--flux-1--schnell/dog/s1-0.png",
    ]
    fresh = write_manifest(tmp_path, output=str(tmp_path / "o2"), layout="sharded")
    assert cli("run", str(fresh))[0] == 0
    (image,) = (tmp_path / "o2/t/data").rglob("*.png")
    assert image.parent.parent.name == bucket("cat")


def test_a_run_raises_a_low_open_file_limit_to_hold_its_connections():
    """A process started with a soft limit of 256 files (hard 4,096) is given room for 1,000
    connections and the run's files; the hard limit is never moved, and a limit already high
    enough is left as it is."""
    script = (
        "import resource\n"
        "from renderer.runner.session import room_for_connections\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))\n"
        "room_for_connections(1000)\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "room_for_connections(10)\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "room_for_connections(100000)\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.split("\n")[:3] == ["1256 4096", "1256 4096", "4096 4096"]
