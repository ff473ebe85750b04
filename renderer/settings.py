"""The one place every numeric setting is parsed and range-checked.

The manifest, the command-line flags and the environment all go through `parse`, so `5/s`
means the same everywhere and no route lets a NaN, an infinity, a zero rate or a negative
concurrency through. A value is either returned as a finite int/float inside its range or
refused with a `SettingError` that says what is allowed. Callers locate the error: the
manifest by file:line:col, the CLI by flag or by environment variable name.

Caps where nothing else limits a value, and why:
  * concurrency <= 1,000: each request at the provider holds a socket (its status stream);
    Linux's default limit on open files is 1,024, and no fal account runs more than a few
    hundred at once.
  * rate <= 100,000/s: far above any provider's limit (unset, the default, is not paced at
    all); the submission bucket is sized from the rate, so a typo of 10**9 is refused.
  * timeout, backoff <= 7 days: a longer wait is certainly a unit mistake.
  * budget <= 1e9 USD; prices <= 1,000 USD per image or megapixel.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from renderer.errors import UsageError

WEEK = 7 * 24 * 3600.0


class SettingError(ValueError):
    """A value outside what a setting allows; `allowed` says what is."""

    def __init__(self, message: str, allowed: str) -> None:
        super().__init__(message)
        self.message = message
        self.allowed = allowed


@dataclass(frozen=True)
class Spec:
    kind: type  # int or float
    low: float
    high: float
    low_open: bool = False  # True: the value must be > low, not >= low
    rate: bool = False  # also accepts "N/s" and "N/min"
    unit: str = ""

    def allowed(self) -> str:
        low = f"more than {_fmt(self.low)}" if self.low_open else f"at least {_fmt(self.low)}"
        what = "an integer" if self.kind is int else "a number"
        text = f"{what}, {low} and at most {_fmt(self.high)}{self.unit}"
        if self.rate:
            text += ", or a string like 10/s or 120/min"
        return text


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


SPECS: dict[str, Spec] = {
    "concurrency": Spec(int, 1, 1_000),
    "per_endpoint": Spec(int, 1, 1_000),
    "rate": Spec(float, 0, 100_000, low_open=True, rate=True, unit=" per second"),
    "timeout": Spec(float, 0, WEEK, low_open=True, unit=" seconds"),
    "attempts": Spec(int, 1, 50),
    "backoff": Spec(float, 0, WEEK, low_open=True, unit=" seconds"),
    "max_backoff": Spec(float, 0, WEEK, low_open=True, unit=" seconds"),
    "budget": Spec(float, 0, 1e9, unit=" USD"),
    "price": Spec(float, 0, 1_000, unit=" USD"),
    "max_jobs": Spec(int, 1, 10**12),
    "max_plan_jobs": Spec(int, 1, 10**12),
    "port": Spec(int, 0, 65_535),
    "workers": Spec(int, 1, 1_000),
    "latency": Spec(float, 0, 3_600, unit=" seconds"),
    "max_side": Spec(int, 0, 16_384, unit=" pixels"),
    "emulator_max_side": Spec(int, 16, 16_384, unit=" pixels"),
    "probability": Spec(float, 0, 1),
    "keepalive": Spec(float, 0, 3_600, low_open=True, unit=" seconds"),
    "retention": Spec(float, 0, WEEK, unit=" seconds"),
    "lock_after": Spec(int, 0, 10**9),
    "seed": Spec(int, 0, 2**63 - 1),
    "max_sheet": Spec(
        int, 64, 65_500, unit=" pixels"
    ),  # PNG/Pillow sheets beyond 65,500 px fail to save
    "pass_phash": Spec(int, 0, 64),
    "noise": Spec(float, 0, 10),
    "fail_phash": Spec(int, 0, 64),
    "lease": Spec(float, 1, 3_600, unit=" seconds"),
    "pass_ssim": Spec(float, 0, 1),
    "fail_ssim": Spec(float, 0, 1),
    # How long a worker rides out its database or object store being unreachable (0: not at all).
    "outage": Spec(float, 0, 86_400, unit=" seconds"),
}

_RATE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*/\s*(s|sec|second|m|min|minute)\s*")


def parse(name: str, value: Any) -> int | float:
    """`value` (from YAML, a flag or the environment) as the setting `name` allows, or SettingError."""
    spec = SPECS[name]
    number: float
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise SettingError(
            f"expected {'an integer' if spec.kind is int else 'a number'}, not {_kind(value)}",
            spec.allowed(),
        )
    if isinstance(value, str):
        text = value.strip()
        match = _RATE.fullmatch(text) if spec.rate else None
        if match:
            number = float(match.group(1)) / (60.0 if match.group(2).startswith("m") else 1.0)
        else:
            try:
                number = int(text) if spec.kind is int else float(text)
            except ValueError:
                what = (
                    "a number or a rate like 10/s"
                    if spec.rate
                    else "an integer"
                    if spec.kind is int
                    else "a number"
                )
                raise SettingError(f"{value!r} is not {what}", spec.allowed()) from None
    else:
        number = value
    if isinstance(number, float) and not math.isfinite(number):
        raise SettingError(f"{value!r} is not a finite number", spec.allowed())
    if spec.kind is int and isinstance(number, float):
        if not number.is_integer():
            raise SettingError(f"{value!r} is not a whole number", spec.allowed())
        number = int(number)
    if number <= spec.low if spec.low_open else number < spec.low:
        bound = (
            f"must be more than {_fmt(spec.low)}"
            if spec.low_open
            else f"is less than the minimum of {_fmt(spec.low)}"
        )
        raise SettingError(f"{value!r} {bound}", spec.allowed())
    if number > spec.high:
        raise SettingError(
            f"{value!r} is more than the maximum of {_fmt(spec.high)}", spec.allowed()
        )
    return spec.kind(number)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


def check_url(url: str) -> None:
    """A provider base URL: http(s), a host, a valid port, and never credentials in it."""
    if "\0" in url or any(c.isspace() for c in url):
        raise SettingError(
            f"{url!r} contains whitespace or a NUL byte", "an http:// or https:// base URL"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingError(
            f"{url!r} is not an http:// or https:// URL with a host",
            "an http:// or https:// base URL",
        )
    if parts.username is not None or parts.password is not None:
        raise SettingError(
            "a provider URL must not carry user:password@ credentials",
            "put the key in the environment and name it with provider.key_env",
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a port outside 0-65535 or not a number
    except ValueError:
        raise SettingError(f"{url!r} has an invalid port", "a port from 1 to 65535") from None


# ---------------------------------------------------------------- retries and URLs


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    backoff: float = 0.5  # base of exponential backoff with full jitter, seconds
    max_backoff: float = 30.0


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def is_remote(output: str) -> bool:
    """Does an output setting name an object store rather than a directory?"""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", output))


def parse_s3(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` → (bucket, prefix without slashes at either end); UsageError otherwise."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "s3":
        raise UsageError(
            f"output {url!r}: unsupported scheme {scheme}://",
            hint="use a local directory or s3://bucket/prefix (any S3-compatible store, set AWS_ENDPOINT_URL)",
        )
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UsageError(
            f"output {url!r}: {bucket!r} is not a valid bucket name",
            hint="3 to 63 characters: lower-case letters, digits, dots and hyphens, e.g. s3://my-renders/runs",
        )
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"output {url!r}: the prefix may not contain '.' or '..' segments")
    return bucket, "/".join(parts)
