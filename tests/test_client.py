"""The protocol client classifies every failure once, and never leaks or resends blindly."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from renderer.errors import (
    AccountError,
    JobRejected,
    OutcomeUnknown,
    RequestGone,
    RunnerFailed,
    TransientError,
)
from renderer.provider.client import Client, Limits, Timeouts, classify
from renderer.provider.emulator import Faults, ServiceTime
from renderer.settings import RetryPolicy

from .conftest import background_app, background_emulator

H = CIMultiDict


@pytest.mark.parametrize(
    ("op", "status", "headers", "body", "kind"),
    [
        ("submit", 401, H(), '{"detail": "bad key"}', AccountError),
        ("submit", 403, H(), '{"detail": "User is locked"}', AccountError),
        ("submit", 429, H(), "", TransientError),
        ("status", 408, H(), "", TransientError),
        ("submit", 502, H(), "<html>nginx</html>", TransientError),
        (
            "result",
            503,
            H({"x-fal-request-id": "r"}),
            '{"detail": "x"}',
            TransientError,
        ),  # a read: read again
        (
            "result",
            500,
            H(),
            "Internal Server Error",
            TransientError,
        ),  # bare 500 after COMPLETED: never resubmit
        ("result", 502, H({"X-Fal-Error-Type": "runner_disconnected"}), "", RunnerFailed),
        ("submit", 500, H({"x-fal-request-id": "r"}), '{"detail": "x"}', OutcomeUnknown),
        (
            "submit",
            504,
            H(),
            "<html>nginx</html>",
            OutcomeUnknown,
        ),  # the gateway may have passed it on
        ("submit", 503, H(), "<html>nginx</html>", TransientError),
        ("submit", 422, H(), '{"detail": "bad"}', JobRejected),
        ("status", 500, H({"x-fal-request-id": "r"}), "", TransientError),
        (
            "result",
            500,
            H({"x-fal-request-id": "r"}),
            '{"detail": "Internal", "error_type": "runner_server_error"}',
            RunnerFailed,
        ),
        (
            "result",
            422,
            H({"x-fal-request-id": "r"}),
            '{"detail": [{"loc": ["body", "x"]}]}',
            JobRejected,
        ),
        ("status", 404, H(), '{"detail": "Request not found"}', RequestGone),
        ("download", 404, H(), "", RequestGone),
        ("download", 410, H(), "", RequestGone),  # the file host says gone for good
        ("result", 410, H(), "", JobRejected),
        ("submit", 404, H(), '{"detail": "Application not found"}', JobRejected),
        ("result", 400, H(), '{"detail": "Request is still in progress"}', TransientError),
        ("submit", 504, H({"X-Fal-Request-Timeout-Type": "user"}), "", JobRejected),
    ],
)
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
        async with Client(
            url,
            retry=RetryPolicy(attempts=50, backoff=0.001, max_backoff=0.002),
            on_event=events.append,
        ) as client:
            handle = await client.submit("fal-ai/flux-1/schnell", {"prompt": "x"})
            assert handle.status_url.endswith("/status")

    with background_emulator(
        service=ServiceTime("fixed", 0.01), faults=Faults(submit_429=0.5), seed=3
    ) as emu:
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
        size, downloads = asyncio.run(
            scenario(emu.url)
        )  # the submit needed the key; the file did not get it
        stats = emu.stats()
    assert size > 0 and downloads == 1
    assert stats["downloads"] == 1 and stats["downloads_with_credentials"] == 0


# ---------------------------------------------------------------- issue 10: hostile servers

FAST = ServiceTime("fixed", 0.01)
QUICK = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.002)
KEY = "k3y-id-1234:s3cret-part-abcdef"


async def _one_job(url: str, **kw: Any) -> tuple[Client, Any]:
    """Submit, wait, read the result and fetch its first image; the client and the image bytes."""
    async with Client(url, retry=kw.pop("retry", QUICK), **kw) as client:
        handle = await client.submit("fal-ai/flux-1/schnell", {"prompt": "x"})
        await client.wait(handle, lambda status: None)
        result = await client.result(handle)
        data, _ = await client.fetch(result["images"][0]["url"])
        return client, data


def test_bare_500_on_result_is_read_again_never_resubmitted():
    """A 500 on GET result without request id or error_type is retried as a read; the job is submitted once."""
    with background_emulator(service=FAST, seed=1, faults=Faults(result_500=0.8)) as emu:
        _, data = asyncio.run(
            _one_job(emu.url, retry=RetryPolicy(attempts=60, backoff=0.001, max_backoff=0.002))
        )
        stats = emu.stats()
    assert data and stats["submit_attempts"] == 1 and stats["faults"]["result_500"] >= 1


@pytest.mark.parametrize(
    "fault",
    [
        {"submit_html": 1.0},
        {"submit_500_with_id": 1.0},
        {"malformed": "request_id_int"},
        {"malformed": "status_url_int"},
        {"ingress_5xx": 1.0, "ingress_codes": (504,)},
    ],
)
def test_a_submit_the_server_may_have_taken_is_never_resent(fault):
    """200 + HTML, 500 with a request id, an ill-shaped answer, an ingress 504: OutcomeUnknown after one send."""

    async def scenario(url: str) -> None:
        async with Client(url, retry=QUICK) as client:
            with pytest.raises(OutcomeUnknown) as caught:
                await client.submit("fal-ai/flux-1/schnell", {"prompt": "x"})
            assert "may have accepted" in caught.value.message

    with background_emulator(service=FAST, faults=Faults(**fault)) as emu:
        asyncio.run(scenario(emu.url))
        assert emu.stats()["requests"] == 1  # sent once, never again


@pytest.mark.parametrize(
    "fault", [{"submit_429": 1.0}, {"ingress_5xx": 1.0, "ingress_codes": (502, 503)}]
)
def test_a_submit_the_server_did_not_take_is_resent_and_not_counted(fault):
    """429 and ingress 502/503 are resent; each refusal closes the submit window (refused() per sending())."""
    calls: list[str] = []

    async def scenario(url: str) -> None:
        async with Client(url, retry=QUICK) as client:
            with pytest.raises(TransientError):
                await client.submit(
                    "fal-ai/flux-1/schnell",
                    {"prompt": "x"},
                    sending=lambda: calls.append("send"),
                    refused=lambda: calls.append("refused"),
                )

    with background_emulator(service=FAST, faults=Faults(**fault)) as emu:
        asyncio.run(scenario(emu.url))
        assert emu.stats()["submits"] == 0
    assert calls == ["send", "refused"] * QUICK.attempts


def test_connection_refused_is_resent_as_not_taken():
    """A port nobody listens on: the body was never sent, so the submit is retried, not 'outcome unknown'."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused

        async def scenario() -> None:
            async with Client(f"http://127.0.0.1:{port}", retry=QUICK) as client:
                with pytest.raises(TransientError) as caught:
                    await client.submit("fal-ai/flux-1/schnell", {"prompt": "x"})
                assert (
                    not isinstance(caught.value, OutcomeUnknown)
                    and client.calls["submit"] == QUICK.attempts
                )

        asyncio.run(scenario())


