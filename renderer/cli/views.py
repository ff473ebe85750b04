"""Commands that read a finished run: `report` (contact sheets), `export` (Parquet / WebDataset)
and `diff` (two runs compared image by image; exit 1 on any change, a CI gate).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

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
        done = export.export(source, a.format, Path(a.out) if a.out else None, a.shard_size)
    if a.json:
        ctx.print(json.dumps(done, indent=2))
        return 0
    ctx.print(
        f"export: {done['rows']} images, {done['bytes']:,} bytes in {len(done['shards'])} {a.format} "
        f"shard(s) → {done['dir']}/"
    )
    return 0


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
        )
    ctx.print(
        f"report: {done['index']} ({done['pages']} page(s), {done['cells']} cells, "
        f"{done['thumbnails_made']} new thumbnails)"
    )
    for sheet in done["sheets"]:
        ctx.print(f"sheet: {sheet}")
    return 0


def cmd_diff(ctx: Context) -> int:
    from renderer.view import compare

    a = ctx.args
    mapping = None
    if a.map:
        mapping = {}
        for item in a.map:
            left, sep, right = item.partition("=")
            if not sep or not left or not right:
                raise UsageError(f"--map {item!r}: use MODEL_A=MODEL_B (labels or endpoint ids)")
            mapping[left] = right
    if a.html:
        folder = Path(a.html).parent
        if not folder.is_dir():
            raise UsageError(
                f"--html {a.html}: the folder {folder} does not exist",
                hint="create it first, or write the page into an existing folder",
            )
    with (
        _source(ctx, a.run_a, a.state_a) as run_a,
        _source(ctx, a.run_b, a.state_b) as run_b,
    ):
        if a.html and (run_a.remote or run_b.remote or run_a.state or run_b.state):
            raise UsageError(
                "--html: the side-by-side page is made for runs with local state and images only",
                hint="compare without --html (the verdicts are the same), or copy the runs to disk",
            )
        result = compare.compare(
            run_a,
            run_b,
            mapping=mapping,
            hash_limit=a.hash_limit,
            rmse_limit=a.rmse_limit,
        )
    if a.html:
        compare.write_html(result, Path(a.html))
    if a.json:
        ctx.print(json.dumps(result, indent=2))
    else:
        counts = result["counts"]
        ctx.print("  ".join(f"{k}={v}" for k, v in counts.items()))
        for pair in result["pairs"]:
            if pair["verdict"] in ("changed", "missing"):
                metrics = (
                    ""
                    if pair["hash_distance"] is None
                    else f"  dHash {pair['hash_distance']}  RMSE {pair['rmse']:.3f}"
                )
                ctx.print(f"{pair['verdict']:8} {pair['label']} #{pair['index']}{metrics}")
        if a.html:
            ctx.print(f"html: {a.html}")
    # A CI gate: anything changed, or an image missing on either side, fails it.
    counts = result["counts"]
    return (
        1
        if counts["changed"] or counts["missing"] or counts["only_in_a"] or counts["only_in_b"]
        else 0
    )
