"""Contact sheets: the HTML grid opens in a real browser, failed cells show, thumbnails are reused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from renderer import report
from renderer.emulator import ServiceTime

from .conftest import background_emulator, cli, write_manifest

SWEEP = {
    "prompts": [{"id": "cat", "text": "a cat", "tags": ["animal"]}, {"id": "fuji", "text": "Mount Fuji", "tags": ["place"]}],
    "models": [{"endpoint": "fal-ai/flux-1/schnell", "label": "flux"}, {"endpoint": "fal-ai/imagen4/preview", "label": "imagen"},
               {"endpoint": "acme/missing", "label": "broken", "unchecked": True}],
    "seeds": [1, 2],
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    m = write_manifest(folder, **SWEEP)
    with background_emulator(service=ServiceTime("fixed", 0.01)) as emu:
        code, _, err = cli("run", str(m), "--provider", emu.url, "--output", str(folder / "out"), "--quiet",
                           env={"FAL_KEY": "k"})
    assert code == 1, err  # the unknown endpoint fails; the rest render
    return folder / "out/t"


def test_pages_rows_columns_and_failed_cells(sweep: Path):
    """prompt × model grids, one page per seed, failed jobs as failed cells with their reason."""
    done = report.build(sweep)
    assert done["pages"] == 2 and done["cells"] == 12
    pages = report.build_pages(__import__("renderer.store", fromlist=["Store"]).Store(sweep, readonly=True).rows(in_plan=True),
                               "prompt", "model")
    assert [p.title for p in pages] == ["seed=1", "seed=2"]
    assert pages[0].rows == ["cat", "fuji"] and pages[0].cols == ["flux", "imagen", "broken"]
    failed = pages[0].cells[("cat", "broken")]
    assert failed.state == "failed" and "HTTP 404" in failed.job["error"]


def test_thumbnails_are_made_once(sweep: Path):
    """A second report reuses every thumbnail."""
    report.build(sweep)
    assert report.build(sweep)["thumbnails_made"] == 0
    assert len(list((sweep / "report/thumbs").glob("*.jpg"))) == 8


def test_sheets_are_labelled_and_split_under_the_cap(sweep: Path, tmp_path: Path):
    """A small size cap splits a page into several sheets, each within the cap."""
    copy = tmp_path / "run"
    shutil.copytree(sweep, copy)
    done = report.build(copy, max_side=2 * report.CELL + 10)
    assert len(done["sheets"]) > 2
    for sheet in done["sheets"]:
        with Image.open(sheet) as im:
            assert max(im.size) <= 2 * report.CELL + 10 + report.LABEL * 2


def test_filters_and_axes(sweep: Path):
    """--tag, --model and --seed filter; --axes picks the grid's row and column."""
    assert report.build(sweep, tags={"place"}, seeds={1})["cells"] == 3
    assert report.build(sweep, row_axis="seed", col_axis="model", models={"flux"})["pages"] == 2
    code, _, err = cli("report", str(sweep), "--axes", "prompt,colour")
    assert code == 2 and "no axis 'colour'" in err


def test_report_opens_in_headless_chromium(sweep: Path, tmp_path: Path):
    """The page loads from file:// with no console errors; the grid has its rows, columns and
    images; clicking a cell shows its details. A screenshot is saved in the test's tmp dir."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    report.build(sweep)
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        page = browser.new_page()
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((sweep / "report/index.html").as_uri())
        page.wait_for_selector("table.grid")
        assert page.locator("nav button").count() == 2
        assert page.locator("th.row").all_inner_texts() == ["cat", "fuji"]
        assert page.locator("th.col").all_inner_texts() == ["flux", "imagen", "broken"]
        page.wait_for_function("[...document.querySelectorAll('.cell img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator(".cell img").count() == 4
        assert "failed: " in page.locator(".cell.failed").first.inner_text()
        page.locator(".cell img").first.click()
        page.wait_for_selector("#detail.open")
        detail = page.locator("#detail-text").inner_text()
        assert '"request_id"' in detail and '"prompt_id": "cat"' in detail
        page.screenshot(path=str(tmp_path / "report.png"))
        browser.close()
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 1000
