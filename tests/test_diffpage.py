"""`renderer diff --html`: the viewer in comparison mode (side by side, overlay, flicker, wipe; bands
and their filters; review decisions exported for `renderer baseline approve`)."""

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


def _render(folder: Path, *flags: str, **emulator: Any) -> Path:
    """The SPEC manifest rendered into folder/out on an emulator (`flags`: more `run` flags)."""
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
            *flags,
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
    """Every pair is an item with its band first among the dimensions (fail first); pairs that
    differ get a difference image and full-size copies; identical ones only thumbnails."""
    result = compare.compare(*runs)
    page = diffpage.write(result, tmp_path / "d.html")
    data = _data(page)
    assert data["mode"] == "diff" and [d["name"] for d in data["dims"]][:3] == [
        "band",
        "prompt",
        "model",
    ]
    assert data["dims"][0]["values"] == ["fail", "pass"]
    assert data["view"] == {"x": "model", "y": "prompt", "page": "band"}
    assert data["bands"].startswith("pass: SSIM ≥") and data["run_b"] == str(runs[1])
    assert len(data["items"]) == 16
    failed = [i for i in data["items"] if i["verdict"] == "fail"]
    assert len(failed) == 8 and all(i["diff"] and i["a"]["full"] and i["b"]["full"] for i in failed)
    assert {data["dims"][2]["values"][i["v"][2]] for i in failed} == {"imagen"}
    assert len({i["id"] for i in data["items"]}) == 16
    for item in data["items"]:
        assert (tmp_path / item["a"]["thumb"]).is_file() and (
            tmp_path / item["b"]["thumb"]
        ).is_file()
        assert item["diff"] is None or (tmp_path / item["diff"]).is_file()


def test_a_page_against_a_baseline(runs: tuple[Path, Path], tmp_path: Path):
    """A baseline as side A (no run database there): the page is built from the pairs alone and
    says which baseline it compares with."""
    from renderer.view import baseline

    baseline.set_baseline(tmp_path / "b", runs[0], name="base")
    result = compare.compare(baseline.load(tmp_path / "b", "base"), runs[1])
    data = _data(diffpage.write(result, tmp_path / "d.html"))
    assert data["baseline"] == "base" and data["summary"].startswith("baseline base → ")
    assert len(data["items"]) == 16 and all(
        (tmp_path / i["a"]["thumb"]).is_file() for i in data["items"]
    )


def test_rewriting_the_page_removes_pictures_it_no_longer_uses(
    runs: tuple[Path, Path], tmp_path: Path
):
    """A later comparison written to the same page leaves no pictures of the earlier one behind."""
    diffpage.write(compare.compare(*runs), tmp_path / "d.html")
    before = set(os.listdir(tmp_path / "d-images"))
    diffpage.write(compare.compare(runs[0], runs[0]), tmp_path / "d.html")
    after = set(os.listdir(tmp_path / "d-images"))
    assert after < before and not any(name.startswith("d-") for name in after)
    assert all(i["verdict"] == "pass" for i in _data(tmp_path / "d.html")["items"])


def _browser(p: Any) -> Any:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    return p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])


