"""The runner end to end against the emulator over real sockets: resume, faults, limits, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from renderer.manifest.load import load
from renderer.models.schemas import SchemaRegistry
from renderer.plan import planner as plan_mod
from renderer.provider.client import Client
from renderer.provider.emulator import Faults, ServiceTime
from renderer.runner import AccountLimit, RunConfig
from renderer.runner.lead import lead_cap, lead_for
from renderer.runner.limits import Account, Accounts, AccountSlots
from renderer.runner.runner import Runner
from renderer.state.sqlite import SQLiteStore

from .conftest import MANIFESTS, ROOT, background_emulator, cli, write_manifest

FAST = ServiceTime("fixed", 0.01)


def images(run_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in run_dir.rglob("*")
        if p.suffix in (".png", ".jpg", ".webp") and not p.name.startswith(".")
    )


def assert_all_verified(run_dir: Path) -> None:
    """Every image decodes and matches its sidecar's hash; metadata lists exactly these files."""
    found = images(run_dir)
    for path in found:
        with Image.open(path) as im:
            im.load()
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), path
    rows = [json.loads(line) for line in (run_dir / "data/metadata.jsonl").read_text().splitlines()]
    assert sorted(r["file_name"] for r in rows) == sorted(
        str(p.relative_to(run_dir / "data")) for p in found
    )


def test_quickstart_renders_end_to_end(tmp_path: Path):
    """The README's first command: the quickstart renders 8 verified images with metadata on the emulator."""
    code, out, err = cli(
        "run", str(MANIFESTS / "quickstart.yaml"), "--output", str(tmp_path), "--quiet"
    )
    assert code == 0, err
    run_dir = tmp_path / "quickstart"
    assert len(images(run_dir)) == 8
    assert_all_verified(run_dir)
    rows = [json.loads(line) for line in (run_dir / "data/metadata.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows[:2]] == ["cat-skateboard", "cat-skateboard"]
    assert {
        "file_name",
        "prompt",
        "prompt_id",
        "model",
        "endpoint",
        "seed",
        "job_key",
        "input",
        "tags",
        "width",
        "height",
        "sha256",
        "provider",
        "has_nsfw_concepts",
    } <= set(rows[0])
    assert "split: train" in (run_dir / "data/README.md").read_text()
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["outcome"] == "done" and summary["counts"]["downloaded"] == 8
    assert out.startswith("done: 8/8 jobs downloaded")


def test_rerun_skips_finished_and_never_pays_twice(tmp_path: Path):
    """A second run sends nothing; a changed parameter is a new job and the old one is listed."""
    with background_emulator(service=FAST) as emu:
        env = {"FAL_KEY": "k"}
        m = write_manifest(tmp_path, seeds=[1, 2, 3])
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "out"), "--quiet")
        assert cli(*base, env=env)[0] == 0
        assert cli(*base, env=env)[0] == 0
        assert emu.stats()["submits"] == 3 and emu.stats()["duplicate_submits"] == 0
        write_manifest(tmp_path, seeds=[1, 2, 3], defaults={"num_inference_steps": 2})
        assert cli(*base, env=env)[0] == 0
        assert emu.stats()["submits"] == 6
    code, out, _ = cli("status", str(tmp_path / "out/t"))
    assert code == 0
    assert out.count("no longer in the manifest") == 3
    assert "downloaded=3" in out and "no_longer_planned=3" in out


def test_the_dataset_is_written_while_the_last_requests_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A large run writes its dataset while its last requests render, again between their rounds,
    and appends the rest at the end (issue 23's tail): every image is in it once, and a rerun
    finds it exact and keeps it."""
    import renderer.output.dataset as dataset_mod
    import renderer.runner.runner as runner_mod

    monkeypatch.setattr(runner_mod, "EARLY_EXPORT_MIN", 5)  # what counts as large, for 16 jobs
    monkeypatch.setattr(runner_mod, "EXPORT_STEP", 4)
    writes: list[int] = []
    update = dataset_mod.update

    def counted(store: Any, *args: Any, **kw: Any) -> Any:
        writes.append(store.counts()["downloaded"])
        return update(store, *args, **kw)

    monkeypatch.setattr(dataset_mod, "update", counted)
    with background_emulator(service=ServiceTime("fixed", 0.4)) as emu:
        m = write_manifest(tmp_path, seeds=list(range(1, 17)), limits={"concurrency": 4})
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "out"), "--quiet")
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        # Four rounds of 4: written ahead once 5 had finished (after the second round), again
        # after the third (4 more, none being delivered), the last round appended at the end.
        assert len(writes) >= 3 and 5 <= writes[0] < 16 and writes[-1] == 16
        assert writes == sorted(writes) and len(set(writes)) == len(writes)
        run_dir = tmp_path / "out/t"
        assert_all_verified(run_dir)
        metadata = run_dir / "data/metadata.jsonl"
        rows = [json.loads(line) for line in metadata.read_text().splitlines()]
        assert sorted(r["seed"] for r in rows) == list(range(1, 17))
        before = metadata.stat().st_mtime_ns
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0  # nothing to do: the dataset is kept
        assert metadata.stat().st_mtime_ns == before and emu.stats()["submits"] == 16


def test_a_jobs_folder_is_made_while_its_request_runs(tmp_path: Path):
    """A local run makes each job's folder once its request is submitted, before its delivery
    (not in the burst of deliveries when a round ends)."""
    from renderer import api
    from renderer.layout import job_folder

    prompts = [{"id": f"p{i}", "text": f"picture {i}"} for i in range(4)]  # a folder each
    plan = api.load_manifest(write_manifest(tmp_path, prompts=prompts, limits={"concurrency": 2}))
    stems = {j.key: j.stem for j in plan.jobs}
    submitted: dict[str, float] = {}
    seen: list[tuple[str, bool]] = []
    run_dir = tmp_path / "out" / "t"

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "submitted":
            submitted[event["key"]] = time.monotonic()
        elif event["type"] == "downloaded" and not seen:
            # Every other request submitted a while ago (its own prompt, its own folder) and
            # still running (0.5 s each, 2 at once) has its folder.
            for key, at in submitted.items():
                if key != event["key"] and time.monotonic() - at > 0.1:
                    seen.append((key, (run_dir / job_folder(stems[key])).is_dir()))

    with background_emulator(service=ServiceTime("fixed", 0.5)) as emu:
        summary = api.run(
            plan,
            provider=emu.url,
            output=tmp_path / "out",
            on_event=on_event,  # type: ignore[arg-type]
            env={"FAL_KEY": "k"},
        )
    assert summary.outcome == "done"
    assert seen and all(made for _, made in seen), seen
    assert_all_verified(run_dir)


def test_a_run_collects_less_garbage_and_gives_the_settings_back(tmp_path: Path):
    """During a run the collector skips what existed at its start and runs every GC_YOUNG
    allocations; the caller of the Python API gets its own settings back, nothing left frozen."""
    import gc

    from renderer import api
    from renderer.runner.runner import GC_YOUNG

    before = gc.get_threshold()
    seen: list[tuple[tuple[int, int, int], int]] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "downloaded":
            seen.append((gc.get_threshold(), gc.get_freeze_count()))

    with background_emulator(service=FAST) as emu:
        m = write_manifest(tmp_path, seeds=[1, 2, 3])
        summary = api.run(
            api.load_manifest(m),
            provider=emu.url,
            output=tmp_path / "out",
            on_event=on_event,  # type: ignore[arg-type]
            env={"FAL_KEY": "k"},
        )
    assert summary.outcome == "done" and len(seen) == 3
    assert all(t == (GC_YOUNG, *before[1:]) and frozen > 0 for t, frozen in seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_overlapping_runs_give_the_gc_settings_back_only_when_the_last_ends():
    """Two runs overlapping in one process (the Python API in threads): the first to end leaves
    the other's settings in place; the last puts back what the first found."""
    import gc

    from renderer.runner.runner import GC_YOUNG, collecting_less

    before = gc.get_threshold()
    first, second = collecting_less(), collecting_less()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold()[0] == GC_YOUNG and gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_damaged_file_is_downloaded_again_without_a_resubmit(tmp_path: Path):
    """A deleted or edited image is fetched again from the stored result, not paid for again."""
    with background_emulator(service=FAST) as emu:
        m = write_manifest(tmp_path, seeds=[1, 2])
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "out"), "--quiet")
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        first, second = images(tmp_path / "out/t")
        first.unlink()
        second.write_bytes(second.read_bytes()[:-10] + b"0123456789")
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        assert emu.stats()["submits"] == 2 and emu.stats()["downloads"] == 4
    assert_all_verified(tmp_path / "out/t")


def test_a_changed_image_of_a_multi_image_job_is_downloaded_again(tmp_path: Path):
    """A job with several images is checked file by file too: the edited one is fetched again, nothing resent."""
    with background_emulator(service=FAST) as emu:
        m = write_manifest(tmp_path, seeds=[1, 2], defaults={"num_images": 2})
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "out"), "--quiet")
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        found = images(tmp_path / "out/t")
        assert len(found) == 4 and emu.stats()["downloads"] == 4
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0  # nothing changed: nothing fetched
        assert emu.stats()["downloads"] == 4
        victim = sorted(found)[1]  # the second image of the first job
        victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        assert (
            emu.stats()["submits"] == 2 and emu.stats()["downloads"] == 6
        )  # that job's two images, again
    assert_all_verified(tmp_path / "out/t")


@pytest.mark.slow
def test_fault_mix_500_jobs_all_valid(tmp_path: Path):
    """10% 429, 5% ingress 502, 5% runner errors, 5% dropped and 2% corrupt downloads: all 500 complete."""
    # Ingress 502/503 only: a 504 on a submit may have been passed on, so it is an unknown outcome (not resent).
    faults = Faults(
        submit_429=0.10,
        ingress_5xx=0.05,
        ingress_codes=(502, 503),
        runner_error=0.05,
        drop_download=0.05,
        corrupt_image=0.02,
    )
    m = write_manifest(
        tmp_path,
        prompts=[{"id": f"p{i}", "text": f"picture {i}"} for i in range(50)],
        seeds=list(range(1, 11)),
        retries={"attempts": 10, "backoff": 0.01, "max_backoff": 0.2},
        limits={"concurrency": 32, "rate": 2000},
    )
    with background_emulator(service=FAST, workers=32, seed=7, faults=faults) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "out"),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
        stats = emu.stats()
    assert code == 0, out + err
    assert len(images(tmp_path / "out/t")) == 500
    assert_all_verified(tmp_path / "out/t")
    # Each fault really happened, and only runner failures caused a second submit of an input.
    assert all(
        stats["faults"].get(k, 0) > 0
        for k in ("submit_429", "runner_error", "drop_download", "corrupt_image")
    )
    assert stats["duplicate_submits"] == stats["faults"]["runner_error"]


