"""The protocol client: fal's queue API over aiohttp. The only module that sees aiohttp's errors.

Every failure is classified here, once (see errors.py for the tree):
  * transport errors, timeouts, 408/409/429 and ingress-style 5xx (no x-fal-request-id)
    → TransientError, retried with exponential backoff and full jitter (Retry-After honoured);
  * a submit that may have reached the server before the connection failed → OutcomeUnknown,
    never resent blindly (that is how one pays twice);
  * 401/403 → AccountError: the whole run stops;
  * 404 for a request → RequestGone; a runner failure → RunnerFailed; other 4xx → JobRejected.
The API key is sent only to the provider (never to file hosts) and never appears in an error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from .errors import (
    AccountError,
    JobRejected,
    OutcomeUnknown,
    ProviderError,
    RequestGone,
    RunnerFailed,
    TransientError,
)
from .manifest import RetryPolicy

T = TypeVar("T")
RUNNER_ERRORS = {"runner_server_error", "internal_error", "runner_incomplete_response", "runner_disconnected",
                 "runner_connection_error", "runner_connection_refused", "runner_connection_timeout",
                 "runner_scheduling_failure", "startup_timeout", "request_timeout"}


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 120.0  # any single response
    stream_idle: float = 45.0  # fal sends a keep-alive every 15 s


@dataclass(frozen=True)
class Handle:
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


@dataclass(frozen=True)
class Status:
    state: str  # IN_QUEUE | IN_PROGRESS | COMPLETED
    queue_position: int | None = None
    error: str | None = None
    error_type: str | None = None


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def classify(op: str, status: int, headers: Any, text: str) -> ProviderError:
    """The error for a non-2xx response to operation `op` (submit, status, result, cancel, download)."""
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    detail: Any = body.get("detail") if isinstance(body, dict) else None
    error_type = (body.get("error_type") if isinstance(body, dict) else None) or headers.get("X-Fal-Error-Type")
    summary = detail if isinstance(detail, str) else (json.dumps(detail)[:500] if detail else text[:200].strip())
    message = f"{op}: HTTP {status}: {summary}" if summary else f"{op}: HTTP {status}"
    kw: dict[str, Any] = {"status": status, "error_type": error_type, "detail": detail}
    if status == 401:
        return AccountError(message, hint="the provider refused the API key; check the key variable", **kw)
    if status == 403:
        return AccountError(message, hint="the account is locked or unpaid; fix it on the provider's dashboard",
                            **kw)
    if status in (408, 409, 429):
        return TransientError(message, retry_after=_retry_after(headers), **kw)
    ingress = "x-fal-request-id" not in headers
    if status in (502, 503, 504) and (ingress or op != "result"):
        if headers.get("X-Fal-Request-Timeout-Type") == "user":
            return JobRejected(message, **kw)
        return TransientError(message, retry_after=_retry_after(headers), **kw)
    if status == 404 and op in ("status", "result", "download", "cancel"):
        return RequestGone(message, **kw)
    if op == "result" and (status >= 500 or error_type in RUNNER_ERRORS):
        return RunnerFailed(message, **kw)
    if status >= 500:
        return TransientError(message, **kw)
    if op == "result" and status == 400 and "progress" in summary.lower():
        return TransientError(message, **kw)  # fetched a moment too early
    return JobRejected(message, **kw)


class Client:
    """One provider, one connection pool. Use as `async with Client(...) as client:`."""

    def __init__(self, base_url: str, *, auth_scheme: str = "Key", key: str | None = None,
                 retry: RetryPolicy | None = None, timeouts: Timeouts | None = None,
                 max_download: int = 64 * 1024 * 1024, connections: int = 256,
                 on_event: Callable[[str], None] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, rng: random.Random | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"{auth_scheme} {key}"} if key else {}
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.max_download = max_download
        self.connections = connections
        self.on_event = on_event or (lambda kind: None)
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.calls: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect, sock_read=self.timeouts.read)
        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, raise_for_status=False,
                                              headers={"User-Agent": "renderer/0.1"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Client(...)`"
        return self._session

    # -------------------------------------------------- plumbing

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform(0, min(cap, base·2^(attempt-1)))."""
        return self.rng.uniform(0, min(self.retry.max_backoff, self.retry.backoff * 2 ** (attempt - 1)))

    async def _retrying(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return await call()
            except TransientError as exc:
                if exc.status == 429:
                    self.on_event("throttled")
                if attempt >= self.retry.attempts:
                    raise
                self.on_event("retry")
                await self.sleep(exc.retry_after if exc.retry_after is not None else self.backoff(attempt))
        raise AssertionError("unreachable")

    async def _json(self, op: str, method: str, url: str, body: Any = None) -> tuple[Any, Any]:
        """One request; (parsed JSON, headers) on 2xx, a classified error otherwise."""
        self.calls[op] += 1
        try:
            async with self.session.request(method, url, json=body, headers=self._auth) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise classify(op, resp.status, resp.headers, text)
                try:
                    return (json.loads(text) if text else None), resp.headers
                except ValueError as exc:
                    raise TransientError(f"{op}: the provider answered {resp.status} with invalid JSON") from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(f"{op}: cannot connect to {exc.host}:{exc.port}: {exc.os_error}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # The request may have reached the server: for a submit that matters (see submit).
            error = TransientError(f"{op}: connection failed: {type(exc).__name__}: {exc}".rstrip(": "))
            error.maybe_sent = True
            raise error from exc

    # -------------------------------------------------- operations

    async def submit(self, endpoint: str, payload: dict[str, Any]) -> Handle:
        async def once() -> Handle:
            try:
                body, _ = await self._json("submit", "POST", f"{self.base_url}/{endpoint}", payload)
            except TransientError as exc:
                if exc.maybe_sent:
                    raise OutcomeUnknown(
                        f"submit: the connection failed after the request was sent ({exc.message}); "
                        "it may have been accepted and billed",
                        hint="check the provider's request history; `--retry-failed` sends it again",
                    ) from exc
                raise
            try:
                return Handle(body["request_id"], body["status_url"], body["response_url"], body["cancel_url"])
            except (KeyError, TypeError) as exc:
                raise JobRejected(f"submit: the provider's answer lacks {exc}: {str(body)[:200]}") from exc
        return await self._retrying("submit", once)

    async def status(self, handle: Handle) -> Status:
        async def once() -> Status:
            body, _ = await self._json("status", "GET", handle.status_url)
            return _status(body)
        return await self._retrying("status", once)

    async def result(self, handle: Handle) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            body, _ = await self._json("result", "GET", handle.response_url)
            if not isinstance(body, dict):
                raise JobRejected(f"result: expected a JSON object, got {str(body)[:100]}")
            return body
        return await self._retrying("result", once)

    async def cancel(self, handle: Handle) -> str:
        try:
            body, _ = await self._json("cancel", "PUT", handle.cancel_url)
            return str((body or {}).get("status", "CANCELLATION_REQUESTED"))
        except ProviderError as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {}
            return str(detail.get("status", f"HTTP {exc.status}"))

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
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect, sock_read=self.timeouts.stream_idle)
        try:
            async with self.session.get(handle.status_url + "/stream", headers=self._auth, timeout=timeout) as resp:
                is_stream = resp.headers.get("Content-Type", "").startswith("text/event-stream")
                if resp.status in (404, 405) or (resp.status < 300 and not is_stream):
                    return None  # no status stream at this provider: the caller polls
                if resp.status >= 300:
                    raise classify("status", resp.status, resp.headers, await resp.text())
                last: Status | None = None
                async for raw in resp.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    try:
                        last = _status(json.loads(line[5:].strip()))
                    except ValueError:
                        continue
                    on_status(last)
                    if last.state == "COMPLETED":
                        return last
                raise TransientError("status stream ended before COMPLETED")
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(f"status stream: cannot connect: {exc.os_error}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TransientError(f"status stream: {type(exc).__name__}") from exc

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """Image bytes and the declared content type. Only http, https and data URLs; size-capped."""
        if url.startswith("data:"):
            header, _, data = url.partition(",")
            if ";base64" not in header:
                raise JobRejected("download: data URL is not base64")
            if len(data) * 3 // 4 > self.max_download:
                raise JobRejected(f"download: data URL larger than {self.max_download} bytes")
            try:
                return base64.b64decode(data, validate=True), header[5:].split(";")[0]
            except binascii.Error as exc:
                raise JobRejected("download: data URL is not valid base64") from exc
        if not url.startswith(("http://", "https://")):
            raise JobRejected(f"download: refusing a {url.split(':', 1)[0]!r} URL (only http, https and data)")

        async def once() -> tuple[bytes, str]:
            self.calls["download"] += 1
            try:
                async with self.session.get(url) as resp:  # no Authorization: files are not the provider
                    if resp.status >= 300:
                        raise classify("download", resp.status, resp.headers, "")
                    declared = resp.content_length
                    if declared is not None and declared > self.max_download:
                        raise JobRejected(f"download: {declared} bytes is over the {self.max_download}-byte cap")
                    chunks, size = [], 0
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        size += len(chunk)
                        if size > self.max_download:
                            raise JobRejected(f"download: over the {self.max_download}-byte cap")
                        chunks.append(chunk)
                    return b"".join(chunks), resp.headers.get("Content-Type", "").split(";")[0]
            except aiohttp.ClientConnectorError as exc:
                raise TransientError(f"download: cannot connect: {exc.os_error}") from exc
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise TransientError(f"download: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        return await self._retrying("download", once)


def _status(body: Any) -> Status:
    if not isinstance(body, dict) or body.get("status") not in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"):
        raise TransientError(f"status: unexpected answer {str(body)[:200]}")
    return Status(body["status"], body.get("queue_position"), body.get("error"), body.get("error_type"))
