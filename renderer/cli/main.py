"""The command line: the argument parser and `main`. The cli package is the only code that prints.

`main(argv, stdout=…, stderr=…, environ=…)` returns an exit code; streams and environment are
injected so tests call it directly. Every error crosses `error_boundary` (boundary.py), which maps
it to one message, an optional `hint:` line and an exit code (2 bad input, 3 auth/billing, 130
interrupted). A traceback is printed only for a bug, or with --debug. The commands live in
modules by what they act on: models.py (schemas, models), plans.py (validate, plan), runs.py (run,
status, finalize), emulator.py, views.py (report, export, diff, baseline).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TextIO

from renderer import __version__, settings
from renderer.cli.boundary import Exit, error_boundary, leave
from renderer.cli.context import Context
from renderer.cli.emulator import cmd_emulator
from renderer.cli.models import cmd_models, cmd_schemas_build
from renderer.cli.plans import cmd_plan, cmd_validate
from renderer.cli.runs import cmd_finalize, cmd_run, cmd_status
from renderer.cli.views import cmd_baseline, cmd_diff, cmd_export, cmd_report
from renderer.errors import UsageError, closest
from renderer.manifest import load as manifest_mod


class _Parser(argparse.ArgumentParser):
    """argparse that reports through our streams and error boundary instead of sys.exit."""

    out: TextIO
    err: TextIO

    def error(self, message: str) -> NoReturn:
        hint = f"see `{self.prog} --help`"
        wrong = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if wrong:
            guess = closest(wrong.group(1), re.findall(r"'([^']*)'", wrong.group(2)))
            if guess:
                hint = f"did you mean `{self.prog} {guess}`? ({hint})"
        raise UsageError(f"{self.prog}: {message}", hint=hint)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self.err.write(message)
        raise Exit(status)

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            (self.err if file is sys.stderr else self.out).write(message)


def _number(setting: str) -> Callable[[str], Any]:
    """An argparse `type` that parses a flag with `settings.parse`."""

    def convert(text: str) -> Any:
        try:
            return settings.parse(setting, text)
        except settings.SettingError as exc:
            raise argparse.ArgumentTypeError(f"{exc.message} (allowed: {exc.allowed})") from None

    convert.__name__ = setting
    return convert


Command = Callable[[Context], int]
MODELS_DIR_HELP = (
    "where added models live (env RENDERER_MODELS; default ~/.local/share/renderer/models)"
)


def build_parser(out: TextIO, err: TextIO) -> _Parser:
    def parser(*args: Any, **kw: Any) -> _Parser:
        p = _Parser(*args, **kw)
        p.out, p.err = out, err
        return p

    root = parser(
        prog="renderer", description="Declarative batch renderer for fal.ai text-to-image models."
    )
    root.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    root.add_argument("--version", action="version", version=f"renderer {__version__}")
    sub = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, func: Command, help: str) -> _Parser:
        p = sub.add_parser(name, help=help, description=help)
        p.out, p.err = out, err
        p.set_defaults(func=func)
        return p

    p_schemas = command(
        "schemas", lambda ctx: 0, "generate the endpoint JSON Schemas from model documents"
    )
    schema_sub = p_schemas.add_subparsers(
        dest="schemas_command", metavar="ACTION", parser_class=_Parser
    )
    schema_sub.required = True
    p_build = schema_sub.add_parser(
        "build", help="read schemas/docs/ and write one schema per endpoint"
    )
    p_build.out, p_build.err = out, err
    p_build.set_defaults(func=cmd_schemas_build)
    p_build.add_argument("--dir", default="schemas", help="schema directory (default: ./schemas)")
    p_build.add_argument(
        "--check", action="store_true", help="exit 1 if the committed schemas are stale"
    )

    p_models = command(
        "models",
        cmd_models,
        "list endpoints, show one, add one (models add FILE|ENDPOINT), update, schema",
    )
    p_models.add_argument(
        "words",
        nargs="*",
        metavar="ACTION ARGS",
        help="(nothing): list; show ENDPOINT (or just ENDPOINT); add FILE|ENDPOINT…: add a model "
        "from its document or fal's OpenAPI URL; update [ENDPOINT…]: refresh fetched ones; "
        "schema: write the editors' manifest schema",
    )
    p_models.add_argument("--json", action="store_true", help="machine-readable output")
    p_models.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")
    p_models.add_argument(
        "--models-dir",
        help=MODELS_DIR_HELP,
    )
    p_models.add_argument(
        "--openapi-url",
        help="where `add ENDPOINT` downloads from (env RENDERER_OPENAPI_URL; default https://fal.ai)",
    )
    p_models.add_argument("--out", help="`models schema`: the file to write")

    p_validate = command(
        "validate", cmd_validate, "check manifests and every job they expand to; send nothing"
    )
    p_validate.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p_validate.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")
    p_validate.add_argument("--models-dir", help=MODELS_DIR_HELP)
    p_validate.add_argument(
        "--json",
        action="store_true",
        help="machine-readable result: problems with file, line, column, json_path, message, hint",
    )

    p_plan = command("plan", cmd_plan, "show what a run would do: jobs, images, cost, output paths")
    p_plan.add_argument("manifest", metavar="MANIFEST")
    p_plan.add_argument("--json", action="store_true", help="one JSON line per job")
    p_plan.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")
    p_plan.add_argument("--models-dir", help=MODELS_DIR_HELP)
    for p in (p_validate, p_plan):
        p.add_argument(
            "--max-plan-jobs",
            type=_number("max_plan_jobs"),
            metavar="N",
            help=f"refuse plans above N jobs (default {manifest_mod.MAX_PLAN_JOBS:,})",
        )

    _emulator_arguments(command)
    _run_arguments(command)
    _view_arguments(command)

    return root


def _emulator_arguments(command: Callable[[str, Command, str], _Parser]) -> None:
    """`renderer emulator` and its flags (the emulator's config and faults)."""
    p_emu = command(
        "emulator",
        cmd_emulator,
        "run the built-in fal emulator on this machine and print its base URL",
    )
    p_emu.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: loopback only)"
    )
    p_emu.add_argument("--port", type=_number("port"), default=0, help="port (default: a free one)")
    p_emu.add_argument(
        "--workers",
        type=_number("workers"),
        default=2,
        help="concurrent worker slots (default 2, like a new fal account)",
    )
    p_emu.add_argument(
        "--account-slots",
        type=_number("workers"),
        default=None,
        help="each account's own limit on requests running, as fal's concurrency limit: the rest "
        "wait IN_QUEUE (default: only --workers bounds them)",
    )
    p_emu.add_argument(
        "--latency",
        default="0.05",
        help="service time: S, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA",
    )
    p_emu.add_argument("--seed", type=int, default=0, help="seed for service times and faults")
    p_emu.add_argument(
        "--key-env",
        action="append",
        default=[],
        metavar="VAR",
        help="require the key held in this environment variable; repeat for several accounts "
        "(each counted apart at /_emulator/stats, under the variable's name)",
    )
    p_emu.add_argument(
        "--lock-account",
        action="append",
        default=[],
        metavar="VAR",
        help="answer this --key-env account's submits 403 'User is locked'",
    )
    p_emu.add_argument(
        "--max-side",
        type=_number("max_side"),
        default=256,
        help="cap on the longest image side (0: none)",
    )
    p_emu.add_argument(
        "--keepalive",
        type=_number("keepalive"),
        default=15.0,
        help="seconds between SSE keep-alive comments",
    )
    p_emu.add_argument(
        "--allow-unknown", action="store_true", help="serve endpoints that have no schema"
    )
    p_emu.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ENDPOINT=SALT",
        help="render this endpoint differently (to exercise `renderer diff`)",
    )
    p_emu.add_argument(
        "--noise",
        type=_number("noise"),
        default=0.0,
        metavar="N",
        help="run-to-run picture noise, as a hosted model has (0 none, 1 typical; for calibration)",
    )
    p_emu.add_argument("--tls-cert", help="serve https with this certificate (PEM)")
    p_emu.add_argument("--tls-key", help="private key for --tls-cert")
    for flag, dest, what in (
        ("--fault-429", "fault_429", "429 on submit"),
        ("--fault-ingress", "fault_ingress", "ingress 502/503/504"),
        ("--fault-runner", "fault_runner", "runner_server_error results"),
        ("--fault-drop", "fault_drop", "downloads dropped half-way"),
        ("--fault-truncate", "fault_truncate", "truncated downloads"),
        ("--fault-corrupt", "fault_corrupt", "corrupted downloads"),
        ("--fault-stuck", "fault_stuck", "requests stuck IN_QUEUE"),
        ("--fault-result-500", "fault_result_500", "a bare 500 on a finished result"),
        ("--fault-submit-html", "fault_submit_html", "a submit taken but answered as HTML"),
        (
            "--fault-submit-500",
            "fault_submit_500",
            "a submit taken but answered 500 with its request id",
        ),
    ):
        p_emu.add_argument(
            flag,
            dest=dest,
            type=_number("probability"),
            default=0.0,
            metavar="P",
            help=f"probability of {what}",
        )
    p_emu.add_argument(
        "--retention",
        type=_number("retention"),
        help="seconds results live after completion (then 404)",
    )
    p_emu.add_argument(
        "--lock-after",
        type=_number("lock_after"),
        help="answer 403 'User is locked' after this many submits",
    )
    p_emu.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")
    p_emu.add_argument("--models-dir", help=MODELS_DIR_HELP)