def test_unauthorized_stops_the_run_with_exit_3(tmp_path: Path):
    """A 401 stops everything at once with the provider's message; nothing more is sent."""
    m = write_manifest(tmp_path, seeds=list(range(1, 21)))
    with background_emulator(service=FAST, key="right") as emu:
        code, _, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            env={"FAL_KEY": "wrong"},
        )
        attempts = emu.stats()["submit_attempts"]
    assert code == 3
    assert "HTTP 401" in err and "No user found" in err and "hint:" in err
    assert attempts == 0  # refused at the door: the middleware answers before any submit


def test_locked_account_stops_the_run_with_exit_3(tmp_path: Path):
    """403 'User is locked' stops the run; jobs already submitted are kept for the next run."""
    m = write_manifest(tmp_path, seeds=list(range(1, 21)), limits={"concurrency": 1})
    with background_emulator(service=FAST, faults=Faults(lock_after=3)) as emu:
        code, _, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            env={"FAL_KEY": "k"},
        )
        attempts = emu.stats()["submit_attempts"]
    assert code == 3
    assert "User is locked. Reason: Exhausted balance" in err
    # Three accepted; then only the submits already on the wire when the first 403 came (at most
    # the provider slots of concurrency 1 and its lead: lead_cap(1) = 2), then nothing.
    assert 4 <= attempts <= 3 + 1 + lead_cap(1)
    store = SQLiteStore(tmp_path / "o/t", readonly=True)
    counts = store.counts()
    store.close()
    # The three accepted requests ran side by side: each is recorded (the next run follows it).
    assert counts["submitted"] + counts["completed"] + counts["downloaded"] == 3
    assert (
        counts["submitted"] + counts["completed"] + counts["downloaded"] + counts["planned"] == 20
    )


def test_rejected_jobs_fail_alone(tmp_path: Path):
    """Jobs the provider refuses (an endpoint it does not have: 404) fail at once; the others finish; exit 1."""
    m = write_manifest(
        tmp_path,
        seeds=[1, 2],
        models=[
            {"endpoint": "fal-ai/flux-1/schnell"},
            {"endpoint": "acme/strict", "unchecked": True},
        ],
    )
    with background_emulator(service=FAST) as emu:
        code, _, _ = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
    assert code == 1
    code, out, _ = cli("status", str(tmp_path / "o/t"), "--json")
    status = json.loads(out)
    assert status["counts"]["downloaded"] == 2 and status["counts"]["failed"] == 2
    assert all(f["kind"] == "rejected" and "HTTP 404" in f["reason"] for f in status["failures"])


def test_422_from_the_provider_is_kept(tmp_path: Path):
    """A job the provider rejects with 422 keeps fal's detail in its failure."""
    m = write_manifest(
        tmp_path,
        models=[
            {
                "endpoint": "fal-ai/flux-1/schnell",
                "unchecked": True,
                "params": {"num_inference_steps": "many"},
            }
        ],
    )
    with background_emulator(service=FAST) as emu:
        code, _, _ = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
        assert emu.stats()["submits"] == 1
    assert code == 1
    failure = json.loads(cli("status", str(tmp_path / "o/t"), "--json")[1])["failures"][0]
    assert "HTTP 422" in failure["reason"] and "num_inference_steps" in failure["reason"]


def test_key_never_appears_in_files_or_logs(tmp_path: Path):
    """The key from the environment is in no file under the output directory and no output line."""
    secret = "sekrit-" + os.urandom(8).hex()
    m = write_manifest(tmp_path, seeds=[1, 2])
    with background_emulator(service=FAST, key=secret) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            env={"FAL_KEY": secret},
        )
        bad = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o2"),
            env={"FAL_KEY": secret + "x"},
        )
    assert code == 0
    texts = [out, err, bad[1], bad[2]]
    for path in (tmp_path / "o").rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
    assert not any(secret in t for t in texts)


def test_missing_key_is_a_usage_error(tmp_path: Path):
    """fal without FAL_KEY is exit 2 with a hint; nothing is created."""
    m = write_manifest(tmp_path, provider="fal")
    code, _, err = cli("run", str(m), "--output", str(tmp_path / "o"))
    assert code == 2 and "FAL_KEY is not set" in err and "hint:" in err
    assert not (tmp_path / "o").exists()


def test_second_run_on_the_same_directory_is_refused(tmp_path: Path):
    """A locked output directory is refused with a clear message."""
    from renderer.state.lock import RunLock

    m = write_manifest(tmp_path)
    with RunLock(tmp_path / "o/t"):
        code, _, err = cli("run", str(m), "--output", str(tmp_path / "o"))
    assert code == 1 and "in use by another renderer run" in err


def test_stuck_job_is_cancelled_at_its_deadline(tmp_path: Path):
    """A job stuck IN_QUEUE past --timeout is cancelled and reported with its queue position."""
    m = write_manifest(tmp_path)
    with background_emulator(service=FAST, faults=Faults(stuck=1.0)) as emu:
        code, _, _ = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--timeout",
            "0.5",
            "--quiet",
            env={"FAL_KEY": "k"},
        )
        assert emu.stats()["cancels"] == 1
    assert code == 1
    failure = json.loads(cli("status", str(tmp_path / "o/t"), "--json")[1])["failures"][0]
    assert failure["kind"] == "deadline" and "IN_QUEUE at queue position 0" in failure["reason"]
    assert "CANCELLATION_REQUESTED" in failure["reason"]


def test_expired_results_are_resubmitted_within_the_budget(tmp_path: Path):
    """When the provider no longer has a result, the job is resubmitted, up to the attempt budget."""
    m = write_manifest(tmp_path, retries={"attempts": 3, "backoff": 0.01})
    with background_emulator(service=FAST, faults=Faults(retention=0.0)) as emu:
        code, _, _ = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
        assert emu.stats()["submits"] == 3
    assert code == 1


def test_progress_counts_earlier_runs(tmp_path: Path):
    """A resumed run's progress starts at the jobs already finished and ends at the total; piped, no \\r."""
    m = write_manifest(tmp_path, seeds=[1, 2, 3, 4, 5, 6, 7, 8])
    with background_emulator(service=FAST) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"))
        assert cli(*base, "--max-jobs", "3", "--quiet", env={"FAL_KEY": "k"})[0] == 0
        code, _, err = cli(*base, env={"FAL_KEY": "k"})
    assert code == 0
    assert "\r" not in err
    frames = [f for f in err.splitlines() if f.startswith("progress: ")]
    assert frames[0].startswith("progress: 3/8 jobs (38%)")
    assert frames[-1].startswith("progress: 8/8 jobs (100%)")


def test_max_jobs_and_retry_failed(tmp_path: Path):
    """--max-jobs renders a trial subset; --retry-failed sends failed jobs again."""
    m = write_manifest(tmp_path, seeds=[1, 2, 3, 4])
    with background_emulator(service=FAST) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"), "--quiet")
        assert cli(*base, "--max-jobs", "2", env={"FAL_KEY": "k"})[0] == 0
        assert len(images(tmp_path / "o/t")) == 2
    with background_emulator(service=FAST, faults=Faults(lock_after=0)) as emu:
        assert cli(*base[:3], emu.url, *base[4:], env={"FAL_KEY": "k"})[0] == 3
    with background_emulator(service=FAST) as emu:
        assert cli(*base[:3], emu.url, *base[4:], "--retry-failed", env={"FAL_KEY": "k"})[0] == 0
        assert emu.stats()["submits"] == 2
    assert len(images(tmp_path / "o/t")) == 4


@pytest.mark.slow
def test_rate_limit_allows_no_burst(tmp_path: Path):
    """With rate R, no one-second window at the emulator holds more than R plus the bucket."""
    from renderer.runner.limits import bucket_size

    rate = 20
    m = write_manifest(tmp_path, seeds=list(range(1, 61)), limits={"concurrency": 64, "rate": rate})
    with background_emulator(service=FAST, workers=64) as emu:
        assert (
            cli(
                "run",
                str(m),
                "--provider",
                emu.url,
                "--output",
                str(tmp_path / "o"),
                "--quiet",
                env={"FAL_KEY": "k"},
            )[0]
            == 0
        )
        times = emu.stats()["submit_times"]
    assert len(times) == 60
    worst = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert worst <= rate + bucket_size(rate)


def test_throttling_halves_the_in_flight_limit():
    """AIMD: a 429 halves the limit, successes add back one per limit's worth."""
    from renderer.runner.limits import AdaptiveLimit

    limit = AdaptiveLimit(8)
    limit.throttled()
    limit.throttled()
    assert limit.limit == 2.0
    limit.succeeded()
    limit.succeeded()
    assert limit.limit == pytest.approx(2 + 1 / 2 + 1 / 2.5)  # +1 per limit's worth of successes
    for _ in range(100):
        limit.succeeded()
    assert limit.limit == 8.0


# ---------------------------------------------------------------- crashes and interrupts


