"""Downloading a model's OpenAPI document (`renderer models add ENDPOINT`, `models update`).

fal serves every endpoint's contract at `/api/openapi/queue/openapi.json?endpoint_id=<id>`; the
page needs no key, and a key (when the environment has one) is sent only to the origin asked for,
never after a redirect to another origin. The answer is treated as hostile: its size is capped,
and anything but a 200 with a body is an error that names the URL, so a user offline can download
the file by hand and add the file instead.
"""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from renderer.errors import UsageError

MAX_DOCUMENT = 16 * 1024 * 1024  # the largest fal OpenAPI documents are well under 1 MB
TIMEOUT = 30.0


def _offline_hint(url: str, endpoint: str) -> str:
    return (
        f"download {url} by hand (a browser will do) and run `renderer models add FILE`; "
        f"or check the endpoint id ({endpoint})"
    )


async def _fetch(url: str, endpoint: str, key: str | None) -> bytes:
    origin = URL(url).origin()
    headers = {"Accept": "application/json"}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # Redirects are followed by hand: the key must not travel to another origin.
        target = URL(url)
        for _ in range(5):
            send = dict(headers)
            if key and target.origin() == origin:
                send["Authorization"] = f"Key {key}"
            async with session.get(target, headers=send, allow_redirects=False) as answer:
                if answer.status in (301, 302, 303, 307, 308) and "Location" in answer.headers:
                    target = target.join(URL(answer.headers["Location"]))
                    continue
                if answer.status == 404:
                    raise UsageError(
                        f"{url}: fal knows no endpoint {endpoint!r} (404)",
                        hint="check the id on the model's page (fal.ai/models/<id>)",
                    )
                if answer.status in (401, 403):
                    raise UsageError(
                        f"{url}: refused ({answer.status})",
                        hint="set FAL_KEY for a private endpoint, or "
                        + _offline_hint(url, endpoint),
                    )
                if answer.status != 200:
                    raise UsageError(
                        f"{url}: answered {answer.status}", hint=_offline_hint(url, endpoint)
                    )
                body = await answer.content.read(MAX_DOCUMENT + 1)
                if len(body) > MAX_DOCUMENT:
                    raise UsageError(f"{url}: the answer is larger than {MAX_DOCUMENT} bytes")
                return body
        raise UsageError(f"{url}: too many redirects", hint=_offline_hint(url, endpoint))


def fetch_openapi(url: str, endpoint: str, key: str | None) -> bytes:
    """The document's bytes, or a UsageError naming the URL (offline, 404, refused, too big)."""
    try:
        return asyncio.run(_fetch(url, endpoint, key))
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        # The message names the URL and the failure's kind only: never a header.
        raise UsageError(
            f"{url}: could not download the OpenAPI document ({type(exc).__name__})",
            hint=_offline_hint(url, endpoint),
        ) from exc
