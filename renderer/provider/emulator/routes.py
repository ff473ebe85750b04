"""fal's queue protocol over the emulator's queue: submit, status (and its event stream), result
and cancel, at the app-level and the full-endpoint paths alike.

`QueueRoutes` holds the handlers the `Emulator` routes to; it owns no state of its own: requests
live in the `Queue`, their accounting in `Accounts`, the counters in the emulator's `counts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from renderer.models.schemas import SchemaRegistry
from renderer.provider.emulator.accounts import Accounts
from renderer.provider.emulator.faults import LOCKED, Chance, deliver, padded
from renderer.provider.emulator.queue import ModelRequest, Queue, app_id

if TYPE_CHECKING:
    from renderer.provider.emulator.config import EmulatorConfig


def truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


async def read_input(
    request: web.Request, endpoint: str, registry: SchemaRegistry, allow_unknown: bool
) -> Any:
    """The model input of a submit or sync call, or the 404 for an endpoint we do not serve.

    A body that is not JSON is accepted as None: fal reports it as a 422 from the model.
    """
    if endpoint not in registry and not allow_unknown:
        return web.json_response({"detail": f"Application '{endpoint}' not found"}, status=404)
    try:
        return await request.json()
    except ValueError:
        return None


class QueueRoutes:
    """The queue protocol's handlers: POST submit, GET status / status/stream / result, PUT cancel."""

    def __init__(
        self,
        config: EmulatorConfig,
        registry: SchemaRegistry,
        queue: Queue,
        accounts: Accounts,
        chance: Chance,
        counts: Counter[str],
        inputs: Counter[str],
        submit_times: list[float],
        stopping: Callable[[], bool],
    ) -> None:
        self.config = config  # the emulator's, replaced with it
        self.registry = registry
        self.queue = queue
        self.accounts = accounts
        self.chance = chance
        self.counts = counts  # the emulator's counters (served in its stats)
        self.inputs = inputs  # input digest → submits, across accounts
        self.submit_times = submit_times  # time.monotonic() of each accepted submit
        self.stopping = stopping  # the server is shutting down: open event streams end
        self.first_follow: float | None = None  # time.monotonic() of the first status read

    def urls(self, req: ModelRequest) -> dict[str, str]:
        root = f"{req.base}/{req.app}/requests/{req.id}"
        return {
            "response_url": root,
            "status_url": f"{root}/status",
            "cancel_url": f"{root}/cancel",
        }

    def status_body(self, req: ModelRequest, logs: bool) -> dict[str, Any]:
        """A status answer; one that reports the request failed hands its outcome over (it leaves flight)."""
        body: dict[str, Any] = {"status": req.status, "request_id": req.id, **self.urls(req)}
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

    def find(self, tail: str, auth: str = "") -> tuple[ModelRequest | None, str]:
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

    async def submit(self, request: web.Request) -> web.StreamResponse:
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
        payload = await read_input(request, endpoint, self.registry, self.config.allow_unknown)
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
            self.queue.hold(req)
        else:
            self.queue.put(req)
        body = {
            "status": "IN_QUEUE",
            "request_id": req.id,
            **self.urls(req),
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

    async def get(self, request: web.Request) -> web.StreamResponse:
        req, rest = self.find(request.match_info["tail"], request.headers.get("Authorization", ""))
        if rest in ("status", "status/stream"):
            self.counts["stream_calls" if rest == "status/stream" else "status_calls"] += 1
            self.first_follow = self.first_follow or time.monotonic()
            if req is None:
                return web.json_response({"detail": "Request not found"}, status=404)
            logs = truthy(request.query.get("logs"))
            if rest == "status/stream":
                return await self._stream(request, req, logs)
            return web.json_response(
                self.status_body(req, logs),
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
        # A reader that went away (a killed or cancelled client) is nobody's error, even before
        # the headers were written (a stop as many streams open at once).
        with contextlib.suppress(ConnectionResetError):
            await response.prepare(request)
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
            body = self.status_body(req, logs)
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
            if self.stopping():
                break  # shutting down
        await response.write_eof()

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        self.counts["cancels"] += 1
        req, rest = self.find(request.match_info["tail"], request.headers.get("Authorization", ""))
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