def _subprocess_run(manifest: Path, url: str, output: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FAL_KEY": "k", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "renderer",
            "run",
            str(manifest),
            "--provider",
            url,
            "--output",
            str(output),
            "--quiet",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path):
    """20 SIGKILLs at random moments: the final run completes every job, every file matches its
    sidecar, no partial file is ever at a final path, and inputs are submitted twice only where a
    kill fell between a submit and its commit (counted by the store, and compared here)."""
    rng = random.Random(20261122)
    # Every kill must land mid-run: 2 slots x 0.2 s is at most 10 jobs/s, and no trial lives
    # past 1.3 s (at least 0.3 s of it is start-up), so twenty trials render at most
    # 20 x 1.0 s x 10 = 200 of the 240 jobs, whatever the machine's speed.
    m = write_manifest(
        tmp_path,
        prompts=[{"id": f"p{i}", "text": f"picture {i}"} for i in range(8)],
        seeds=list(range(1, 31)),
        limits={"concurrency": 4, "rate": 200},
    )
    output = tmp_path / "out"
    kills = 0
    with background_emulator(service=ServiceTime("fixed", 0.2), workers=2) as emu:
        for _ in range(20):
            proc = _subprocess_run(m, emu.url, output)
            time.sleep(rng.uniform(0.3, 1.3))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(30)
            for path in images(output / "t"):  # whatever is at a final path is a whole image
                with Image.open(path) as im:
                    im.load()
        final = _subprocess_run(m, emu.url, output)
        assert final.wait(120) == 0
        stats = emu.stats()
    assert kills == 20  # every trial really was killed mid-run
    assert len(images(output / "t")) == 240
    assert_all_verified(output / "t")
    store = SQLiteStore(output / "t", readonly=True)
    ambiguous = store.total_ambiguous()
    store.close()
    assert stats["duplicate_submits"] <= ambiguous
    print(
        f"kills={kills} submits={stats['submits']} duplicates={stats['duplicate_submits']} ambiguous={ambiguous}"
    )


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(tmp_path: Path):
    """SIGINT: exit 130 with state saved; the rerun completes without resubmitting recorded jobs."""
    m = write_manifest(tmp_path, seeds=list(range(1, 31)), limits={"concurrency": 4, "rate": 100})
    with background_emulator(service=ServiceTime("fixed", 0.2), workers=4) as emu:
        proc = _subprocess_run(m, emu.url, tmp_path / "o")
        deadline = time.monotonic() + 30  # start-up on a loaded machine can take seconds
        while emu.stats()["submits"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        submitted = emu.stats()["submits"]
        assert 0 < submitted < 30
        final = _subprocess_run(m, emu.url, tmp_path / "o")
        assert final.wait(60) == 0
        stats = emu.stats()
    assert stats["submits"] == 30 and stats["duplicate_submits"] == 0
    assert json.loads((tmp_path / "o/t/run.json").read_text())["outcome"] == "done"


# ---------------------------------------------------------------- property


@pytest.mark.slow
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.integers(1, 6), st.integers(0, 6), st.integers(0, 6))
def test_resuming_twice_equals_running_once(tmp_path_factory, seeds, first, second):
    """Stopping after any number of jobs and resuming (twice) gives the bytes of one uninterrupted run."""
    folder = tmp_path_factory.mktemp("resume")
    m = write_manifest(
        folder,
        seeds=list(range(1, seeds + 1)),
        models=["fal-ai/flux-1/schnell", "fal-ai/imagen4/preview"],
    )
    with background_emulator(service=FAST) as emu:
        base = ("run", str(m), "--provider", emu.url, "--quiet")
        cli(*base, "--output", str(folder / "once"), env={"FAL_KEY": "k"})
        cli(
            *base,
            "--output",
            str(folder / "resumed"),
            "--max-jobs",
            str(first),
            env={"FAL_KEY": "k"},
        )
        cli(
            *base,
            "--output",
            str(folder / "resumed"),
            "--max-jobs",
            str(first + second),
            env={"FAL_KEY": "k"},
        )
        cli(*base, "--output", str(folder / "resumed"), env={"FAL_KEY": "k"})
        cli(*base, "--output", str(folder / "resumed"), env={"FAL_KEY": "k"})
        assert emu.stats()["duplicate_submits"] == seeds * 2  # each input once per output folder

    def digest(run: Path) -> dict[str, str]:
        return {
            str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in images(run)
        }

    assert digest(folder / "once/t") == digest(folder / "resumed/t")
    once = [
        json.loads(x)["file_name"]
        for x in io.StringIO((folder / "once/t/data/metadata.jsonl").read_text())
    ]
    again = [
        json.loads(x)["file_name"]
        for x in io.StringIO((folder / "resumed/t/data/metadata.jsonl").read_text())
    ]
    assert once == again


# ---------------------------------------------------------------- paying twice is never silent (issue 10, part B)


def _emulator_manifest(folder: Path, seeds: list[int], latency: float) -> Path:
    return write_manifest(
        folder,
        seeds=seeds,
        provider={"kind": "emulator", "emulator": {"latency": latency, "workers": 4}},
        limits={"concurrency": 4, "rate": 100},
    )


