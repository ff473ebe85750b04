"""Contact sheets: the viewer in a real browser (axes, filters, zoom, keyboard, shared links,
hostile text), the PNG sheets (labels, failures, n/a, split, stale sheets), thumbnails reused."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from renderer.plan.jobs import Job
from renderer.provider.emulator import ServiceTime
from renderer.state.sqlite import SQLiteStore
from renderer.view import report, report_sheets

from .conftest import MANIFESTS, background_emulator, cli, write_manifest

FAST = ServiceTime("fixed", 0.005)
SWEEP = {
    "prompts": [
        {"id": "cat", "text": "a cat", "tags": ["animal"]},
        {"id": "fuji", "text": "Mount Fuji", "tags": ["place"]},
    ],
    "models": [
        {"endpoint": "fal-ai/flux-1/schnell", "label": "flux"},
        {"endpoint": "fal-ai/imagen4/preview", "label": "imagen"},
        {"endpoint": "acme/missing", "label": "broken", "unchecked": True},
    ],
    "seeds": [1, 2],
}
# The sweep: 3 prompts × 4 models × 3 aspect ratios × 3 seeds, with a style axis on one model.
SWEEP_135 = {
    "prompts": [
        {"id": "cat", "text": "a cat on a windowsill"},
        {"id": "fuji", "text": "Mount Fuji at dawn"},
        {"id": "tea", "text": "a teapot in studio light"},
    ],
    "models": [
        {"endpoint": "fal-ai/flux-1/schnell", "label": "flux"},
        {"endpoint": "fal-ai/imagen4/preview", "label": "imagen"},
        {"endpoint": "fal-ai/ideogram/v2", "label": "ideogram"},
        {
            "endpoint": "fal-ai/recraft/v2/text-to-image",
            "label": "recraft",
            "axes": {"style": ["vector_illustration", "icon/outline"]},
        },
    ],
    "axes": {"aspect_ratio": ["1:1", "16:9", "9:16"]},
    "seeds": [1, 2, 3],
    "prices": {"fal-ai/imagen4/preview": {"per_image": 0.04}},
}
MODELS = ["flux", "imagen", "ideogram", "recraft"]
RATIOS = ["1:1", "16:9", "9:16"]
HOSTILE = [
    "</script><script>window.pwned=1</script>",
    "<!--<script>",
    "\"'><img src=x onerror=window.pwned=1>",
    "\u202eevil\u202c \u200f",
    "🎨🐈‍⬛ emoji",
    "&amp; &lt;b&gt;",
    "{{data}}",
]


def _render(folder: Path, spec: dict[str, Any], **emulator: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    m = write_manifest(folder, **spec)
    with background_emulator(service=FAST, **emulator) as emu:
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
    assert code in (0, 1), err
    return folder / "out/t"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _render(
        tmp_path_factory.mktemp("sweep"), SWEEP
    )  # the unknown endpoint fails; the rest render


@pytest.fixture(scope="module")
def sweep135(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = _render(tmp_path_factory.mktemp("s135"), SWEEP_135)
    report.build(run)
    return run


def _rows(run: Path) -> list[Any]:
    store = SQLiteStore(run, readonly=True)
    try:
        return store.rows(in_plan=True)
    finally:
        store.close()


def _index(run: Path) -> dict[str, Any]:
    text = (run / "report/index.html").read_text()
    start = text.index('<script type="application/json" id="renderer-data">') + 51
    return json.loads(text[start : text.index("</script>", start)])


def _chunk(path: Path) -> Any:
    """A data chunk's payload: `window.rendererData(KIND, K, JSON);`."""
    text = path.read_text()
    return json.loads(text[text.index(",", text.index(",") + 1) + 1 : text.rindex(");")])


