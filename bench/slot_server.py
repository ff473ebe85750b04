"""A small fal-protocol server with a fixed slot model, written apart from the emulator.

For bench/concurrency.py: the renderer and the fal-client baseline are measured against a server
the renderer's code had no part in (it imports only aiohttp and the standard library). One account
with S slots and a fixed service time L: a submitted request waits IN_QUEUE (never refused) until
a slot is free, runs L seconds IN_PROGRESS, then is COMPLETED (fal-protocol.md §1.4, §2.2).

Serves: POST /{endpoint} (submit), GET …/requests/{id}/status (202/200; `/stream`: server-sent
events until COMPLETED), GET …/requests/{id} and …/response (the result, naming one image),
PUT …/requests/{id}/cancel, GET /files/{id}.png (a fixed 64x64 PNG; with --image FILE W H, that
file, e.g. a full-size picture as a model returns it), GET /_stats (peak running,
peak queued, slot busy time). Listens on plain HTTP, and on HTTPS too with --tls CERT KEY (fal-client
only speaks https). Prints `READY http://… https://…` once listening.

Usage: python bench/slot_server.py SLOTS SECONDS [--tls CERT KEY] [--image FILE WIDTH HEIGHT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import struct
import time
import uuid
import zlib
from collections import deque
from typing import Any

from aiohttp import web


def png(width: int = 64, height: int = 64) -> bytes:
    """A valid RGB PNG of a gradient, built by hand (no imaging library)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\0" + b"".join(bytes((x * 4 % 256, y * 4 % 256, 128)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


IMAGE = png()
# What /files/ serves and the result names: (bytes, width, height, content type).
PICTURE = (IMAGE, 64, 64, "image/png")
TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class Request:
    __slots__ = ("changed", "endpoint", "id", "origin", "seed", "state")

    def __init__(self, rid: str, endpoint: str, origin: str, seed: Any) -> None:
        self.id, self.endpoint, self.origin, self.seed = rid, endpoint, origin, seed
        self.state = "IN_QUEUE"
        self.changed: asyncio.Event | None = None  # made only when a stream waits on it

    def touch(self) -> None:
        if self.changed is not None:
            self.changed.set()
            self.changed = None


class Slots:
    """S slots, a FIFO queue, service time L; completions scheduled with call_later (no task each)."""

    def __init__(self, slots: int, seconds: float) -> None:
        self.slots, self.seconds = slots, seconds
        self.queue: deque[Request] = deque()
        self.running = 0
        # When each slot that found the queue empty fell idle (FIFO): the next start refills the
        # oldest, and the wait between is a refill gap (the client had nothing queued in time).
        self.idle_since: deque[float] = deque()
        self.gaps: list[float] = []
        self.stats: dict[str, Any] = {
            "submits": 0,
            "peak_running": 0,
            "peak_queued": 0,
            "first_submit": None,
            "first_start": None,
            "full": None,  # when S requests first ran at once
            "last_end": None,
            "busy": 0.0,
        }

    def summary(self) -> dict[str, Any]:
        """The stats, with the refill gaps' count, sum and quantiles (seconds)."""
        gaps = sorted(self.gaps)

        def q(p: float) -> float:
            return gaps[min(len(gaps) - 1, int(p * len(gaps)))] if gaps else 0.0

        return {
            **self.stats,
            "slots": self.slots,
            "gaps": {
                "count": len(gaps),
                "sum": sum(gaps),
                "p50": q(0.5),
                "p90": q(0.9),
                "max": gaps[-1] if gaps else 0.0,
            },
        }

    def submit(self, req: Request) -> None:
        self.stats["submits"] += 1
        if self.stats["first_submit"] is None:
            self.stats["first_submit"] = time.monotonic()
        self.queue.append(req)
        self.stats["peak_queued"] = max(self.stats["peak_queued"], len(self.queue))
        self.start()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running < self.slots and self.queue:
            req = self.queue.popleft()
            if req.state != "IN_QUEUE":  # cancelled while queued
                continue
            self.running += 1
            self.stats["peak_running"] = max(self.stats["peak_running"], self.running)
            now = time.monotonic()
            if self.stats["first_start"] is None:
                self.stats["first_start"] = now
            if self.running == self.slots and self.stats["full"] is None:
                self.stats["full"] = now
            if self.idle_since:
                self.gaps.append(now - self.idle_since.popleft())
            req.state = "IN_PROGRESS"
            req.touch()
            loop.call_later(self.seconds, self.finish, req, now)

    def finish(self, req: Request, started: float) -> None:
        now = time.monotonic()
        self.running -= 1
        self.stats["busy"] += now - started
        self.stats["last_end"] = now
        req.state = "COMPLETED"
        req.touch()
        self.start()
        if self.running < self.slots:
            self.idle_since.append(now)


