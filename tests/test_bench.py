"""Benchmark scripts still run (tiny sizes); they assert that the script works, never a timing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from .conftest import ROOT


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plan_scale_smoke():
    """bench/plan_scale.py prints its reproduce line and a table row with the job count."""
    out = _run("bench/plan_scale.py", "--prompts", "3", "--seeds", "2", "--runs", "1")
    assert "# reproduce: python bench/plan_scale.py" in out
    assert "| 60 " in out


def test_throughput_smoke():
    """bench/throughput.py runs end to end on a tiny configuration."""
    out = _run("bench/throughput.py", "--jobs", "20", "--runs", "1", "--configs", "4:0.02")
    assert "| 4 " in out and "# reproduce:" in out


def test_concurrency_smoke():
    """bench/concurrency.py runs the renderer and fal-client against its own slot server, within its slots."""
    out = _run("bench/concurrency.py", "--runs", "1", "--configs", "4:0.02:20")
    assert "# reproduce: python bench/concurrency.py" in out
    assert "| 4 " in out and "| 4/" in out  # the server ran its 4 slots at its peak, never more
    # Each run's CPU split into user and system time, beside the host and file-system probes.
    assert "user / sys s" in out and "create us" in out and "# each fal-client run" in out


def test_requests_per_job_smoke():
    """bench/requests_per_job.py runs the renderer and the fal-client baseline."""
    out = _run("bench/requests_per_job.py", "--jobs", "4", "--latencies", "0.05")
    assert "renderer req/job" in out and "| 0.05 " in out


@pytest.mark.slow
def test_client_cost_smoke():
    """bench/client_cost.py compares the renderer and fal-client over HTTP and TLS."""
    out = _run("bench/client_cost.py", "--jobs", "20", "--runs", "1", "--concurrency", "4")
    assert "fal-client tls" in out and "renderer/fal-client throughput" in out


@pytest.mark.slow
def test_client_cost_ab_smoke():
    """bench/client_cost_ab.py alternates two checkouts (here the same one twice) and prints a row for each."""
    out = _run("bench/client_cost_ab.py", "--jobs", "10", "--runs", "1", str(ROOT), str(ROOT / "."))
    assert "# reproduce: python bench/client_cost_ab.py" in out and out.count(f"| {ROOT}") == 2


@pytest.mark.slow
def test_startup_ab_smoke():
    """bench/startup_ab.py times --version, validate and the quickstart for each checkout given."""
    out = _run("bench/startup_ab.py", "--runs", "1", str(ROOT))
    assert "reproduce: python bench/startup_ab.py" in out
    assert all(f"| {case}" in out for case in ("--version", "validate", "quickstart"))


@pytest.mark.slow
def test_rate_precision_smoke():
    """bench/rate_precision.py measures an observed rate and the largest burst."""
    out = _run("bench/rate_precision.py", "--rates", "20", "--seconds", "1")
    assert "largest 1 s burst" in out


@pytest.mark.slow
def test_state_scale_smoke():
    """bench/state_scale.py synthesises a finished run, reruns it, and runs a small real run."""
    out = _run("bench/state_scale.py", "--jobs", "200", "--run-jobs", "30", "--runs", "1")
    assert (
        "no-op rerun, 100 prompts x 10 models" in out
        and "200 distinct prompts" in out
        and "full run, 30 jobs" in out
    )


def test_tools_scale_smoke():
    """bench/tools_scale.py times export (both formats), diff (of the run, and of it rendered in part) and status on a synthesised run."""
    out = _run("bench/tools_scale.py", "--images", "30", "--runs", "1")
    assert "# reproduce: python bench/tools_scale.py" in out
    for command in (
        "export parquet",
        "export webdataset",
        "diff RUN RUN",
        "diff PART PART",
        "status",
    ):
        assert f"| {command} " in out


def test_report_scale_smoke():
    """bench/report_scale.py times cold and warm reports and a full diff on a synthesised run."""
    out = _run("bench/report_scale.py", "--images", "40", "--runs", "1", "--diff")
    assert "report, cold" in out and "diff, every pair measured" in out


@pytest.mark.browser
def test_report_open_smoke():
    """bench/report_open.py opens a tiny report in Chromium and prints its table."""
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    out = _run("bench/report_open.py", "--prompts", "2", "--seeds", "1", "--runs", "1")
    assert "first grid (s)" in out and "8 items in the DOM" in out


def test_hostile_inputs_smoke():
    """bench/hostile_inputs.py validates the alias bomb in a fresh process and reports it within the bound."""
    out = _run("bench/hostile_inputs.py", "--only", "alias-bomb")
    assert "# reproduce: python bench/hostile_inputs.py --only alias-bomb" in out
    assert "yaml-alias-bomb.yaml | 2" in out and "0 outside the bound" in out


def _scale_out(postgres_server: str, s3_server: Any, *args: str) -> str:
    """bench/scale_out.py on the session's PostgreSQL and S3 servers (the fixtures skip, or fail in CI, without them)."""
    env = {**os.environ, **s3_server.env()}
    done = subprocess.run(
        [
            sys.executable,
            "bench/scale_out.py",
            "--pg",
            postgres_server,
            "--s3-endpoint",
            s3_server.endpoint,
            "--s3-bucket",
            s3_server.bucket,
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_scale_out_run_smoke(postgres_server, s3_server):
    """bench/scale_out.py: two workers render a tiny run into the bucket and pass its checks (files, dupes, peaks)."""
    out = _scale_out(
        postgres_server, s3_server, "--workers", "2", "--jobs", "8", "--latency", "0.02"
    )
    assert "# reproduce: python bench/scale_out.py --workers 2 --jobs 8" in out
    assert "| FAL_KEY_A " in out and "# result: PASS" in out


@pytest.mark.slow
def test_scale_out_kill_smoke(postgres_server, s3_server):
    """bench/scale_out.py --kill-trials kills one of two workers mid-run; the other completes it, nothing lost."""
    out = _scale_out(
        postgres_server,
        s3_server,
        "--workers",
        "2",
        "--jobs",
        "16",
        "--kill-trials",
        "1",
        "--latency",
        "0.1",
        "--lease",
        "2",
    )
    assert "requests open at kill all taken over after" in out and "# result: PASS" in out


@pytest.mark.slow
def test_scale_out_bench_smoke(postgres_server, s3_server):
    """bench/scale_out.py --bench compares shared state + S3 with SQLite + local disk and prints the ratio."""
    out = _scale_out(
        postgres_server, s3_server, "--workers", "2", "--jobs", "10", "--bench", "--latency", "0.02"
    )
    assert (
        "| SQLite + local disk | 1 " in out
        and "| PostgreSQL + S3     | 2 " in out
        and "ratio (provider-bound)" in out
    )


def test_dataset_append_smoke():
    """bench/dataset_append.py times a whole rewrite and an append of metadata.jsonl and checks they agree."""
    out = _run("bench/dataset_append.py", "--jobs", "50", "--more", "5", "--runs", "1")
    assert "# reproduce: python bench/dataset_append.py" in out and "| 50 " in out


@pytest.mark.slow
def test_scale_out_pause_smoke(postgres_server, s3_server):
    """bench/scale_out.py --pause-trials stops one of two workers past its lease: fenced, nothing written twice."""
    out = _scale_out(
        postgres_server,
        s3_server,
        "--workers",
        "2",
        "--jobs",
        "16",
        "--pause-trials",
        "1",
        "--latency",
        "0.1",
        "--lease",
        "1",
    )
    assert "written twice" in out and "# result: PASS" in out


@pytest.mark.slow
def test_captions_smoke():
    """bench/captions.py times validate, plan and a --max-jobs trial of a caption set in four formats, with the first submit."""
    out = _run("bench/captions.py", "--captions", "300", "--runs", "1", str(ROOT))
    assert (
        "| parquet | trial" in out and "| txt     | validate" in out and "| csv     | plan" in out
    )
    trial = next(line for line in out.splitlines() if line.startswith("| jsonl   | trial"))
    assert float(trial.split("|")[6]) > 0  # the first submit, seconds after the spawn
    assert "reproduce: python bench/captions.py" in out


def test_plan_recording_smoke():
    """bench/plan_recording.py records a caption set's plan and reports bytes written against the state's size,
    and what claims and state changes cost on it."""
    out = _run(
        "bench/plan_recording.py", "--captions", "300", "--changes", "--runs", "1", str(ROOT)
    )
    assert "| 0: " in out and "written/state" in out and "claim / change CPU µs" in out
    assert "reproduce: python bench/plan_recording.py" in out


def test_documents_smoke():
    """bench/documents.py prints how right the generator is on the real-document corpus."""
    out = _run("bench/documents.py")
    assert "| fal OpenAPI" in out and "every document alone" in out


def test_sweep_scale_smoke():
    """bench/sweep_scale.py plans each sweep case and prints its job count."""
    out = _run("bench/sweep_scale.py", "--side", "4", "--seeds", "5", "--runs", "1")
    assert "# reproduce: python bench/sweep_scale.py" in out
    assert "| template, sample 10 %  | 8 " in out and "| plain prompts" in out


def test_chaos_trials_smoke():
    """bench/chaos_trials.py (short): a PostgreSQL restart, a SeaweedFS outage and a PostgreSQL pause, each under three workers: no hang, nothing lost, every duplicate recorded."""
    from .servers import S3_HINT, unavailable

    if shutil.which("weed") is None:
        unavailable(f"bench/chaos_trials.py starts its own SeaweedFS: {S3_HINT}")
    done = subprocess.run(
        [
            sys.executable, "bench/chaos_trials.py", "--trials", "1", "--events", "1",
            "--jobs", "30", "--s3-down", "3:4", "--pg-pause", "2", "--latency", "uniform:0.2:0.4",
            "--rate-estimate", "4", "--timeout", "120",
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode == 3:
        unavailable(done.stderr.strip()[-300:])
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    for kind in ("pg-restart", "s3-outage", "pg-stop"):
        assert f"| {kind} " in done.stdout
    assert "# result: PASS" in done.stdout


@pytest.mark.slow
def test_hub_source_smoke():
    """bench/hub_source.py validates a caption set from the suite's Hub, cold and warm, beside the local file."""
    pytest.importorskip("huggingface_hub")
    out = _run("bench/hub_source.py", "--captions", "200", "--runs", "1")
    assert "reproduce: python bench/hub_source.py" in out
    assert all(f"| {case} " in out for case in ("file", "hub cold", "hub warm"))
