"""aiohttp's per-request settings, each measured as the client's CPU per request (issue 23).

A local aiohttp server in its own process answers every request with a small JSON body; a
client in another process makes --requests requests (64 at once, half of them POSTs with a JSON
body, as the renderer's submits; the rest GETs, as its status and result reads), the way
renderer/provider/client.py does (`session.request` in `async with`, the body read in capped
chunks), under each variant of the session's settings. Printed: user and system CPU per
request of the client alone, after a warm-up of 200, medians of --rounds (the variants
alternated round by round, so a shared machine's drift falls on all of them).

Reproduce:  python bench/aiohttp_knobs.py --requests 6000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, table

VARIANTS = {
    "as the renderer's client": "",
    "DummyCookieJar": "nocookie",
    "skip_auto_headers (Accept, Accept-Encoding)": "skipauto",
    "resp.read() when the length is declared": "read",
    "yarl.URL(encoded=True) built once": "yurl",
    "all four": "nocookie,skipauto,read,yurl",
}

SERVER = r"""
import json, sys
from aiohttp import web
BODY = json.dumps({"status": "COMPLETED", "request_id": "x" * 36,
                   "response_url": "http://127.0.0.1/r/" + "y" * 36}).encode()
async def answer(request):
    if request.method == "POST":
        await request.read()
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_route("*", "/{tail:.*}", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

CLIENT = r"""
import asyncio, json, resource, sys
import aiohttp, yarl
try:
    import uvloop
    run = uvloop.run
except ImportError:
    run = asyncio.run
port, count, flags = int(sys.argv[1]), int(sys.argv[2]), set(sys.argv[3].split(","))
URL = f"http://127.0.0.1:{port}/fal-ai/x/requests/abc"
async def capped(resp, cap):
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        buf += chunk
        if len(buf) > cap:
            raise ValueError("over the cap")
    return bytes(buf)
async def main():
    kw = dict(timeout=aiohttp.ClientTimeout(total=300, connect=10, sock_read=120),
              connector=aiohttp.TCPConnector(limit=256, limit_per_host=0, ttl_dns_cache=300),
              raise_for_status=False, headers={"User-Agent": "renderer/0.1"})
    if "nocookie" in flags:
        kw["cookie_jar"] = aiohttp.DummyCookieJar()
    if "skipauto" in flags:
        kw["skip_auto_headers"] = ("Accept-Encoding", "Accept")
    async with aiohttp.ClientSession(**kw) as session:
        auth = {"Authorization": "Key bench"}
        url = yarl.URL(URL, encoded=True) if "yurl" in flags else URL
        gate = asyncio.Semaphore(64)
        async def one(i):
            async with gate:
                body = {"prompt": "p", "seed": i} if i % 2 else None
                async with session.request("POST" if i % 2 else "GET", url, json=body,
                                           headers=auth, allow_redirects=False) as resp:
                    if "read" in flags and resp.content_length is not None:
                        raw = await resp.read()
                    else:
                        raw = await capped(resp, 1 << 26)
                return json.loads(raw)
        await asyncio.gather(*(one(i) for i in range(200)))
        before = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(one(i) for i in range(count)))
        after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"user": (after.ru_utime - before.ru_utime) / count,
                      "sys": (after.ru_stime - before.ru_stime) / count}))
run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    loads: list[float] = []
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        for _ in range(100):  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        for _ in range(args.rounds):
            for name, flags in VARIANTS.items():
                loads.append(os.getloadavg()[0])
                cmd = [sys.executable, "-c", CLIENT, str(port), str(args.requests), flags or "-"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                got[name].append((r["user"], r["sys"]))
    finally:
        server.terminate()
        server.wait()
    print(f"# aiohttp per-request settings, client CPU per request; {machine()}")
    print(
        f"# reproduce: python bench/aiohttp_knobs.py --requests {args.requests} --rounds {args.rounds}"
    )
    print(f"# load (1-minute average before each client): {min(loads):.1f}-{max(loads):.1f}")
    rows = []
    for name, runs in got.items():
        users = [1e6 * u for u, _ in runs]
        rows.append(
            [
                name,
                f"{median(users):.0f}",
                f"{min(users):.0f}-{max(users):.0f}",
                f"{median([1e6 * s for _, s in runs]):.0f}",
            ]
        )
    print(table(["variant", "user µs/request (median)", "range", "sys µs/request"], rows))


if __name__ == "__main__":
    main()
