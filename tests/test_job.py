"""The per-job state machine driven directly: no server, no sockets, no task pool.

A scripted provider (the client's methods, in memory) answers each step; `JobSteps.advance` takes one
job from its stored state to downloaded or failed, as the runner's worker task does.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from renderer.errors import AccountError, OutcomeUnknown, RequestGone
from renderer.manifest.load import load
from renderer.models.schemas import SchemaRegistry
from renderer.output.storage import LocalStorage
from renderer.plan import planner as plan_mod
from renderer.provider.client import Handle, Status
from renderer.runner import Event, RunConfig
from renderer.runner.deliver import Delivery, GroupCommit
from renderer.runner.job import JobSteps, RunState
from renderer.runner.limits import Limits
from renderer.runner.reconcile import reconcile
from renderer.state.sqlite import SQLiteStore

from .conftest import write_manifest


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Limits_:
    retry_after: float = 60.0


@dataclass
class ScriptedProvider:
    """The client's methods, answered from a script: what `wait` gives for each submission in turn.

    `waits[n]`: for the n-th submission, a Status to end with, an exception to raise, or None
    (never ends: the job's deadline must cut it off).
    """

    waits: list[Status | Exception | None] = field(default_factory=list)
    submit_error: Exception | None = None
    base_url: str = "http://scripted"
    submits: int = 0
    cancels: int = 0
    fetched: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    limits: Limits_ = field(default_factory=Limits_)
    on_event: Callable[[str], None] = lambda kind: None

    async def submit(
        self,
        endpoint: str,
        payload: dict[str, Any],
        *,
        sending: Callable[[], None] | None = None,
        refused: Callable[[], None] | None = None,
    ) -> Handle:
        if self.submit_error is not None:
            if refused is not None:
                refused()
            raise self.submit_error
        if sending is not None:
            sending()
        self.submits += 1
        rid = f"r{self.submits}"
        base = f"{self.base_url}/{endpoint}/requests/{rid}"
        return Handle(rid, f"{base}/status", base, f"{base}/cancel")

    async def wait(self, handle: Handle, on_status: Callable[[Status], None]) -> Status:
        on_status(Status("IN_QUEUE", queue_position=0))
        answer = self.waits[int(handle.request_id[1:]) - 1] if self.waits else Status("COMPLETED")
        if answer is None:
            await asyncio.sleep(3600)
            raise AssertionError("the deadline did not cut the wait off")
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def result(self, handle: Handle) -> dict[str, Any]:
        return {"images": [{"url": f"{self.base_url}/files/{handle.request_id}.png"}], "seed": 7}

    async def cancel(self, handle: Handle) -> str:
        self.cancels += 1
        return "cancelled"

    async def fetch(self, url: str) -> tuple[bytes, str]:
        self.fetched.append(url)
        return png(), "image/png"

    def backoff(self, attempt: int) -> float:
        return 0.0

    def scrub(self, text: str) -> str:
        return text


@dataclass
class Outcome:
    state: RunState
    row: Any
    events: list[Event]
    stops: int
    run_dir: Path


def drive(
    tmp_path: Path,
    registry: SchemaRegistry,
    provider: ScriptedProvider,
    state: RunState | None = None,
    **config: Any,
) -> Outcome:
    """One job of a one-job plan through JobSteps.advance, on a fresh state."""
    plan = plan_mod.build(load(write_manifest(tmp_path)), registry)
    (job,) = plan.jobs
    store = SQLiteStore(tmp_path / "run")
    events: list[Event] = []
    stops = [0]
    settings = RunConfig(provider="scripted", **config)
    given = state

    async def scenario() -> RunState:
        storage = LocalStorage(store.run_dir)
        reconcile(plan, store, storage, settings, provider.base_url, events.append)
        state = given or RunState()
        limits = Limits(settings, store, provider, None, events.append)  # type: ignore[arg-type]
        commits = GroupCommit(store)
        delivery = Delivery(
            plan,
            store,
            storage,
            provider,
            settings,
            commits,
            events.append,
            set(),  # type: ignore[arg-type]
        )

        def stop() -> None:
            stops[0] += 1
            state.stopping = True

        steps = JobSteps(store, settings, limits, delivery, commits, state, events.append, stop)
        await steps.advance(job.key)
        assert not limits.held  # every account slot given back, whatever happened
        return state

    try:
        state = asyncio.run(scenario())
        return Outcome(state, store.get(job.key), events, stops[0], store.run_dir)
    finally:
        store.close()


def test_a_planned_job_is_submitted_followed_and_delivered(
    tmp_path: Path, registry: SchemaRegistry
):
    provider = ScriptedProvider()
    out = drive(tmp_path, registry, provider)
    assert provider.submits == 1 and provider.fetched == ["http://scripted/files/r1.png"]
    assert out.row.state == "downloaded" and out.row.request_id == "r1"
    assert (out.state.done, out.state.failed, out.state.images) == (1, 0, 1)
    (entry,) = out.row.files
    assert (out.run_dir / entry["path"]).read_bytes() == png()
    assert (out.run_dir / entry["path"]).with_suffix(".json").is_file()
    assert [e["type"] for e in out.events] == ["submitted", "downloaded"]


def test_a_request_the_provider_lost_is_submitted_again_once(
    tmp_path: Path, registry: SchemaRegistry
):
    provider = ScriptedProvider(waits=[RequestGone("404"), Status("COMPLETED")])
    out = drive(tmp_path, registry, provider)
    assert provider.submits == 2 and out.row.state == "downloaded" and out.row.attempts == 2
    assert {
        "type": "resubmit",
        "key": out.row.key,
        "reason": "the provider no longer knows the request",
    } in out.events


def test_a_runner_failing_every_time_gives_up_after_the_attempt_budget(
    tmp_path: Path, registry: SchemaRegistry
):
    failed = Status("COMPLETED", error="boom", error_type="runner_server_error")
    provider = ScriptedProvider(waits=[failed] * 10)
    out = drive(tmp_path, registry, provider)
    attempts = RunConfig().retry.attempts
    assert provider.submits == attempts and out.row.state == "failed"
    assert out.row.error_kind == "rejected"
    assert f"gave up after {attempts} submissions" in out.row.error
    assert out.state.failed == 1 and out.state.done == 0


def test_a_wait_past_the_deadline_is_cancelled_and_failed(tmp_path: Path, registry: SchemaRegistry):
    provider = ScriptedProvider(waits=[None])
    out = drive(tmp_path, registry, provider, timeout=0.2)
    assert provider.submits == 1 and provider.cancels == 1
    assert out.row.state == "failed" and out.row.error_kind == "deadline"
    assert "no result within 0.2 s; last status IN_QUEUE at queue position 0" in out.row.error


def test_a_submit_with_an_unknown_outcome_is_failed_and_never_sent_again(
    tmp_path: Path, registry: SchemaRegistry
):
    provider = ScriptedProvider(submit_error=OutcomeUnknown("connection reset after sending"))
    out = drive(tmp_path, registry, provider)
    assert out.row.state == "failed" and out.row.error_kind == "outcome_unknown"
    assert out.stops == 0 and out.state.fatal is None


def test_the_only_account_refusing_its_key_stops_the_run_and_leaves_the_job_planned(
    tmp_path: Path, registry: SchemaRegistry
):
    provider = ScriptedProvider(submit_error=AccountError("401: bad key", status=401))
    out = drive(tmp_path, registry, provider)
    assert out.row.state == "planned" and out.row.request_id is None
    assert out.state.fatal is not None and out.state.fatal.status == 401
    assert out.stops == 1 and out.state.failed == 0
    assert {"type": "fatal", "message": "401: bad key"} in out.events


def test_a_stopping_run_sends_nothing(tmp_path: Path, registry: SchemaRegistry):
    """Stopped before the job's submit: nothing is sent, the job stays planned (the next run sends it)."""
    provider = ScriptedProvider()
    out = drive(tmp_path, registry, provider, RunState(stopping=True))
    assert provider.submits == 0 and out.row.state == "planned" and out.state.done == 0
