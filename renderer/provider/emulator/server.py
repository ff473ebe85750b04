"""A local aiohttp server that speaks fal's queue protocol: the default provider and the test double.

What it serves (see ../shared/docs/fal-protocol.md §1, §8):
  POST /{owner}/{app}[/{path…}]                 submit → request_id and absolute status/response/cancel URLs
  GET  /{owner}/{app}/requests/{id}/status      202 IN_QUEUE / IN_PROGRESS, 200 COMPLETED
  GET  /{owner}/{app}/requests/{id}/status/stream   server-sent events, closed after COMPLETED
  GET  /{owner}/{app}/requests/{id}[/response]  the model output, or its error replayed (422 …)
  PUT  /{owner}/{app}/requests/{id}/cancel      202 / 400 ALREADY_COMPLETED / 404 NOT_FOUND
  POST /run/{endpoint}                          the synchronous form: the output directly
  GET  /_files/{id}/{n}.{ext}                   generated images (public, like fal's CDN)
  GET  /_emulator/stats                         counters for tests and benchmarks (no key needed)
Status, result and cancel accept the app-level path and the full endpoint path alike.

Behaviour: inputs are checked with the renderer's own endpoint schemas (failures surface as 422
on the result, as on fal); a queue with `workers` slots and a seeded service-time distribution;
deterministic images (renderer.pictures); faults with seeded probabilities (`Faults`).

Accounting per credential (an "account" in the stats, named by a label, never by its key): accepted
submits, requests in flight (from the submit until its outcome is handed over: the result, or a
status saying it failed; or until it is cancelled, its result expired, or it completed after the
same account sent the same input again) with their peak, requests running with their peak, and inputs submitted
more than once. A harness in another process reads them at GET /_emulator/stats.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import random
import ssl
import struct
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

from renderer.models.schemas import SchemaRegistry, default_schema_dir
from renderer.models.sizes import capped, requested_size
from renderer.provider.emulator.pictures import render

INGRESS_BODY = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
LOCKED = (
    "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
)
NAMESPACES = ("workflows", "comfy")  # app ids with one extra segment


@dataclass(frozen=True)
class ServiceTime:
    """How long the model 'runs': fixed:S, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA (seconds)."""

    kind: str = "fixed"
    a: float = 0.05
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> ServiceTime:
        parts = text.split(":")
        try:
            if len(parts) == 1:
                return cls("fixed", float(parts[0]))
            if parts[0] == "fixed" and len(parts) == 2:
                return cls("fixed", float(parts[1]))
            if parts[0] in ("uniform", "lognormal") and len(parts) == 3:
                return cls(parts[0], float(parts[1]), float(parts[2]))
        except ValueError:
            pass
        raise ValueError(
            f"service time {text!r}: use S, fixed:S, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA"
        )

    def draw(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "lognormal":
            return rng.lognormvariate(math.log(max(self.a, 1e-9)), self.b)
        return self.a


@dataclass(frozen=True)
class Faults:
    """Probabilities (0…1) of each fault, drawn from the emulator's seeded generator."""

    submit_429: float = 0.0  # 429 on submit (queue length exceeded)
    ingress_5xx: float = 0.0  # 502/503/504 from nginx: HTML body, no x-fal-request-id
    runner_error: float = 0.0  # COMPLETED with error_type runner_server_error; result replays 500
    drop_download: float = 0.0  # connection closed half-way through an image download
    truncate_image: float = 0.0  # a download that ends early (with a matching Content-Length)
    corrupt_image: float = 0.0  # a download whose bytes are damaged in the middle
    stuck: float = 0.0  # a request that stays IN_QUEUE forever
    retention: float | None = None  # seconds a completed result and its files live; then 404
    lock_after: int | None = None  # after this many accepted submits: 403 "User is locked"
    # Hostile shapes (issue 10): what an independent or misbehaving server does.
    ingress_codes: tuple[int, ...] = (
        502,
        503,
        504,
    )  # which codes ingress_5xx draws from (504: see _middleware)
    result_500: float = (
        0.0  # a bare 500 on GET result (no request id, no error_type) after COMPLETED
    )
    submit_html: float = 0.0  # the submit is queued, but answered 200 + an HTML page
    submit_500_with_id: float = (
        0.0  # the submit is queued, but answered 500 carrying x-fal-request-id
    )
    other_origin: str | None = (
        None  # submit answers name this origin in their URLs (a proxy of fal)
    )
    echo_key: bool = False  # 401/403/422 bodies repeat the Authorization header they were sent
    slow: tuple[
        str, ...
    ] = ()  # ops (submit, result, download) whose body trickles one byte per slow_interval
    slow_interval: float = 2.0
    huge_result: int = 0  # pad each result JSON with this many bytes (streamed, never held)
    bomb_image: float = 0.0  # a download is a 50000x50000 PNG header (a decompression bomb)
    malformed: str | None = (
        None  # request_id_int | status_url_int | images_strings | result_not_utf8 | sse_long_line
    )
    retry_after: str | None = (
        None  # the Retry-After header sent with every 429 (e.g. 1e9, inf, garbage)
    )


