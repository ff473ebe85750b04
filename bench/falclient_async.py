"""The baseline peer for bench/concurrency.py: N jobs through fal-client's AsyncClient, as a user writes it.

One `fal_client.AsyncClient`, a semaphore of S around each `subscribe` (the usual way to stay
within an account's limit), each image downloaded with one shared httpx client and written to disk.

Needs FAL_QUEUE_RUN_HOST (read by fal-client at import; it speaks https only), FAL_KEY and, for a
self-signed server, SSL_CERT_FILE. Usage: falclient_async.py JOBS CONCURRENCY OUTDIR
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import fal_client
import httpx


async def main(jobs: int, concurrency: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    client = fal_client.AsyncClient(key=os.environ["FAL_KEY"])
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient() as http:

        async def one(i: int) -> None:
            async with gate:
                result = await client.subscribe(
                    "fal-ai/flux-1/schnell", arguments={"prompt": f"picture {i}", "seed": i + 1}
                )
            for n, image in enumerate(result["images"]):
                response = await http.get(image["url"])
                response.raise_for_status()
                (out / f"{i}-{n}.png").write_bytes(response.content)

        await asyncio.gather(*(one(i) for i in range(jobs)))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
