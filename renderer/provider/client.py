"""The protocol client: fal's queue API over aiohttp. The only module that sees aiohttp's errors.

What each answer means is fal.py's (`classify`, `parse_handle`, `parse_status`), where the key may
go and its scrubbing access.py's; this module owns the session, deadlines, size caps and retries.

Every server answer is hostile until checked. Every failure is classified once (errors.py), by
fal.classify for an answer and here for the transport:
  * reads (status, result, download) are free and idempotent: transport errors, timeouts, 5xx
    without a runner `error_type`, unparsable answers → TransientError, the read is retried;
  * a submit is resent only when the server demonstrably did not take it: 429, 408, 502/503
    from the ingress (no x-fal-request-id), a connection refused before the body was sent.
    Anything else after the body may have arrived (200 + HTML, a 5xx carrying a request id, an
    ill-shaped answer, a dropped connection) → OutcomeUnknown, never resent blindly;
  * 401/403 → AccountError: the whole run stops (a definite refusal: nothing was taken);
  * 404 for a request → RequestGone; a runner `error_type` → RunnerFailed (both: resubmit);
    other 4xx → JobRejected.
The key goes only to the provider's origin (answers naming another origin are rebased onto it or
refused), never to file hosts, and is scrubbed from every body before anything reads it.
Every request has a total deadline and every body a size cap: a slow or huge answer ends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from renderer.errors import (
    AccountError,
    JobRejected,
    OutcomeUnknown,
    ProviderError,
    RunnerFailed,
    TransientError,
)
from renderer.provider import tls
from renderer.provider.access import ProviderUrls, Secrets
from renderer.provider.fal import (
    FAL_QUEUE_ORIGINS,
    RUNNER_ERRORS,
    UNKNOWN_HINT,
    Handle,
    Status,
    classify,
    origin_of,
    parse_handle,
    parse_status,
    short,
)
from renderer.settings import RetryPolicy

# The protocol's names stay importable from here (the runner and the tests import them so).
__all__ = [
    "FAL_QUEUE_ORIGINS",
    "RUNNER_ERRORS",
    "Client",
    "Handle",
    "Limits",
    "Status",
    "Timeouts",
    "classify",
    "origin_of",
]

T = TypeVar("T")
ERROR_BODY_CAP = 64 * 1024  # of an error answer only the start is read: enough for its detail


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 120.0  # silence within any single response
    stream_idle: float = 45.0  # fal sends a keep-alive every 15 s
    total: float = 300.0  # any single request, body included: a server trickling bytes ends here


@dataclass(frozen=True)
class Limits:
    json_body: int = 64 * 1024 * 1024  # a submit/status/result answer (data: URLs included)
    sse_line: int = 1024 * 1024  # one line of the status stream
    retry_after: float = 60.0  # the longest Retry-After obeyed; longer (1e9, inf) is cut to this


class Client:
    """One provider, one connection pool. Use as `async with Client(...) as client:`.

    `rebase`: answers that name another origin are moved onto the provider's origin (how
    proxies of fal's API are used); without it (fal itself) such an answer is refused.
    `trusted_origins`: further origins the key may go to (fal's queue hosts).
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth_scheme: str = "Key",
        key: str | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
        max_download: int = 64 * 1024 * 1024,
        connections: int = 256,
        rebase: bool = True,
        trusted_origins: frozenset[str] = frozenset(),
        on_event: Callable[[str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.urls = ProviderUrls(self.base_url, rebase=rebase, trusted_origins=trusted_origins)
        self.auth_scheme = auth_scheme
        self._auth = {"Authorization": f"{auth_scheme} {key}"} if key else {}
        # Shared (the same object) with every client made by with_key: each scrubs every key.
        self.secrets = Secrets(key)
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        # A stream lives as long as the job waits (the caller's deadline); silence is what ends it.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeouts.connect, sock_read=self.timeouts.stream_idle
        )
        self.limits = limits or Limits()
        self.max_download = max_download
        self.connections = connections
        self.on_event = on_event or (lambda kind: None)
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.calls: Counter[str] = Counter()
        self.retrying = Retrying(self.retry, self.limits.retry_after, self.rng, self.sleep)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        await tls.loaded()  # aiohttp's contexts have their CA certificates before any request
        t = self.timeouts
        timeout = aiohttp.ClientTimeout(total=t.total, connect=t.connect, sock_read=t.read)
        connector = aiohttp.TCPConnector(
            limit=self.connections, limit_per_host=0, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            raise_for_status=False,
            headers={"User-Agent": "renderer/0.1"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Client(...)`"
        return self._session

    # -------------------------------------------------- the key

    def with_key(self, key: str | None) -> Client:
        """This provider under another account's key (use it inside this client's `async with`).

        It shares the connection pool, the call counts and the scrubbing: every client of the
        family scrubs every key of the family, so no account's key leaks through another's errors.
        Its own `on_event` tells whose requests were throttled.
        """
        view = copy.copy(self)
        view._auth = {"Authorization": f"{self.auth_scheme} {key}"} if key else {}
        self.secrets.add(key)
        return view

    def scrub(self, text: str) -> str:
        """`text` without any key of this client's family in any form it was sent or echoed in."""
        return self.secrets.scrub(text)

    def provider_url(self, url: Any, what: str) -> str:
        """`url` if it is the provider's; rebased onto the provider's origin; or refused (JobRejected)."""
        return self.urls.provider_url(url, what)

    # -------------------------------------------------- plumbing

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform(0, min(cap, base·2^(attempt-1)))."""
        return self.retrying.backoff(attempt)

    async def _retrying(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        # on_event is read now: the runner replaces it on each account's client.
        return await self.retrying.run(call, self.on_event)

    async def _json(self, op: str, method: str, url: str, body: Any = None) -> Any:
        """One request to the provider; the parsed JSON of a 2xx answer, a classified error otherwise.

        A 2xx answer that is not JSON (or not UTF-8) raises TransientError: the caller decides
        what that means (a read retries; a submit's outcome is unknown).
        """
        self.calls[op] += 1
        url = self.provider_url(url, f"the {op} URL")  # the key goes nowhere else
        sent = False
        try:
            async with self.session.request(
                method, url, json=body, headers=self._auth, allow_redirects=False
            ) as resp:
                sent = True
                if resp.status >= 300:
                    raise await error_answer(op, resp, self.scrub)
                raw = await read_capped(op, resp, self.limits.json_body)
        except aiohttp.ClientConnectorError as exc:
            # No connection was made: the body was never sent.
            raise TransientError(
                f"{op}: cannot connect to {exc.host}:{exc.port}: {exc.os_error}"
            ) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            # The request may have reached the server: for a submit that matters (see submit).
            what = (
                f"no complete answer within {self.timeouts.total:g} s"
                if isinstance(exc, asyncio.TimeoutError)
                else f"connection failed: {type(exc).__name__}: {exc}".rstrip(": ")
            )
            error = TransientError(self.scrub(f"{op}: {what}"))
            error.maybe_sent = True
            error.answered = sent
            raise error from exc
        except ProviderError as exc:
            raise self.secrets.scrubbed(exc) from None
        try:
            text = self.scrub(raw.decode("utf-8"))
            return json.loads(text) if text else None
        except UnicodeDecodeError as exc:
            problem = f"a body that is not UTF-8 (byte {exc.start})"
        except ValueError:
            kind = resp.headers.get("Content-Type", "?").split(";")[0]
            problem = f"{kind} that is not JSON: {short(text.strip(), 80)}"
        error = TransientError(f"{op}: the provider answered {resp.status} with {problem}")
        error.maybe_sent = error.answered = True
        raise error

    # -------------------------------------------------- operations

    async def submit(
        self,
        endpoint: str,
        payload: dict[str, Any],
        *,
        sending: Callable[[], None] | None = None,
        refused: Callable[[], None] | None = None,
    ) -> Handle:
        """Submit once per call, resending only what the server demonstrably did not take.

        `sending` runs before each send (the caller records the submit→commit window), `refused`
        after each definite refusal (the window closes: nothing was taken).
        """

        async def once() -> Handle:
            if sending is not None:
                sending()
            try:
                body = await self._json("submit", "POST", f"{self.base_url}/{endpoint}", payload)
            except TransientError as exc:
                if exc.answered:  # an answer we could not read: the server had the whole request
                    raise OutcomeUnknown(
                        f"{exc.message}; the provider may have accepted and billed it",
                        hint=UNKNOWN_HINT,
                    ) from exc
                if exc.maybe_sent:
                    raise OutcomeUnknown(
                        f"submit: the connection failed after the request was sent ({exc.message}); "
                        "it may have been accepted and billed",
                        hint=UNKNOWN_HINT,
                    ) from exc
                if refused is not None:
                    refused()
                raise
            except (AccountError, JobRejected):
                if refused is not None:
                    refused()
                raise
            return parse_handle(body, self.provider_url)

        return await self._retrying("submit", once)

    async def status(self, handle: Handle) -> Status:
        async def once() -> Status:
            return parse_status(await self._json("status", "GET", handle.status_url))

        return await self._retrying("status", once)

    async def result(self, handle: Handle) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            body = await self._json("result", "GET", handle.response_url)
            if not isinstance(body, dict):
                raise TransientError(f"result: expected a JSON object, got {short(body, 100)}")
            error_type = body.get("error_type")
            if isinstance(error_type, str) and error_type in RUNNER_ERRORS:
                raise RunnerFailed(
                    f"result: the provider's runner failed ({error_type})", error_type=error_type
                )
            return body

        return await self._retrying("result", once)

    async def cancel(self, handle: Handle) -> str:
        try:
            body = await self._json("cancel", "PUT", handle.cancel_url)
            answer = body.get("status") if isinstance(body, dict) else None
            return short(answer if isinstance(answer, str) else "CANCELLATION_REQUESTED", 60)
        except ProviderError as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {}
            answer = detail.get("status")
            return short(answer if isinstance(answer, str) else f"HTTP {exc.status}", 60)

    async def wait(self, handle: Handle, on_status: Callable[[Status], None]) -> Status:
        """Until COMPLETED: the status stream first; polling with growing intervals if it fails."""
        for _ in range(3):
            try:
                status = await self._stream(handle, on_status)
                if status is not None:
                    return status
                break  # the provider has no stream here: poll
            except TransientError:
                self.on_event("stream_reconnect")
                continue
        interval = 0.25
        while True:
            status = await self.status(handle)
            on_status(status)
            if status.state == "COMPLETED":
                return status
            await self.sleep(interval)
            interval = min(interval * 1.6, 10.0)

    async def _stream(self, handle: Handle, on_status: Callable[[Status], None]) -> Status | None:
        self.calls["stream"] += 1
        url = self.provider_url(handle.status_url, "the status URL") + "/stream"
        try:
            async with self.session.get(
                url, headers=self._auth, timeout=self._stream_timeout, allow_redirects=False
            ) as resp:
                is_stream = resp.headers.get("Content-Type", "").startswith("text/event-stream")
                if resp.status in (404, 405) or (resp.status < 300 and not is_stream):
                    return None  # no status stream at this provider: the caller polls
                if resp.status >= 300:
                    raise self.secrets.scrubbed(await error_answer("status", resp, self.scrub))
                return await follow_events(
                    resp.content, self.limits.sse_line, self.scrub, on_status
                )
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(f"status stream: cannot connect: {exc.os_error}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TransientError(f"status stream: {type(exc).__name__}") from exc

    async def fetch(self, url: Any) -> tuple[bytes, str]:
        """Image bytes and the declared content type. Only http, https and data URLs; size-capped.

        Never with the key: files are not the provider (fal's CDN is public).
        """
        if not isinstance(url, str):
            raise JobRejected(f"download: the image URL is {type(url).__name__}, not a string")
        if url.startswith("data:"):
            return decode_data_url(url, self.max_download)
        if not url.startswith(("http://", "https://")):
            raise JobRejected(
                f"download: refusing a {short(url.split(':', 1)[0], 20)!r} URL "
                "(only http, https and data)"
            )

        async def once() -> tuple[bytes, str]:
            self.calls["download"] += 1
            try:
                async with self.session.get(
                    url
                ) as resp:  # no Authorization: files are not the provider
                    if resp.status >= 300:
                        raise classify("download", resp.status, resp.headers, "")
                    data = await read_capped("download", resp, self.max_download)
                    kind = resp.headers.get("Content-Type", "").split(";")[0]
                    return data, kind
            except aiohttp.ClientConnectorError as exc:
                raise TransientError(f"download: cannot connect: {exc.os_error}") from exc
            except asyncio.TimeoutError as exc:
                raise TransientError(
                    f"download: no complete file within {self.timeouts.total:g} s"
                ) from exc
            except (aiohttp.ClientError, ValueError) as exc:
                raise TransientError(f"download: {type(exc).__name__}: {exc}".rstrip(": ")) from exc

        return await self._retrying("download", once)


async def _lines(content: aiohttp.StreamReader, cap: int) -> Any:
    """The stream's lines (without line ends); a line over `cap` bytes ends the stream (TransientError)."""
    pending = b""
    async for chunk in content.iter_any():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r")
        if len(pending) > cap:
            raise TransientError(f"status stream: a line over {cap} bytes")
    if pending:
        yield pending


async def read_capped(
    op: str, resp: aiohttp.ClientResponse, cap: int, *, truncate: bool = False
) -> bytes:
    """The body, read in chunks and stopped at `cap` bytes (cut there, or JobRejected)."""
    declared = resp.content_length
    if declared is not None and declared > cap and not truncate:
        raise JobRejected(f"{op}: the answer is {declared} bytes, over the {cap}-byte cap")
    # The chunks joined once at the end: growing one buffer and copying it out cost three copies
    # of a full-size picture (~0.6 ms of the loop for 1.7 MB).
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > cap:
            if truncate:
                chunks.append(chunk[: len(chunk) - (size - cap)])
                return b"".join(chunks)
            raise JobRejected(f"{op}: the answer is over the {cap}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_data_url(url: str, cap: int) -> tuple[bytes, str]:
    """The bytes and content type of a base64 data: URL of at most `cap` bytes (else JobRejected)."""
    header, _, data = url.partition(",")
    if ";base64" not in header:
        raise JobRejected("download: data URL is not base64")
    if len(data) * 3 // 4 > cap:
        raise JobRejected(f"download: data URL larger than {cap} bytes")
    try:
        return base64.b64decode(data, validate=True), header[5:].split(";")[0]
    except (binascii.Error, ValueError) as exc:
        raise JobRejected("download: data URL is not valid base64") from exc


class Retrying:
    """The retry loop of every operation: TransientError is tried again up to `policy.attempts`
    times, after Retry-After when it is sane (capped at `cap`, and said), else full-jitter backoff."""

    def __init__(
        self,
        policy: RetryPolicy,
        cap: float,
        rng: random.Random,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.policy = policy
        self.cap = cap  # the longest Retry-After obeyed (Limits.retry_after)
        self.rng = rng
        self.sleep = sleep

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform(0, min(cap, base·2^(attempt-1)))."""
        return self.rng.uniform(
            0, min(self.policy.max_backoff, self.policy.backoff * 2 ** (attempt - 1))
        )

    def delay(self, exc: TransientError, attempt: int, on_event: Callable[[str], None]) -> float:
        """The wait before the next try: Retry-After if sane, capped (and said) if not; else backoff."""
        if exc.retry_after is None:
            return self.backoff(attempt)
        if exc.retry_after > self.cap:
            asked = "inf" if math.isinf(exc.retry_after) else f"{exc.retry_after:g}"
            note = f" (Retry-After {asked} s capped to {self.cap:g} s)"
            if note not in exc.message:
                exc.message += note
                exc.args = (exc.message,)
            on_event("retry_after_capped")
            return self.cap
        return exc.retry_after

    async def run(self, call: Callable[[], Awaitable[T]], on_event: Callable[[str], None]) -> T:
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return await call()
            except TransientError as exc:
                if exc.status == 429:
                    on_event("throttled")
                delay = self.delay(exc, attempt, on_event)
                if attempt >= self.policy.attempts:
                    raise
                on_event("retry")
                await self.sleep(delay)
        raise AssertionError("unreachable")


async def error_answer(
    op: str, resp: aiohttp.ClientResponse, scrub: Callable[[str], str]
) -> ProviderError:
    """The classified error of a non-2xx answer, from the start of its body (scrubbed)."""
    raw = await read_capped(op, resp, ERROR_BODY_CAP, truncate=True)
    return classify(op, resp.status, resp.headers, scrub(raw.decode("utf-8", "replace")))


async def follow_events(
    content: aiohttp.StreamReader,
    cap: int,
    scrub: Callable[[str], str],
    on_status: Callable[[Status], None],
) -> Status:
    """Statuses from a server-sent event stream until COMPLETED (TransientError if it ends first)."""
    async for line in _lines(content, cap):
        if not line.startswith(b"data:"):
            continue
        try:
            status = parse_status(json.loads(scrub(line[5:].decode("utf-8").strip())))
        except (ValueError, TransientError):
            continue  # not UTF-8, not JSON, not a status: a bad line is skipped
        on_status(status)
        if status.state == "COMPLETED":
            return status
    raise TransientError("status stream ended before COMPLETED")
