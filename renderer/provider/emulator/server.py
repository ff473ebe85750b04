"""The emulator's HTTP server (aiohttp): fal's queue protocol over the queue, accounts and outputs.

It is the default provider and the test double. The `Emulator` owns the aiohttp app, its routes
and handlers; the work behind them lives beside it: `queue` (requests, slots, service time),
`accounts` (per-credential accounting), `outputs` (results, images, file URLs) and `faults` (the
seeded hostile shapes).

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
import contextlib
import hashlib
import json
import random
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from renderer.models.schemas import SchemaRegistry, default_schema_dir
from renderer.provider.emulator.accounts import Accounts
from renderer.provider.emulator.faults import (
    INGRESS_BODY,
    LOCKED,
    Chance,
    Faults,
    damaged,
    deliver,
    padded,
)
from renderer.provider.emulator.outputs import Outputs
from renderer.provider.emulator.queue import ModelRequest, Queue, ServiceTime, app_id


@dataclass(frozen=True)
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 2  # fal gives new accounts 2 concurrent requests
    service: ServiceTime = ServiceTime()  # noqa: RUF009 (frozen: one shared default is safe)
    seed: int = 0
    key: str | None = (
        None  # when set, Authorization: Key/Bearer <key> is required (the account "key")
    )
    keys: tuple[tuple[str, str], ...] = ()  # (label, key): more accepted keys, each its own account
    locked: tuple[str, ...] = ()  # labels of accounts whose submits get 403 "User is locked"
    max_side: int | None = 256  # cap on the longest image side, for speed
    faults: Faults = Faults()  # noqa: RUF009 (frozen: one shared default is safe)
    keepalive: float = 15.0  # seconds between SSE comment lines
    variants: tuple[tuple[str, str], ...] = ()  # (endpoint, salt): render that model differently
    allow_unknown: bool = False  # serve endpoints without a schema (generic output)
    schema_dir: Path | None = None


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
        # One seeded generator for every draw (service times, faults): a seed replays a run.
        self.rng = random.Random(config.seed)
        self.url = ""
        self.counts: Counter[str] = Counter()
        self.inputs: Counter[str] = Counter()  # input digest → submits, across accounts
        self.submit_times: list[float] = []
        self.chance = Chance(self.rng, self.counts)
        # Accepted credentials: key → account label (labels, never keys, appear in the stats).
        keys: dict[str, str] = dict((k, label) for label, k in config.keys)
        if config.key is not None:
            keys.setdefault(config.key, "key")
        self.accounts = Accounts(keys)
        self.outputs = Outputs(
            self.registry,
            config.faults,
            self.chance,
            self.counts,
            max_side=config.max_side,
            variants=dict(config.variants),
        )
        self.queue = Queue(
            config.workers,
            config.service,
            config.faults.retention,
            self.rng,
            self.accounts,
            self.outputs,
        )
        self._runner: web.AppRunner | None = None

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
        # aiohttp types _server as AbstractServer; asyncio's and uvloop's servers both have .sockets.
        sockets = site._server.sockets if site._server else []  # type: ignore[attr-defined]
        port = sockets[0].getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        self.url = f"{scheme}://{host}:{port}"
        self.queue.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.queue.stop()
        if self._runner:
            await self._runner.cleanup()

    def stats(self) -> dict[str, Any]:
        """Every counter, as plain JSON-able values (also served at GET /_emulator/stats)."""
        for req in list(self.accounts.open.values()):
            if self.queue.expired(req):
                self.accounts.close(req)
        queue, accounts = self.queue, self.accounts
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
            "queued": queue.waiting.qsize(),
            "busy": queue.busy,
            "in_flight": accounts.in_flight,
            "peak_in_flight": accounts.peak_in_flight,
            # Requests in flight, to follow one set of them over time.
            "open_ids": sorted(accounts.open),
            # On the emulator's monotonic clock, like submit_times.
            "last_closed_at": accounts.last_closed_at,
            "slots": {
                "workers": self.config.workers,
                **queue.slot_time,  # monotonic clock too
                "prerendered": self.counts["prerendered"],
            },
            "accounts": accounts.as_dict(list(queue.requests.values())),
        }

    # ------------------------------------------------------------ plumbing
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.counts["requests"] += 1
        path = request.path
        if path.startswith(("/_files/", "/_emulator/")):
            return await handler(request)  # files are public, like fal's CDN
        if "Authorization" in request.headers:
            self.counts["requests_with_credentials"] += 1
        if self.chance(self.config.faults.ingress_5xx):
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
        if self.accounts.keys:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme not in ("Key", "Bearer") or token not in self.accounts.keys:
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

    def _urls(self, req: ModelRequest) -> dict[str, str]:
        root = f"{req.base}/{req.app}/requests/{req.id}"
        return {
            "response_url": root,
            "status_url": f"{root}/status",
            "cancel_url": f"{root}/cancel",
        }

    def _status_body(self, req: ModelRequest, logs: bool) -> dict[str, Any]:
        """A status answer; one that reports the request failed hands its outcome over (it leaves flight)."""
        body: dict[str, Any] = {"status": req.status, "request_id": req.id, **self._urls(req)}
        if req.status == "IN_QUEUE":
            body["queue_position"] = self.queue.position(req)
            return body
        body["logs"] = list(req.logs) if logs else None
        if req.status == "COMPLETED":
            body["metrics"] = {"inference_time": round(req.inference, 4)}
            if req.error:
                body["error"], body["error_type"] = req.error, req.error_type
                self.accounts.close(req)  # a client told of the failure need not fetch the result
        return body

    def _find(self, tail: str, auth: str = "") -> tuple[ModelRequest | None, str]:
        """(request, rest) for `…/requests/{id}{rest}`; app-level and full-endpoint prefixes alike.

        With keys configured a request belongs to the account that submitted it: another
        account's key gets 404 as for an unknown id (counted as `foreign_reads`).
        """
        prefix, sep, after = tail.partition("/requests/")
        if not sep:
            return None, ""
        rid, _, rest = after.partition("/")
        req = self.queue.requests.get(rid)
        if req is not None and self.queue.expired(req):
            self.accounts.close(req)  # its result is gone: nobody can still be waiting for it
            return None, rest
        if req is None:
            return None, rest
        if prefix.strip("/") not in (req.app, req.endpoint):
            return None, rest
        if self.accounts.keys and self.accounts.label_of(auth) != req.account:
            self.counts["foreign_reads"] += 1
            return None, rest
        return req, rest

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
        account = self.accounts.label_of(request.headers.get("Authorization", ""))
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
        if self.chance(faults.submit_429):
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
        seq = self.queue.next_seq()
        req = ModelRequest(
            str(uuid.uuid4()),
            endpoint,
            app_id(endpoint),
            payload,
            faults.other_origin or str(request.url.origin()),
            seq,
            auth=request.headers.get("Authorization", ""),
            files=str(request.url.origin()),
            account=account,
        )
        self.queue.requests[req.id] = req
        self.counts["submits"] += 1
        self.submit_times.append(time.monotonic())
        digest = hashlib.sha256(
            f"{endpoint}\n{json.dumps(payload, sort_keys=True)}".encode()
        ).hexdigest()
        self.inputs[digest] += 1
        req.digest = digest
        self.accounts.supersede(req)
        self.accounts.open_request(req)
        self.accounts.get(account).inputs[digest] += 1
        if self.chance(faults.stuck):
            self.counts["fault:stuck"] += 1  # never handed to a worker: IN_QUEUE forever
        else:
            self.queue.waiting.put_nowait(req)
        body = {
            "status": "IN_QUEUE",
            "request_id": req.id,
            **self._urls(req),
            "queue_position": self.queue.position(req),
        }
        # Taken (queued, billed) but answered in a shape the client cannot use: an unknown outcome to it.
        if self.chance(faults.submit_html):
            self.counts["fault:submit_html"] += 1
            return web.Response(text="<html><body>Accepted</body></html>", content_type="text/html")
        if self.chance(faults.submit_500_with_id):
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
        return await deliver(
            request,
            "submit",
            json.dumps(body).encode(),
            faults,
            self.counts,
            headers={"x-fal-request-id": req.id},
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
            return web.json_response(
                self._status_body(req, logs),
                status=200 if req.status == "COMPLETED" else 202,
                headers={"x-fal-request-id": req.id},
            )
        if rest in ("", "response"):
            self.counts["result_calls"] += 1
            if req is None:
                return web.json_response({"detail": "Request not found"}, status=404)
            return await self._result(request, req)
        return web.json_response({"detail": f"Path {request.path} not found"}, status=404)

    async def _result(self, request: web.Request, req: ModelRequest) -> web.StreamResponse:
        """GET result of a known request: its outcome, once completed (and handed over by this)."""
        if req.status != "COMPLETED":
            return web.json_response(
                {"detail": "Request is still in progress"},
                status=400,
                headers={"x-fal-request-id": req.id},
            )
        faults = self.config.faults
        if self.chance(faults.result_500):
            # A proxy's hiccup: no request id, no error_type.
            self.counts["fault:result_500"] += 1
            return web.Response(status=500, text="Internal Server Error")
        self.accounts.close(req)  # the outcome (an output or its error) is handed over now
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
            return await padded(request, body, headers, faults.huge_result, self.counts)
        return await deliver(
            request,
            "result",
            body,
            faults,
            self.counts,
            status=req.result_status,
            headers=headers,
        )

    async def _stream(
        self, request: web.Request, req: ModelRequest, logs: bool
    ) -> web.StreamResponse:
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

    async def _stream_events(
        self, response: web.StreamResponse, req: ModelRequest, logs: bool
    ) -> None:
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
            if self._runner is None or self.queue.stopped:
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
        # A cancelled request is nobody's work any more, whether it still runs or not.
        self.accounts.close(req)
        if req.status == "IN_QUEUE":
            self.queue.cancel(req)
        return web.json_response(
            {"status": "CANCELLATION_REQUESTED"}, status=202, headers={"x-fal-request-id": req.id}
        )

    async def _sync(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["tail"].strip("/")
        self.counts["sync_calls"] += 1
        if self.queue.busy >= self.config.workers:
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
        account = self.accounts.label_of(request.headers.get("Authorization", ""))
        req = ModelRequest(
            str(uuid.uuid4()),
            endpoint,
            app_id(endpoint),
            payload,
            str(request.url.origin()),
            0,
            account=account,
        )
        self.queue.busy += 1
        self.accounts.run_slot(account, 1)
        self.accounts.enter_sync(account)
        try:
            req.inference = self.config.service.draw(self.rng)
            await asyncio.sleep(req.inference)
            self.queue.finish(req)
            # Kept like a queued request, so the output's file URLs are served (and expire with it).
            self.queue.requests[req.id] = req
        finally:
            self.queue.busy -= 1
            self.accounts.run_slot(account, -1)
            self.accounts.leave_sync(account)
        return web.json_response(
            req.result, status=req.result_status, headers={"x-fal-request-id": req.id}
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        rid, name = request.match_info["rid"], request.match_info["name"]
        req = self.queue.requests.get(rid)
        try:
            index = int(name.split(".")[0])
        except ValueError:
            index = -1
        found = self.outputs.files.get((rid, index))
        if found is None or req is None or self.queue.expired(req):
            return web.Response(status=404, text="Not Found")
        self.counts["downloads"] += 1
        if "Authorization" in request.headers:
            self.counts["downloads_with_credentials"] += (
                1  # a client leaking its key to a file host
            )
        data, content_type = found
        faults = self.config.faults
        if "download" in faults.slow:
            return await deliver(
                request, "download", data, faults, self.counts, content_type=content_type
            )
        if self.chance(faults.drop_download):
            self.counts["fault:drop_download"] += 1
            response = web.StreamResponse(
                headers={"Content-Type": content_type, "Content-Length": str(len(data))}
            )
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            if request.transport is not None:
                request.transport.close()  # the client sees the body end early: a dropped connection
            return response
        data = damaged(data, faults, self.chance)
        return web.Response(body=data, content_type=content_type)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())
