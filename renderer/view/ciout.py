"""What `renderer diff` hands a CI system: JUnit XML and a Markdown summary.

JUnit: one <testsuite name="renderer diff"> with one <testcase> per pair (classname = the model
label, name = the rest of the pair's coordinates), so CI shows every pair natively:
  pass    a plain testcase (its metrics and what differs in <system-out>);
  review  <skipped type="review">: not decided; a person looks at it (exit code 4);
  fail    <failure type="fail">: the metrics or the reason (exit code 1).
Coordinates only in A are failures ("missing in B"); coordinates only in B are review ("new").
Pairs rendered in neither run are not test cases (nothing was compared): their count is the
suite's `not_rendered` property and a sentence of the summary.
Markdown: the outcome, the counts, the bands and their source (calibration), then a table of
every pair that is not `pass`, with thumbnails and a link to the viewer page when one was written.
Both files are written atomically.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from renderer.view.bands import Bands


def _atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _differs_text(differs: dict[str, Any]) -> str:
    if not differs:
        return "inputs identical"
    return "; ".join(f"{k}: {shown(a)} → {shown(b)}" for k, (a, b) in differs.items())


def shown(value: Any) -> str:
    """A parameter's value as a person reads it: absent is '(not set)', strings quoted."""
    return "(not set)" if value is None else repr(value)


def _case_name(item: dict[str, Any]) -> str:
    axes = "".join(f" / {k}={v}" for k, v in sorted((item.get("axes") or {}).items()))
    return f"{item['prompt_id']}{axes} / seed {item['seed']} #{item.get('index', 0)} [{item['id']}]"


def junit(result: dict[str, Any], path: Path) -> Path:
    """JUnit XML, one testcase per pair (and per coordinate on one side only)."""
    counts = result["counts"]
    suite = ET.Element(
        "testsuite",
        {
            "name": "renderer diff",
            "tests": str(counts["pairs"] + counts["only_in_a"] + counts["only_in_b"]),
            "failures": str(counts["fail"] + counts["only_in_a"]),
            "errors": "0",
            "skipped": str(counts["review"] + counts["only_in_b"]),
        },
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("a", result.get("baseline") or result["run_a"]),
        ("b", result["run_b"]),
        ("outcome", result["outcome"]),
        ("bands", Bands.from_json(result["bands"]).describe()),
        ("not_rendered", counts.get("not_rendered", 0)),
    ):
        ET.SubElement(props, "property", {"name": key, "value": str(value)})
    for pair in result["pairs"]:
        case = ET.SubElement(
            suite, "testcase", {"classname": pair["model"], "name": _case_name(pair), "time": "0"}
        )
        text = f"{pair['reason']}; {_differs_text(pair['differs'])}; A: {pair['a']}; B: {pair['b']}"
        if pair["band"] == "fail":
            ET.SubElement(case, "failure", {"type": "fail", "message": pair["reason"]}).text = text
        elif pair["band"] == "review":
            ET.SubElement(
                case, "skipped", {"type": "review", "message": "review: " + pair["reason"]}
            ).text = text
        ET.SubElement(case, "system-out").text = text
    for side, key in (("B", "only_in_a"), ("A", "only_in_b")):
        for item in result[key]:
            case = ET.SubElement(
                suite,
                "testcase",
                {"classname": item["model"], "name": _case_name(item), "time": "0"},
            )
            message = f"missing in {side}: {item['label']}"
            if side == "B":
                ET.SubElement(case, "failure", {"type": "fail", "message": message})
            else:
                ET.SubElement(
                    case, "skipped", {"type": "review", "message": "new: " + item["label"]}
                )
    root = ET.Element(
        "testsuites", {k: suite.get(k, "") for k in ("tests", "failures", "errors", "skipped")}
    )
    root.append(suite)
    ET.indent(root)
    return _atomic(
        path,
        '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n",
    )