def test_answers_naming_another_origin_are_rebased_and_the_key_stays_home():
    """A proxy answering with another origin's URLs: every call goes to the proxy; the other origin sees nothing."""
    with background_emulator(service=FAST) as elsewhere:
        with background_emulator(
            service=FAST, key=KEY, faults=Faults(other_origin=elsewhere.url)
        ) as proxy:
            _, data = asyncio.run(_one_job(proxy.url, key=KEY, auth_scheme="Bearer"))
            proxy_stats = proxy.stats()
        other = elsewhere.stats()
    assert data and proxy_stats["result_calls"] == 1
    assert other["requests"] == 0 and other["requests_with_credentials"] == 0


def test_answers_naming_another_origin_are_refused_without_rebase():
    """For fal itself (no rebase) such an answer fails naming the refused origin; the key is never sent there."""

    async def scenario(url: str, foreign: str) -> None:
        async with Client(url, key=KEY, retry=QUICK, rebase=False) as client:
            with pytest.raises(JobRejected) as caught:
                await client.submit("fal-ai/flux-1/schnell", {"prompt": "x"})
            assert foreign.lower() in caught.value.message and "refused" in caught.value.message

    with background_emulator(service=FAST) as elsewhere:
        with background_emulator(
            service=FAST, key=KEY, faults=Faults(other_origin=elsewhere.url)
        ) as proxy:
            asyncio.run(scenario(proxy.url, elsewhere.url))
        assert elsewhere.stats()["requests"] == 0