@contextlib.contextmanager
def _popen(manifest: Path, output: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`renderer run` in a subprocess; killed if still alive at the end, its pipes always closed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FAL_KEY", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "renderer",
            "run",
            str(manifest),
            "--output",
            str(output),
            "--quiet",
            *extra,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with proc:  # closes stdout and stderr and waits, also when the test failed
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def test_sigterm_is_handled_like_ctrl_c_and_the_in_process_emulator_run_can_be_finished(
    tmp_path: Path,
):
    """SIGTERM: exit 143 with run.json and metadata written; the rerun on a new in-process emulator completes."""
    m = _emulator_manifest(tmp_path, list(range(1, 41)), 5.0)  # slow: requests are surely in flight
    with _popen(m, tmp_path / "o") as proc:
        run_dir = tmp_path / "o/t"
        deadline = time.monotonic() + 30

        def in_flight() -> int:
            try:
                db = sqlite3.connect(f"file:{run_dir / 'renderer.sqlite'}?mode=ro", uri=True)
                try:
                    return db.execute(
                        "SELECT COUNT(*) FROM jobs WHERE state = 'submitted'"
                    ).fetchone()[0]
                finally:
                    db.close()
            except sqlite3.Error:
                return 0

        while in_flight() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    assert json.loads((run_dir / "run.json").read_text())["outcome"] == "interrupted"
    assert (run_dir / "data/metadata.jsonl").is_file() and (run_dir / "data/README.md").is_file()
    store = SQLiteStore(run_dir, readonly=True)
    left = store.counts()
    store.close()
    assert (
        left["downloaded"] < 40 and left["submitted"] >= 2
    )  # requests of the old emulator were in flight
    m = _emulator_manifest(
        tmp_path, list(range(1, 41)), 0.01
    )  # the provider's settings are not part of a job
    code, out, err = cli("run", str(m), "--output", str(tmp_path / "o"), "--quiet")
    assert code == 0, out + err
    assert len(images(run_dir)) == 40
    assert_all_verified(run_dir)
    assert (
        "paid twice" not in out
    )  # the emulator is free: resending its lost requests costs nothing


def test_a_crashed_run_never_leaves_run_json_saying_done(tmp_path: Path):
    """kill -9 during a rerun of a finished run: run.json says the run is in progress, not done."""
    m = _emulator_manifest(tmp_path, [1, 2], 0.01)
    assert cli("run", str(m), "--output", str(tmp_path / "o"), "--quiet")[0] == 0
    assert json.loads((tmp_path / "o/t/run.json").read_text())["outcome"] == "done"
    m = _emulator_manifest(tmp_path, list(range(1, 41)), 0.5)
    with _popen(m, tmp_path / "o") as proc:
        deadline = time.monotonic() + 20
        while (
            json.loads((tmp_path / "o/t/run.json").read_text())["outcome"] == "done"
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert json.loads((tmp_path / "o/t/run.json").read_text())["outcome"] == "running"


def test_retry_failed_on_a_gone_download_url_resubmits_and_says_it_pays_again(tmp_path: Path):
    """--retry-failed after the file host says the file is gone (404, an expired result): submitted again, counted as paid twice."""
    from dataclasses import replace

    m = write_manifest(tmp_path, retries={"attempts": 2, "backoff": 0.01, "max_backoff": 0.02})
    faults = Faults(drop_download=1.0, retention=1.0)
    with background_emulator(service=FAST, faults=faults) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"))
        assert cli(*base, "--quiet", env={"FAL_KEY": "k"})[0] == 1
        time.sleep(1.2)  # the result and its file expire: the file URL now answers 404
        emu.config = replace(emu.config, faults=Faults(retention=1.0))
        code, out, err = cli(*base, "--retry-failed", env={"FAL_KEY": "k"})
        assert emu.stats()["submits"] == 2
    assert code == 0, out + err
    assert (
        "download URL gone on retry" in err and "submitting again, which pays for it again" in err
    )
    assert "paid twice: 1 (1 x download URL gone on retry" in out
    record = json.loads((tmp_path / "o/t/run.json").read_text())
    assert record["paid_twice"]["this_run"] == 1 and record["paid_twice"]["all_runs"] == 1
    assert len(images(tmp_path / "o/t")) == 1


@pytest.mark.parametrize("fault", ["truncate_image", "drop_download"])
def test_retry_failed_after_broken_downloads_reads_again_and_pays_nothing(
    tmp_path: Path, fault: str
):
    """Downloads that failed by truncation or an interrupted read: --retry-failed reads the same URLs again, 0 submits; while they still fail, the jobs stay failed unpaid."""
    from dataclasses import replace

    m = write_manifest(
        tmp_path, seeds=[1, 2, 3, 4], retries={"attempts": 2, "backoff": 0.01, "max_backoff": 0.02}
    )
    with background_emulator(service=FAST, faults=Faults(**{fault: 1.0})) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"))
        assert cli(*base, "--quiet", env={"FAL_KEY": "k"})[0] == 1
        # Still broken: read again, failed again, nothing paid, and the run says how to go on.
        code, out, err = cli(*base, "--retry-failed", env={"FAL_KEY": "k"})
        assert code == 1 and emu.stats()["submits"] == 4, out + err
        assert "rerun with --retry-failed to read it again" in out + err
        assert "paid twice" not in out
        emu.config = replace(emu.config, faults=Faults())
        code, out, err = cli(*base, "--retry-failed", env={"FAL_KEY": "k"})
        stats = emu.stats()
    assert code == 0, out + err
    assert stats["submits"] == 4 and stats["duplicate_submits"] == 0
    assert "paid twice" not in out
    assert len(images(tmp_path / "o/t")) == 4
    assert json.loads((tmp_path / "o/t/run.json").read_text())["paid_twice"]["all_runs"] == 0


def test_resubmits_are_counted_in_run_json_the_summary_and_status(tmp_path: Path):
    """Runner failures that make the runner pay again: run.json, the summary line and status give the count and why."""
    m = write_manifest(
        tmp_path,
        seeds=list(range(1, 31)),
        retries={"attempts": 10, "backoff": 0.01},
        limits={"concurrency": 8, "rate": 1000},
    )
    with background_emulator(
        service=FAST, workers=8, seed=3, faults=Faults(runner_error=0.3)
    ) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            env={"FAL_KEY": "k"},
        )
        duplicates = emu.stats()["duplicate_submits"]
    assert code == 0, err
    assert duplicates > 0
    record = json.loads((tmp_path / "o/t/run.json").read_text())
    assert record["paid_twice"]["this_run"] == duplicates
    assert sum(record["paid_twice"]["resubmits"].values()) == duplicates
    assert all("runner failed" in reason for reason in record["paid_twice"]["resubmits"])
    assert f"paid twice: {duplicates} (" in out
    assert f"paid twice: {duplicates} over all runs" in cli("status", str(tmp_path / "o/t"))[1]
    assert (
        json.loads(cli("status", str(tmp_path / "o/t"), "--json")[1])["paid_twice"]["count"]
        == duplicates
    )


def test_emulator_placeholders_are_not_done_for_a_real_provider(tmp_path: Path):
    """Rendered on the emulator, then run against another provider: rendered again there, provider recorded per image."""
    m = write_manifest(tmp_path, seeds=[1, 2])
    base = ("run", str(m), "--output", str(tmp_path / "o"), "--quiet")
    assert cli(*base, "--provider", "emulator")[0] == 0
    sidecar = json.loads(images(tmp_path / "o/t")[0].with_suffix(".json").read_text())
    assert sidecar["provider"] == "emulator"
    with background_emulator(service=FAST) as emu:
        code, out, _ = cli(*base[:-1], "--provider", emu.url, env={"FAL_KEY": "k"})
        assert emu.stats()["submits"] == 2
        assert cli(*base, "--provider", emu.url, env={"FAL_KEY": "k"})[0] == 0  # and now it is done
        assert (
            cli(*base, "--provider", "emulator")[0] == 0
        )  # an emulator run never replaces real images
        assert emu.stats()["submits"] == 2
    assert code == 0 and "2 images written" in out
    origin = emu.url.rstrip("/")
    for path in images(tmp_path / "o/t"):
        assert json.loads(path.with_suffix(".json").read_text())["provider"] == origin
    rows = [
        json.loads(line) for line in (tmp_path / "o/t/data/metadata.jsonl").read_text().splitlines()
    ]
    assert [r["provider"] for r in rows] == [origin, origin]


@contextlib.contextmanager
def _small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `folder` (needs root and mount rights; the test is skipped without them)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def test_a_nearly_full_disk_stops_submissions_before_anything_is_paid(tmp_path: Path):
    """Less free space than the reserve: nothing is submitted, a clear error; after more space, the run completes."""
    m = write_manifest(tmp_path, seeds=list(range(1, 11)))
    with (
        _small_disk(tmp_path / "disk", "2m") as disk,
        background_emulator(service=FAST, workers=4) as emu,
    ):
        base = ("run", str(m), "--provider", emu.url, "--output", str(disk), "--quiet")
        code, out, err = cli(*base, env={"FAL_KEY": "k"})
        assert code == 1, out + err
        assert (
            "MB free; renderer stops submitting below 8 MB" in err
            and "hint: free space on that disk" in err
        )
        assert emu.stats()["submit_attempts"] == 0
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        assert emu.stats()["submits"] == 10 and emu.stats()["duplicate_submits"] == 0


@pytest.mark.slow
def test_disk_full_is_a_clear_error_and_the_rerun_after_freeing_space_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """No space left mid-run (no reserve): exit 1 naming the file and what to do, no traceback, run.json not done;
    after more space the rerun completes, paying again only for submits whose id could not be recorded (counted)."""
    monkeypatch.setattr("renderer.runner.job.FREE_SPACE_RESERVE", 0)
    m = write_manifest(
        tmp_path, seeds=list(range(1, 41)), defaults={"image_size": {"width": 256, "height": 256}}
    )
    with (
        _small_disk(tmp_path / "disk", "400k") as disk,
        background_emulator(service=FAST, workers=4) as emu,
    ):
        base = ("run", str(m), "--provider", emu.url, "--output", str(disk), "--quiet")
        code, out, err = cli(*base, env={"FAL_KEY": "k"})
        assert code == 1, out + err
        assert "Traceback" not in err and "internal error" not in err
        assert "No space left on device" in err or "disk is full" in err
        assert "hint: free space on that disk, then rerun the same command" in err
        record = (
            disk / "t/run.json"
        )  # absent when the database filled before the run's start record
        assert not record.exists() or json.loads(record.read_text())["outcome"] != "done"
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        code, out, err = cli(*base, env={"FAL_KEY": "k"})
        assert code == 0, out + err
        duplicates = emu.stats()["duplicate_submits"]
        assert len(images(disk / "t")) == 40
        assert_all_verified(disk / "t")
        store = SQLiteStore(disk / "t", readonly=True)
        assert (
            duplicates == store.total_ambiguous() <= 4
        )  # at most the submits in flight, each counted
        store.close()
        assert (f"paid twice: {duplicates}" in out) == (duplicates > 0)


def test_read_only_output_is_a_clear_error_and_the_rerun_after_the_fix_pays_nothing_twice(
    tmp_path: Path,
):
    """A file system remounted read-only mid-project (read-only even for root): a clear error, then a clean resume."""
    m = write_manifest(tmp_path, seeds=[1, 2, 3, 4])
    with _small_disk(tmp_path / "disk", "64m") as disk, background_emulator(service=FAST) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", str(disk), "--quiet")
        assert cli(*base, "--max-jobs", "2", env={"FAL_KEY": "k"})[0] == 0
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code, out, err = cli(*base, env={"FAL_KEY": "k"})
        assert code == 1, out + err
        assert "Traceback" not in err and ("Read-only file system" in err or "readonly" in err)
        assert "hint:" in err
        assert emu.stats()["submits"] == 2  # nothing was sent
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        assert emu.stats()["submits"] == 4 and emu.stats()["duplicate_submits"] == 0


def test_a_file_where_a_folder_must_be_is_a_clear_error_and_the_rerun_pays_nothing_twice(
    tmp_path: Path,
):
    """An image folder that cannot be created (a file is in the way): exit 1, the fix named; then it resumes."""
    m = write_manifest(tmp_path, seeds=[1, 2])
    blocker = tmp_path / "o/t/data/fal-ai--flux-1--schnell"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    with background_emulator(service=FAST) as emu:
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"), "--quiet")
        code, out, err = cli(*base, env={"FAL_KEY": "k"})
        assert code == 1, out + err
        assert "Traceback" not in err
        assert (
            f"error: cannot write {blocker}/" in err
            and "hint: a file stands where a folder must be" in err
        )
        blocker.unlink()
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        assert emu.stats()["submits"] == 2 and emu.stats()["duplicate_submits"] == 0
    assert_all_verified(tmp_path / "o/t")


@pytest.mark.slow
def test_kill_9_during_a_faulty_run_loses_nothing_and_explains_every_duplicate():
    """bench/kill_trials.py at a small size: kills after the first submit, with faults; 0 lost, 0 partial files,
    0 temporary files left, and every duplicate submission recorded (ambiguous window or resubmit with a reason)."""
    done = subprocess.run(
        [sys.executable, "bench/kill_trials.py", "--jobs", "40", "--kills", "6"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["kills"] == record["kills_mid_run"] == 6
    assert record["final_exit"] == 0
    assert record["lost"] == record["partial"] == record["orphaned_temp"] == 0
    assert (
        record["partial_seen_after_kills"] == 0
    )  # no kill ever left a broken file at a final path
    assert record["unexplained_duplicates"] == 0


def test_a_run_whose_directory_disappears_stops_with_an_error(tmp_path: Path):
    """The run directory deleted mid-run: the run stops with an error naming it (exit 1), never 'done'."""
    m = _emulator_manifest(tmp_path, list(range(1, 41)), 0.2)
    with _popen(m, tmp_path / "o") as proc:
        run_dir = tmp_path / "o/t"
        deadline = time.monotonic() + 30
        while not list((run_dir / "data").rglob("*.png")) and time.monotonic() < deadline:
            time.sleep(0.05)
        run_dir.rename(tmp_path / "deleted")  # in one step, like `rm -r` seen from the run
        shutil.rmtree(tmp_path / "deleted", ignore_errors=True)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert b"was removed during the run" in err and b"Traceback" not in err
    assert not out.startswith(b"done")


# ---------------------------------------------------------------- issue 10: hostile servers

KEY = "k3y-id-1234:s3cret-part-abcdef"


def _everything_written(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.20, 0.35])
def test_fault_mix_pays_twice_only_for_runner_errors(tmp_path: Path, rate: float):
    """20 % / 35 % faults (bare result 500s, truncated downloads, 429s, ingress 502/503, runner errors):
    every image valid, and the only second submits of an input are the runner-error resubmits."""
    faults = Faults(
        submit_429=rate,
        ingress_5xx=rate / 2,
        ingress_codes=(502, 503),
        result_500=rate,
        truncate_image=rate,
        runner_error=rate / 4,
    )
    m = write_manifest(
        tmp_path,
        prompts=[{"id": f"p{i}", "text": f"picture {i}"} for i in range(12)],
        seeds=list(range(1, 6)),
        retries={"attempts": 12, "backoff": 0.01, "max_backoff": 0.05},
        limits={"concurrency": 16, "rate": 2000},
    )
    with background_emulator(service=FAST, workers=16, seed=11, faults=faults) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "out"),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
        stats = emu.stats()
    assert code == 0, out + err
    assert len(images(tmp_path / "out/t")) == 60
    assert_all_verified(tmp_path / "out/t")
    assert all(
        stats["faults"].get(k, 0) > 0 for k in ("submit_429", "result_500", "truncate_image")
    )
    assert stats["duplicate_submits"] == stats["faults"].get("runner_error", 0)


@pytest.mark.parametrize(
    "fault",
    [
        {"submit_html": 1.0},
        {"submit_500_with_id": 1.0},
        {"malformed": "request_id_int"},
        {"malformed": "status_url_int"},
    ],
)
def test_an_unusable_submit_answer_fails_the_job_and_is_never_paid_again(tmp_path: Path, fault):
    """Outcome unknown: the job fails with that reason (exit 1, no traceback); a rerun sends nothing."""
    m = write_manifest(tmp_path, seeds=[1, 2])
    base = ("run", str(m), "--provider", "", "--output", str(tmp_path / "out"))
    with background_emulator(service=FAST, faults=Faults(**fault)) as emu:
        args = list(base)
        args[3] = emu.url
        code, _, err = cli(*args, env={"FAL_KEY": "k"})
        again = cli(*args, env={"FAL_KEY": "k"})
        stats = emu.stats()
    assert code == 1 and "Traceback" not in err and "may have accepted" in err
    assert again[0] == 1
    assert stats["submit_attempts"] == 2 and stats["duplicate_submits"] == 0


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"bomb_image": 1.0}, "decompression bomb"),
        ({"malformed": "images_strings"}, "not an object"),
        ({"huge_result": 80 * 1024 * 1024}, "cap"),
    ],
)
def test_a_hostile_answer_fails_that_job_only(tmp_path: Path, fault, reason):
    """A bomb image, `images: ["http://…"]` or a result over the cap fails the job with a reason, never exit 70."""
    m = write_manifest(
        tmp_path, seeds=[1], retries={"attempts": 2, "backoff": 0.001, "max_backoff": 0.002}
    )
    with background_emulator(service=FAST, faults=Faults(**fault)) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "out"),
            env={"FAL_KEY": "k"},
        )
    assert code == 1 and "Traceback" not in err and reason in err, out + err


def test_a_key_echoed_by_the_server_is_in_no_file_and_no_output(tmp_path: Path):
    """A 403 repeating the Authorization header: exit 3, and the key is in no output line and no file."""
    m = write_manifest(tmp_path, seeds=[1, 2, 3])
    with background_emulator(
        service=FAST, key=KEY, faults=Faults(echo_key=True, lock_after=1)
    ) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "out"),
            env={"FAL_KEY": KEY},
        )
        status = cli("status", str(tmp_path / "out/t"), "--json")
    assert code == 3 and "you sent" in err
    written = _everything_written(tmp_path / "out")
    for secret in (KEY, KEY.split(":")[1]):
        assert secret not in out + err + status[1] and secret.encode() not in written