def _data(run: Path) -> dict[str, Any]:
    """index.html's data with every job's details and grid entry joined back (as items)."""
    data = _index(run)
    items: list[dict[str, Any]] = []
    for k in range(-(-data["chunks"]["total"] // data["chunks"]["size"])):
        grid = _chunk(run / f"report/data/i-{k:05d}.js")
        for j, full in enumerate(_chunk(run / f"report/data/d-{k:05d}.js")):
            thumb = grid["t"][j]
            for im in full["images"]:
                im["thumb"] = f"thumbs/{thumb[:2]}/{thumb}.jpg" if thumb else None
            items.append({**full, "v": [col[j] for col in grid["v"]]})
    return {**data, "items": items}


# ---------------------------------------------------------------- without a browser


def test_dimensions_cover_every_axis_and_mark_absent_ones(sweep135: Path):
    """prompt, model, each axis (style absent for three models) and seed are dimensions; the
    default view puts models across, prompts down and seeds on pages."""
    rows = _rows(sweep135)
    sp = report.space(rows)
    assert sp.names == ["prompt", "model", "aspect_ratio", "style", "seed"]
    assert sp.values[1] == MODELS and sp.values[2] == RATIOS and sp.values[4] == ["1", "2", "3"]
    style = sp.index("style")
    assert {r.model for r, c in zip(rows, sp.cols[style], strict=True) if c < 0} == {
        "flux",
        "imagen",
        "ideogram",
    }
    assert report.default_view(sp, "prompt", "model") == report.View("model", "prompt", "seed")


def test_data_block_is_escaped_for_script_context(tmp_path: Path):
    """No '<', '>' or '&' reaches the page's data block, and the data reads back exactly."""
    run = _hostile_run(tmp_path)
    report.build(run)
    text = (run / "report/index.html").read_text()
    block = text[
        text.index('id="renderer-data">') + 19 : text.index(
            "</script>", text.index('id="renderer-data">')
        )
    ]
    assert not set("<>&") & set(block)
    for chunk in (run / "report/data").glob("*.js"):
        assert not set("<>&") & set(chunk.read_text())
    assert {i["request_id"] for i in _data(run)["items"]} >= set(HOSTILE)


def test_random_seeds_line_up_as_samples(tmp_path: Path):
    """Seeds drawn per prompt and model become 'sample' pages; seed itself never makes 1-cell pages."""
    run = _render(tmp_path, {**SWEEP, "models": SWEEP["models"][:2], "seeds": {"random": 2}})
    sp = report.space(_rows(run))
    assert sp.sample and sp.values[sp.index("sample")] == ["0", "1"]
    assert report.default_view(sp, "prompt", "model").page == "sample"
    done = report.build(run)
    assert done["pages"] == 2 and len(done["sheets"]) == 2


def test_failed_cells_and_counts(sweep: Path):
    """Every job is an item; failed jobs carry their reason into the page data."""
    done = report.build(sweep)
    assert done["pages"] == 2 and done["cells"] == 12
    items = _data(sweep)["items"]
    failed = [i for i in items if i["model"] == "broken"]
    assert len(failed) == 4 and all(
        i["state"] == "failed" and "HTTP 404" in i["error"] for i in failed
    )


def test_thumbnails_are_made_once(sweep: Path):
    """A second report reuses every thumbnail."""
    report.build(sweep)
    assert report.build(sweep)["thumbnails_made"] == 0
    assert len(list((sweep / "report/thumbs").glob("*/*.jpg"))) == 8


def test_sheets_split_under_the_cap_and_stale_ones_go(sweep: Path, tmp_path: Path):
    """A small size cap splits a page into several sheets, each within the cap; a later report
    with fewer sheets removes the ones it did not write."""
    copy = tmp_path / "run"
    shutil.copytree(sweep, copy)
    cap = report.ROW_LABEL + 2 * report.CELL + 10
    done = report.build(copy, max_side=cap)
    assert len(done["sheets"]) == 4  # 2 pages × (3 models in 2 column chunks)
    for sheet in done["sheets"]:
        with Image.open(sheet) as im:
            assert max(im.size) <= cap
    again = report.build(copy)
    assert sorted(p.name for p in (copy / "report").glob("sheet-*.png")) == sorted(
        p.name for p in again["sheets"]
    )
    assert len(again["sheets"]) == 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-1, 3), st.integers(-1, 5), st.integers(-1, 2), st.integers(0, 2)),
        min_size=1,
        max_size=60,
    ),
    st.integers(report.ROW_LABEL + report.CELL, 4 * report.CELL + report.ROW_LABEL),
)
def test_the_sheet_count_is_the_sheets_drawn(jobs: list[tuple[int, ...]], side: int):
    """`count` (what decides whether sheets are drawn) is the number of sheets `sheets` yields, for
    any mix of values and "not set", any page/row/column/inner dimensions and any size cap."""
    import numpy as np

    cols = [np.array(c, dtype=np.int64) for c in zip(*jobs, strict=True)]
    layout = report_sheets.Layout(
        ["x", "y", "page", "inner"], lambda d, v: f"{d}:{v}", 0, 1, 2, [3]
    )
    arranged = report_sheets.arrange(layout, cols)
    drawn = list(report_sheets.sheets(layout, arranged, lambda n: ("pending", None, ""), side))
    assert report_sheets.count(arranged, side) == len(drawn)


