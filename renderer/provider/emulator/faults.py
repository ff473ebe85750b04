"""The emulator's faults: their seeded probabilities (`Faults`) and the hostile shapes they take.

Every draw goes through `Chance` on the emulator's one seeded generator, so a seed replays the same
faults in the same order. The response-shaping helpers here (slow trickles, padded results, damaged
downloads, a decompression bomb) are what a misbehaving server or proxy sends (issue 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import zlib
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

INGRESS_BODY = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
LOCKED = (
    "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
)


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


class Chance:
    """Draws of the emulator's seeded generator, shared by every part (one order for one seed)."""

    def __init__(self, rng: random.Random, counts: Counter[str]) -> None:
        self.rng = rng
        self.counts = counts  # the emulator's counters; a fault that fires counts "fault:<name>"

    def __call__(self, p: float) -> bool:
        return p > 0 and self.rng.random() < p

    def fires(self, p: float, name: str) -> bool:
        """`p` drawn; when it fires, counted as fault:`name`."""
        if self(p):
            self.counts[f"fault:{name}"] += 1
            return True
        return False


def damaged(data: bytes, faults: Faults, chance: Chance) -> bytes:
    """An image download as the truncate_image / corrupt_image faults leave it (or unchanged)."""
    if chance.fires(faults.truncate_image, "truncate_image"):
        return data[: max(1, len(data) * 2 // 3)]
    if chance.fires(faults.corrupt_image, "corrupt_image"):
        middle = len(data) // 2
        return (
            data[:middle]
            + bytes(b ^ 0x5A for b in data[middle : middle + 64])
            + data[middle + 64 :]
        )
    return data


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


async def deliver(
    request: web.Request,
    op: str,
    body: bytes,
    faults: Faults,
    counts: Counter[str],
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> web.StreamResponse:
    """A response; for the `slow` fault's ops, trickled one byte per `slow_interval` (slowloris)."""
    if op not in faults.slow:
        return web.Response(body=body, status=status, headers=headers, content_type=content_type)
    counts[f"fault:slow_{op}"] += 1
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


async def padded(
    request: web.Request, body: bytes, headers: dict[str, str], size: int, counts: Counter[str]
) -> web.StreamResponse:
    """The result with `size` bytes of padding in front (huge_result), streamed in 1 MB pieces."""
    counts["fault:huge_result"] += 1
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