def test_rebase_keeps_a_proxy_path_prefix():
    """A proxy mounted under a path: the answer's path is put under that prefix on the proxy's origin."""
    client = Client("https://proxy.example/api", key=KEY)
    rebased = client.provider_url("https://queue.fal.run/fal-ai/x/requests/1/status?logs=1", "u")
    assert rebased == "https://proxy.example/api/fal-ai/x/requests/1/status?logs=1"
    assert client.provider_url("https://proxy.example/api/a", "u") == "https://proxy.example/api/a"
    with pytest.raises(JobRejected):
        client.provider_url(7, "u")


@given(
    st.sampled_from(
        ["https://proxy.example/api", "http://127.0.0.1:8080", "https://queue.fal.run"]
    ),
    st.sampled_from(
        ["http://127.0.0.1:8080", "https://queue.fal.run", "HTTP://127.0.0.1:8080", ""]
    ),
    st.one_of(st.text(max_size=30), st.text(max_size=30).map(lambda t: "/" + t)),
)
def test_the_unparsed_fast_path_decides_urls_as_the_parse_does(base: str, start: str, rest: str):
    """A URL the client keeps without parsing it is one the full check keeps unchanged as well."""
    client = Client(base, key=KEY, rebase="fal.run" not in base)
    url = start + rest
    try:
        expected: str | type[JobRejected] = client.urls.checked(url, "u")
    except JobRejected:
        expected = JobRejected
    try:
        got: str | type[JobRejected] = client.provider_url(url, "u")
    except JobRejected:
        got = JobRejected
    assert got == expected


@given(
    st.text(min_size=6, max_size=40).filter(lambda k: k.strip() == k and "*" not in k),
    st.text(max_size=40),
)
def test_scrub_removes_every_form_of_the_key(key, noise):
    """The key, its JSON-escaped and URL-quoted forms and 'Key '/'Bearer ' forms never survive scrub()."""
    client = Client("http://x", key=key)
    for text in (f"{noise}{key}{noise}", f"Key {key}", f"Bearer {key}", json.dumps({"k": key})):
        assert key not in client.scrub(text)


@pytest.mark.parametrize("where", ["401", "403"])
def test_a_key_echoed_in_an_error_body_is_scrubbed(where):
    """A 401/403 body repeating the Authorization header reaches the error without the key."""

    async def scenario(url: str) -> None:
        async with Client(url, key=KEY, retry=QUICK) as client:
            with pytest.raises(AccountError) as caught:
                await client.submit("fal-ai/flux-1/schnell", {"prompt": "x"})
            text = caught.value.message + json.dumps(caught.value.detail)
            assert "you sent" in text and "***" in text
            assert KEY not in text and KEY.split(":")[1] not in text

    settings = (
        {"key": "another"}
        if where == "401"
        else {"key": KEY, "faults": Faults(echo_key=True, lock_after=0)}
    )
    if where == "401":
        settings["faults"] = Faults(echo_key=True)
    with background_emulator(service=FAST, **settings) as emu:
        asyncio.run(scenario(emu.url))


@pytest.mark.parametrize("op", ["submit", "result", "download"])
def test_a_slowloris_body_ends_at_the_request_deadline(op):
    """One byte every 0.5 s: each request ends at its total deadline instead of running forever."""

    async def scenario(url: str) -> type[BaseException]:
        try:
            await _one_job(url, timeouts=Timeouts(total=1.0), retry=RetryPolicy(attempts=1))
        except (OutcomeUnknown, TransientError) as exc:
            assert "within 1 s" in exc.message
            return type(exc)
        raise AssertionError("the slow body was read to the end")

    with background_emulator(service=FAST, faults=Faults(slow=(op,), slow_interval=0.5)) as emu:
        started = time.monotonic()
        kind = asyncio.run(scenario(emu.url))
        elapsed = time.monotonic() - started
    assert kind is (OutcomeUnknown if op == "submit" else TransientError)
    assert elapsed < 5


@pytest.mark.parametrize("value", ["1e9", "inf", "Wed, 21 Oct 2099 07:28:00 GMT"])
def test_a_huge_retry_after_is_capped_and_said(value):
    """Retry-After 1e9, inf or a far date waits the cap, not forever, and the final error says so."""
    events: list[str] = []

    async def scenario(url: str) -> None:
        async with Client(
            url,
            retry=RetryPolicy(attempts=2),
            limits=Limits(retry_after=0.05),
            on_event=events.append,
        ) as client:
            with pytest.raises(TransientError) as caught:
                await client.submit("fal-ai/flux-1/schnell", {"prompt": "x"})
            assert "capped to 0.05 s" in caught.value.message

    with background_emulator(service=FAST, faults=Faults(submit_429=1.0, retry_after=value)) as emu:
        asyncio.run(scenario(emu.url))
    assert "retry_after_capped" in events


