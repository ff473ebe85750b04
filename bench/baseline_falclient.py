"""The baseline peer: N jobs through the official fal-client, written as a user would write it.

asyncio, a semaphore of the given concurrency, `subscribe_async` per job, then each image
downloaded with one shared httpx client and written to disk. Prints `BENCH {json}`.

Needs FAL_QUEUE_RUN_HOST (read by fal-client at import), FAL_KEY and, for a self-signed
emulator, SSL_CERT_FILE in the environment. Usage: baseline_falclient.py JOBS CONCURRENCY OUTDIR
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path

import fal_client
import httpx


async def main(jobs: int, concurrency: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient() as http:

        async def one(i: int) -> None:
            async with gate:
                result = await fal_client.subscribe_async(
                    "fal-ai/flux-1/schnell", arguments={"prompt": f"picture {i}", "seed": i + 1}
                )
                for n, image in enumerate(result["images"]):
                    response = await http.get(image["url"])
                    response.raise_for_status()
                    (out / f"{i}-{n}.png").write_bytes(response.content)

        await asyncio.gather(*(one(i) for i in range(jobs)))


if __name__ == "__main__":
    jobs, concurrency, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    start = time.perf_counter()
    asyncio.run(main(jobs, concurrency, out))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        "BENCH "
        + json.dumps(
            {
                "code": 0,
                "wall": time.perf_counter() - start,
                "cpu": usage.ru_utime + usage.ru_stime,
                "user": usage.ru_utime,
                "sys": usage.ru_stime,
                "rss_mb": usage.ru_maxrss / 1024,
            }
        )
    )
