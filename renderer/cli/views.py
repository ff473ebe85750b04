"""Commands that read a finished run: `report` (contact sheets), `export` (Parquet / WebDataset)
`diff` (two runs, or a baseline and a run, compared image by image: a CI gate) and `baseline`
(set, approve, list).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.cli.context import Context
from renderer.errors import UsageError

if TYPE_CHECKING:
    from renderer.output.source import RunSource


def _source(ctx: Context, run: str, state: str | None = None) -> RunSource:
    """The run named on the command line, with `state` (else --state, else RENDERER_STATE) and the AWS variables."""
    from renderer import api
    from renderer.output.source import open_source

    given = state or ctx.args.state or ctx.env.get("RENDERER_STATE") or None
    return open_source(run, api.resolve_state(given), ctx.env)


def cmd_export(ctx: Context) -> int:
    from renderer.output import export

    a = ctx.args
    with _source(ctx, a.run) as source:
        from renderer.settings import is_remote

        out = (a.out if is_remote(a.out) else Path(a.out)) if a.out else None
        done = export.export(source, a.format, out, a.shard_size, ctx.env)
    if a.json:
        ctx.print(json.dumps(done, indent=2))
        return 0
    ctx.print(
        f"export: {done['rows']} images, {done['bytes']:,} bytes in {len(done['shards'])} {a.format} "
        f"shard(s) → {done['dir']}/"
    )
    return 0


SHEETS_LISTED = 20  # sheets `report` names one by one


def cmd_report(ctx: Context) -> int:
    from renderer.view import report

    a = ctx.args
    axes = a.axes.split(",")
    if len(axes) != 2 or not all(axes):
        raise UsageError(
            f"--axes {a.axes!r}: give two axes, ROW,COL",
            hint="e.g. --axes prompt,model or seed,model",
        )
    with _source(ctx, a.run) as source:
        done = report.build(
            source,
            row_axis=axes[0],
            col_axis=axes[1],
            tags=set(a.tag) or None,
            models=set(a.model) or None,
            seeds=set(a.seed) or None,
            max_side=a.max_sheet,
            out=a.out,
            env=ctx.env,
            sheets=a.sheets,
        )
    ctx.print(
        f"report: {done['index']} ({done['pages']} page(s), {done['cells']} cells, "
        f"{done['thumbnails_made']} new thumbnails, {len(done['sheets'])} sheets of which "
        f"{done['sheets_drawn']} drawn)"
    )
    if done["sheets_skipped"]:
        ctx.print(
            f"sheets: not drawn: the default view makes {done['sheets_skipped']:,} PNG sheets "
            f"(more than {report.SHEETS_AUTO}); the viewer shows every image"
        )
        ctx.note("hint: --sheets draws them all; --tag/--model/--seed narrow the view")
    # A million-image run has tens of thousands of sheets: name a few, and the folder.
    for sheet in done["sheets"][:SHEETS_LISTED]:
        ctx.print(f"sheet: {sheet}")
    if len(done["sheets"]) > SHEETS_LISTED:
        ctx.print(f"sheets: {len(done['sheets']) - SHEETS_LISTED} more in {done['where']}")
    return 0


def _mapping(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    mapping = {}
    for item in items:
        left, sep, right = item.partition("=")
        if not sep or not left or not right:
            raise UsageError(f"--map {item!r}: use MODEL_A=MODEL_B (labels or endpoint ids)")
        mapping[left] = right
    return mapping


def _flags(a: Any) -> dict[str, Any]:
    """The band edges given as flags (--pass-ssim, ...)."""
    from renderer.view.bands import EDGES

    return {k: getattr(a, k) for k in EDGES if getattr(a, k, None) is not None}


def _folder_exists(flag: str, value: str | None) -> None:
    if value:
        folder = Path(value).parent
        if not folder.is_dir():
            raise UsageError(
                f"{flag} {value}: the folder {folder} does not exist",
                hint="create it first, or write the file into an existing folder",
            )


DIFF_LISTED = 20  # lines `diff` prints of each kind (fail, review, only in A, only in B)


def _listing(ctx: Context, result: dict[str, Any], shown: Any) -> None:
    """The pairs that are not `pass`, at most DIFF_LISTED of each kind, then how many more: the
    output of a million-pair diff stays a screen (--json and --html hold every pair). One pass
    over each list, which stays on disk."""
    if result["counts"].get("not_rendered"):
        ctx.print(
            f"not rendered in either run: {result['counts']['not_rendered']:,} pairs, not compared"
        )
    shown_of = {"fail": 0, "review": 0}
    for pair in result["pairs"]:
        band = pair["band"]
        if band == "pass" or shown_of[band] >= DIFF_LISTED:
            continue
        shown_of[band] += 1
        what = "; ".join(
            f"{k} {shown(va)} → {shown(vb)}" for k, (va, vb) in pair["differs"].items()
        )
        ctx.print(
            f"{band:6} {pair['label']} #{pair['index']}  {pair['reason']}"
            + (f"  ({what})" if what else "")
            + f"  id {pair['id']}"
        )
    more = [(band, result["counts"][band] - n) for band, n in shown_of.items()]
    for key, side in (("only_in_a", "A"), ("only_in_b", "B")):
        for item in result[key][:DIFF_LISTED]:
            ctx.print(f"only in {side}: {item['label']}  id {item['id']}")
        more.append((f"only in {side}", len(result[key]) - DIFF_LISTED))
    for kind, left in more:
        if left > 0:
            ctx.print(f"{kind}: … and {left:,} more: --json / --html for all")


def cmd_diff(ctx: Context) -> int:
    from renderer.view import baseline, ciout, compare

    a = ctx.args
    mapping = _mapping(a.map)
    for flag, value in (("--html", a.html), ("--junit", a.junit), ("--summary", a.summary)):
        _folder_exists(flag, value)
    wanted = 1 if a.baseline else 2
    if len(a.runs) != wanted:
        raise UsageError(
            f"diff --baseline {a.baseline}: give one run to compare with it (got {len(a.runs)})"
            if a.baseline
            else f"diff: give two runs (got {len(a.runs)})",
            hint="renderer diff RUN_A RUN_B, or renderer diff --baseline NAME RUN",
        )
    with contextlib.ExitStack() as opened:
        # Each run from its directory, its bucket folder or its manifest, with its own state.
        sources = [
            opened.enter_context(_source(ctx, run, state))
            for run, state in zip(
                a.runs, (a.state_b,) if a.baseline else (a.state_a, a.state_b), strict=True
            )
        ]
        side_a: Any = (
            baseline.load(baseline.folder(a.baselines, ctx.env), a.baseline)
            if a.baseline
            else compare.load_run(sources[0])
        )
        side_b = compare.load_run(sources[-1])
        judge = compare.judging_bands(side_a, side_b, _flags(a))
        result = compare.compare(side_a, side_b, mapping=mapping, bands=judge)
        page = Path(a.html) if a.html else None
        if page is not None:
            # Images come through each run's source (a bucket's are fetched and checked by
            # sha256); a baseline's are in its own folder on disk.
            locators = [s.local_file for s in sources]
            files = (None, locators[0]) if a.baseline else (locators[0], locators[1])
            compare.write_html(result, page, files)
    if a.junit:
        ciout.junit(result, Path(a.junit))
    if a.summary:
        from renderer.view import diffpage

        thumbs = diffpage.thumb_paths(result, page) if page is not None else None
        ciout.summary(result, Path(a.summary), page=page, thumbs=thumbs)
    if a.json:
        from renderer.view.pairing import json_chunks

        for piece in json_chunks(result):  # a million pairs are never one string
            ctx.out.write(piece)
        ctx.print()
    else:
        counts = result["counts"]
        ctx.print(f"{result['outcome']}: " + "  ".join(f"{k}={v}" for k, v in counts.items()))
        from renderer.view.bands import Bands

        ctx.print("bands: " + Bands.from_json(result["bands"]).describe())
        _listing(ctx, result, ciout.shown)
        for flag, value in (("html", a.html), ("junit", a.junit), ("summary", a.summary)):
            if value:
                ctx.print(f"{flag}: {value}")
    return compare.EXIT[result["outcome"]]


def cmd_baseline(ctx: Context) -> int:
    from renderer.view import baseline
    from renderer.view.bands import Bands

    a = ctx.args
    root = baseline.folder(a.baselines, ctx.env)
    if a.baseline_command == "set":
        done = baseline.set_baseline(
            root,
            Path(a.run),
            name=a.name,
            repeat=Path(a.repeat) if a.repeat else None,
            flags=_flags(a),
        )
        if a.json:
            ctx.print(json.dumps(done, indent=2))
            return 0
        ctx.print(
            f"baseline {done['name']}: {done['jobs']} jobs, {done['images']} images → {done['dir']}"
            + (" (replaced)" if done["replaced"] else "")
        )
        ctx.print("bands: " + Bands.from_json(done["bands"]).describe())
        if done["calibration"] is None:
            ctx.print(
                "not calibrated: pass --repeat RUN2 (the same manifest rendered again) to measure "
                "the provider's noise and derive the bands from it"
            )
        return 0
    if a.baseline_command == "approve":
        ids = list(a.pair or [])
        name = a.name
        if a.decisions:
            decisions = baseline.read_decisions(Path(a.decisions))
            ids += decisions["accept"]
            name = name or decisions.get("baseline")
        if not ids and not a.all_review:
            raise UsageError(
                "baseline approve: nothing to accept",
                hint="give --decisions FILE (exported from the diff page), --pair ID, or --all-review",
            )
        name = name or Path(a.run).resolve().name
        done = baseline.approve(root, name, Path(a.run), ids=ids, all_review=a.all_review)
        if a.json:
            ctx.print(json.dumps(done, indent=2))
        else:
            ctx.print(f"baseline {done['name']}: accepted {done['accepted']} pair(s) from {a.run}")
        return 0
    names = baseline.names(root)
    if a.json:
        ctx.print(json.dumps(names))
    else:
        for name in names:
            ctx.print(name)
        if not names:
            ctx.print(f"no baselines in {root}")
    return 0