def test_a_garbage_retry_after_falls_back_to_backoff():
    """An unparsable Retry-After is ignored (None): the jittered backoff applies."""
    assert classify("submit", 429, H({"Retry-After": "soon-ish"}), "").retry_after is None
    assert classify("submit", 429, H({"Retry-After": "nan"}), "").retry_after is None


def test_a_result_over_the_cap_fails_fast_without_holding_it():
    """A result body past the JSON cap is refused as soon as the cap is crossed (JobRejected, not a crash)."""

    async def scenario(url: str) -> None:
        with pytest.raises(JobRejected) as caught:
            await _one_job(url, limits=Limits(json_body=256 * 1024))
        assert "cap" in caught.value.message

    with background_emulator(service=FAST, faults=Faults(huge_result=8 * 1024 * 1024)) as emu:
        asyncio.run(scenario(emu.url))


def test_a_data_url_over_the_download_cap_is_refused():
    """A data: URL whose decoded size is over the cap is refused before decoding."""

    async def scenario() -> None:
        async with Client("http://x", max_download=1000) as client:
            with pytest.raises(JobRejected):
                await client.fetch("data:image/png;base64," + "A" * 4000)
            with pytest.raises(JobRejected):
                await client.fetch(["not", "a", "url"])

    asyncio.run(scenario())


def test_a_result_that_is_not_utf8_is_a_read_error_not_a_crash():
    """Invalid UTF-8 in a result body is retried as a read and ends as a TransientError that says so."""

    async def scenario(url: str) -> None:
        with pytest.raises(TransientError) as caught:
            await _one_job(url)
        assert "not UTF-8" in caught.value.message

    with background_emulator(service=FAST, faults=Faults(malformed="result_not_utf8")) as emu:
        asyncio.run(scenario(emu.url))
        assert emu.stats()["submit_attempts"] == 1


def test_a_64mb_sse_line_ends_the_stream_and_polling_takes_over():
    """An endless status-stream line is cut at the line cap; the client polls and finishes the job."""
    with background_emulator(service=FAST, faults=Faults(malformed="sse_long_line")) as emu:
        client, data = asyncio.run(_one_job(emu.url))
    assert data and client.calls["status"] >= 1 and client.calls["stream"] == 3


# Bodies for read_capped, served over a real socket in the pieces the test chooses.
BODIES: dict[str, tuple[list[bytes], bool]] = {}


async def _pieces(request: Any) -> Any:
    from aiohttp import web

    pieces, declared = BODIES[request.match_info["name"]]
    headers = {"Content-Length": str(sum(map(len, pieces)))} if declared else {}
    response = web.StreamResponse(headers=headers)  # without a length: chunked
    await response.prepare(request)
    for piece in pieces:
        await response.write(piece)
        await asyncio.sleep(0)  # (each piece its own write: the client sees them apart)
    await response.write_eof()
    return response


@pytest.fixture(scope="module")
def piece_server() -> Iterator[str]:
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/{name}", _pieces)
    with background_app(app) as url:
        yield url


@settings(max_examples=60, deadline=None)
@example(pieces=[b"ab", b"cd"], cap=4, declared=False, truncate=False)  # exactly the cap
@example(pieces=[b"ab", b"cd"], cap=3, declared=False, truncate=False)  # one byte over
@example(pieces=[b"ab", b"cd"], cap=3, declared=True, truncate=True)
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=3000), max_size=8),
    cap=st.integers(0, 12000),
    declared=st.booleans(),
    truncate=st.booleans(),
)
def test_read_capped_returns_the_body_or_its_first_cap_bytes_in_any_pieces(
    piece_server: str, pieces: list[bytes], cap: int, declared: bool, truncate: bool
) -> None:
    """However the body arrives: whole up to the cap; past it, its first `cap` bytes (truncate) or JobRejected."""
    import aiohttp

    from renderer.provider.client import read_capped

    name = f"b{len(BODIES)}"
    BODIES[name] = (pieces, declared)
    body = b"".join(pieces)

    async def scenario() -> bytes:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{piece_server}/{name}") as resp,
        ):
            return await read_capped("download", resp, cap, truncate=truncate)

    if len(body) <= cap:
        assert asyncio.run(scenario()) == body
    elif truncate:
        assert asyncio.run(scenario()) == body[:cap]
    else:
        with pytest.raises(JobRejected, match="cap"):
            asyncio.run(scenario())