def test_a_refused_submit_is_not_ambiguous(tmp_path: Path):
    """A 401 on submit is a definite refusal: no attempt counted, nothing ambiguous for the next run."""
    m = write_manifest(tmp_path, seeds=[1, 2])
    with background_emulator(service=FAST, key="right") as emu:
        code, _, _ = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "out"),
            env={"FAL_KEY": "no"},
        )
    assert code == 3
    store = SQLiteStore(tmp_path / "out/t")
    try:
        assert store.ambiguous() == 0
        assert all(r.attempts == 0 and r.submit_started is None for r in store.rows())
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("op", ["submit", "result", "download"])
def test_a_slowloris_ends_within_the_job_deadline(tmp_path: Path, op):
    """One byte every 2 s on submit, result or download: the job fails at its deadline plus a bounded margin."""
    m = write_manifest(tmp_path, seeds=[1], limits={"timeout": 3})
    with background_emulator(service=FAST, faults=Faults(slow=(op,), slow_interval=2.0)) as emu:
        started = time.monotonic()
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "out"),
            env={"FAL_KEY": "k"},
        )
        elapsed = time.monotonic() - started
    assert code == 1 and "job deadline (3 s)" in err and "Traceback" not in err, out + err
    assert elapsed < 3 + 12


# -------------------------------------------------- shared state: several workers, one PostgreSQL


def _worker(manifest: Path, url: str, state: str, events: list[dict], **options: object) -> object:
    """One `renderer run` worker, as the Python API runs it (its own event loop, in this thread)."""
    from renderer import api

    plan = api.load_manifest(manifest)
    return api.run(
        plan, provider=url, state=state, on_event=events.append, env={"FAL_KEY": "k"}, **options
    )


