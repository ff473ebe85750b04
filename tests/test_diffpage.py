"""`renderer diff --html`: the viewer in comparison mode (A | B | difference, overlay, changed first)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from renderer.provider.emulator import ServiceTime
from renderer.view import compare, diffpage

from .conftest import background_emulator, cli, write_manifest

SPEC = {
    "prompts": [{"id": "cat", "text": "a cat"}, {"id": "fuji", "text": "Mount Fuji"}],
    "models": [
        {"endpoint": "fal-ai/flux-1/schnell", "label": "flux"},
        {"endpoint": "fal-ai/imagen4/preview", "label": "imagen"},
    ],
    "axes": {"aspect_ratio": ["1:1", "16:9"]},
    "seeds": [1, 2],
}


def _render(folder: Path, **emulator: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    m = write_manifest(folder, **SPEC)
    with background_emulator(service=ServiceTime("fixed", 0.005), **emulator) as emu:
        code, _, err = cli(
            "run",
            str(m),
            "--provider",
            emu.url,
            "--output",
            str(folder / "out"),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
    assert code == 0, err
    return folder / "out/t"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("diffpage")
    return _render(base / "a"), _render(base / "b", variants=(("fal-ai/imagen4/preview", "v2"),))


def _data(html: Path) -> dict[str, Any]:
    text = html.read_text()
    start = text.index('id="renderer-data">') + len('id="renderer-data">')
    return json.loads(text[start : text.index("</script>", start)])


def test_pairs_dimensions_and_pictures(runs: tuple[Path, Path], tmp_path: Path):
    """Every pair is an item with its verdict first among the dimensions (changed first); changed
    pairs get a difference image and full-size copies; identical ones only thumbnails."""
    result = compare.compare(*runs)
    page = diffpage.write(result, tmp_path / "d.html")
    data = _data(page)
    assert data["mode"] == "diff" and [d["name"] for d in data["dims"]][:3] == [
        "verdict",
        "prompt",
        "model",
    ]
    assert data["dims"][0]["values"] == ["changed", "identical"]
    assert data["view"] == {"x": "model", "y": "prompt", "page": "verdict"}
    assert len(data["items"]) == 16
    changed = [i for i in data["items"] if i["verdict"] == "changed"]
    assert len(changed) == 8 and all(
        i["diff"] and i["a"]["full"] and i["b"]["full"] for i in changed
    )
    assert {data["dims"][2]["values"][i["v"][2]] for i in changed} == {"imagen"}
    for item in data["items"]:
        assert (tmp_path / item["a"]["thumb"]).is_file() and (
            tmp_path / item["b"]["thumb"]
        ).is_file()
        assert item["diff"] is None or (tmp_path / item["diff"]).is_file()


def test_rewriting_the_page_removes_pictures_it_no_longer_uses(
    runs: tuple[Path, Path], tmp_path: Path
):
    """A later comparison written to the same page leaves no pictures of the earlier one behind."""
    diffpage.write(compare.compare(*runs), tmp_path / "d.html")
    before = set(os.listdir(tmp_path / "d-images"))
    diffpage.write(compare.compare(runs[0], runs[0]), tmp_path / "d.html")
    after = set(os.listdir(tmp_path / "d-images"))
    assert after < before and not any(name.startswith("d-") for name in after)
    assert all(i["verdict"] == "identical" for i in _data(tmp_path / "d.html")["items"])


@pytest.mark.browser
def test_diff_page_in_chromium(runs: tuple[Path, Path], tmp_path: Path):
    """Changed pairs come first as A | B | difference; the overlay toggle stacks A and B and is kept
    in the URL; the large view shows all three; a screenshot is saved."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    code, _, _ = cli("diff", str(runs[0]), str(runs[1]), "--html", str(tmp_path / "d.html"))
    assert code == 1
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((tmp_path / "d.html").as_uri())
        page.wait_for_selector("body[data-ready]")
        assert page.locator("section.page h2").all_text_contents() == [
            "verdict = changed",
            "verdict = identical",
        ]
        first = page.locator("section.page").first
        assert first.locator(".verdict").all_text_contents() == ["changed"] * 8
        assert first.locator("th.col").all_text_contents() == ["imagen"]
        assert first.locator(".item.diff").first.locator("img").count() == 3
        page.wait_for_function(
            "[...document.querySelectorAll('section.page:first-child img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        shot = Path(os.environ.get("RENDERER_SCREENS") or tmp_path) / "diff.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        page.check("input[name=overlay]")
        assert page.locator(".item.diff.overlay").count() == 16 and "overlay=1" in page.url
        page.reload()
        page.wait_for_selector("body[data-ready]")
        assert page.locator(".item.diff.overlay").count() == 16
        page.locator(".item.diff").first.click()
        captions = page.locator("#detail figcaption").all_text_contents()
        assert [c.split(":")[0] for c in captions] == ["A", "B", "difference ×4"]
        assert "changed" in page.locator("#detail-facts").inner_text()
        browser.close()
    assert errors == []
    assert shot.stat().st_size > 10_000


@pytest.mark.browser
def test_hostile_text_in_a_comparison(tmp_path: Path):
    """A run full of hostile text compared with itself: the page works, no console error, every pair shown."""
    from .test_report import HOSTILE, _hostile_run

    run = _hostile_run(tmp_path)
    page_path = diffpage.write(compare.compare(run, run), tmp_path / "d.html")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_path.as_uri())
        page.wait_for_selector("body[data-ready]")
        assert page.locator(".item.diff").count() == len(HOSTILE)
        assert page.evaluate("window.pwned") is None and page.locator("img[src=x]").count() == 0
        page.locator(".item.diff").first.click()
        assert any(h in page.locator("#detail-facts").inner_text() for h in HOSTILE)
        browser.close()
    assert errors == []