class Server:
    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.requests: dict[str, Request] = {}

    def urls(self, req: Request) -> dict[str, str]:
        app = "/".join(req.endpoint.split("/")[:2])
        root = f"{req.origin}/{app}/requests/{req.id}"
        return {
            "response_url": root,
            "status_url": f"{root}/status",
            "cancel_url": f"{root}/cancel",
        }

    def status(self, req: Request) -> dict[str, Any]:
        body: dict[str, Any] = {"status": req.state, "request_id": req.id, **self.urls(req)}
        if req.state == "IN_QUEUE":
            body["queue_position"] = 0
        else:
            body["logs"] = None
        if req.state == "COMPLETED":
            body["metrics"] = {"inference_time": self.slots.seconds}
        return body

    async def submit(self, request: web.Request) -> web.Response:
        payload = await request.json()
        origin = f"{request.scheme}://{request.host}"
        seed = payload.get("seed") if isinstance(payload, dict) else None
        req = Request(uuid.uuid4().hex, request.match_info["tail"], origin, seed)
        self.requests[req.id] = req
        self.slots.submit(req)
        body = {**self.status(req), "status": "IN_QUEUE", "queue_position": 0}
        body.pop("logs", None)
        return web.json_response(body, headers={"x-fal-request-id": req.id})

    def find(self, tail: str) -> tuple[Request | None, str]:
        _, sep, after = tail.partition("/requests/")
        rid, _, rest = after.partition("/")
        return (self.requests.get(rid) if sep else None), rest

    async def get(self, request: web.Request) -> web.StreamResponse:
        req, rest = self.find(request.match_info["tail"])
        if req is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if rest == "status":
            return web.json_response(
                self.status(req), status=200 if req.state == "COMPLETED" else 202
            )
        if rest == "status/stream":
            return await self.stream(request, req)
        if rest in ("", "response"):
            if req.state != "COMPLETED":
                return web.json_response({"detail": "Request is still in progress"}, status=400)
            _, width, height, kind = PICTURE
            image = {
                "url": f"{req.origin}/files/{req.id}.{kind.split('/')[1]}",
                "width": width,
                "height": height,
                "content_type": kind,
            }
            result = {"images": [image], "seed": req.seed, "has_nsfw_concepts": [False]}
            return web.json_response(result, headers={"x-fal-request-id": req.id})
        return web.json_response({"detail": "Not found"}, status=404)

    async def stream(self, request: web.Request, req: Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        last = None
        while True:
            state = req.state
            if state != last:
                await response.write(f"data: {json.dumps(self.status(req))}\n\n".encode())
                last = state
            if state == "COMPLETED":
                break
            if req.changed is None:
                req.changed = asyncio.Event()
            await req.changed.wait()
        await response.write_eof()
        return response

    async def cancel(self, request: web.Request) -> web.Response:
        req, _ = self.find(request.match_info["tail"])
        if req is None:
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        if req.state == "COMPLETED":
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        if req.state == "IN_QUEUE":
            req.state = "COMPLETED"
            req.touch()
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    async def file(self, request: web.Request) -> web.Response:
        return web.Response(body=PICTURE[0], content_type=PICTURE[3])

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.slots.summary())


async def serve(slots: int, seconds: float, tls: tuple[str, str] | None) -> None:
    server = Server(Slots(slots, seconds))
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/_stats", server.stats)
    app.router.add_get("/files/{name}", server.file)
    app.router.add_post("/{tail:.+}", server.submit)
    app.router.add_get("/{tail:.+}", server.get)
    app.router.add_put("/{tail:.+}", server.cancel)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sites = [web.TCPSite(runner, "127.0.0.1", 0)]
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
        sites.append(web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context))
    urls = []
    for site, scheme in zip(sites, ("http", "https"), strict=False):
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        urls.append(f"{scheme}://127.0.0.1:{port}")
    print("READY " + " ".join(urls), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("slots", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--image", nargs=3, metavar=("FILE", "WIDTH", "HEIGHT"))
    args = ap.parse_args()
    if args.image:
        global PICTURE
        path, width, height = args.image
        kind = TYPES[os.path.splitext(path)[1].lower()]
        with open(path, "rb") as handle:
            PICTURE = (handle.read(), int(width), int(height), kind)
    work = serve(args.slots, args.seconds, tuple(args.tls) if args.tls else None)
    try:
        import uvloop  # the server's own cost is not what is measured: the fastest loop there is
    except ImportError:
        asyncio.run(work)
    else:
        uvloop.run(work)


if __name__ == "__main__":
    main()
