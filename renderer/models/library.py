"""The user's added models: a folder of model documents, their provenance, and the schemas built
from them, layered over the bundled schemas by SchemaRegistry.

    <models dir>/docs/<name>       each added document, verbatim (the generator's input)
    <models dir>/sources.json      provenance: where each document came from, when, its sha256
    <models dir>/index.json        the build (renderer.models.generate), as in schemas/
    <models dir>/endpoints/…

Invariants:
  * A document is parsed before anything is written: a refused document leaves the folder as it was.
  * Every file is replaced atomically (write a temporary file, then rename), so a crash mid-add
    leaves either the old or the new folder, never a torn index.
  * A document's stored name is a function of what it describes (its first endpoint and its
    layout), so adding the same page again, or a newer copy of it, replaces it instead of
    doubling it.

This module never touches the network: fetching fal's OpenAPI document is the CLI's job (through
the provider stage); it hands the bytes here with their URL as origin.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from renderer.errors import DocumentError
from renderer.models import generate
from renderer.models.read import MAX_DOCUMENT_BYTES, parse_text

SOURCES_FORMAT = 1
_EXTENSION = {
    "openapi": "openapi.json",
    "fal-markdown": "llms.txt",
    "fal-page": "page.txt",
    "fal-docs": "docs.md",
    "proxy-table": "proxy.txt",
    "proxy-openapi": "proxy.md",
}


def openapi_url(endpoint: str, base: str = "https://fal.ai") -> str:
    """Where fal serves an endpoint's OpenAPI document."""
    return f"{base.rstrip('/')}/api/openapi/queue/openapi.json?endpoint_id={endpoint}"


def _slug(endpoint: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "__", endpoint).strip("_") or "model"


@dataclass(frozen=True)
class Added:
    """One document added: its stored name, the endpoints it describes, whether it replaced one."""

    name: str
    endpoints: tuple[str, ...]
    replaced: bool
    unchanged: bool


class Library:
    """A models folder (it need not exist yet: the first `add` creates it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.docs_dir = root / "docs"
        self.sources_path = root / "sources.json"

    def sources(self) -> dict[str, dict[str, Any]]:
        """Provenance by stored document name."""
        try:
            data = json.loads(self.sources_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        documents: dict[str, dict[str, Any]] = data.get("documents", {})
        return documents

    def _save_sources(self, documents: dict[str, dict[str, Any]]) -> None:
        body = {"format": SOURCES_FORMAT, "documents": dict(sorted(documents.items()))}
        text = json.dumps(body, indent=2, ensure_ascii=False) + "\n"
        generate.write_atomic(self.sources_path, text.encode("utf-8"))

    def add(self, data: bytes, origin: str, *, label: str, fetched: str | None = None) -> Added:
        """Add one document (raises DocumentError, writing nothing, if it cannot be read).

        `label` names the document in messages (its file name or URL); `fetched` is the endpoint
        id when the document was downloaded from fal's OpenAPI URL (`models update` refreshes it).
        """
        if len(data) > MAX_DOCUMENT_BYTES:
            raise DocumentError(
                label, 1, f"{len(data):,} bytes; a model document is at most {MAX_DOCUMENT_BYTES:,}"
            )
        try:
            text = data.decode("utf-8-sig")  # a BOM (Windows editors) is not part of the text
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise DocumentError(label, line, "not UTF-8 text") from exc
        text = text.replace("\r\n", "\n").replace("\u00a0", " ")
        docs = parse_text(text, label)
        endpoints = tuple(dict.fromkeys(d.endpoint for d in docs))
        styles = {d.style for d in docs}
        base = _slug(endpoints[0]) if len(endpoints) == 1 else _slug(Path(label).stem)
        name = f"{base}.{_EXTENSION[styles.pop()] if len(styles) == 1 else 'txt'}"
        digest = hashlib.sha256(data).hexdigest()
        documents = self.sources()
        previous = documents.get(name)
        if previous is not None and previous.get("sha256") == digest:
            return Added(name, endpoints, replaced=False, unchanged=True)
        generate.write_atomic(self.docs_dir / name, data)
        documents[name] = {
            "origin": origin,
            "added": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "sha256": digest,
            "endpoints": list(endpoints),
            "layout": docs[0].style,
            **({"fetched": fetched} if fetched else {}),
        }
        self._save_sources(documents)
        return Added(name, endpoints, replaced=previous is not None, unchanged=False)

    def remove(self, name: str) -> None:
        documents = self.sources()
        documents.pop(name, None)
        (self.docs_dir / name).unlink(missing_ok=True)
        self._save_sources(documents)

    def build(self) -> generate.BuildResult | None:
        """Rebuild the folder's schemas from its documents (None when it holds none)."""
        if not self.docs_dir.is_dir() or not generate.document_paths(self.docs_dir):
            for stale in (self.root / "index.json",):
                stale.unlink(missing_ok=True)
            return None
        result = generate.build(self.docs_dir)
        generate.write(result, self.root)
        return result

    def fetched(self) -> list[tuple[str, str, str]]:
        """(stored name, endpoint, URL) of every document downloaded from an OpenAPI URL."""
        return [
            (name, entry["fetched"], entry["origin"])
            for name, entry in sorted(self.sources().items())
            if entry.get("fetched")
        ]

    def provenance(self, sources: list[str]) -> list[dict[str, Any]]:
        """Each `file:line` an endpoint schema lists, with where that document came from."""
        known = self.sources()
        out: list[dict[str, Any]] = []
        for where in sources:
            name, _, line = where.rpartition(":")
            entry: dict[str, Any] = known.get(name, {})
            out.append(
                {
                    "document": name,
                    "line": int(line) if line.isdigit() else None,
                    **{k: entry[k] for k in ("origin", "added", "sha256", "layout") if k in entry},
                }
            )
        return out
