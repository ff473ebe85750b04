"""Which layout a model document is written in, and reading it: the generator's one entry point
for documents (`parse_file`, `parse_text`).

Layouts, tried in this order (LAYOUTS says the same to a user whose document is refused):
fal's OpenAPI JSON, OpenAPI embedded in a page (openapi.py); several fal web pages in one file,
fal's markdown (llms.txt) page, a third-party parameter table, one fal web page (documents.py);
fal's documentation site's pages with `<ParamField>` tags (docspage.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from renderer.errors import DocumentError
from renderer.models.docspage import is_docs_page, parse_docs_page
from renderer.models.documents import (
    BadDefault,
    EndpointDoc,
    page_endpoint,
    parse_fal_markdown,
    parse_fal_page,
    parse_proxy_table,
)
from renderer.models.openapi import embedded_openapi, is_openapi, parse_openapi
from renderer.models.tables import looks_like_table, parse_table

_SECTION_RE = re.compile(r"^(\d+)\)([a-z0-9-]+(?:/[A-Za-z0-9._-]+)+)\s*$", re.M)

LAYOUTS = (
    "fal's OpenAPI 3.x JSON (https://fal.ai/api/openapi/queue/openapi.json?endpoint_id=<id>)",
    "a fal model page with a '5. Schema' section",
    "several fal pages, each opened by 'N)owner/app'",
    "a fal markdown page with '### Input Schema'",
    "a page of fal's documentation site with <ParamField> tags",
    "a third-party page with a parameter table (| Parameter | Type | … |, or tab-separated)",
    "a parameter table headed 'ParameterTypeRequiredDescription'",
)


def parse_text(text: str, source: str) -> list[EndpointDoc]:
    """Every endpoint described in one document, in document order."""
    try:
        docs = _parse_text(text, source)
    except BadDefault as exc:
        raise DocumentError(source, exc.line, exc.message) from exc
    for doc in docs:
        # The id names files (endpoints/<id>.json, added documents): a hostile document's
        # `/../../x` must never write outside the schema folder.
        if not ENDPOINT_ID.fullmatch(doc.endpoint) or ".." in doc.endpoint.split("/"):
            raise DocumentError(
                source,
                doc.line,
                f"{doc.endpoint[:80]!r} is not an endpoint id",
                hint="an endpoint id looks like owner/app or owner/app/path (letters, digits, . _ -)",
            )
    return docs


ENDPOINT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:/[A-Za-z0-9._-]+)+")


def _parse_text(text: str, source: str) -> list[EndpointDoc]:
    embedded = None if is_openapi(text) else embedded_openapi(text)
    if is_openapi(text) or embedded:
        body, base = embedded or (text, 0)
        return [
            EndpointDoc(
                found["endpoint"],
                source,
                found["line"],
                "proxy-openapi" if found["third_party"] else "openapi",
                auth=found["auth"],
                schema=found,
            )
            for found in parse_openapi(body, source, base)
        ]
    sections = list(_SECTION_RE.finditer(text))
    if sections:
        docs = []
        for n, match in enumerate(sections):
            end = sections[n + 1].start() if n + 1 < len(sections) else len(text)
            base = text.count("\n", 0, match.start())
            docs.append(parse_fal_page(text[match.start() : end], source, match.group(2), base))
        return docs
    if is_docs_page(text):
        return parse_docs_page(text, source)
    if "### Input Schema" in text:
        return [parse_fal_markdown(text, source)]
    if re.search(r"^ParameterTypeRequiredDescription\s*$", text, re.M):
        return [parse_proxy_table(text, source)]
    if re.search(r"^5\. Schema#?\s*$", text, re.M):
        endpoint = page_endpoint(text)
        if endpoint is None:
            raise DocumentError(
                source,
                1,
                "fal page without an endpoint id",
                hint="put the endpoint id (e.g. fal-ai/flux/dev) on the first line; it is also read "
                'from a fal.subscribe("…") call or a queue.fal.run/<id> URL on the page',
            )
        return [parse_fal_page(text, source, endpoint)]
    if looks_like_table(text):
        return [parse_table(text, source)]
    raise DocumentError(
        source,
        1,
        "unknown document layout",
        hint="expected one of: " + "; ".join(LAYOUTS),
    )


MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # fal's largest OpenAPI documents are well under 1 MB


def parse_file(path: Path) -> list[EndpointDoc]:
    size = path.stat().st_size
    if size > MAX_DOCUMENT_BYTES:
        raise DocumentError(
            path.name, 1, f"{size:,} bytes; a model document is at most {MAX_DOCUMENT_BYTES:,}"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DocumentError(path.name, line, "not UTF-8 text") from exc
    # Pages copied from a browser carry non-breaking spaces between a field and its type.
    return parse_text(text.replace("\r\n", "\n").replace("\u00a0", " "), path.name)
