"""fal's documentation site's model pages (`fal.ai/docs/…`, MDX): `<ParamField>` tags.

A page holds one or more endpoints, each in a `<Tab>` with `**Endpoint ID:** `owner/app``, an
`### Input Schema` and an `### Output Schema` section of tags like

    <ParamField body="num_images" type="integer" default="1">
      The number of images to generate. Default value: `1`
      Range: `1` to `4`
    </ParamField>

The attributes say the name, type, default and `required`; the body says the description, the
range (`Range: `a` to `b``) and the allowed values (`Possible values: `a`, `b``). Types are
fal's own notation, as on its other pages, with two differences: `Enum | string` means "one of
these, or any string" (so no enum is enforced), and internal type names such as
`registry__image__fast_sdxl__models__Image` are shortened to their last part (`Image`).
"""

from __future__ import annotations

import html
import re

from renderer.errors import DocumentError
from renderer.models.documents import (
    NO_DEFAULT,
    EndpointDoc,
    Field,
    finish_field,
    number,
    parse_default,
)

_ENDPOINT_RE = re.compile(r"\*\*Endpoint ID:\*\*\s*`([^`]+)`")
_TAG_RE = re.compile(r"<ParamField\s+(?P<attrs>[^>]*?)\s*(?P<closed>/?)>")
_ATTR_RE = re.compile(r'(\w+)(?:="([^"]*)")?')
_RANGE_RE = re.compile(r"Range:\s*`(-?\d+(?:\.\d+)?)`\s*to\s*`(-?\d+(?:\.\d+)?)`")
_VALUES_RE = re.compile(r"Possible values:\s*(.+)$", re.M)


def is_docs_page(text: str) -> bool:
    return "<ParamField" in text and _ENDPOINT_RE.search(text) is not None


def _type(raw: str) -> str:
    """fal's docs notation → the notation of its other pages."""
    raw = re.sub(r"\b(?:\w+__)+(\w+)", r"\1", raw.strip())  # registry__…__models__Image → Image
    if raw.replace(" ", "") in ("Enum|string", "string|Enum"):
        return "string"  # listed values are suggestions: any string is accepted
    return raw


def _fields(text: str, start: int, end: int, base: int) -> list[Field]:
    fields = []
    for tag in _TAG_RE.finditer(text, start, end):
        attrs = {
            k: html.unescape(v) if v is not None else None
            for k, v in _ATTR_RE.findall(tag["attrs"])
        }
        name = attrs.get("body")
        if not name:
            continue
        line = base + text.count("\n", 0, tag.start()) + 1
        body = ""
        if not tag["closed"]:
            close = text.find("</ParamField>", tag.end(), end)
            body = text[tag.end() : close if close != -1 else end]
        kind = _type(attrs.get("type") or "string")
        f = Field(name, kind, line, "", "required" in attrs)
        values = _VALUES_RE.search(body)
        open_ended = kind == "string" and "Enum" in (attrs.get("type") or "")
        if values and not open_ended:  # `Enum | string`: the values are suggestions only
            f.enum = re.findall(r"`([^`]*)`", values.group(1))
            body = body[: values.start()] + body[values.end() :]
        bounds = _RANGE_RE.search(body)
        if bounds:
            f.range = (number(bounds.group(1)), number(bounds.group(2)))
            body = body[: bounds.start()] + body[bounds.end() :]
        f.description = body
        if attrs.get("default") is not None:
            try:
                f.default = parse_default(attrs["default"] or "", kind)
            except (ValueError, TypeError):
                f.default = NO_DEFAULT  # the body's `Default value:` is read instead
        fields.append(finish_field(f))
    return fields


def parse_docs_page(text: str, source: str) -> list[EndpointDoc]:
    """Every endpoint on the page (one per tab), in page order."""
    marks = list(_ENDPOINT_RE.finditer(text))
    docs = []
    for n, mark in enumerate(marks):
        end = marks[n + 1].start() if n + 1 < len(marks) else len(text)
        line = text.count("\n", 0, mark.start()) + 1
        doc = EndpointDoc(mark.group(1), source, line, "fal-docs")
        summary = re.search(r"^> (?!#)(.+)$", text, re.M)
        if summary and n == 0:
            doc.summary = summary.group(1).strip()
        heads = [
            (m.start(), m.group(1)) for m in re.finditer(r"^\s*### (.+?)\s*$", text[:end], re.M)
        ]
        heads = [(at, title) for at, title in heads if at > mark.start()] + [(end, "")]
        for i, (at, title) in enumerate(heads[:-1]):
            stop = heads[i + 1][0]
            if title == "Input Schema":
                doc.inputs = _fields(text, at, stop, 0)
            elif title == "Output Schema":
                doc.outputs = _fields(text, at, stop, 0)
        if not doc.inputs:
            raise DocumentError(
                source, line, f"{doc.endpoint}: no <ParamField> under '### Input Schema'"
            )
        docs.append(doc)
    return docs
