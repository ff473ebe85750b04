"""The static viewer page shared by `renderer report` and `renderer diff`.

The page is one HTML file: the viewer's stylesheet and script (package data in renderer/view/web/)
inlined, and the run's data as a JSON block. The script builds every element from that data
with textContent and attributes, never by parsing markup, so no text from a manifest or a
server can become markup. The JSON block is escaped for HTML script context: `<`, `>` and `&`
are written as \\u escapes, so `</script>` or `<!--` inside a string cannot end or bend the block
(the page that blanked on a prompt containing `<!--<script>`). No network, no CDN, works from
file:// and from any static host.
"""

from __future__ import annotations

import html
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def script_json(data: Any) -> str:
    """JSON that is inert inside <script type="application/json">: no `<`, `>` or `&` in the text.

    The escapes only ever occur inside JSON strings (JSON syntax has none of these characters),
    where JSON.parse turns them back into the original characters.
    """
    return inert(json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False))


def inert(text: str) -> str:
    """JSON text made inert for a script block (see script_json), for JSON assembled from parts."""
    return text.translate(_ESCAPES)


def _asset(name: str) -> str:
    return (resources.files("renderer.view") / "web" / name).read_text(encoding="utf-8")


def render(title: str, data: dict[str, Any]) -> str:
    # The assets are our own files; only `title` and `data` come from users and servers, and
    # both are escaped for where they go (element text and script data).
    # One pass over the template: inserted text is never scanned for placeholders again.
    parts = {
        "title": html.escape(title),
        "style": _asset("viewer.css"),
        "script": _asset("viewer.js"),
        "data": script_json(data),
    }
    return re.sub(
        r"\{\{(title|style|script|data)\}\}", lambda m: parts[m.group(1)], _asset("viewer.html")
    )


def write(path: Path, title: str, data: dict[str, Any]) -> Path:
    """Write the page atomically (a reader never sees half a page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(title, data), encoding="utf-8")
    os.replace(tmp, path)
    return path
