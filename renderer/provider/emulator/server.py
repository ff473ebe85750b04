"""The emulator's HTTP server (aiohttp): fal's queue protocol over the queue, accounts and outputs.

It is the default provider and the test double. The `Emulator` owns the aiohttp app, its routes,
the gate (ingress faults, keys), the synchronous form and the files; `routes` holds the queue
protocol's handlers. The work behind them lives beside it: `queue` (requests, slots, service time),
`accounts` (per-credential accounting), `outputs` (results, images, file URLs), `faults` (the
seeded hostile shapes) and `config` (EmulatorConfig, replaceable while running).

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
With `account_slots` (or `account_limits`) each account runs at most that many requests at once,
as fal's concurrency limit: the rest wait IN_QUEUE (queue.py).

Accounting per credential (an "account" in the stats, named by a label, never by its key): accepted
submits, requests in flight (from the submit until its outcome is handed over: the result, or a
status saying it failed; or until it is cancelled, its result expired, or it completed after the
same account sent the same input again) with their peak, requests running (IN_PROGRESS) and queued
(IN_QUEUE) with their peaks, and inputs submitted more than once. A harness in another process reads them at GET /_emulator/stats.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import uuid
from collections import Counter
from typing import Any

from aiohttp import web

from renderer.models.schemas import SchemaRegistry, default_schema_dir
from renderer.provider.emulator import openapi
from renderer.provider.emulator.accounts import Accounts
from renderer.provider.emulator.config import EmulatorConfig
from renderer.provider.emulator.faults import (
    INGRESS_BODY,
    Chance,
    damaged,
    deliver,
)
from renderer.provider.emulator.outputs import Outputs
from renderer.provider.emulator.queue import ModelRequest, Queue, app_id
from renderer.provider.emulator.routes import QueueRoutes, read_input


class Emulator:
    """`async with Emulator(config) as emu:` serves on emu.url until the block ends."""

    def __init__(
        self,
        config: EmulatorConfig = EmulatorConfig(),  # noqa: B008 (frozen: a shared default is safe)
        *,
        ssl_context: ssl.SSLContext | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self._config = config
        self.ssl_context = ssl_context
        self.registry = registry or SchemaRegistry(config.schema_dir or default_schema_dir())
        # One seeded generator for every draw (service times, faults): a seed replays a run.
        self.rng = random.Random(config.seed)
        self.url = ""
        self.counts: Counter[str] = Counter()
        self.inputs: Counter[str] = Counter()  # input digest → submits, across accounts
        self.submit_times: list[float] = []
        self.serving = 0  # files being served now (counted with file_latency only)
        self.peaks: Counter[str] = Counter()  # downloads, downloads_and_running (file_latency only)
        self.chance = Chance(self.rng, self.counts)
        # Accepted credentials: key → account label (labels, never keys, appear in the stats).
        keys: dict[str, str] = dict((k, label) for label, k in config.keys)
        if config.key is not None:
            keys.setdefault(config.key, "key")
        self.accounts = Accounts(keys)
        self.outputs = Outputs(
            self.registry,
            config,
            self.chance,
            self.counts,
            variants=dict(config.variants),
        )
        self.queue = Queue(
            config,
            self.rng,
            self.accounts,
            self.outputs,
        )
        self._runner: web.AppRunner | None = None
        self.routes = QueueRoutes(
            config,
            self.registry,
            self.queue,
            self.accounts,
            self.chance,
            self.counts,
            self.inputs,
            self.submit_times,
            stopping=lambda: self._runner is None or self.queue.stopped,
        )

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    @config.setter
    def config(self, config: EmulatorConfig) -> None:
        """A harness may replace a running emulator's config (faults on, then off): every part
        reads the new one from the next request on."""
        self._config = config
        self.outputs.config = self.queue.config = self.routes.config = config

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Emulator:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_emulator/stats", self._stats)
        app.router.add_get("/_files/{rid}/{name}", self._file)
        app.router.add_get("/api/openapi/queue/openapi.json", self._openapi)
        app.router.add_post("/run/{tail:.+}", self._sync)
        app.router.add_post("/{tail:.+}", self.routes.submit)
        app.router.add_get("/{tail:.+}", self.routes.get)
        app.router.add_put("/{tail:.+}", self.routes.cancel)
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
            # When a request was first followed (its status read or streamed), on that clock too.
            "first_follow_at": self.routes.first_follow,
            "queued": queue.queued,
            "busy": queue.busy,
            "in_flight": accounts.in_flight,
            "peak_in_flight": accounts.peak_in_flight,
            "peak_running": accounts.peak_running,  # IN_PROGRESS at once, all accounts
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
            # With file_latency: files served at once at most, and that plus requests running.
            "peak_downloads": self.peaks["downloads"],
            "peak_downloads_and_running": self.peaks["downloads_and_running"],
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

    # ------------------------------------------------------------ handlers

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
        payload = await read_input(request, endpoint, self.registry, self.config.allow_unknown)
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
            self.queue.dispatch()  # the slot it held may start a queued request
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
        if self.config.file_latency > 0:
            # A slow CDN: how many files were being served at once, and at the same moment as
            # requests running, shows whether a client holds its provider slots through downloads.
            self.serving += 1
            self.peaks["downloads"] = max(self.peaks["downloads"], self.serving)
            self.peaks["downloads_and_running"] = max(
                self.peaks["downloads_and_running"], self.serving + self.queue.busy
            )
            try:
                await asyncio.sleep(self.config.file_latency)
            finally:
                self.serving -= 1
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

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        """fal's per-endpoint OpenAPI document, for `renderer models add ENDPOINT` offline."""
        endpoint = request.query.get("endpoint_id", "")
        if endpoint not in self.registry:
            return web.json_response({"detail": f"Endpoint '{endpoint}' not found"}, status=404)
        return web.json_response(openapi.document(self.registry, endpoint))

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())
