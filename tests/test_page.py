"""The viewer page: data inert in script context, assets shipped as package data, one-pass template."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from renderer.view import page

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON_VALUES)
def test_script_json_is_inert_and_exact(value: object):
    """Any data: the block holds no '<', '>', '&', U+2028/9, and parses back to the same value."""
    text = page.script_json(value)
    assert not set(text) & {"<", ">", "&", "\u2028", "\u2029"}
    assert json.loads(text) == value


@given(st.text(), st.text())
def test_template_placeholders_in_data_are_not_expanded(title: str, body: str):
    """Placeholder-like text in the title or data ({{script}}, {{data}}) stays as it was."""
    html = page.render(title + "{{script}}", {"x": body + "{{data}}{{style}}"})
    start = html.index('id="renderer-data">') + len('id="renderer-data">')
    data = json.loads(html[start : html.index("</script>", start)])
    assert data == {"x": body + "{{data}}{{style}}"}
    assert html.count("'use strict'") == 1


def test_assets_ship_in_the_package(tmp_path: Path):
    """The viewer's HTML, JS and CSS are package data listed in pyproject (so the wheel has them)."""
    root = Path(page.__file__).parent / "web"
    assert {p.name for p in root.iterdir()} >= {"viewer.html", "viewer.js", "viewer.css"}
    pyproject = (Path(page.__file__).parents[2] / "pyproject.toml").read_text()
    line = next(x for x in pyproject.splitlines() if x.startswith('"renderer.view" = ['))
    assert all(f'"web/*.{ext}"' in line for ext in ("html", "js", "css"))
    out = page.write(
        tmp_path / "x/index.html", "t", {"mode": "run", "dims": [], "items": [], "view": {}}
    )
    assert out.read_text().startswith("<!doctype html>") and not list(out.parent.glob("*.tmp"))