@pytest.mark.slow
def test_three_workers_share_one_run_and_pay_once(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Three workers on one PostgreSQL state: every job rendered once at the run's rate, images and dataset written once."""
    monkeypatch.chdir(tmp_path)
    import threading

    manifest = write_manifest(
        tmp_path,
        prompts=[{"id": f"p{i}", "text": f"a cat {i}"} for i in range(6)],
        seeds=[1, 2, 3, 4],
        limits={"rate": 20},
    )
    with background_emulator(service=ServiceTime("fixed", 0.05), workers=16) as emu:
        events: list[list[dict]] = [[], [], []]
        summaries: list[object] = [None, None, None]

        def go(i: int) -> None:
            summaries[i] = _worker(
                manifest, emu.url, postgres_url, events[i], concurrency=4, lease=5
            )

        threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stats = emu.stats()
    assert all(getattr(s, "outcome", None) == "done" for s in summaries), summaries
    downloaded = [e["key"] for evs in events for e in evs if e["type"] == "downloaded"]
    assert len(downloaded) == len(set(downloaded)) == 24
    assert (
        sum(1 for evs in events if any(e["type"] == "downloaded" for e in evs)) >= 2
    )  # the work was shared
    assert stats["submits"] == 24 and stats["duplicate_submits"] == 0
    times = sorted(stats["submit_times"])
    assert (
        times[-1] - times[0] >= 23 / 20 * 0.9
    )  # the run's 20/s is the workers' total, not each one's
    run_dir = tmp_path / "outputs" / "t"
    assert len(images(run_dir)) == 24
    rows = (run_dir / "data" / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == 24 and json.loads((run_dir / "run.json").read_text())["outcome"] == "done"
    assert not (run_dir / "renderer.sqlite").exists()  # the state is the shared one


@pytest.mark.slow
def test_a_paused_worker_is_fenced_and_its_jobs_reattached(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    """A worker paused past its lease loses its jobs to another, which reattaches by request id: nothing paid twice, nothing written twice."""
    monkeypatch.chdir(tmp_path)
    import asyncio
    import threading

    manifest = write_manifest(
        tmp_path,
        prompts=[{"id": f"p{i}", "text": f"a dog {i}"} for i in range(4)],
    )
    with background_emulator(service=ServiceTime("fixed", 1.5), workers=8) as emu:
        first: list[dict] = []
        loops: list[asyncio.AbstractEventLoop] = []

        def on_event(event: dict) -> None:
            first.append(event)
            if event["type"] == "submitted" and not loops:
                loops.append(asyncio.get_running_loop())

        box: dict[str, object] = {}
        a = threading.Thread(
            target=lambda: box.setdefault("a", _run_with(manifest, emu.url, postgres_url, on_event))
        )
        a.start()
        deadline = time.monotonic() + 30
        while (
            not (loops and sum(e["type"] == "submitted" for e in first) == 4)
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert loops, "the first worker never submitted"
        # The first worker's loop stops for 3 s (a paused VM): its 1 s leases expire meanwhile.
        loops[0].call_soon_threadsafe(time.sleep, 3.0)
        time.sleep(1.3)
        second: list[dict] = []
        box["b"] = _worker(manifest, emu.url, postgres_url, second, concurrency=4, lease=30)
        a.join(60)
        stats = emu.stats()
    assert getattr(box["b"], "outcome", None) == "done"
    taken = {e["key"] for e in second if e["type"] == "downloaded"}
    assert len(taken) == 4  # the second finished every job...
    assert not [
        e for e in second if e["type"] == "submitted"
    ]  # ...by reattaching, never submitting
    assert not [e for e in first if e["type"] == "downloaded"]  # the stale worker wrote nothing
    assert any("lease" in str(e.get("message", "")) for e in first)
    assert stats["submits"] == 4 and stats["duplicate_submits"] == 0
    assert len(images(tmp_path / "outputs" / "t")) == 4


def _run_with(manifest: Path, url: str, state: str, on_event: object) -> object:
    from renderer import api

    return api.run(
        api.load_manifest(manifest),
        provider=url,
        state=state,
        on_event=on_event,  # type: ignore[arg-type]
        env={"FAL_KEY": "k"},
        concurrency=4,
        lease=1,
    )


def test_finalize_and_status_read_the_shared_state(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    """`renderer finalize` writes the dataset from shared state; `status --state` shows workers and counts."""
    monkeypatch.chdir(tmp_path)
    manifest = write_manifest(tmp_path, seeds=[1, 2, 3])
    with background_emulator(service=FAST) as emu:
        code, _out, err = cli(
            "run",
            str(manifest),
            "--provider",
            emu.url,
            "--state",
            postgres_url,
            "--quiet",
            env={"FAL_KEY": "k"},
        )
    assert code == 0, err
    run_dir = tmp_path / "outputs" / "t"
    (run_dir / "data" / "metadata.jsonl").unlink()
    code, out, err = cli("finalize", str(manifest), "--state", postgres_url)
    assert code == 0, err
    assert (
        "3 finished jobs" in out
        and len((run_dir / "data" / "metadata.jsonl").read_text().splitlines()) == 3
    )
    code, out, err = cli("status", str(run_dir), "--state", postgres_url, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert (
        shown["counts"]["downloaded"] == 3
        and len(shown["workers"]) == 1
        and shown["workers"][0]["held"] == 0
    )
    code, _out, err = cli("status", str(tmp_path / "outputs" / "nope"), "--state", postgres_url)
    assert code == 2 and "no run 'nope'" in err


# -------------------------------------------------- several accounts (provider.accounts)

ACCOUNT_KEYS = {
    "FAL_KEY_A": "acct-a-" + os.urandom(8).hex(),
    "FAL_KEY_B": "acct-b-" + os.urandom(8).hex(),
}


def _accounts_manifest(folder: Path, accounts: list[dict[str, object]], **data: object) -> Path:
    return write_manifest(folder, provider={"kind": "fal", "accounts": accounts}, **data)


def _emulator_keys(**labels: str) -> tuple[tuple[str, str], ...]:
    """(label, key) for the emulator: each account's key under the name the run gives that account."""
    return tuple((label, ACCOUNT_KEYS[env]) for label, env in labels.items())


def _accounts_of(run_dir: Path) -> Counter[str | None]:
    store = SQLiteStore(run_dir, readonly=True)
    try:
        return Counter(r.account for r in store.rows() if r.request_id)
    finally:
        store.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.data())
def test_new_work_goes_to_the_account_with_room_never_past_a_limit(
    limits: list[int], data: st.DataObject
):
    """Taking and freeing slots in any order: no account over its limit, and a free slot anywhere is always found."""

    async def scenario() -> None:
        client = Client("http://127.0.0.1:9")  # never used: slots only
        pool = Accounts([Account(f"a{i}", client, AccountSlots(n)) for i, n in enumerate(limits)])
        held: list[Account] = []
        for take in data.draw(st.lists(st.booleans(), max_size=60)):
            if take and len(held) < sum(limits):
                held.append(await asyncio.wait_for(pool.pick(), 1))  # type: ignore[arg-type]
            elif held:
                await pool.release(held.pop(data.draw(st.integers(0, len(held) - 1))))
            assert all(a.slots.active == held.count(a) <= a.slots.ceiling for a in pool.all)
        # Filling up from empty: each account ends exactly full, the larger ones first.
        for account in held:
            await pool.release(account)
        taken = [await pool.pick() for _ in range(sum(limits))]
        assert Counter(a.name for a in taken if a) == {f"a{i}": n for i, n in enumerate(limits)}

    asyncio.run(scenario())


def test_a_429_halves_only_the_account_it_came_from(tmp_path: Path, registry: SchemaRegistry):
    """Throttling reported by one account's client halves that account's allowance; the other keeps its own."""
    events: list[dict[str, object]] = []
    client = Client("http://127.0.0.1:9")
    clients = {"a": client.with_key("key-aaaaaaaa"), "b": client.with_key("key-bbbbbbbb")}
    store = SQLiteStore(tmp_path)
    try:
        runner = Runner(
            plan_mod.build(load(MANIFESTS / "quickstart.yaml"), registry),
            store,
            client,
            RunConfig(concurrency=12, accounts=(AccountLimit("a", 8), AccountLimit("b", 4))),
            events=events.append,
            clients=clients,
        )
        clients["a"].on_event("throttled")
        clients["a"].on_event("throttled")
        assert [(a.name, a.slots.limit) for a in runner.accounts.all] == [("a", 2.0), ("b", 4.0)]
        assert events[-1] == {"type": "throttled", "limit": 2.0, "account": "a"}
        assert runner.progress()["limit"] == 6.0
        # Every client of the family scrubs every key of the family.
        assert (
            client.scrub("key-aaaaaaaa/key-bbbbbbbb")
            == clients["b"].scrub("key-aaaaaaaa/key-bbbbbbbb")
            == "***/***"
        )
    finally:
        store.close()


def test_two_accounts_share_the_work_each_within_its_own_limit(tmp_path: Path):
    """Accounts with limits 3 and 1 at a provider that holds each to its limit: each runs exactly its limit at
    its peak (both used, the larger more) with at most its lead queued; each job's account is recorded, and
    run.json counts the same submits as the emulator."""
    m = _accounts_manifest(
        tmp_path,
        [
            {"key_env": "FAL_KEY_A", "concurrency": 3},
            {"key_env": "FAL_KEY_B", "concurrency": 1, "name": "small"},
        ],
        seeds=list(range(1, 25)),
        limits={"rate": 1000},
    )
    with background_emulator(
        service=ServiceTime("fixed", 0.2),
        workers=8,
        account_limits=(("FAL_KEY_A", 3), ("small", 1)),
        keys=_emulator_keys(FAL_KEY_A="FAL_KEY_A", small="FAL_KEY_B"),
    ) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--quiet",
            env=ACCOUNT_KEYS,
        )
        stats = emu.stats()
    assert code == 0, out + err
    a, b = stats["accounts"]["FAL_KEY_A"], stats["accounts"]["small"]
    # 0.2 s a request: each account runs its own limit (the run's total is 3 + 1, not limits' default 2),
    # and what waits in the provider's queue for it is within its lead.
    assert a["peak_running"] == 3 and b["peak_running"] == 1
    assert a["peak_queued"] <= lead_cap(3) and b["peak_queued"] <= lead_cap(1)
    assert a["submits"] + b["submits"] == 24 and a["submits"] > b["submits"] >= 1
    assert stats["foreign_reads"] == 0 and stats["duplicate_submits"] == 0
    record = json.loads((tmp_path / "o/t/run.json").read_text())
    assert {name: v["submitted"] for name, v in record["accounts"].items()} == {
        "FAL_KEY_A": a["submits"],
        "small": b["submits"],
    }
    assert _accounts_of(tmp_path / "o/t") == {"FAL_KEY_A": a["submits"], "small": b["submits"]}
    assert len(images(tmp_path / "o/t")) == 24


def _one_account_run(tmp_path: Path, slots: int, jobs: int, seconds: float) -> dict[str, Any]:
    """`renderer run` of `jobs` one-image jobs with concurrency = `slots` at an emulator that holds
    one account to `slots` requests of `seconds` each; the emulator's stats (the run exits 0)."""
    m = write_manifest(tmp_path, seeds=list(range(1, jobs + 1)), limits={"concurrency": slots})
    with background_emulator(
        service=ServiceTime("fixed", seconds), workers=64, account_slots=slots, key="k"
    ) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
        stats: dict[str, Any] = emu.stats()
    assert code == 0, out + err
    return stats


@settings(max_examples=4, deadline=None)
@given(st.sampled_from([1, 2, 3, 5, 8]), st.integers(10, 40))
def test_concurrency_is_what_the_provider_runs_with_at_most_the_lead_queued(
    tmp_path_factory: pytest.TempPathFactory, slots: int, jobs: int
):
    """concurrency = the account's limit at a provider that holds it (fal's model): the account runs exactly that
    many at its peak, never more, and at most lead_cap(limit) (the lead at its most) of its requests wait in the provider's queue."""
    account = _one_account_run(tmp_path_factory.mktemp("lead"), slots, jobs, 0.1)["accounts"]["key"]
    assert account["submits"] == jobs and account["duplicate_submits"] == 0
    assert account["peak_running"] == min(slots, jobs)
    assert account["peak_queued"] <= lead_cap(slots)


def test_requests_that_finish_together_get_a_queued_request_per_slot(tmp_path: Path):
    """8 slots of 0.2 s requests that start and finish together: the lead grows past its floor
    (2) to one queued request per slot (8), so a burst of completions restarts every slot at once;
    never more than 8 run and never more than 8 wait (the bound the docs state)."""
    account = _one_account_run(tmp_path, 8, 80, 0.2)["accounts"]["key"]
    assert account["submits"] == 80 and account["duplicate_submits"] == 0
    assert account["peak_running"] == 8
    assert lead_for(8) < account["peak_queued"] <= lead_cap(8) == 8


@pytest.mark.parametrize("slots", [4, 16, 40])
def test_every_slots_first_submit_is_answered_before_any_request_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slots: int
):
    """At start the account's slots and the lead's floor get their submits before the run follows
    any request (no slot's first request waits behind the client's work on the first answers);
    every job is then followed and its image written, once."""
    from renderer.runner.lead import FirstRound

    # The round must end by its own rule here, not by its time bound (a loaded machine).
    monkeypatch.setattr(FirstRound, "LONGEST", 60.0)
    jobs = 3 * slots
    stats = _one_account_run(tmp_path, slots, jobs, 0.3)
    first_round = slots + lead_for(slots)
    assert stats["submits"] == jobs and stats["duplicate_submits"] == 0
    assert stats["first_follow_at"] is not None
    assert sorted(stats["submit_times"])[first_round - 1] < stats["first_follow_at"]
    assert len(images(tmp_path / "o/t")) == jobs


def test_slow_downloads_hold_no_provider_slot(tmp_path: Path):
    """Files that take 0.4 s to serve against 0.05 s of rendering: the account's two slots keep running while
    many downloads go on (a slot held through its download would keep running + downloading within 2 + lead)."""
    m = write_manifest(tmp_path, seeds=list(range(1, 31)), limits={"concurrency": 2})
    with background_emulator(
        service=ServiceTime("fixed", 0.05),
        workers=64,
        account_slots=2,
        key="k",
        file_latency=0.4,
    ) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
        stats = emu.stats()
    assert code == 0, out + err
    assert len(images(tmp_path / "o/t")) == 30
    assert stats["accounts"]["key"]["peak_running"] == 2
    assert stats["accounts"]["key"]["peak_queued"] <= lead_cap(2)
    assert stats["peak_downloads_and_running"] > 2 + lead_cap(2)


@pytest.mark.slow
def test_an_accounts_own_rate_paces_its_submits(tmp_path: Path):
    """An account with rate 10/s (the run's limits.rate far higher): no one-second window holds more than 10 plus the
    bucket of its submits (the other account is locked, so every accepted submit is its)."""
    from renderer.runner.limits import bucket_size

    m = _accounts_manifest(
        tmp_path,
        [
            {"key_env": "FAL_KEY_A", "concurrency": 30, "rate": "10/s"},
            {"key_env": "FAL_KEY_B", "concurrency": 30},
        ],
        seeds=list(range(1, 26)),
        limits={"rate": 1000},
    )
    with background_emulator(
        service=FAST,
        workers=32,
        locked=("FAL_KEY_B",),
        keys=_emulator_keys(FAL_KEY_A="FAL_KEY_A", FAL_KEY_B="FAL_KEY_B"),
    ) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--quiet",
            env=ACCOUNT_KEYS,
        )
        stats = emu.stats()
    assert code == 0, out + err
    times = stats["submit_times"]
    assert len(times) == 25 == stats["accounts"]["FAL_KEY_A"]["submits"]
    assert max(
        sum(1 for t in times if start <= t < start + 1.0) for start in times
    ) <= 10 + bucket_size(10)


def test_submitted_jobs_are_followed_only_with_the_key_that_submitted_them(tmp_path: Path):
    """Requests left under two accounts: with one account missing its jobs wait (exit 3, named; status says so),
    never resent; with both (listed the other way round) every job finishes, each read with its own key."""
    both = [{"key_env": "FAL_KEY_A", "concurrency": 2}, {"key_env": "FAL_KEY_B", "concurrency": 2}]
    retries = {"attempts": 1, "backoff": 0.01, "max_backoff": 0.02}
    m = _accounts_manifest(tmp_path, both, seeds=list(range(1, 9)), retries=retries)
    base = ("run", str(m), "--output", str(tmp_path / "o"))
    with background_emulator(
        service=FAST,
        workers=4,
        faults=Faults(result_500=1.0),
        keys=_emulator_keys(FAL_KEY_A="FAL_KEY_A", FAL_KEY_B="FAL_KEY_B"),
    ) as emu:
        # 1: every result read fails once (a bare 500) and the job fails, its request kept with its account.
        code, out, err = cli(*base, "--provider", emu.url, "--quiet", env=ACCOUNT_KEYS)
        assert code == 1, out + err
        held = _accounts_of(tmp_path / "o/t")
        assert sum(held.values()) == 8 and held["FAL_KEY_A"] >= 1 and held["FAL_KEY_B"] >= 1
        emu.config = replace(emu.config, faults=Faults())
        # 2: only account A configured. B's requests wait for B: not resent under A, not failed.
        _accounts_manifest(tmp_path, both[:1], seeds=list(range(1, 9)), retries=retries)
        code, out, err = cli(*base, "--provider", emu.url, "--retry-failed", env=ACCOUNT_KEYS)
        assert code == 3, out + err
        assert (
            f"submitted jobs wait for an account: {held['FAL_KEY_B']} for account 'FAL_KEY_B'"
            in err
        )
        assert "account 'FAL_KEY_B' is not in this run's provider.accounts" in err
        assert emu.stats()["submits"] == 8
        status = cli("status", str(tmp_path / "o/t"))[1]
        assert f"submitted, by account: FAL_KEY_B={held['FAL_KEY_B']}" in status
        assert (
            f"waiting for an account: {held['FAL_KEY_B']} submitted job(s) of 'FAL_KEY_B'" in status
        )
        # 2b: B configured, but with a key the provider refuses: the 401 on following stops B alone; its jobs wait.
        wrong = {**ACCOUNT_KEYS, "FAL_KEY_B": "wrong-key-" + os.urandom(6).hex()}
        _accounts_manifest(tmp_path, both, seeds=list(range(1, 9)), retries=retries)
        code, out, err = cli(*base, "--provider", emu.url, env=wrong)
        assert code == 3, out + err
        assert "account 'FAL_KEY_B' is stopped (status: HTTP 401" in err
        assert (
            f"submitted jobs wait for an account: {held['FAL_KEY_B']} for account 'FAL_KEY_B'"
            in err
        )
        assert wrong["FAL_KEY_B"] not in out + err and emu.stats()["submits"] == 8
        # 3: both accounts again, B listed first: B's requests are read with B's key and finish.
        _accounts_manifest(tmp_path, both[::-1], seeds=list(range(1, 9)), retries=retries)
        code, out, err = cli(*base, "--provider", emu.url, "--quiet", env=ACCOUNT_KEYS)
        stats = emu.stats()
    assert code == 0, out + err
    assert stats["submits"] == 8 and stats["duplicate_submits"] == 0 and stats["foreign_reads"] == 0
    assert _accounts_of(tmp_path / "o/t") == held
    assert len(images(tmp_path / "o/t")) == 8


def test_a_locked_account_stops_alone_and_the_other_finishes(tmp_path: Path):
    """403 on one account: the other renders every job; exit 0, and the summary and run.json name the stopped one."""
    m = _accounts_manifest(
        tmp_path,
        [
            {"key_env": "FAL_KEY_A", "concurrency": 2},
            {"key_env": "FAL_KEY_B", "concurrency": 2, "name": "team-b"},
        ],
        seeds=list(range(1, 13)),
    )
    with background_emulator(
        service=FAST,
        workers=4,
        locked=("team-b",),
        keys=_emulator_keys(FAL_KEY_A="FAL_KEY_A", **{"team-b": "FAL_KEY_B"}),
    ) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--quiet",
            env=ACCOUNT_KEYS,
        )
        stats = emu.stats()
    assert code == 0, out + err
    assert (
        stats["accounts"]["FAL_KEY_A"]["submits"] == 12
        and stats["accounts"]["team-b"]["submits"] == 0
    )
    assert "warning: account 'team-b' stopped: submit: HTTP 403: User is locked" in err
    record = json.loads((tmp_path / "o/t/run.json").read_text())
    assert record["outcome"] == "done" and record["accounts"]["FAL_KEY_A"]["stopped"] is None
    assert "User is locked" in record["accounts"]["team-b"]["stopped"]
    assert len(images(tmp_path / "o/t")) == 12
    store = SQLiteStore(tmp_path / "o/t", readonly=True)
    try:
        assert store.ambiguous() == 0 and all(r.account == "FAL_KEY_A" for r in store.rows())
    finally:
        store.close()


def test_when_every_account_is_locked_the_run_stops_with_exit_3_naming_them(tmp_path: Path):
    """403 on each account: exit 3, the message names every account and why; nothing is left ambiguous."""
    m = _accounts_manifest(
        tmp_path, [{"key_env": "FAL_KEY_A"}, {"key_env": "FAL_KEY_B"}], seeds=list(range(1, 7))
    )
    with background_emulator(
        service=FAST,
        locked=("FAL_KEY_A", "FAL_KEY_B"),
        keys=_emulator_keys(FAL_KEY_A="FAL_KEY_A", FAL_KEY_B="FAL_KEY_B"),
    ) as emu:
        code, out, err = cli(
            "run", str(m), "--provider", emu.url, "--output", str(tmp_path / "o"), env=ACCOUNT_KEYS
        )
        attempts = emu.stats()["submit_attempts"]
    assert code == 3, out + err
    assert "error: every account is stopped ('FAL_KEY_A': submit: HTTP 403: User is locked" in err
    assert "'FAL_KEY_B': submit: HTTP 403" in err and "hint:" in err
    # Each account refused (free: a 403 takes nothing) at most once per job that tried it before it
    # stopped; six jobs fit the run's provider slots (2 + 2 and its lead), so each may try both.
    assert attempts <= 2 * 6
    assert json.loads((tmp_path / "o/t/run.json").read_text())["outcome"] == "stopped"


def test_no_account_key_appears_in_any_output_file_or_log(tmp_path: Path):
    """Two keys, one account locked with its key echoed back in the 403: neither key in any file, stream or log."""
    m = _accounts_manifest(
        tmp_path, [{"key_env": "FAL_KEY_A"}, {"key_env": "FAL_KEY_B"}], seeds=[1, 2, 3]
    )
    log = tmp_path / "events.jsonl"
    with background_emulator(
        service=FAST,
        locked=("FAL_KEY_B",),
        faults=Faults(echo_key=True),
        keys=_emulator_keys(FAL_KEY_A="FAL_KEY_A", FAL_KEY_B="FAL_KEY_B"),
    ) as emu:
        code, out, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--log",
            str(log),
            env=ACCOUNT_KEYS,
        )
        json_out = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path / "o"),
            "--json",
            env=ACCOUNT_KEYS,
        )
    assert code == 0, out + err
    assert "stopped" in err and "***" in err  # the echoed key was there, and scrubbed
    status = (
        cli("status", str(tmp_path / "o/t"), "--json")[1] + cli("status", str(tmp_path / "o/t"))[1]
    )
    written = _everything_written(tmp_path / "o") + log.read_bytes()
    for key in ACCOUNT_KEYS.values():
        assert (
            key not in out + err + json_out[1] + json_out[2] + status
            and key.encode() not in written
        )