@pytest.mark.browser
def test_diff_page_in_chromium(runs: tuple[Path, Path], tmp_path: Path):
    """Failing pairs come first as A | B | difference; overlay, flicker and wipe stack A and B (kept
    in the URL); the wipe slider moves B's edge; the band chips filter pairs; the large view shows
    all three pictures and the band; a screenshot is saved."""
    playwright = pytest.importorskip("playwright.sync_api")
    code, _, _ = cli("diff", str(runs[0]), str(runs[1]), "--html", str(tmp_path / "d.html"))
    assert code == 1
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((tmp_path / "d.html").as_uri())
        page.wait_for_selector("body[data-ready]")
        assert page.locator("section.page h2").all_text_contents() == [
            "band = fail",
            "band = pass",
        ]
        first = page.locator("section.page").first
        assert first.locator(".verdict").all_text_contents() == ["fail"] * 8
        assert first.locator("th.col").all_text_contents() == ["imagen"]
        assert first.locator(".item.diff").first.locator("img").count() == 3
        page.wait_for_function(
            "[...document.querySelectorAll('section.page:first-child img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        shot = Path(os.environ.get("RENDERER_SCREENS") or tmp_path) / "diff.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        for mode in ("overlay", "flicker", "wipe"):
            page.select_option("select[name=mode]", mode)
            assert page.locator(f".item.diff.stacked.{mode}").count() == 16
            assert f"mode={mode}" in page.url
        assert page.locator(".wipe-line").count() == 16
        page.wait_for_selector(".item.diff.wipe img.b")
        clip = "getComputedStyle(document.querySelector('.item.diff.wipe img.b')).clipPath"
        page.fill("input[name=wipe]", "0.25")
        page.dispatch_event("input[name=wipe]", "input")
        assert "25%" in page.evaluate(clip) and "wipe=0.25" in page.url
        page.reload()
        page.wait_for_selector("body[data-ready]")
        assert page.locator(".item.diff.stacked.wipe").count() == 16
        page.select_option("select[name=mode]", "flicker")
        animation = (
            "getComputedStyle(document.querySelector('.item.diff.flicker img.b')).animationName"
        )
        assert page.evaluate(animation) == "flick"
        page.select_option("select[name=mode]", "trio")
        assert page.locator(".item.diff.stacked").count() == 0
        # The band chips: hiding 'pass' leaves the 8 failing pairs; hiding 'fail' too leaves none.
        assert page.locator("#controls .chip").all_text_contents() == ["fail 8", "pass 8"]
        page.click("#controls .chip[data-band=pass]")
        assert page.locator(".item.diff").count() == 8
        assert page.locator(".item.diff[data-band=fail]").count() == 8
        assert "only.band=fail" in page.url
        page.click("#controls .chip[data-band=fail]")
        assert page.locator(".item.diff").count() == 0
        page.click("#controls .chip[data-band=pass]")
        assert page.locator(".item.diff").count() == 8
        assert page.locator(".item.diff[data-band=pass]").count() == 8
        page.click("#controls .chip[data-band=fail]")
        assert page.locator(".item.diff").count() == 16
        page.locator(".item.diff").first.click()
        captions = page.locator("#detail figcaption").all_text_contents()
        assert [c.split(":")[0] for c in captions] == ["A", "B", "difference ×4"]
        facts = page.locator("#detail-facts").inner_text()
        assert "fail" in facts and "SSIM" in facts and "pair id" in facts
        browser.close()
    assert errors == []
    assert shot.stat().st_size > 10_000


@pytest.mark.browser
def test_review_decisions_export_and_apply(runs: tuple[Path, Path], tmp_path: Path):
    """Accepting pairs in the large view marks them, the export button downloads a decisions file,
    and `renderer baseline approve --decisions` applies it: those pairs then pass."""
    playwright = pytest.importorskip("playwright.sync_api")
    base = tmp_path / "baselines"
    assert cli("baseline", "set", str(runs[0]), "--name", "base", "--baselines", str(base))[0] == 0
    code, _, _ = cli(
        "diff",
        "--baseline",
        "base",
        str(runs[1]),
        "--baselines",
        str(base),
        "--html",
        str(tmp_path / "d.html"),
    )
    assert code == 1
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((tmp_path / "d.html").as_uri())
        page.wait_for_selector("body[data-ready]")
        page.locator(".item.diff[data-band=fail]").first.click()
        ids = []
        for _ in range(3):
            ids.append(
                page.locator("#detail-facts dd")
                .nth(page.locator("#detail-facts dt").all_text_contents().index("pair id"))
                .inner_text()
            )
            page.click("#detail button[name=accept]")
            page.click("#detail button:has-text('next →')")
        page.click("#detail button:has-text('close (Esc)')")
        assert page.locator(".item.accepted").count() == 3
        assert page.locator("#controls button[name=export]").inner_text() == "export decisions (3)"
        with page.expect_download() as info:
            page.click("#controls button[name=export]")
        saved = tmp_path / "decisions.json"
        info.value.save_as(str(saved))
        browser.close()
    assert errors == []
    exported = json.loads(saved.read_text())
    assert exported["baseline"] == "base" and sorted(exported["accept"]) == sorted(ids)
    code, out, err = cli(
        "baseline", "approve", str(runs[1]), "--decisions", str(saved), "--baselines", str(base)
    )
    assert code == 0 and "accepted 3 pair(s)" in out, err
    code, out, _ = cli(
        "diff", "--baseline", "base", str(runs[1]), "--baselines", str(base), "--json"
    )
    after = {p["id"]: p for p in json.loads(out)["pairs"]}
    assert all(after[i]["band"] == "pass" and after[i]["identical"] for i in ids)
    assert json.loads(out)["counts"]["fail"] == 5


@pytest.mark.browser
def test_hostile_text_in_a_comparison(tmp_path: Path):
    """A run full of hostile text compared with itself: the page works, no console error, every pair shown."""
    from .test_report import HOSTILE, _hostile_run

    run = _hostile_run(tmp_path)
    page_path = diffpage.write(compare.compare(run, run), tmp_path / "d.html")
    playwright = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = _browser(p)
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


def test_pairs_rendered_in_neither_run_are_a_band_of_their_own(tmp_path: Path):
    """A partial run compared with itself: its unrendered pairs are on the page under "not rendered", after what needs a decision and before pass, with no pictures."""
    run = _render(tmp_path / "part", "--max-jobs", "3")
    result = compare.compare(run, run)
    assert result["outcome"] == "pass" and result["counts"]["not_rendered"] == 13
    data = _data(diffpage.write(result, tmp_path / "d.html"))
    assert data["dims"][0]["values"] == ["not rendered", "pass"]
    assert "not rendered 13" in data["summary"]
    unrendered = [i for i in data["items"] if i["verdict"] == "not rendered"]
    assert len(unrendered) == 13 and all(i["a"] is None and i["b"] is None for i in unrendered)