def test_a_dataset_sized_view_gets_no_sheets_unless_asked(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Past SHEETS_AUTO sheets the default report draws none and says how to get them; `--sheets`
    draws them all; `--no-sheets` draws none even for a small view."""
    copy = tmp_path / "run"
    shutil.copytree(sweep, copy)
    shutil.rmtree(copy / "report", ignore_errors=True)
    cap = str(report.ROW_LABEL + report.CELL + 10)  # one cell a sheet: 12 cells, 12 sheets
    monkeypatch.setattr(report, "SHEETS_AUTO", 11)
    code, out, err = cli("report", str(copy), "--max-sheet", cap)
    assert code == 0, err
    assert "sheets: not drawn: the default view makes 12 PNG sheets (more than 11)" in out
    assert "hint: --sheets draws them all" in err
    assert not list((copy / "report").glob("sheet-*.png"))
    code, out, err = cli("report", str(copy), "--max-sheet", cap, "--sheets")
    assert code == 0 and "12 sheets of which 12 drawn" in out, out + err
    assert len(list((copy / "report").glob("sheet-*.png"))) == 12
    monkeypatch.setattr(report, "SHEETS_AUTO", 12)
    code, out, err = cli("report", str(copy), "--max-sheet", cap)
    assert code == 0 and "12 sheets of which 0 drawn" in out, out + err  # all unchanged
    code, out, err = cli("report", str(copy), "--no-sheets")
    assert code == 0 and "0 sheets of which 0 drawn" in out and "not drawn" not in out


def test_sheet_cells_failed_na_and_centred(sweep: Path, tmp_path: Path):
    """In a sheet a failed job is a red cell, a missing combination a grey n/a cell, and an image
    of any ratio sits centred in its cell."""
    copy = tmp_path / "run"
    shutil.copytree(sweep, copy)
    done = report.build(copy, row_axis="model", col_axis="prompt", tags={"animal"})
    with Image.open(done["sheets"][0]) as im:
        sheet = im.convert("RGB")
    top, cell, left = report.LABEL * 3, report.CELL, report.ROW_LABEL
    broken_row = 2  # rows: flux, imagen, broken
    assert sheet.getpixel((left + 4, top + cell * broken_row + cell - 6)) == (0xFD, 0xE3, 0xE1)
    # The flux picture of cat, seed 1 (row 0, column 0) is centred: equal margins either side.
    item = next(i for i in _data(copy)["items"] if i["model"] == "flux" and i["seed"] == 1)
    with Image.open(copy / "report" / item["images"][0]["thumb"]) as thumb:
        thumb.thumbnail((cell - 4, cell - 4))
        w, h = thumb.size
    assert w != h
    x0, y0 = left + (cell - w) // 2, top + (cell - h) // 2
    assert (
        sheet.getpixel((x0 + w // 2, y0 - 1))
        == sheet.getpixel((x0 - 1, y0 + h // 2))
        == (255, 255, 255)
    )
    assert sheet.getpixel((x0 + w // 2, y0 + 1)) != (255, 255, 255) and sheet.getpixel(
        (x0 + 1, y0 + h // 2)
    ) != (255, 255, 255)
    assert sheet.getpixel((x0 + w // 2, y0 + h)) == (255, 255, 255)
    # A model that lacks a combination: build a two-model page where one has an axis the other lacks.
    run = _render(
        tmp_path / "axis",
        {
            "prompts": [{"id": "cat", "text": "a cat"}],
            "models": [
                "fal-ai/flux-1/schnell",
                {
                    "endpoint": "fal-ai/recraft/v2/text-to-image",
                    "label": "recraft",
                    "axes": {"style": ["vector_illustration"]},
                },
            ],
        },
    )
    done = report.build(run)
    with Image.open(done["sheets"][0]) as im:
        sheet = im.convert("RGB")
    # rows: (cat, vector_illustration), (cat, style not set); columns flux-1/schnell, recraft
    assert sheet.getpixel((left + 4, top + 4)) == (0xF3, 0xF3, 0xF0)  # flux with a style: n/a
    assert sheet.getpixel((left + cell + 4, top + cell + 4)) == (
        0xF3,
        0xF3,
        0xF0,
    )  # recraft without one: n/a


def test_report_axes_errors(sweep: Path):
    """--axes naming an axis the run lacks is a usage error (exit 2) listing the run's axes, and
    nothing is written."""
    shutil.rmtree(sweep / "report", ignore_errors=True)
    code, _, err = cli("report", str(sweep), "--axes", "prompt,colour")
    assert code == 2 and "no axis 'colour'" in err and "axes here: prompt, model, seed" in err
    assert not (sweep / "report").exists()  # nothing written
    assert report.build(sweep, tags={"place"}, seeds={1})["cells"] == 3


# ---------------------------------------------------------------- in Chromium


@contextmanager
def chromium() -> Iterator[tuple[Any, list[str]]]:
    """A headless Debian Chromium; yields (browser, console errors)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=path,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        try:
            yield browser, errors
        finally:
            browser.close()


def _open(browser: Any, errors: list[str], url: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("body[data-ready]")
    return page


def _screens(tmp_path: Path) -> Path:
    """Screenshots go to the test's tmp dir, and also to $RENDERER_SCREENS when it is set."""
    return Path(os.environ.get("RENDERER_SCREENS") or tmp_path)


def _thumb(entry: dict[str, Any]) -> str:
    return f"thumbs/{entry['sha256'][:2]}/{entry['sha256'][:24]}.jpg"


@pytest.mark.browser
def test_default_view_shows_every_model_side_by_side(sweep135: Path):
    """The 135-job sweep opens as one grid per seed with all four models across and every job present."""
    with chromium() as (browser, errors):
        page = _open(browser, errors, (sweep135 / "report/index.html").as_uri())
        assert page.locator("section.page h2").all_text_contents() == [
            "seed = 1",
            "seed = 2",
            "seed = 3",
        ]
        first = page.locator("section.page").first
        assert first.locator("th.col").all_text_contents() == MODELS
        assert first.locator("th.row").all_text_contents() == ["cat", "fuji", "tea"]
        assert page.locator(".item").count() == 135 and page.locator(".cell.na").count() == 0
        assert page.locator(".item img").count() == 135
    assert errors == []


@pytest.mark.browser
def test_axes_filter_reload_and_keyboard(sweep135: Path):
    """X = aspect_ratio, Y = model, seed = 2: exactly the 12 cells and 45 pictures expected, each
    the right thumbnail; the URL reopens the same view; arrows, Enter and Esc work."""
    rows = _rows(sweep135)
    expected: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        if r.seed == 2:
            expected.setdefault((r.model, r.axes["aspect_ratio"]), set()).add(_thumb(r.files[0]))
    with chromium() as (browser, errors):
        page = _open(browser, errors, (sweep135 / "report/index.html").as_uri())
        page.select_option("select[name=x]", "aspect_ratio")
        page.select_option("select[name=y]", "model")
        page.click("#filters details[data-dim=seed] summary")
        page.uncheck("#filters details[data-dim=seed] input[value='1']")
        page.uncheck("#filters details[data-dim=seed] input[value='3']")

        def check(page: Any) -> None:
            assert page.locator("section.page").count() == 1
            assert page.locator("th.col").all_text_contents() == RATIOS
            assert page.locator("th.row").all_text_contents() == MODELS
            assert page.locator(".cell").count() == 12 and page.locator(".cell.na").count() == 0
            assert page.locator(".item").count() == 45
            seen = page.evaluate("""() => [...document.querySelectorAll('tbody tr')].map(tr => [
                tr.querySelector('th').textContent,
                [...tr.querySelectorAll('.cell')].map(c => [...c.querySelectorAll('img')].map(i => i.getAttribute('src')))])""")
            got = {
                (model, RATIOS[c]): set(srcs)
                for model, cells in seen
                for c, srcs in enumerate(cells)
            }
            assert got == expected

        check(page)
        url = page.url
        assert "x=aspect_ratio" in url and "only.seed=2" in url
        page.reload()
        page.wait_for_selector("body[data-ready]")
        check(page)
        other = _open(browser, errors, url)  # a shared link, opened fresh
        check(other)
        assert other.locator("select[name=x]").input_value() == "aspect_ratio"

        # Keyboard: the cursor starts at the first cell; arrows move it; Enter opens; Esc closes.
        other.locator("body").press("ArrowRight")
        other.keyboard.press("ArrowDown")
        cur = other.locator(".cell.cur")
        assert (cur.get_attribute("data-r"), cur.get_attribute("data-c")) == ("1", "1")
        other.keyboard.press("Enter")
        other.wait_for_selector("#detail:not([hidden])")
        facts = other.locator("#detail-facts").inner_text()
        assert "imagen" in facts and "16:9" in facts and "request id" in facts and "UTC" in facts
        assert "$0.0400" in facts
        assert other.locator("#detail img").count() == 1
        before = other.locator("#detail .where").inner_text()
        other.keyboard.press("ArrowRight")
        assert other.locator("#detail .where").inner_text() != before
        other.keyboard.press("Escape")
        assert other.locator("#detail").is_hidden()
    assert errors == []


@pytest.mark.browser
def test_size_slider_fit_and_detail_of_a_failure(sweep: Path, tmp_path: Path):
    """The slider and fit-to-screen resize cells; a failed cell shows its reason in the grid and
    in the large view; the large view gives prompt text, exact input and readable times."""
    report.build(sweep)
    with chromium() as (browser, errors):
        page = _open(browser, errors, (sweep / "report/index.html").as_uri())
        width = lambda: page.locator(".item").first.bounding_box()["width"]  # noqa: E731
        page.locator("input[name=size]").fill("320")
        assert width() == pytest.approx(320, abs=1) and "size=320" in page.url
        page.click("button[name=fit]")
        fitted = width()
        assert fitted != 320
        table = page.locator("table.grid").first.bounding_box()
        assert table["x"] + table["width"] <= 1400
        shown = page.locator(".item.failed").first.inner_text()
        assert shown.startswith("failed: ") and "HTTP 404" in shown
        page.locator(".item.failed").first.click()
        facts = page.locator("#detail-facts").inner_text()
        assert "HTTP 404" in facts and "a cat" in facts and '"prompt": "a cat"' in facts
        page.keyboard.press("Escape")
        page.locator(".item img").first.click()
        page.wait_for_selector("#detail:not([hidden]) img")
        page.wait_for_function("document.querySelector('#detail img').naturalWidth > 0")
    assert errors == []


@pytest.mark.browser
def test_design_sweep_default_view_screenshot(tmp_path: Path):
    """manifests/design-sweep.yaml: both models side by side in one grid; a screenshot is saved."""
    with background_emulator(service=FAST) as emu:
        code, _, err = cli(
            "run",
            str(MANIFESTS / "design-sweep.yaml"),
            "--provider",
            emu.url,
            "--output",
            str(tmp_path),
            "--quiet",
            env={"FAL_KEY": "k"},
        )
    assert code == 0, err
    run = tmp_path / "design-sweep"
    report.build(run)
    with chromium() as (browser, errors):
        page = _open(browser, errors, (run / "report/index.html").as_uri())
        assert page.locator("table.grid").count() == 1
        assert page.locator("th.col").all_text_contents() == ["recraft", "ideogram"]
        # 28 planned jobs, all shown; the excluded combination is not a "pending" placeholder.
        assert page.locator(".item").count() == page.locator(".item.downloaded").count() == 28
        page.wait_for_function(
            "[...document.querySelectorAll('.item img')].slice(0, 6).every(i => i.complete && i.naturalWidth > 0)"
        )
        shot = _screens(tmp_path) / "design-sweep.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
    assert errors == []
    assert shot.stat().st_size > 10_000


def _hostile_run(folder: Path) -> Path:
    """A run whose every text field is hostile: ids, prompt, axis names and values, request ids,
    failure reasons (written through the store, as a run would)."""
    from renderer.provider.emulator.pictures import render

    run = folder / "hostile"
    store = SQLiteStore(run)
    jobs = []
    for n, text in enumerate(HOSTILE):
        axes = {"style": text, "aspect_ratio": "1:1" if n % 2 else text}
        jobs.append(
            Job(
                n,
                f"key-{n}-{text}",
                f"acme/{text}",
                text,
                f"{text}-{n % 3}",
                n,
                axes,
                {"prompt": text, "seed": n, "style": text},
                f"m/{n}/s{n}",
                1,
                (text,),
                "m.yaml:1",
            )
        )
    store.sync_plan(jobs)
    for n, job in enumerate(jobs):
        store.submitted(job.key, HOSTILE[n], "u", "u", "u")
        if n % 3 == 2:
            store.failed(job.key, HOSTILE[(n + 1) % len(HOSTILE)], "server")
            continue
        data = render("acme/x", job.input["prompt"], n, 0, (96, 64 + 16 * n), "png")[0]
        rel = f"m/{n}/s{n}-0.png"
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
        store.completed(job.key, {"images": [], "seed": n})
        store.downloaded(
            job.key,
            [
                {
                    "path": rel,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "width": 96,
                    "height": 64 + 16 * n,
                }
            ],
        )
    store.close()
    return run


@pytest.mark.browser
def test_hostile_text_stays_text(tmp_path: Path):
    """</script>, <!--, attribute breakers, RTL marks and emoji in every field: the page works, no
    console error, every job is present, and the text is shown as text."""
    run = _hostile_run(tmp_path)
    report.build(run, row_axis="model", col_axis="style")
    with chromium() as (browser, errors):
        page = _open(browser, errors, (run / "report/index.html").as_uri())
        assert page.evaluate("window.pwned") is None
        assert page.locator(".item").count() == len(HOSTILE)
        assert set(page.locator("th.col").all_text_contents()) == set(HOSTILE)
        assert (
            page.locator("img[src=x]").count() == 0
            and page.locator("script:not([src])").count() == 2
        )
        # The only other scripts are the report's own data chunks.
        sources = page.locator("script[src]").evaluate_all("l => l.map(s => s.getAttribute('src'))")
        assert sources and all(re.fullmatch(r"data/[a-z0-9-]+\.js", s) for s in sources)
        assert page.locator(".item.failed").count() == 2
        assert page.locator(".item.failed").first.inner_text().startswith("failed: ")
        page.wait_for_function(
            "[...document.querySelectorAll('.item img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        for n in range(len(HOSTILE)):
            page.locator(".item").nth(n).click()
            facts = page.locator("#detail-facts").inner_text()
            page.keyboard.press("Escape")
            assert any(h in facts for h in HOSTILE)
        # Every hostile value is offered as a filter value, verbatim.
        page.click("#filters details[data-dim=prompt] summary")
        page.wait_for_selector("#filters details[data-dim=prompt] input")
        values = page.locator("#filters details[data-dim=prompt] input").evaluate_all(
            "l => l.map(i => i.value)"
        )
        assert set(values) == {f"{t}-{n % 3}" for n, t in enumerate(HOSTILE)}
        page.goto(page.url)  # the fragment with hostile values in it reopens the view
        page.wait_for_selector("body[data-ready]")
        assert (
            page.locator(".item").count() == len(HOSTILE) and page.evaluate("window.pwned") is None
        )
    assert errors == []


# ---------------------------------------------------------------- template variables as axes

TEMPLATED = {
    "vars": {"color": ["red", "blue", "green"], "shape": ["cube", "cone"]},
    "prompts": [{"id": "toy", "text": "a {color} {shape}, {matte|glossy} finish"}],
    "models": [{"endpoint": "fal-ai/flux-1/schnell", "label": "flux"}],
    "seeds": [1],
}


@pytest.fixture(scope="module")
def templated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _render(tmp_path_factory.mktemp("templated"), TEMPLATED)


def test_template_variables_are_dimensions_and_sheets(templated: Path, tmp_path: Path):
    """Each variable and the alternation are dimensions; X = color, Y = shape makes one sheet
    whose rows are shape × finish (the other dimension that varies)."""
    sp = report.space(_rows(templated))
    assert sp.names == ["prompt", "model", "color", "shape", "alt1", "seed"]
    assert sp.values[sp.index("color")] == ["red", "blue", "green"]
    done = report.build(templated, row_axis="shape", col_axis="color")
    assert done["cells"] == 12 and len(done["sheets"]) == 1
    layout = report.layout_of(sp, report.default_view(sp, "shape", "color"))
    arranged = report_sheets.arrange(layout, sp.cols)
    (sheet,) = report_sheets.sheets(layout, arranged, lambda n: ("downloaded", None, ""), 4096)
    assert sheet.cols == ["red", "blue", "green"]
    assert sorted(tuple(r) for r in sheet.rows) == sorted(
        (f"shape: {s}", f"alt1: {f}") for s in ("cube", "cone") for f in ("matte", "glossy")
    )
    assert len(sheet.cells) == 12


@pytest.mark.browser
def test_template_variables_on_x_and_y(templated: Path):
    """X = color, Y = shape, finish = matte: exactly the 6 cells expected, each holding the one
    image whose prompt resolved to that colour and shape."""
    rows = _rows(templated)
    expected = {
        (r.axes["shape"], r.axes["color"]): {_thumb(r.files[0])}
        for r in rows
        if r.axes["alt1"] == "matte"
    }
    assert len(expected) == 6
    report.build(templated)
    with chromium() as (browser, errors):
        page = _open(browser, errors, (templated / "report/index.html").as_uri())
        page.select_option("select[name=x]", "color")
        page.select_option("select[name=y]", "shape")
        page.click("#filters details[data-dim=alt1] summary")
        page.uncheck("#filters details[data-dim=alt1] input[value='glossy']")
        assert page.locator("th.col").all_text_contents() == ["red", "blue", "green"]
        assert page.locator("th.row").all_text_contents() == ["cube", "cone"]
        assert page.locator(".cell").count() == 6 and page.locator(".cell.na").count() == 0
        assert page.locator(".item").count() == 6
        seen = page.evaluate("""() => [...document.querySelectorAll('tbody tr')].map(tr => [
            tr.querySelector('th').textContent,
            [...tr.querySelectorAll('.cell')].map(c => [...c.querySelectorAll('img')].map(i => i.getAttribute('src')))])""")
        got = {
            (shape, ["red", "blue", "green"][c]): set(srcs)
            for shape, cells in seen
            for c, srcs in enumerate(cells)
        }
        assert got == expected
        assert "x=color" in page.url and "y=shape" in page.url
    assert errors == []


@pytest.mark.browser
def test_a_report_in_many_chunks_loads_what_it_shows(
    sweep135: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """10-job chunks, every dimension's labels in label files and 8 cells drawn at a time: the
    first screen (seed 1, cat and fuji) reads only the chunks that hold it; "more rows" draws the
    rest until all 135 jobs are shown; a typed filter, its shared link and the large view work."""
    copy = tmp_path / "run"
    shutil.copytree(sweep135, copy)
    shutil.rmtree(copy / "report")
    for name, value in (("CHUNK", 10), ("LARGE", 2), ("LABELS", 2), ("BUDGET", 8)):
        monkeypatch.setattr(report, name, value)
    report.build(copy)
    assert len(list((copy / "report/data").glob("i-*.js"))) == 14
    with chromium() as (browser, errors):
        # Big cells in a short window: the first two rows reach past what scrolling would draw.
        page = browser.new_page(viewport={"width": 1400, "height": 400})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((copy / "report/index.html").as_uri() + "#size=640")
        page.wait_for_selector("body[data-ready]")
        loaded = lambda: page.locator("script[src^='data/i-']").evaluate_all(  # noqa: E731
            "l => l.map(s => s.getAttribute('src')).sort()"
        )
        # Jobs are prompt-major: cat and fuji are jobs 0-89, chunks 0-8; tea's chunks wait.
        assert loaded() == [f"data/i-{k:05d}.js" for k in range(9)]
        assert page.locator("section.page h2").all_text_contents() == ["seed = 1"]
        assert page.locator("th.row").all_text_contents() == ["cat", "fuji"]
        assert page.locator("th.col").all_text_contents() == MODELS
        assert page.locator(".item").count() == 30 and page.locator(".item img").count() == 30
        for _ in range(100):  # scrolling to the end draws the next rows, until there are none
            if not page.locator("button[name=more]").count():
                break
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_timeout(50)
        assert page.locator(".item").count() == 135
        assert page.locator("section.page h2").all_text_contents() == [
            "seed = 1",
            "seed = 2",
            "seed = 3",
        ]
        assert page.locator("section.page").first.locator("th.row").all_text_contents() == [
            "cat",
            "fuji",
            "tea",
        ]
        page.click("#filters details[data-dim=seed] summary")
        page.fill("#filters details[data-dim=seed] textarea", "2")
        page.click("#filters details[data-dim=seed] button")
        page.wait_for_function("location.hash.includes('only.seed=2')")
        page.wait_for_function("document.querySelectorAll('section.page').length === 1")
        assert page.locator("section.page h2").all_text_contents() == ["seed = 2"]
        other = _open(browser, errors, page.url)  # the shared link
        assert other.locator("section.page h2").all_text_contents() == ["seed = 2"]
        assert other.locator(".item").count() == 30
        other.locator(".item img").first.click()
        other.wait_for_selector("#detail:not([hidden]) #detail-facts")
        facts = other.locator("#detail-facts").inner_text()
        assert "a cat on a windowsill" in facts and "request id" in facts
    assert errors == []