@pytest.mark.slow
def test_account_limits_hold_across_workers_sharing_state(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Three workers, two accounts (limits 2 and 1) in shared state: the emulator never runs more of an account's
    requests at once than its limit (shared slots keep no queued lead)."""
    import threading

    monkeypatch.chdir(tmp_path)
    m = _accounts_manifest(
        tmp_path,
        [{"key_env": "FAL_KEY_A", "concurrency": 2}, {"key_env": "FAL_KEY_B", "concurrency": 1}],
        seeds=list(range(1, 19)),
        limits={"rate": 1000},
    )
    with background_emulator(
        service=ServiceTime("fixed", 0.1),
        workers=12,
        keys=_emulator_keys(FAL_KEY_A="FAL_KEY_A", FAL_KEY_B="FAL_KEY_B"),
    ) as emu:
        codes: list[int] = []

        def worker() -> None:
            codes.append(
                cli(
                    "run",
                    str(m),
                    "--provider",
                    emu.url,
                    "--state",
                    postgres_url,
                    "--quiet",
                    env=ACCOUNT_KEYS,
                )[0]
            )

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stats = emu.stats()
    assert codes == [0, 0, 0]
    a, b = stats["accounts"]["FAL_KEY_A"], stats["accounts"]["FAL_KEY_B"]
    # What fal counts: requests running. (A finished request's slot is free once it is seen COMPLETED,
    # before its result is read: in flight until that read, it may overlap the next submit.)
    assert a["peak_running"] <= 2 and b["peak_running"] <= 1
    assert (
        a["submits"] + b["submits"] == 18
        and stats["duplicate_submits"] == 0
        and stats["foreign_reads"] == 0
    )
    assert len(images(tmp_path / "outputs" / "t")) == 18


@pytest.mark.parametrize("size", [10, 3 * 1024 * 1024])
def test_an_image_is_written_whole_with_the_mtime_the_rerun_checks(
    tmp_path: Path, registry: SchemaRegistry, size: int
):
    """Small images (written on the loop) and large ones (in a thread): the bytes, a sidecar, no temporary file
    left, and the returned mtime is the file's own (a rerun compares size and mtime)."""
    import hashlib

    from renderer.output import files

    p = plan_mod.build(load(write_manifest(tmp_path)), registry)
    store = SQLiteStore(tmp_path / "run")
    data = os.urandom(size)
    image = files.Verified(data, ".png", "image/png", 1, 1, hashlib.sha256(data).hexdigest())

    async def scenario() -> int:
        async with Client("http://127.0.0.1:9", key="k") as client:  # nothing is sent
            runner = Runner(p, store, client, RunConfig(provider="emulator"))
            return await runner.delivery.write_local("data/m/p/s1-0.png", image, {"job_key": "k"})

    try:
        mtime = asyncio.run(scenario())
    finally:
        store.close()
    written = tmp_path / "run/data/m/p/s1-0.png"
    assert written.read_bytes() == data and written.stat().st_mtime_ns == mtime
    assert json.loads(written.with_suffix(".json").read_text())["job_key"] == "k"
    assert sorted(q.name for q in written.parent.iterdir()) == ["s1-0.json", "s1-0.png"]


def test_jobs_reaching_a_step_together_share_one_commit(tmp_path: Path, registry: SchemaRegistry):
    """Group commit: 40 jobs at concurrency 20 take fewer commits than their 120 step changes, and all are recorded."""
    m = write_manifest(tmp_path, seeds=list(range(1, 41)), limits={"concurrency": 20, "rate": 1000})
    p = plan_mod.build(load(m), registry)
    store = SQLiteStore(tmp_path / "run")

    async def scenario(url: str) -> Runner:
        async with Client(url, key="k") as client:
            runner = Runner(
                p, store, client, RunConfig(concurrency=20, rate=1000.0, provider="emulator")
            )
            await runner.run()
            return runner

    try:
        with background_emulator(service=FAST, workers=20) as emu:
            runner = asyncio.run(scenario(emu.url))
        assert store.counts()["downloaded"] == 40 and not store.grouping
        assert 1 <= runner.commits.commits < 3 * 40
    finally:
        store.close()
    reader = SQLiteStore(tmp_path / "run", readonly=True)  # what another process (or a rerun) reads
    assert reader.counts()["downloaded"] == 40
    reader.close()


def test_a_submit_that_ends_inside_the_grace_period_is_recorded_and_not_followed(
    tmp_path: Path, registry: SchemaRegistry
):
    """Stopped while a submit is in flight: its request id is recorded, and the run ends without waiting for the render."""
    m = write_manifest(tmp_path, seeds=[1], limits={"concurrency": 1, "rate": 1000})
    p = plan_mod.build(load(m), registry)
    store = SQLiteStore(tmp_path / "run")

    async def scenario(url: str) -> float:
        async with Client(url, key="k") as client:
            runner = Runner(
                p,
                store,
                client,
                RunConfig(concurrency=1, rate=1000.0, provider="emulator", grace=60.0),
            )

            async def stop_while_submitting() -> None:
                while "submitting" not in runner.phase.values():
                    await asyncio.sleep(0)
                runner.stop(signal=15)

            started = time.monotonic()
            stopper = asyncio.ensure_future(stop_while_submitting())
            summary = await runner.run()
            await stopper
            assert summary.outcome == "interrupted"
            return time.monotonic() - started

    try:
        with background_emulator(service=ServiceTime("fixed", 30.0)) as emu:
            elapsed = asyncio.run(scenario(emu.url))
            assert emu.stats()["submits"] == 1
        (row,) = store.rows()
        assert (
            row.state == "submitted" and row.request_id
        )  # the next run follows it, not pays for it again
        assert elapsed < 15  # not the 30 s render, nor the 60 s grace
    finally:
        store.close()


def test_a_run_database_from_before_the_cells_is_resumed(tmp_path: Path):
    """A run whose state has the old one-row-per-job schema (finished, submitted and planned jobs) is migrated on
    the next run: finished jobs are kept, a submitted one is followed (not paid again), the rest are rendered."""
    from renderer.state import migrations as migrations_mod

    with background_emulator(service=FAST) as emu:
        m = write_manifest(tmp_path, seeds=[1, 2, 3, 4])
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "out"), "--quiet")
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        run_dir = tmp_path / "out/t"
        db_path = run_dir / "renderer.sqlite"
        new = sqlite3.connect(db_path)
        new.row_factory = sqlite3.Row
        rows = [dict(r) for r in new.execute("SELECT * FROM jobs ORDER BY plan_index")]
        runs = new.execute("SELECT * FROM runs").fetchall()
        new.close()
        for path in run_dir.glob("renderer.sqlite*"):
            path.unlink()
        old = sqlite3.connect(db_path)  # the same state, as the store before the cells wrote it
        old.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        with old:
            for step in migrations_mod.MIGRATIONS:
                if step.__name__ < "m007":
                    step(old)
                    old.execute("INSERT INTO _migrations VALUES (?, 0)", (step.__name__,))
            columns = [c for c in rows[0] if c not in ("id", "extra")]  # extra: since m011
            old.executemany(
                f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [[r[c] if c != "updated_at" else 1.0 for c in columns] for r in rows],
            )
            old.executemany(f"INSERT INTO runs VALUES ({', '.join('?' * len(runs[0]))})", runs)
            # the third job: submitted, its request still known to the provider; the fourth: never sent
            old.execute(
                "UPDATE jobs SET state = 'submitted', result = NULL, files = NULL, completed_at = NULL, "
                "downloaded_at = NULL WHERE key = ?",
                (rows[2]["key"],),
            )
            old.execute(
                "UPDATE jobs SET state = 'planned', request_id = NULL, status_url = NULL, response_url = NULL, "
                "cancel_url = NULL, result = NULL, files = NULL, attempts = 0 WHERE key = ?",
                (rows[3]["key"],),
            )
        old.close()
        for row in rows[2:]:
            for path in (run_dir / "data").glob(row["stem"] + "-*"):
                path.unlink()
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        # one new submit: the fourth job (whose request this state forgot); the third is followed, not resent
        assert emu.stats()["submits"] == 5 and emu.stats()["duplicate_submits"] == 1
    assert len(images(run_dir)) == 4
    assert_all_verified(run_dir)
    store = SQLiteStore(run_dir, readonly=True)
    assert (
        store.counts()["downloaded"] == 4
        and store.get(rows[2]["key"]).request_id == rows[2]["request_id"]
    )
    store.close()