@dataclass(frozen=True)
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 2  # fal gives new accounts 2 concurrent requests
    service: ServiceTime = ServiceTime()
    seed: int = 0
    key: str | None = (
        None  # when set, Authorization: Key/Bearer <key> is required (the account "key")
    )
    keys: tuple[tuple[str, str], ...] = ()  # (label, key): more accepted keys, each its own account
    locked: tuple[str, ...] = ()  # labels of accounts whose submits get 403 "User is locked"
    max_side: int | None = 256  # cap on the longest image side, for speed
    faults: Faults = Faults()
    keepalive: float = 15.0  # seconds between SSE comment lines
    variants: tuple[tuple[str, str], ...] = ()  # (endpoint, salt): render that model differently
    allow_unknown: bool = False  # serve endpoints without a schema (generic output)
    schema_dir: Path | None = None


@dataclass(eq=False)
class _Request:
    id: str
    endpoint: str
    app: str
    payload: Any
    base: str
    seq: int
    status: str = "IN_QUEUE"
    cancelled: bool = False
    completed_at: float | None = None
    started_at: float | None = None
    inference: float = 0.0
    result_status: int = 200
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    auth: str = ""  # the Authorization header of the submit (echoed by the echo_key fault)
    files: str = ""  # the origin serving this request's files (base may name another origin)
    account: str = ""  # the label of the credential that submitted it
    open: bool = False  # in flight: submitted, and its result not yet handed over (nor cancelled, nor expired)
    digest: str = ""  # of endpoint + input: the same digest submitted again is a duplicate
    abandoned: bool = (
        False  # the same input was submitted again: it leaves flight once it completes
    )
    opened_at: float | None = None  # time.monotonic() of the accepted submit
    closed_at: float | None = None  # and of leaving flight
    pictures: list[tuple[bytes, str]] | None = (
        None  # rendered while the slot slept (Emulator._prerender)
    )

    def touch(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()


@dataclass(eq=False)
class Account:
    """What one credential did. Invariants: 0 <= in_flight <= peak_in_flight, same for running."""

    submits: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    running: int = 0
    peak_running: int = 0
    inputs: Counter[str] = field(default_factory=Counter)

    @property
    def duplicate_submits(self) -> int:
        return sum(n - 1 for n in self.inputs.values() if n > 1)

    def as_dict(self) -> dict[str, int]:
        return {
            "submits": self.submits,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "running": self.running,
            "peak_running": self.peak_running,
            "distinct_inputs": len(self.inputs),
            "duplicate_submits": self.duplicate_submits,
        }


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


class Emulator:
    """`async with Emulator(config) as emu:` serves on emu.url until the block ends."""

    def __init__(
        self,
        config: EmulatorConfig = EmulatorConfig(),
        *,
        ssl_context: ssl.SSLContext | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.registry = registry or SchemaRegistry(config.schema_dir or default_schema_dir())
        self.rng = random.Random(config.seed)
        self.url = ""
        self.requests: dict[str, _Request] = {}
        self.files: dict[tuple[str, int], tuple[bytes, str]] = {}
        self.counts: Counter[str] = Counter()
        self.inputs: Counter[str] = Counter()
        self.submit_times: list[float] = []
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._seq = 0
        self._started = 0
        self._busy = 0
        # Slot accounting (bench/throughput.py): seconds slots were held, of which asked-for service
        # time; held minus asked is this emulator's own lag (its event loop late on a timer).
        self.slot_time = {"first_start": None, "last_end": None, "held": 0.0, "service": 0.0}
        self._workers: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._variants = dict(config.variants)
        self._shapes: dict[tuple[str, bool, str], list[Any]] = {}  # input shape → violations
        # Accepted credentials: key → account label (labels, never keys, appear in the stats).
        self._keys: dict[str, str] = dict((k, label) for label, k in config.keys)
        if config.key is not None:
            self._keys.setdefault(config.key, "key")
        self.accounts: dict[str, Account] = {label: Account() for label in self._keys.values()}
        self._open: dict[str, _Request] = {}  # requests in flight, by id
        self.in_flight = 0
        self.peak_in_flight = 0
        self.last_closed_at: float | None = (
            None  # time.monotonic() of the last request leaving flight
        )

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Emulator:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_emulator/stats", self._stats)
        app.router.add_get("/_files/{rid}/{name}", self._file)
        app.router.add_post("/run/{tail:.+}", self._sync)
        app.router.add_post("/{tail:.+}", self._submit)
        app.router.add_get("/{tail:.+}", self._get)
        app.router.add_put("/{tail:.+}", self._cancel)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.host, self.config.port, ssl_context=self.ssl_context
        )
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        self.url = f"{scheme}://{host}:{port}"
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(self.config.workers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for req in self.requests.values():
            req.touch()  # wake any open status streams so they can finish
        if self._runner:
            await self._runner.cleanup()

    def stats(self) -> dict[str, Any]:
        """Every counter, as plain JSON-able values (also served at GET /_emulator/stats)."""
        for req in list(self._open.values()):
            if self._expired(req):
                self._close(req)
        kept = self._kept_peaks()
        return {
            **{
                k: self.counts[k]
                for k in (
                    "requests",
                    "requests_with_credentials",
                    "submits",
                    "submit_attempts",
                    "status_calls",
                    "stream_calls",
                    "result_calls",
                    "downloads",
                    "downloads_with_credentials",
                    "cancels",
                    "sync_calls",
                    "foreign_reads",
                )
            },
            "faults": {k[6:]: v for k, v in sorted(self.counts.items()) if k.startswith("fault:")},
            "distinct_inputs": len(self.inputs),
            "duplicate_submits": sum(n - 1 for n in self.inputs.values() if n > 1),
            "inputs": dict(self.inputs),
            "submit_times": list(self.submit_times),
            "queued": self._queue.qsize(),
            "busy": self._busy,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "open_ids": sorted(
                self._open
            ),  # requests in flight, to follow one set of them over time
            "last_closed_at": self.last_closed_at,  # on the emulator's monotonic clock, like submit_times
            "slots": {
                "workers": self.config.workers,
                **self.slot_time,  # monotonic clock too
                "prerendered": self.counts["prerendered"],
            },
            "accounts": {
                label: {**acct.as_dict(), "peak_in_flight_kept": kept.get(label, 0)}
                for label, acct in list(self.accounts.items())
            },
        }

    def _kept_peaks(self) -> dict[str, int]:
        """Per account, the peak in flight counting only requests never abandoned by a resend.

        Known only afterwards (a request is abandoned when its input comes again), so computed
        from the recorded intervals: what a client held on purpose, apart from the duplicate
        submissions that `duplicate_submits` counts (a dead worker's unrecorded submit, say).
        """
        events: list[tuple[float, int, str]] = []
        for req in list(self.requests.values()):
            if req.opened_at is None or req.abandoned:
                continue
            events.append((req.opened_at, 1, req.account))
            if req.closed_at is not None:
                events.append((req.closed_at, -1, req.account))
        level: Counter[str] = Counter()
        peak: dict[str, int] = {}
        for _, step, label in sorted(
            events, key=lambda e: (e[0], e[1])
        ):  # a close before an open at one instant
            level[label] += step
            peak[label] = max(peak.get(label, 0), level[label])
        return peak

    # ------------------------------------------------------------ accounting

    def _account_of(self, auth: str) -> str:
        """The label of the credential in an Authorization header.

        With keys configured only accepted keys get here; without, any caller is served and is
        told apart by a short hash of its token (so the stats never carry a key).
        """
        token = auth.partition(" ")[2]
        if token in self._keys:
            return self._keys[token]
        if not auth:
            return "anonymous"
        return "key-" + hashlib.sha256(token.encode()).hexdigest()[:10]

    def _account(self, label: str) -> Account:
        acct = self.accounts.get(label)
        if acct is None:
            acct = self.accounts[label] = Account()
        return acct

    def _open_request(self, req: _Request) -> None:
        acct = self._account(req.account)
        acct.submits += 1
        acct.in_flight += 1
        acct.peak_in_flight = max(acct.peak_in_flight, acct.in_flight)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        req.open, req.opened_at = True, time.monotonic()
        self._open[req.id] = req

    def _close(self, req: _Request) -> None:
        """The request leaves flight (idempotent): its outcome was handed over (the result, or a status
        saying it failed), it was cancelled, or its result expired."""
        if not req.open:
            return
        req.open, req.closed_at = False, time.monotonic()
        self._open.pop(req.id, None)
        self._account(req.account).in_flight -= 1
        self.in_flight -= 1
        self.last_closed_at = time.monotonic()

    def _supersede(self, new: _Request) -> None:
        """The same input was sent again (by any account): its earlier requests are abandoned.

        An abandoned request still occupies the provider while it runs, so it stays in flight
        until it completes (a client that resubmits too early is still seen over its limit);
        once completed, nobody will fetch it (a killed worker's unrecorded submit, say).
        """
        for old in [r for r in self._open.values() if r.digest == new.digest]:
            old.abandoned = True
            if old.status == "COMPLETED":
                self._close(old)

    def _run_slot(self, label: str, delta: int) -> None:
        acct = self._account(label)
        acct.running += delta
        acct.peak_running = max(acct.peak_running, acct.running)

    # ------------------------------------------------------------ plumbing

    def _chance(self, p: float) -> bool:
        return p > 0 and self.rng.random() < p

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.counts["requests"] += 1
        path = request.path
        if path.startswith(("/_files/", "/_emulator/")):
            return await handler(request)  # files are public, like fal's CDN
        if "Authorization" in request.headers:
            self.counts["requests_with_credentials"] += 1
        if self._chance(self.config.faults.ingress_5xx):
            codes = self.config.faults.ingress_codes
            if request.method == "POST":
                # A 504 on a submit may come after the gateway passed it on (an unknown outcome to the
                # client, never resent): drawn only when it is the sole code asked for, so a fault mix
                # of "ingress errors" stays the kind a client may safely resend.
                codes = tuple(c for c in codes if c != 504) or codes
            code = self.rng.choice(codes)
            self.counts[f"fault:ingress_{code}"] += 1
            reason = {
                502: "Bad Gateway",
                503: "Service Temporarily Unavailable",
                504: "Gateway Time-out",
            }[code]
            return web.Response(
                status=code,
                text=INGRESS_BODY.format(code=code, reason=reason),
                content_type="text/html",
            )
        if self._keys:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme not in ("Key", "Bearer") or token not in self._keys:
                self.counts["fault:unauthorized"] += 1
                detail = (
                    "No user found for Key ID and Secret"
                    if auth
                    else "Missing Authorization header"
                )
                if self.config.faults.echo_key:
                    detail += f" (you sent {auth!r})"
                return web.json_response(
                    {"detail": detail}, status=401, headers={"x-fal-request-id": str(uuid.uuid4())}
                )
        return await handler(request)

    def _app_id(self, endpoint: str) -> str:
        parts = endpoint.split("/")
        n = 3 if parts[0] in NAMESPACES else 2
        return "/".join(parts[:n])

    def _urls(self, req: _Request) -> dict[str, str]:
        root = f"{req.base}/{req.app}/requests/{req.id}"
        return {
            "response_url": root,
            "status_url": f"{root}/status",
            "cancel_url": f"{root}/cancel",
        }

    def _position(self, req: _Request) -> int:
        return (
            max(0, req.seq - self._started - 1) if req.status == "IN_QUEUE" else 0
        )  # requests ahead

    def _status_body(self, req: _Request, logs: bool) -> dict[str, Any]:
        """A status answer; one that reports the request failed hands its outcome over (it leaves flight)."""
        body: dict[str, Any] = {"status": req.status, "request_id": req.id, **self._urls(req)}
        if req.status == "IN_QUEUE":
            body["queue_position"] = self._position(req)
            return body
        body["logs"] = list(req.logs) if logs else None
        if req.status == "COMPLETED":
            body["metrics"] = {"inference_time": round(req.inference, 4)}
            if req.error:
                body["error"], body["error_type"] = req.error, req.error_type
                self._close(req)  # a client told of the failure need not fetch the result
        return body

    def _expired(self, req: _Request) -> bool:
        keep = self.config.faults.retention
        return (
            keep is not None
            and req.completed_at is not None
            and time.monotonic() - req.completed_at > keep
        )

    def _find(self, tail: str, auth: str = "") -> tuple[_Request | None, str]:
        """(request, rest) for `…/requests/{id}{rest}`; app-level and full-endpoint prefixes alike.

        With keys configured a request belongs to the account that submitted it: another
        account's key gets 404 as for an unknown id (counted as `foreign_reads`).
        """
        prefix, sep, after = tail.partition("/requests/")
        if not sep:
            return None, ""
        rid, _, rest = after.partition("/")
        req = self.requests.get(rid)
        if req is not None and self._expired(req):
            self._close(req)  # its result is gone: nobody can still be waiting for it
            return None, rest
        if req is None:
            return None, rest
        if prefix.strip("/") not in (req.app, req.endpoint):
            return None, rest
        if self._keys and self._account_of(auth) != req.account:
            self.counts["foreign_reads"] += 1
            return None, rest
        return req, rest

    # ------------------------------------------------------------ queue

    async def _work(self) -> None:
        while True:
            req = await self._queue.get()
            self._started = max(self._started, req.seq)
            if req.cancelled:
                continue
            self._busy += 1
            self._run_slot(req.account, 1)
            try:
                req.status, req.started_at = "IN_PROGRESS", time.monotonic()
                req.logs.append(
                    {
                        "message": "Starting generation",
                        "level": "INFO",
                        "source": "USER",
                        "timestamp": _now_iso(),
                    }
                )
                req.touch()
                req.inference = self.config.service.draw(self.rng)
                if self.slot_time["first_start"] is None:
                    self.slot_time["first_start"] = req.started_at
                pictures = self._prerender(req)
                await asyncio.sleep(req.inference)
                if pictures is not None:
                    with contextlib.suppress(Exception):  # rendered again, inline, by _output
                        req.pictures = await pictures
                self._finish(req)
                self.slot_time["held"] += req.completed_at - req.started_at
                self.slot_time["service"] += req.inference
                self.slot_time["last_end"] = req.completed_at
            finally:
                self._busy -= 1
                self._run_slot(req.account, -1)

    def _finish(self, req: _Request) -> None:
        req.result_status, req.result = self._outcome(req)
        if req.result_status == 500:
            req.error, req.error_type = "Internal Server Error", "runner_server_error"
        req.logs.append(
            {
                "message": "Generation finished",
                "level": "INFO",
                "source": "USER",
                "timestamp": _now_iso(),
            }
        )
        req.status, req.completed_at = "COMPLETED", time.monotonic()
        req.touch()
        if req.abandoned:
            self._close(req)

    def _outcome(self, req: _Request) -> tuple[int, Any]:
        endpoint, payload = req.endpoint, req.payload
        if not isinstance(payload, dict):
            return 422, {
                "detail": [
                    {
                        "loc": ["body"],
                        "msg": "Input should be a valid dictionary",
                        "type": "dict_type",
                        "input": payload,
                    }
                ]
            }
        if endpoint in self.registry:
            violations = self._violations(endpoint, payload)
            if violations:
                return 422, {"detail": [_detail(v, payload) for v in violations]}
        if self._chance(self.config.faults.runner_error):
            self.counts["fault:runner_error"] += 1
            return 500, {"detail": "Internal Server Error", "error_type": "runner_server_error"}
        return 200, self._output(req)

    def _violations(self, endpoint: str, payload: dict[str, Any]) -> list[Any]:
        """The schema's verdict, computed once per input shape (everything but prompt and seed).

        A string prompt and an integer seed are what every endpoint's schema asks of them;
        other values take the full check, so the answer is the same, only cheaper.
        """
        prompt, seed = payload.get("prompt"), payload.get("seed", 1)
        if not isinstance(prompt, str) or not isinstance(seed, int) or isinstance(seed, bool):
            return self.registry.check(endpoint, payload)
        rest = {k: v for k, v in payload.items() if k not in ("prompt", "seed")}
        key = (endpoint, "seed" in payload, json.dumps(rest, sort_keys=True))
        found = self._shapes.get(key)
        if found is None:
            probe = {**rest, "prompt": prompt, **({"seed": seed} if "seed" in payload else {})}
            found = self._shapes[key] = self.registry.check(endpoint, probe)
        return found

    def _pictures(self, req: _Request) -> tuple[int, list[tuple[Any, ...]]]:
        """(the seed, the arguments of render() for each image) of a valid input: pure, so it can run early."""
        payload = req.payload
        props = self.registry.properties(req.endpoint) if req.endpoint in self.registry else {}
        documented = {k: v["default"] for k, v in props.items() if "default" in v}
        seed = payload.get("seed")
        if not isinstance(seed, int) or seed in (0, -1):  # 0 and -1 mean "random" to some models
            seed = int.from_bytes(hashlib.sha256(req.id.encode()).digest()[:4], "big") or 1
        count = int(payload.get("num_images", documented.get("num_images", 1)))
        fmt = str(payload.get("output_format", documented.get("output_format", "png")))
        size = capped(requested_size(payload, documented), self.config.max_side)
        prompt = str(payload.get("prompt", ""))
        variant = self._variants.get(req.endpoint, "")
        return seed, [(req.endpoint, prompt, seed, i, size, fmt, variant) for i in range(count)]

    def _prerender(self, req: _Request) -> asyncio.Future[list[tuple[bytes, str]]] | None:
        """Render a valid request's images in a thread while its slot sleeps: the event loop stays free
        for the other requests (drawing and PNG encoding were about half this server's CPU per job, all
        at once at the end of a round), so slots wake on time. Same bytes as rendering at the end."""
        if not isinstance(req.payload, dict) or (
            req.endpoint in self.registry and self._violations(req.endpoint, req.payload)
        ):
            return None
        try:
            _, pictures = self._pictures(req)
        except (TypeError, ValueError):
            return None
        return asyncio.get_running_loop().run_in_executor(
            None, lambda: [render(*args) for args in pictures]
        )

    def _output(self, req: _Request) -> dict[str, Any]:
        payload = req.payload
        known = req.endpoint in self.registry
        seed, pictures = self._pictures(req)
        count, prompt = len(pictures), str(payload.get("prompt", ""))
        rendered = req.pictures if req.pictures is not None and len(req.pictures) == count else None
        req.pictures = None  # the bytes live on in self.files only (for the emulator's life; 404 after a retention fault)
        self.counts["prerendered"] += rendered is not None
        images = []
        for i in range(count):
            width, height = pictures[i][4]
            data, content_type = rendered[i] if rendered is not None else render(*pictures[i])
            if self._chance(self.config.faults.bomb_image):
                self.counts["fault:bomb_image"] += 1
                data, content_type = bomb_png(), "image/png"
            ext = content_type.split("/")[1]
            if payload.get("sync_mode"):
                url = f"data:{content_type};base64," + base64.b64encode(data).decode()
            else:
                self.files[(req.id, i)] = (data, content_type)
                url = f"{req.files or req.base}/_files/{req.id}/{i}.{ext}"
            images.append(
                {
                    "url": url,
                    "content_type": content_type,
                    "file_name": f"{i}.{ext}",
                    "file_size": len(data),
                    "width": width,
                    "height": height,
                }
            )
        output: dict[str, Any] = {"images": images}
        out_props = {}
        if known and self.registry.has_output_schema(req.endpoint):
            out_props = self.registry.schema(req.endpoint)["$defs"]["Output"].get("properties", {})
        if "seed" in out_props or not out_props:
            output["seed"] = seed
        if "timings" in out_props:
            output["timings"] = {"inference": round(req.inference, 4)}
        if "has_nsfw_concepts" in out_props:
            output["has_nsfw_concepts"] = [False] * count
        if "prompt" in out_props:
            output["prompt"] = prompt
        return output

    # ------------------------------------------------------------ handlers

    async def _read_input(self, request: web.Request, endpoint: str) -> Any:
        """The model input of a submit or sync call, or the 404 for an endpoint we do not serve.

        A body that is not JSON is accepted as None: fal reports it as a 422 from the model.
        """
        if endpoint not in self.registry and not self.config.allow_unknown:
            return web.json_response({"detail": f"Application '{endpoint}' not found"}, status=404)
        try:
            return await request.json()
        except ValueError:
            return None

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["tail"].strip("/")
        self.counts["submit_attempts"] += 1
        faults = self.config.faults
        account = self._account_of(request.headers.get("Authorization", ""))
        if account in self.config.locked or (
            faults.lock_after is not None and self.counts["submits"] >= faults.lock_after
        ):
            self.counts["fault:locked"] += 1
            echo = (
                f" (you sent {request.headers.get('Authorization', '')!r})"
                if faults.echo_key
                else ""
            )
            return web.json_response({"detail": LOCKED + echo}, status=403)
        if self._chance(faults.submit_429):
            self.counts["fault:submit_429"] += 1
            headers = {
                "X-Fal-Needs-Retry": "1",
                **({"Retry-After": faults.retry_after} if faults.retry_after else {}),
            }
            return web.json_response(
                {"detail": "Too many requests in the queue", "error_type": "queue_full"},
                status=429,
                headers=headers,
            )
        payload = await self._read_input(request, endpoint)
        if isinstance(payload, web.Response):
            return payload
        self._seq += 1
        req = _Request(
            str(uuid.uuid4()),
            endpoint,
            self._app_id(endpoint),
            payload,
            faults.other_origin or str(request.url.origin()),
            self._seq,
            auth=request.headers.get("Authorization", ""),
            files=str(request.url.origin()),
            account=account,
        )
        self.requests[req.id] = req
        self.counts["submits"] += 1
        self.submit_times.append(time.monotonic())
        digest = hashlib.sha256(
            f"{endpoint}\n{json.dumps(payload, sort_keys=True)}".encode()
        ).hexdigest()
        self.inputs[digest] += 1
        req.digest = digest
        self._supersede(req)
        self._open_request(req)
        self._account(account).inputs[digest] += 1
        if self._chance(faults.stuck):
            self.counts["fault:stuck"] += 1  # never handed to a worker: IN_QUEUE forever
        else:
            self._queue.put_nowait(req)
        body = {
            "status": "IN_QUEUE",
            "request_id": req.id,
            **self._urls(req),
            "queue_position": self._position(req),
        }
        # Taken (queued, billed) but answered in a shape the client cannot use: an unknown outcome to it.
        if self._chance(faults.submit_html):
            self.counts["fault:submit_html"] += 1
            return web.Response(text="<html><body>Accepted</body></html>", content_type="text/html")
        if self._chance(faults.submit_500_with_id):
            self.counts["fault:submit_500_with_id"] += 1
            return web.json_response(
                {"detail": "Internal Server Error"},
                status=500,
                headers={"x-fal-request-id": req.id},
            )
        if faults.malformed == "request_id_int":
            body["request_id"] = req.seq
        elif faults.malformed == "status_url_int":
            body["status_url"] = req.seq
        return await self._deliver(
            request, "submit", json.dumps(body).encode(), headers={"x-fal-request-id": req.id}
        )

    async def _get(self, request: web.Request) -> web.StreamResponse:
        req, rest = self._find(request.match_info["tail"], request.headers.get("Authorization", ""))
        if rest in ("status", "status/stream"):
            self.counts["stream_calls" if rest == "status/stream" else "status_calls"] += 1
            if req is None:
                return web.json_response({"detail": "Request not found"}, status=404)
            logs = _truthy(request.query.get("logs"))
            if rest == "status/stream":
                return await self._stream(request, req, logs)
            body = self._status_body(req, logs)
            return web.json_response(
                body,
                status=200 if req.status == "COMPLETED" else 202,
                headers={"x-fal-request-id": req.id},
            )
        if rest in ("", "response"):
            self.counts["result_calls"] += 1
            if req is None:
                return web.json_response({"detail": "Request not found"}, status=404)
            if req.status != "COMPLETED":
                return web.json_response(
                    {"detail": "Request is still in progress"},
                    status=400,
                    headers={"x-fal-request-id": req.id},
                )
            faults = self.config.faults
            if self._chance(faults.result_500):
                self.counts["fault:result_500"] += (
                    1  # a proxy's hiccup: no request id, no error_type
                )
                return web.Response(status=500, text="Internal Server Error")
            self._close(req)  # the outcome (an output or its error) is handed over now
            headers = {"x-fal-request-id": req.id}
            if req.error_type:
                headers["X-Fal-Error-Type"] = req.error_type
            result = req.result
            if faults.echo_key and req.result_status == 422 and isinstance(result, dict):
                result = {
                    **result,
                    "detail": [*result.get("detail", []), {"msg": f"sent with {req.auth}"}],
                }
            if faults.malformed == "images_strings" and req.result_status == 200:
                result = {**result, "images": [i["url"] for i in result["images"]]}
            body = json.dumps(result).encode()
            if faults.malformed == "result_not_utf8" and req.result_status == 200:
                body = body[:-1] + b', "x": "\xff\xfe"}'  # bytes that are not UTF-8
            if faults.huge_result and req.result_status == 200:
                return await self._huge(request, body, headers)
            return await self._deliver(
                request, "result", body, status=req.result_status, headers=headers
            )
        return web.json_response({"detail": f"Path {request.path} not found"}, status=404)

    async def _deliver(
        self,
        request: web.Request,
        op: str,
        body: bytes,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> web.StreamResponse:
        """A response; for the `slow` fault's ops, trickled one byte per `slow_interval` (slowloris)."""
        faults = self.config.faults
        if op not in faults.slow:
            return web.Response(
                body=body, status=status, headers=headers, content_type=content_type
            )
        self.counts[f"fault:slow_{op}"] += 1
        response = web.StreamResponse(
            status=status,
            headers={
                **(headers or {}),
                "Content-Type": content_type,
                "Content-Length": str(len(body)),
            },
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the reader hung up: its choice
            for i in range(len(body)):
                await response.write(body[i : i + 1])
                await asyncio.sleep(faults.slow_interval)
        return response

    async def _huge(
        self, request: web.Request, body: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        """The result with `huge_result` bytes of padding in front, streamed in 1 MB pieces."""
        self.counts["fault:huge_result"] += 1
        size = self.config.faults.huge_result
        response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
        await response.prepare(request)
        piece = b"x" * (1 << 20)
        with contextlib.suppress(ConnectionError):  # the reader hung up: its choice
            await response.write(b'{"padding": "')
            sent = 0
            while sent < size:
                await response.write(piece[: min(len(piece), size - sent)])
                sent += len(piece)
            await response.write(b'", ' + body[1:])
        return response

    async def _stream(self, request: web.Request, req: _Request, logs: bool) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "x-fal-request-id": req.id,
            }
        )
        await response.prepare(request)
        # A reader that went away (a killed or cancelled client) is nobody's error.
        with contextlib.suppress(ConnectionResetError):
            await self._stream_events(response, req, logs)
        return response

    async def _stream_events(self, response: web.StreamResponse, req: _Request, logs: bool) -> None:
        last: dict[str, Any] | None = None
        if self.config.faults.malformed == "sse_long_line":
            self.counts["fault:sse_long_line"] += 1
            piece = b"y" * (1 << 20)
            await response.write(b"data: ")
            for _ in range(64):  # one 64 MB line, never ended
                await response.write(piece)
            await response.write_eof()
            return
        while True:
            body = self._status_body(req, logs)
            if body != last:
                await response.write(f"data: {json.dumps(body)}\n\n".encode())
                last = body
            if req.status == "COMPLETED":
                break
            changed = req.changed
            try:
                await asyncio.wait_for(changed.wait(), self.config.keepalive)
            except asyncio.TimeoutError:
                await response.write(b": keepalive\n\n")
            if self._runner is None or not self._workers or all(t.done() for t in self._workers):
                break  # shutting down
        await response.write_eof()

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        self.counts["cancels"] += 1
        req, rest = self._find(request.match_info["tail"], request.headers.get("Authorization", ""))
        if req is None or rest != "cancel":
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        if req.status == "COMPLETED":
            return web.json_response(
                {"status": "ALREADY_COMPLETED"}, status=400, headers={"x-fal-request-id": req.id}
            )
        self._close(
            req
        )  # a cancelled request is nobody's work any more, whether it still runs or not
        if req.status == "IN_QUEUE":
            req.cancelled = True
            req.result_status = 499
            req.result = {
                "detail": "Request was cancelled by the client",
                "error_type": "client_cancelled",
            }
            req.error, req.error_type = "Request was cancelled by the client", "client_cancelled"
            req.status, req.completed_at = "COMPLETED", time.monotonic()
            req.touch()
        return web.json_response(
            {"status": "CANCELLATION_REQUESTED"}, status=202, headers={"x-fal-request-id": req.id}
        )

    async def _sync(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["tail"].strip("/")
        self.counts["sync_calls"] += 1
        if self._busy >= self.config.workers:
            return web.json_response(
                {
                    "detail": "Concurrent requests limit reached",
                    "error_type": "concurrent_requests_limit",
                },
                status=429,
                headers={"X-Fal-Needs-Retry": "1"},
            )
        payload = await self._read_input(request, endpoint)
        if isinstance(payload, web.Response):
            return payload
        account = self._account_of(request.headers.get("Authorization", ""))
        req = _Request(
            str(uuid.uuid4()),
            endpoint,
            self._app_id(endpoint),
            payload,
            str(request.url.origin()),
            0,
            account=account,
        )
        acct = self._account(account)
        self._busy += 1
        self._run_slot(account, 1)
        acct.in_flight += 1  # in flight for exactly as long as the call runs (not a queue submit)
        acct.peak_in_flight = max(acct.peak_in_flight, acct.in_flight)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            req.inference = self.config.service.draw(self.rng)
            await asyncio.sleep(req.inference)
            self._finish(req)
            # Kept like a queued request, so the output's file URLs are served (and expire with it).
            self.requests[req.id] = req
        finally:
            self._busy -= 1
            self._run_slot(account, -1)
            acct.in_flight -= 1
            self.in_flight -= 1
        return web.json_response(
            req.result, status=req.result_status, headers={"x-fal-request-id": req.id}
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        rid, name = request.match_info["rid"], request.match_info["name"]
        req = self.requests.get(rid)
        try:
            index = int(name.split(".")[0])
        except ValueError:
            index = -1
        found = self.files.get((rid, index))
        if found is None or req is None or self._expired(req):
            return web.Response(status=404, text="Not Found")
        self.counts["downloads"] += 1
        if "Authorization" in request.headers:
            self.counts["downloads_with_credentials"] += (
                1  # a client leaking its key to a file host
            )
        data, content_type = found
        faults = self.config.faults
        if "download" in faults.slow:
            return await self._deliver(request, "download", data, content_type=content_type)
        if self._chance(faults.drop_download):
            self.counts["fault:drop_download"] += 1
            response = web.StreamResponse(
                headers={"Content-Type": content_type, "Content-Length": str(len(data))}
            )
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            if request.transport is not None:
                request.transport.close()  # the client sees the body end early: a dropped connection
            return response
        if self._chance(faults.truncate_image):
            self.counts["fault:truncate_image"] += 1
            data = data[: max(1, len(data) * 2 // 3)]
        elif self._chance(faults.corrupt_image):
            self.counts["fault:corrupt_image"] += 1
            middle = len(data) // 2
            data = (
                data[:middle]
                + bytes(b ^ 0x5A for b in data[middle : middle + 64])
                + data[middle + 64 :]
            )
        return web.Response(body=data, content_type=content_type)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())


def bomb_png(width: int = 50000, height: int = 50000) -> bytes:
    """A PNG that claims width x height RGB pixels (a decompression bomb): a header, a stub of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


def _detail(violation: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """A jsonschema violation in fal's (pydantic-like) 422 `detail` shape."""
    loc: list[Any] = ["body"]
    for part in violation.json_path[2:].replace("]", "").replace("[", ".").split("."):
        if part:
            loc.append(int(part) if part.isdigit() else part)
    value: Any = payload
    for part in loc[1:]:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            value = None
            break
    kind = (
        "extra_forbidden"
        if "unknown property" in violation.message
        else ("missing" if "missing" in violation.message else "value_error")
    )
    if "greater than the maximum" in violation.message:
        kind = "less_than_equal"
    elif "less than the minimum" in violation.message:
        kind = "greater_than_equal"
    elif "not an allowed value" in violation.message:
        kind = "enum"
    return {"loc": loc, "msg": violation.message, "type": kind, "input": value}