def _run_arguments(command: Callable[[str, Command, str], _Parser]) -> None:
    """`renderer run`, `status` and `finalize`."""
    p_run = command(
        "run", cmd_run, "render a manifest: submit, wait, download and verify every image"
    )
    p_run.add_argument("manifest", metavar="MANIFEST")
    p_run.add_argument(
        "--provider", help="emulator, fal, or a base URL (env RENDERER_PROVIDER; default: manifest)"
    )
    p_run.add_argument(
        "--output",
        help="output root: a directory, or s3://bucket/prefix (AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION); default: the manifest's, else outputs/",
    )
    p_run.add_argument(
        "--state",
        metavar="URL",
        help="where the run's state lives: postgresql://… shares it with "
        "every worker that runs this command (env RENDERER_STATE; default: the manifest's `state:`, "
        "else renderer.sqlite in the run directory)",
    )
    p_run.add_argument(
        "--lease",
        type=_number("lease"),
        metavar="SECONDS",
        help="with shared state: how long a claimed job stays this worker's without renewal; a dead "
        "worker's jobs are taken over after it (env RENDERER_LEASE; default 30)",
    )
    p_run.add_argument(
        "--concurrency",
        type=_number("concurrency"),
        help="requests running at the provider: your account's limit (env RENDERER_CONCURRENCY)",
    )
    p_run.add_argument(
        "--rate",
        type=_number("rate"),
        help="submissions per second, or 5/s, 120/min (env RENDERER_RATE; default: not paced)",
    )
    p_run.add_argument(
        "--timeout",
        type=_number("timeout"),
        help="seconds per job before it is cancelled (env RENDERER_TIMEOUT)",
    )
    p_run.add_argument(
        "--outage",
        type=_number("outage"),
        metavar="SECONDS",
        help="ride out the shared state or the bucket being unreachable this long, then exit 75 "
        "(env RENDERER_OUTAGE; manifest limits.outage; default 90)",
    )
    p_run.add_argument("--retry-failed", action="store_true", help="try failed jobs again")
    p_run.add_argument(
        "--max-jobs",
        type=_number("max_jobs"),
        help="render only the first N jobs of the plan (a trial)",
    )
    p_run.add_argument(
        "--verify",
        action="store_true",
        help="re-hash finished files instead of trusting size+mtime",
    )
    p_run.add_argument("--dry-run", action="store_true", help="show the plan; send nothing")
    p_run.add_argument(
        "--json",
        action="store_true",
        help="print the run's summary as JSON on stdout (with --dry-run: one JSON line per job)",
    )
    p_run.add_argument(
        "--log", metavar="FILE", help="append a JSON-lines log of the run's events to FILE"
    )
    p_run.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p_run.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")
    p_run.add_argument("--models-dir", help=MODELS_DIR_HELP)
    p_run.add_argument(
        "--max-plan-jobs",
        type=_number("max_plan_jobs"),
        metavar="N",
        help=f"refuse plans above N jobs (default {manifest_mod.MAX_PLAN_JOBS:,})",
    )

    p_status = command(
        "status", cmd_status, "show a run directory's state and what a rerun would do"
    )
    p_status.add_argument(
        "run",
        metavar="RUN",
        help=RUN_HELP,
    )
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    _state_argument(p_status)

    p_final = command(
        "finalize",
        cmd_finalize,
        "write metadata.jsonl, the dataset card and run.json from the state "
        "(a distributed run whose last worker stopped, or a partial dataset)",
    )
    p_final.add_argument("manifest", metavar="MANIFEST")
    p_final.add_argument(
        "--state",
        metavar="URL",
        help="postgresql://… (env RENDERER_STATE; default: the manifest's, "
        "else the SQLite file in the run directory)",
    )
    p_final.add_argument(
        "--output", help="output root: a directory, or s3://bucket/prefix (default: the manifest's)"
    )
    p_final.add_argument("--json", action="store_true", help="print run.json")
    p_final.add_argument("--schemas", help="schema directory (env RENDERER_SCHEMAS)")
    p_final.add_argument("--models-dir", help=MODELS_DIR_HELP)


