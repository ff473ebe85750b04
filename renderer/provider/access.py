"""Where the API key may go, and where it must never show: the provider's URLs and the key's
scrubbing, shared by every client of one provider (`Client.with_key`).

`ProviderUrls`: a URL an answer names is the provider's (its origin, or a trusted fal queue
host), rebased onto the provider's origin (a proxy of fal's API), or refused (JobRejected) - the
key is sent nowhere else. `Secrets`: every form a key could be echoed in (as sent, JSON-escaped,
URL-quoted, each half of an id:secret pair) is replaced by *** before anything reads a body.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from yarl import URL

from renderer.errors import JobRejected, ProviderError
from renderer.provider.fal import origin_of, short

MIN_SECRET = 6  # keys shorter than this are not scrubbed (every "k" in every message would go)


class ProviderUrls:
    """The provider's origin and what an answer's URL may be (`rebase`: proxies; else refused)."""

    def __init__(
        self, base_url: str, *, rebase: bool, trusted_origins: frozenset[str] = frozenset()
    ) -> None:
        self.origin = origin_of(base_url)
        self.prefix = URL(base_url).raw_path.rstrip("/")  # a proxy mounted under a path
        self.origins = {self.origin, *(o.lower() for o in trusted_origins)}
        self.rebase = rebase
        # A URL that starts with one of these is the provider's as it stands: its authority is
        # exactly a known origin's (it ends at that "/"), and the parse below keeps it unchanged.
        self.prefixes = tuple(o + "/" for o in sorted(self.origins))

    def provider_url(self, url: Any, what: str) -> str:
        """`url` if it is the provider's; rebased onto the provider's origin; or refused (JobRejected)."""
        # Every request and every submit answer comes here: the common case without parsing.
        if type(url) is str and url.startswith(self.prefixes) and url.isprintable():
            return url
        return self.checked(url, what)

    def checked(self, url: Any, what: str) -> str:
        """provider_url by parsing the URL (what the fast path must agree with)."""
        if not isinstance(url, str):
            raise JobRejected(f"{what} is {type(url).__name__}, not a URL: {short(url, 80)}")
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as exc:
            raise JobRejected(f"{what} is not a URL: {short(url, 80)}") from exc
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise JobRejected(f"{what} is not an http(s) URL: {short(url, 80)}")
        origin = origin_of(url)
        if origin in self.origins:
            return url
        if not self.rebase:
            raise JobRejected(
                f"{what} points at {origin}, which is not the provider ({self.origin}); "
                "refused to send the API key there",
                hint="set provider.url to the origin that answers, if you trust it",
            )
        path = parsed.raw_path
        if self.prefix and not path.startswith(self.prefix + "/"):
            path = self.prefix + path
        return (
            self.origin + path + (f"?{parsed.raw_query_string}" if parsed.raw_query_string else "")
        )


class Secrets:
    """The forms of every key of a client family, longest first (a key inside another goes too)."""

    def __init__(self, key: str | None) -> None:
        self.forms = secret_forms(key)

    def add(self, key: str | None) -> None:
        """Another account's key: from now on every client of the family scrubs it as well."""
        self.forms[:] = sorted(set(self.forms) | set(secret_forms(key)), key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """`text` without the key in any form it was sent or could be echoed in."""
        for secret in self.forms:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def scrubbed(self, exc: ProviderError) -> ProviderError:
        """`exc` with its message and detail scrubbed (the same object)."""
        exc.message = self.scrub(exc.message)
        exc.args = (exc.message,)
        if exc.detail is not None:
            exc.detail = json.loads(self.scrub(json.dumps(exc.detail)))
        return exc


def secret_forms(key: str | None) -> list[str]:
    """The key as sent, JSON-escaped and URL-quoted, and each half of an id:secret pair (longest first)."""
    if not key or len(key) < MIN_SECRET:
        return []  # a key this short (a test's "k") cannot be told from ordinary text
    forms = {key, json.dumps(key)[1:-1], quote(key, safe="")}
    forms |= {part for part in key.split(":") if len(part) >= 8}
    return sorted((f for f in forms if f), key=len, reverse=True)
