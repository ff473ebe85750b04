"""The protocol client classifies every failure once, and never leaks or resends blindly."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from renderer.client import Client, classify
from renderer.emulator import Faults, ServiceTime
from renderer.errors import AccountError, JobRejected, OutcomeUnknown, RequestGone, RunnerFailed, TransientError
from renderer.manifest import RetryPolicy

from .conftest import background_emulator

H = CIMultiDict


@pytest.mark.parametrize(("op", "status", "headers", "body", "kind"), [
    ("submit", 401, H(), '{"detail": "bad key"}', AccountError),
    ("submit", 403, H(), '{"detail": "User is locked"}', AccountError),
    ("submit", 429, H(), "", TransientError),
    ("status", 408, H(), "", TransientError),
    ("submit", 502, H(), "<html>nginx</html>", TransientError),
    ("result", 503, H({"x-fal-request-id": "r"}), '{"detail": "x"}', TransientError),  # a read: read again
    ("result", 500, H(), "Internal Server Error", TransientError),  # bare 500 after COMPLETED: never resubmit
    ("result", 502, H({"X-Fal-Error-Type": "runner_disconnected"}), "", RunnerFailed),
    ("submit", 500, H({"x-fal-request-id": "r"}), '{"detail": "x"}', OutcomeUnknown),
    ("submit", 504, H(), "<html>nginx</html>", OutcomeUnknown),  # the gateway may have passed it on
    ("submit", 503, H(), "<html>nginx</html>", TransientError),
    ("submit", 422, H(), '{"detail": "bad"}', JobRejected),
    ("status", 500, H({"x-fal-request-id": "r"}), "", TransientError),
    ("result", 500, H({"x-fal-request-id": "r"}), '{"detail": "Internal", "error_type": "runner_server_error"}', RunnerFailed),
    ("result", 422, H({"x-fal-request-id": "r"}), '{"detail": [{"loc": ["body", "x"]}]}', JobRejected),
    ("status", 404, H(), '{"detail": "Request not found"}', RequestGone),
    ("download", 404, H(), "", RequestGone),
    ("submit", 404, H(), '{"detail": "Application not found"}', JobRejected),
    ("result", 400, H(), '{"detail": "Request is still in progress"}', TransientError),
    ("submit", 504, H({"X-Fal-Request-Timeout-Type": "user"}), "", JobRejected),
])
def test_classification(op, status, headers, body, kind):
    """Each response maps to exactly one kind of error."""
    error = classify(op, status, headers, body)
    assert type(error) is kind
    assert error.status == status


def test_retry_after_is_honoured():
    """A Retry-After header sets the delay of the retry."""
    error = classify("submit", 429, H({"Retry-After": "7"}), "")
    assert isinstance(error, TransientError) and error.retry_after == 7.0


def test_backoff_is_full_jitter_and_capped():
    """Delays are uniform in [0, min(cap, base * 2^(n-1))]."""
    client = Client("http://x", retry=RetryPolicy(attempts=5, backoff=1.0, max_backoff=4.0))
    delays = [client.backoff(n) for n in (1, 2, 3, 10) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(client.backoff(1) for _ in range(200)) <= 1.0


def test_only_http_https_and_data_urls_are_fetched():
    """file:// and friends are refused; data: URIs are decoded without a request."""
    async def scenario() -> None:
        async with Client("http://x") as client:
            with pytest.raises(JobRejected):
                await client.fetch("file:///etc/passwd")
            data, kind = await client.fetch("data:image/png;base64,aGVsbG8=")
            assert (data, kind) == (b"hello", "image/png")
            assert client.calls["download"] == 0
    asyncio.run(scenario())


def test_retries_429_then_succeeds_and_reports_throttling():
    """A run of 429s is retried with backoff; each is reported so the runner can slow down."""
    events: list[str] = []

    async def scenario(url: str) -> None:
        async with Client(url, retry=RetryPolicy(attempts=50, backoff=0.001, max_backoff=0.002),
                          on_event=events.append) as client:
            handle = await client.submit("fal-ai/flux-1/schnell", {"prompt": "x"})
            assert handle.status_url.endswith("/status")

    with background_emulator(service=ServiceTime("fixed", 0.01), faults=Faults(submit_429=0.5), seed=3) as emu:
        asyncio.run(scenario(emu.url))
        assert emu.stats()["submits"] == 1
    assert events.count("throttled") == emu.stats()["faults"].get("submit_429", 0) >= 1


def test_the_key_goes_to_the_provider_only():
    """Downloads carry no Authorization header; provider calls do."""
    async def scenario(url: str) -> tuple[int, int]:
        async with Client(url, key="secret") as client:
            handle = await client.submit("fal-ai/flux-1/schnell", {"prompt": "x"})
            await client.wait(handle, lambda status: None)
            result = await client.result(handle)
            data, _ = await client.fetch(result["images"][0]["url"])
            return len(data), client.calls["download"]
    with background_emulator(service=ServiceTime("fixed", 0.01), key="secret") as emu:
        size, downloads = asyncio.run(scenario(emu.url))  # the submit needed the key; the file did not get it
        stats = emu.stats()
    assert size > 0 and downloads == 1
    assert stats["downloads"] == 1 and stats["downloads_with_credentials"] == 0