RUN_HELP = (
    "a run directory, e.g. outputs/design-sweep, its bucket folder s3://BUCKET/PREFIX/NAME "
    "(its last part names the run in shared state), or the run's manifest (its state: and output:)"
)


def _state_argument(p: _Parser) -> None:
    p.add_argument(
        "--state",
        metavar="URL",
        help="the run's shared state, postgresql://… (env RENDERER_STATE; default: the SQLite "
        "file in the run directory); images are read where the run wrote them, a bucket included",
    )


def _view_arguments(command: Callable[[str, Command, str], _Parser]) -> None:
    """`renderer report`, `export` and `diff`."""
    p_report = command(
        "report", cmd_report, "write a static HTML contact sheet and PNG sheets for a run"
    )
    p_report.add_argument("run", metavar="RUN", help=RUN_HELP)
    _state_argument(p_report)
    p_report.add_argument(
        "--axes", default="prompt,model", help="ROW,COL axes (default prompt,model)"
    )
    p_report.add_argument(
        "--tag", action="append", default=[], help="only prompts with this tag (repeatable)"
    )
    p_report.add_argument(
        "--model", action="append", default=[], help="only this model (repeatable)"
    )
    p_report.add_argument(
        "--seed", action="append", default=[], type=int, help="only this seed (repeatable)"
    )
    p_report.add_argument(
        "--max-sheet",
        type=_number("max_sheet"),
        default=4096,
        help="largest PNG sheet side in pixels",
    )
    drawn = p_report.add_mutually_exclusive_group()
    drawn.add_argument(
        "--sheets",
        dest="sheets",
        action="store_const",
        const="all",
        default="auto",
        help="draw every PNG sheet (default: all of them up to 200, none beyond: a caption "
        "dataset would get one per 20 prompts)",
    )
    drawn.add_argument(
        "--no-sheets", dest="sheets", action="store_const", const="none", help="no PNG sheets"
    )
    p_report.add_argument(
        "--out",
        metavar="DIR|s3://BUCKET/PREFIX/",
        help="where the report goes: a folder, or a bucket (AWS_* variables) (default RUN/report/)",
    )

    p_export = command(
        "export", cmd_export, "write a run's dataset as Parquet shards or WebDataset tars"
    )
    p_export.add_argument("run", metavar="RUN", help=RUN_HELP)
    _state_argument(p_export)
    p_export.add_argument(
        "--format",
        required=True,
        choices=("parquet", "webdataset"),
        help="parquet (images embedded; what the Hub serves) or webdataset (tar shards)",
    )
    p_export.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="images per shard (default 1000)"
    )
    p_export.add_argument(
        "--out",
        metavar="DIR",
        help="destination: a folder or s3://BUCKET/PREFIX/ (default: RUN/export/FORMAT/, "
        "in the run's bucket when its images are there)",
    )
    p_export.add_argument("--json", action="store_true", help="machine-readable output")

    p_diff = command(
        "diff",
        cmd_diff,
        "compare two runs (or a baseline and a run) image by image: exit 0 pass, 4 review, 1 fail",
    )
    p_diff.add_argument(
        "runs", nargs="+", metavar="RUN", help="RUN_A RUN_B, or one RUN with --baseline NAME"
    )
    p_diff.add_argument("--baseline", metavar="NAME", help="compare RUN with this baseline")
    _state_argument(p_diff)
    for side in ("a", "b"):
        p_diff.add_argument(
            f"--state-{side}",
            metavar="URL",
            help=f"the shared state of the {'first' if side == 'a' else 'second'} run when the runs' "
            "states differ (default: --state)",
        )
    p_diff.add_argument(
        "--map",
        action="append",
        metavar="MODEL_A=MODEL_B",
        help="pair model A of side A with model B of side B (a renamed label; other models are left out)",
    )
    p_diff.add_argument("--json", action="store_true", help="machine-readable output")
    p_diff.add_argument("--html", help="also write the viewer page (flicker, wipe, band filters)")
    p_diff.add_argument(
        "--junit", metavar="FILE", help="also write JUnit XML, one test case a pair"
    )
    p_diff.add_argument(
        "--summary",
        metavar="FILE",
        help="also write a Markdown summary (CI job summary, PR comment)",
    )
    _band_arguments(p_diff)
    p_diff.add_argument("--baselines", metavar="DIR", help=BASELINES_HELP)

    p_base = command("baseline", cmd_baseline, "named baselines: set RUN, approve RUN, list")
    base_sub = p_base.add_subparsers(
        dest="baseline_command", metavar="ACTION", parser_class=_Parser
    )
    base_sub.required = True
    p_set = base_sub.add_parser("set", help="make RUN the baseline NAME (default: the run's name)")
    p_set.add_argument("run", metavar="RUN")
    p_set.add_argument("--name", help="the baseline's name (default: RUN's folder name)")
    p_set.add_argument(
        "--repeat",
        metavar="RUN2",
        help="the same manifest rendered again: measure the provider's noise and derive the bands",
    )
    _band_arguments(p_set)
    p_approve = base_sub.add_parser(
        "approve", help="accept reviewed pairs of RUN into a baseline (nothing is rendered)"
    )
    p_approve.add_argument("run", metavar="RUN")
    p_approve.add_argument(
        "--name", help="the baseline (default: the decisions file's, else RUN's name)"
    )
    p_approve.add_argument(
        "--decisions", metavar="FILE", help="a review exported from the diff page"
    )
    p_approve.add_argument(
        "--pair", action="append", metavar="ID", help="accept this pair (repeatable)"
    )
    p_approve.add_argument(
        "--all-review",
        action="store_true",
        help="accept every pair in the review band and every new one",
    )
    p_list = base_sub.add_parser("list", help="the baselines there are")
    for p in (p_set, p_approve, p_list):
        p.out, p.err = p_base.out, p_base.err
        p.set_defaults(func=cmd_baseline)
        p.add_argument("--baselines", metavar="DIR", help=BASELINES_HELP)
        p.add_argument("--json", action="store_true", help="machine-readable output")


BASELINES_HELP = "where baselines live (env RENDERER_BASELINES; default ./baselines)"


def _band_arguments(p: _Parser) -> None:
    p.add_argument(
        "--pass-ssim", type=_number("pass_ssim"), metavar="S", help="pass needs SSIM ≥ S (0-1)"
    )
    p.add_argument(
        "--pass-phash", type=_number("pass_phash"), metavar="N", help="pass needs pHash ≤ N (0-64)"
    )
    p.add_argument(
        "--fail-ssim", type=_number("fail_ssim"), metavar="S", help="fail when SSIM < S (0-1)"
    )
    p.add_argument(
        "--fail-phash", type=_number("fail_phash"), metavar="N", help="fail when pHash > N (0-64)"
    )


def main(
    argv: list[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    env = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a newcomer typing `renderer`: the commands, not an error
        build_parser(out, err).print_help(out)
        return 0
    result: list[int] = []
    with error_boundary(err, "--debug" in argv, result, out if "--json" in argv else None):
        args = build_parser(out, err).parse_args(argv)
        result.append(args.func(Context(args, out, err, env)))
    return result[-1]


def entrypoint() -> None:
    argv = sys.argv[1:]
    leave(main(argv), argv)