def _cell(text: Any) -> str:
    """Table-cell text: pipes and newlines would break the Markdown table, and text from a manifest
    (a prompt in `differs`) must not become markup where the summary is shown."""
    return (
        str(text)
        .replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("\n", " ")
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


def summary(
    result: dict[str, Any],
    path: Path,
    *,
    page: Path | None = None,
    thumbs: dict[str, tuple[str | None, str | None]] | None = None,
) -> Path:
    """The Markdown summary. `page`: the viewer page (linked); `thumbs`: pair id → (A, B) thumbnail
    paths relative to the page's folder, shown inline (paths are made relative to the summary)."""
    counts = result["counts"]
    bands = Bands.from_json(result["bands"])
    verdict = {"pass": "PASS", "review": "REVIEW NEEDED", "fail": "FAIL"}[result["outcome"]]
    a = f"baseline `{result['baseline']}`" if result.get("baseline") else f"`{result['run_a']}`"
    lines = [
        f"## renderer diff: {verdict}",
        "",
        f"{a} → `{result['run_b']}`: {counts['pairs']} pairs: **{counts['pass']} pass**, "
        f"**{counts['review']} review**, **{counts['fail']} fail**; "
        f"{counts['only_in_a']} only in A, {counts['only_in_b']} only in B.",
        "",
        f"Bands: {bands.describe()}.",
    ]
    if counts.get("not_rendered"):
        lines += ["", f"Not rendered in either run: {counts['not_rendered']} pairs, not compared."]
    cal = result.get("calibration")
    if cal:
        lines += [
            "",
            f"Calibration: {cal['pairs']} pairs rendered twice; provider noise: SSIM ≥ "
            f"{cal['ssim_min']:.4f} (median {cal['ssim_median']:.4f}), pHash ≤ {cal['phash_max']}.",
        ]
    here = path.parent.resolve()

    def rel(target: Path) -> str:
        return Path(os.path.relpath(target.resolve(), here)).as_posix()

    if page is not None:
        lines += ["", f"Viewer: [{page.name}]({rel(page)})"]
    rows = [p for p in result["pairs"] if p["band"] != "pass"]
    if rows or result["only_in_a"] or result["only_in_b"]:
        lines += [
            "",
            "| band | pair | what differs | SSIM | pHash | A | B |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
    order = {"fail": 0, "review": 1}
    for p in sorted(rows, key=lambda p: order.get(p["band"], 2)):
        images = []
        for n, side in enumerate(("A", "B")):
            thumb = (thumbs or {}).get(p["id"], (None, None))[n]
            if thumb and page is not None:
                images.append(f'<img src="{rel(page.parent / thumb)}" width="96" alt="{side}">')
            else:
                full = p["a"] if side == "A" else p["b"]
                root = Path(result["run_a"] if side == "A" else result["run_b"])
                images.append(f"[{side}]({rel(root / full)})" if full else "missing")
        lines.append(
            "| "
            + " | ".join(
                _cell(v)
                for v in (
                    p["band"],
                    f"{p['label']} #{p['index']} `{p['id']}`",
                    _differs_text(p["differs"]),
                    "n/a" if p["ssim"] is None else f"{p['ssim']:.4f}",
                    "n/a" if p["phash"] is None else p["phash"],
                )
            )
            + " | "
            + " | ".join(images)
            + " |"
        )
    for band, key, side in (("fail", "only_in_a", "A"), ("review", "only_in_b", "B")):
        for item in result[key]:
            lines.append(
                f"| {band} | {_cell(item['label'])} `{item['id']}` | only in {side} | n/a | n/a | "
                + ("present | missing |" if side == "A" else "missing | present |")
            )
    if result["outcome"] != "pass":
        target = result.get("baseline") or "NAME"
        lines += [
            "",
            f"Accept reviewed pairs into the baseline: `renderer baseline approve {result['run_b']} "
            f"--name {target} --decisions FILE` (exported from the viewer) or `--all-review`.",
        ]
    return _atomic(path, "\n".join(lines) + "\n")