def test_rendering_starts_while_the_plan_is_still_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A first run records its plan in small batches in the background: every job is rendered once and the
    run ends done, with the plan's digest recorded (a rerun reads nothing and sends nothing)."""
    import renderer.state.plansync as plansync_mod
    import renderer.state.recording as recording_mod

    monkeypatch.setattr(plansync_mod, "FIRST_BATCH", 3)
    monkeypatch.setattr(recording_mod, "RECORD_BATCH", 3)
    with background_emulator(service=FAST) as emu:
        m = write_manifest(
            tmp_path,
            prompts=[{"id": f"p{i}", "text": f"picture {i}"} for i in range(8)],
            seeds=[1, 2, 3],
            limits={"concurrency": 4, "rate": 2000},
        )
        base = ("run", str(m), "--provider", emu.url, "--output", str(tmp_path / "out"), "--quiet")
        code, out, err = cli(*base, env={"FAL_KEY": "k"})
        assert code == 0, out + err
        assert emu.stats()["submits"] == 24 and emu.stats()["duplicate_submits"] == 0
        assert cli(*base, env={"FAL_KEY": "k"})[0] == 0
        assert emu.stats()["submits"] == 24
    assert json.loads((tmp_path / "out/t/run.json").read_text())["outcome"] == "done"
    assert_all_verified(tmp_path / "out/t")
    store = SQLiteStore(tmp_path / "out/t", readonly=True)
    assert store.meta("plan_digest") and store.counts()["downloaded"] == 24
    store.close()


def test_a_step_with_no_time_left_is_never_started_and_a_slow_one_is_cut_off():
    """The job deadline: a step past it does not start (nothing sent); one that outlasts it raises TimeoutError."""
    import asyncio

    from renderer.runner.job import within as _within

    started: list[str] = []

    async def step(name: str, seconds: float) -> str:
        started.append(name)
        await asyncio.sleep(seconds)
        return name

    async def scenario() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await _within(step("late", 0), 0)
        with pytest.raises(asyncio.TimeoutError):
            await _within(step("slow", 5), 0.05)
        assert await _within(step("quick", 0), 5) == "quick"

    asyncio.run(scenario())
    assert started == ["slow", "quick"]


def test_a_busy_single_process_run_never_loses_its_own_leases(tmp_path: Path):
    """One worker on its own database: a blocked event loop outlasting the lease drops no job and counts every image."""
    import renderer

    m = write_manifest(
        tmp_path,
        seeds=[1, 2, 3, 4, 5, 6],
        provider={"kind": "emulator", "emulator": {"latency": 0.3, "workers": 6}},
    )
    warnings: list[str] = []

    def busy(event: dict[str, object]) -> None:
        if event["type"] == "submitted":
            time.sleep(0.5)  # the loop is blocked longer than the lease (1 s over 6 submits)
        if event["type"] == "warning":
            warnings.append(str(event["message"]))

    plan = renderer.load_manifest(m, output=tmp_path / "o")
    summary = renderer.run(plan, lease=1, concurrency=6, on_event=busy)
    assert not [w for w in warnings if "lost its lease" in w]
    assert (summary.outcome, summary.images, summary.counts["downloaded"]) == ("done", 6, 6)


def test_a_trial_does_not_wait_for_the_whole_plan_to_be_recorded(tmp_path: Path):
    """`--max-jobs` on a large plan ends after its jobs; the next trial records the rest and pays nothing twice."""
    (tmp_path / "p.txt").write_text("".join(f"a photo of thing number {i}\n" for i in range(20000)))
    m = write_manifest(tmp_path, prompts=[{"file": "p.txt"}], output=str(tmp_path / "o"))
    code, out, err = cli("run", str(m), "--max-jobs", "5")
    assert code == 0 and out.startswith("partial: 5/20000 jobs downloaded"), err
    code, out, err = cli("run", str(m), "--max-jobs", "12", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["outcome"] == "partial"
    assert record["counts"]["downloaded"] == 12 and record["paid_twice"]["count"] == 0
    with sqlite3.connect(tmp_path / "o/t/renderer.sqlite") as db:
        (submitted,) = db.execute("SELECT SUM(attempts) FROM job").fetchone()
    assert submitted == 12  # every job submitted once, across both trials


def test_the_warm_up_decodes_a_real_image() -> None:
    """The first delivery's Pillow start-up is paid ahead (deliver.warm_up): its image is a real PNG
    that the run's own check accepts, so the warm-up does the work rather than fail quietly."""
    from renderer.output.files import verify_image
    from renderer.runner.deliver import TINY_PNG, warm_up

    warm_up()  # raises BadImage if the bytes were not a decodable PNG
    checked = verify_image(TINY_PNG, "image/png")
    assert (checked.width, checked.height, checked.ext) == (1, 1, "png")
    with Image.open(io.BytesIO(TINY_PNG)) as image:
        assert image.format == "PNG" and image.size == (1, 1)


def _render_full_size(
    tmp_path: Path, seeds: list[int], faults: Faults | None = None
) -> tuple[int, str]:
    """`renderer run` of one prompt over `seeds` against an emulator serving 1024x768 pictures."""
    with background_emulator(service=FAST, max_side=None, faults=faults or Faults()) as emu:
        m = write_manifest(tmp_path, seeds=seeds)
        out = str(tmp_path / "out")
        code, _, err = cli(
            "run", str(m), "--provider", emu.url, "--output", out, "--quiet", env={"FAL_KEY": "k"}
        )
    return code, err


def test_full_size_pictures_are_decoded_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A full-size picture's decode (5-25 ms) runs in a worker thread; every image is still verified."""
    from renderer.output import files

    decoded: list[tuple[int, bool]] = []  # (pixels, on the main thread)
    decode = files.decode_image

    def recording(opened: files.Opened) -> files.Verified:
        on_main = threading.current_thread() is threading.main_thread()
        decoded.append((opened.width * opened.height, on_main))
        return decode(opened)

    monkeypatch.setattr(files, "decode_image", recording)
    code, err = _render_full_size(tmp_path, [1, 2, 3])
    assert code == 0, err
    full = [on_main for pixels, on_main in decoded if pixels >= files.DECODE_IN_THREAD]
    assert len(full) == 3 and not any(full)  # (the warm-up's 1x1 PNG is the other one)
    assert_all_verified(tmp_path / "out/t")


def test_a_damaged_full_size_picture_is_refused_from_the_worker_thread(tmp_path: Path):
    """A full-size download damaged in the middle fails its (threaded) decode: never written, job failed."""
    code, err = _render_full_size(tmp_path, [1], Faults(corrupt_image=1.0))
    assert code != 0, err
    with sqlite3.connect(tmp_path / "out/t/renderer.sqlite") as db:
        (error,) = db.execute("SELECT error FROM job").fetchone()
    assert "failed verification" in error and "not a decodable image" in error
    assert images(tmp_path / "out/t") == []


def test_downloads_are_checked_on_the_loop_only_when_small(monkeypatch: pytest.MonkeyPatch):
    """A thumbnail is checked on the loop; a full-size picture, or a 1x1 PNG padded to 300 KB by
    its host, in a decode thread; each as verify_image would check it."""
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    from renderer.output import files
    from renderer.runner.deliver import TINY_PNG, verify_download

    def png(size: tuple[int, int]) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", size, (10, 200, 30)).save(out, "PNG")
        return out.getvalue()

    body = b"prVt" + bytes(300 * 1024)  # a private ancillary chunk: readers skip it
    chunk = (len(body) - 4).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    padded = TINY_PNG[:-12] + chunk + TINY_PNG[-12:]
    cases = {"thumbnail": png((64, 64)), "full size": png((1024, 768)), "padded": padded}
    assert len(cases["full size"]) < files.DECODE_IN_THREAD_BYTES <= len(padded)

    threads: list[str] = []
    decode = files.decode_image

    def recording(opened: files.Opened) -> files.Verified:
        threads.append(threading.current_thread().name)
        return decode(opened)

    monkeypatch.setattr(files, "decode_image", recording)

    async def check(pool: ThreadPoolExecutor) -> dict[str, tuple[files.Verified, str]]:
        got = {}
        for name, data in cases.items():
            verified = await verify_download(data, "image/png", len(data), lambda: pool)
            got[name] = (verified, threads[-1])
        return got

    with ThreadPoolExecutor(2, thread_name_prefix="decode-test") as pool:
        got = asyncio.run(check(pool))
    assert {name: where.startswith("decode-test") for name, (_, where) in got.items()} == {
        "thumbnail": False,
        "full size": True,
        "padded": True,
    }
    monkeypatch.setattr(files, "decode_image", decode)
    for name, data in cases.items():
        assert got[name][0] == files.verify_image(data, "image/png", len(data))
