"""fal's queue protocol as data: its vocabulary, and what each answer means.

The names a client and a provider share (the runner `error_type`s, fal's queue origins), the two
checked shapes the protocol hands back (`Handle` from a submit, `Status` from a status read), and
the one table of outcomes: `classify` maps every non-2xx answer to the error the runner acts on
(errors.py). Pure functions of the answer: no I/O, no aiohttp (the client translates its errors).
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yarl import URL

from renderer.errors import (
    AccountError,
    JobRejected,
    OutcomeUnknown,
    ProviderError,
    RequestGone,
    RunnerFailed,
    TransientError,
)

RUNNER_ERRORS = {
    "runner_server_error",
    "internal_error",
    "runner_incomplete_response",
    "runner_disconnected",
    "runner_connection_error",
    "runner_connection_refused",
    "runner_connection_timeout",
    "runner_scheduling_failure",
    "startup_timeout",
    "request_timeout",
}
FAL_QUEUE_ORIGINS = frozenset({"https://queue.fal.run"})  # where fal's queue answers may point
UNKNOWN_HINT = (
    "check the provider's request history; `--retry-failed` sends it again (and may pay twice)"
)


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


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from a Retry-After header (delta or HTTP date); inf for absurd values; None if unusable."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:limit] + ("…" if len(text) > limit else "")


def classify(op: str, status: int, headers: Any, text: str) -> ProviderError:
    """The error for a non-2xx response to operation `op` (submit, status, result, cancel, download)."""
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    detail: Any = body.get("detail") if isinstance(body, dict) else None
    error_type = (body.get("error_type") if isinstance(body, dict) else None) or headers.get(
        "X-Fal-Error-Type"
    )
    if not isinstance(error_type, str):
        error_type = None
    summary = (
        detail
        if isinstance(detail, str)
        else (json.dumps(detail)[:500] if detail else text[:200].strip())
    )
    message = f"{op}: HTTP {status}: {summary}" if summary else f"{op}: HTTP {status}"
    kw: dict[str, Any] = {"status": status, "error_type": error_type, "detail": detail}
    if status == 401:
        return AccountError(
            message, hint="the provider refused the API key; check the key variable", **kw
        )
    if status == 403:
        return AccountError(
            message,
            hint="the account is locked or unpaid; fix it on the provider's dashboard",
            **kw,
        )
    ingress = "x-fal-request-id" not in headers
    if status in (408, 429):
        return TransientError(message, retry_after=retry_after_seconds(headers), **kw)
    if status == 504 and headers.get("X-Fal-Request-Timeout-Type") == "user":
        return JobRejected(
            message, **kw
        )  # the request's own start deadline passed: never ran, never billed
    if op == "submit":
        if status in (502, 503) and ingress:
            return TransientError(
                message, retry_after=retry_after_seconds(headers), **kw
            )  # the app never saw it
        if 400 <= status < 500:
            return JobRejected(message, **kw)  # a definite refusal: nothing was queued
        return OutcomeUnknown(
            f"{message}; the provider may have accepted and billed it", hint=UNKNOWN_HINT, **kw
        )
    if status == 404 and op in ("status", "result", "download", "cancel"):
        return RequestGone(message, **kw)
    if status == 410 and op == "download":
        return RequestGone(message, **kw)  # the file host says the file is gone for good
    if op == "result" and error_type in RUNNER_ERRORS:
        return RunnerFailed(message, **kw)  # definite: this request will never deliver
    if status == 409 or status >= 500:
        return TransientError(
            message, retry_after=retry_after_seconds(headers), **kw
        )  # a read: read again
    if op == "result" and status == 400 and "progress" in summary.lower():
        return TransientError(message, **kw)  # fetched a moment too early
    return JobRejected(message, **kw)


def origin_of(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.scheme}://{parsed.raw_authority}".lower()


def parse_handle(body: Any, check_url: Callable[[Any, str], str]) -> Handle:
    """The submit answer, checked before anything uses it; an unusable one is an unknown outcome.

    `check_url(url, what)` is the client's provider_url: the URL kept, rebased or refused.
    """

    def unknown(problem: str) -> OutcomeUnknown:
        return OutcomeUnknown(
            f"submit: unusable answer ({problem}): {short(body)}; the provider may have "
            "accepted and billed it",
            hint=UNKNOWN_HINT,
        )

    if not isinstance(body, dict):
        raise unknown(f"a JSON {type(body).__name__}, not an object")
    request_id = body.get("request_id")
    if (
        not isinstance(request_id, str)
        or not request_id
        or len(request_id) > 200
        or not request_id.isprintable()
        or "/" in request_id
    ):
        raise unknown(f"request_id is {short(request_id, 60)}")
    urls = {}
    for name in ("status_url", "response_url", "cancel_url"):
        value = body.get(name)
        if not isinstance(value, str):
            raise unknown(f"{name} is {type(value).__name__}, not a string")
        try:
            urls[name] = check_url(value, f"the submit answer's {name}")
        except JobRejected as exc:
            raise JobRejected(
                f"{exc.message} (request {request_id} was accepted and may be billed)",
                hint=exc.hint,
            ) from None
    return Handle(request_id, urls["status_url"], urls["response_url"], urls["cancel_url"])


def parse_status(body: Any) -> Status:
    """A status answer (polled or one line of the stream), checked; TransientError if unusable."""
    if not isinstance(body, dict) or body.get("status") not in (
        "IN_QUEUE",
        "IN_PROGRESS",
        "COMPLETED",
    ):
        raise TransientError(f"status: unexpected answer {short(body)}")
    position = body.get("queue_position")
    error, error_type = body.get("error"), body.get("error_type")
    return Status(
        body["status"],
        position if isinstance(position, int) and not isinstance(position, bool) else None,
        short(error, 500) if isinstance(error, str) else None,
        error_type if isinstance(error_type, str) else None,
    )
