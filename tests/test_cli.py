"""The command line: exit codes, the error boundary, and what each command prints."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.cli import main

from .conftest import ROOT, SCHEMAS, background_emulator, write_manifest


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ=env or {})
    return code, out.getvalue(), err.getvalue()


def test_schemas_check_passes_on_the_checkout():
    """The committed schemas are what the documents generate."""
    code, out, err = run("schemas", "build", "--check", "--dir", str(SCHEMAS))
    assert code == 0, out + err
    assert "12 endpoints" in out
    assert "warning: 003_4e5348b4711c43e9.txt:38:" in err


def test_schemas_check_names_stale_files(tmp_path: Path):
    """A hand-edited schema makes --check exit 1 and name that file; build repairs it."""
    shutil.copytree(SCHEMAS, tmp_path / "s")
    target = tmp_path / "s/endpoints/fal-ai/flux-1/schnell.json"
    target.write_text("{}\n")
    code, out, _ = run("schemas", "build", "--check", "--dir", str(tmp_path / "s"))
    assert code == 1
    assert out.strip() == f"stale: {target}"
    assert run("schemas", "build", "--dir", str(tmp_path / "s"))[0] == 0
    assert run("schemas", "build", "--check", "--dir", str(tmp_path / "s"))[0] == 0


def test_unknown_document_layout_exits_2(tmp_path: Path):
    """A document the generator cannot read is refused naming file, line and the layouts understood."""
    (tmp_path / "s/docs").mkdir(parents=True)
    (tmp_path / "s/docs/notes.txt").write_text("hello\n")
    code, _out, err = run("schemas", "build", "--dir", str(tmp_path / "s"))
    assert code == 2
    assert err.startswith("refused: notes.txt:1: unknown document layout")
    assert "hint: expected one of" in err and "OpenAPI" in err
    assert "Traceback" not in err
    assert not (tmp_path / "s/index.json").exists()


def test_one_refused_document_does_not_hide_the_others(tmp_path: Path):
    """A folder with one unreadable document builds the rest, names the bad one, and exits 2."""
    docs = tmp_path / "s/docs"
    shutil.copytree(SCHEMAS / "docs", docs)
    (docs / "zz-broken.json").write_text('{"openapi": "3.0.0", "paths": {}}\n')
    code, out, err = run("schemas", "build", "--dir", str(tmp_path / "s"))
    assert code == 2
    assert "refused: zz-broken.json:1: OpenAPI document without a submit operation" in err
    assert "12 endpoints" in out
    assert (tmp_path / "s/endpoints/fal-ai/flux-1/schnell.json").is_file()


def test_models_lists_endpoints_with_required_parameters():
    """`renderer models` prints one row per endpoint."""
    code, out, _ = run("models")
    assert code == 0
    rows = out.strip().splitlines()
    assert len(rows) == 13
    assert rows[1].split() == ["fal-ai/f-lite/standard", "prompt"]


def test_models_shows_one_endpoint():
    """`renderer models ENDPOINT` shows each parameter's type, default, allowed values and source."""
    code, out, _ = run("models", "fal-ai/imagen4/preview/ultra")
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("num_images"))
    assert "1 to 1" in line and "003_4e5348b4711c43e9.txt:38" in line
    size = next(
        ln
        for ln in run("models", "fal-ai/flux-1/schnell")[1].splitlines()
        if ln.startswith("image_size")
    )
    assert "{width, height} or square_hd" in size


def test_models_unknown_endpoint_suggests():
    """A misspelt endpoint is exit 2 with a did-you-mean hint."""
    code, _, err = run("models", "fal-ai/flux-1/schnel")
    assert code == 2
    assert "hint: did you mean fal-ai/flux-1/schnell?" in err


def test_usage_errors_exit_2_without_traceback():
    """An unknown command is a usage error on stderr, exit 2."""
    code, out, err = run("paint")
    assert code == 2 and out == ""
    assert err.startswith("error: renderer: argument COMMAND: invalid choice: 'paint'")


def test_help_exits_0_on_stdout():
    """--help goes to the injected stdout and exits 0."""
    code, out, _ = run("--help")
    assert code == 0 and "usage: renderer" in out


def test_python_dash_m_entry_point():
    """`python -m renderer` runs the same CLI in a real process."""
    done = subprocess.run(
        [sys.executable, "-m", "renderer", "models", "fal-ai/omnigen-v2", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"x-endpoint": "fal-ai/omnigen-v2"' in done.stdout


def test_a_run_command_ends_with_its_code_and_all_it_printed(tmp_path: Path):
    """`renderer run` leaves without the interpreter's teardown (cli.boundary.leave), yet its exit code
    and everything it printed, through pipes, arrive whole: a bad manifest's exit 2 and message."""
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "name: bad\nprompts: [{id: a, text: x}]\nmodels: [fal-ai/flux-1/schnel]\nseeds: [1]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "renderer", "run", str(manifest), "--provider", "emulator"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"{manifest}:3:" in done.stderr and "fal-ai/flux-1/schnell" in done.stderr
    assert done.stderr.endswith("\n") and "Traceback" not in done.stderr


def test_version_flag():
    """`renderer --version` prints the package version and exits 0."""
    from renderer import __version__

    code, out, _ = run("--version")
    assert (code, out.strip()) == (0, f"renderer {__version__}")


QUICKSTART = str(ROOT / "manifests/quickstart.yaml")


def test_bad_flags_are_usage_errors_naming_the_flag(tmp_path: Path):
    """--concurrency 0/-1, --max-jobs -1, --rate 0/-5, --timeout -3 exit 2 before anything is written."""
    for flag, value in (
        ("--concurrency", "0"),
        ("--concurrency", "-1"),
        ("--max-jobs", "-1"),
        ("--rate", "0"),
        ("--rate=-5", None),
        ("--timeout", "-3"),
        ("--rate", "nan"),
    ):
        argv = ["run", QUICKSTART, "--output", str(tmp_path / "o"), flag] + (
            [value] if value else []
        )
        code, _, err = run(*argv)
        assert code == 2, (flag, value, err)
        assert flag.split("=")[0] in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_rate_flag_and_environment_accept_the_manifest_spelling(tmp_path: Path):
    """`--rate 5/s` and RENDERER_RATE=5/s are accepted as the manifest accepts them (checked by a dry run)."""
    assert run("run", QUICKSTART, "--rate", "5/s", "--dry-run")[0] == 0
    assert run("run", QUICKSTART, "--dry-run", env={"RENDERER_RATE": "5/s"})[0] == 0


def test_bad_environment_is_reported_as_the_variable(tmp_path: Path):
    """RENDERER_CONCURRENCY=-1 and RENDERER_PROVIDER=bogus are named as environment variables, not flags."""
    out_dir = str(tmp_path / "o")
    code, _, err = run("run", QUICKSTART, "--output", out_dir, env={"RENDERER_CONCURRENCY": "-1"})
    assert code == 2 and err.startswith("error: RENDERER_CONCURRENCY='-1':")
    code, _, err = run("run", QUICKSTART, "--output", out_dir, env={"RENDERER_PROVIDER": "bogus"})
    assert (
        code == 2 and err.startswith("error: RENDERER_PROVIDER 'bogus'") and "--provider" not in err
    )
    code, _, err = run(
        "run", QUICKSTART, "--output", out_dir, env={"RENDERER_PROVIDER": "https://u:p@h.example"}
    )
    assert code == 2 and "user:password" in err
    assert not (tmp_path / "o").exists()


def test_other_commands_range_check_their_numbers():
    """emulator --port 99999, --fault-429 2, --latency nan/-1/LOW>HIGH and report --max-sheet 0 exit 2."""
    for argv in (
        ["emulator", "--port", "99999"],
        ["emulator", "--fault-429", "2"],
        ["emulator", "--latency", "nan"],
        ["emulator", "--latency", "-1"],
        ["emulator", "--latency", "uniform:5:1"],
        ["report", "somewhere", "--max-sheet", "0"],
        ["diff", "a", "b", "--pass-ssim", "nan"],
        ["emulator", "--noise", "-1"],
        ["baseline", "set", "r", "--fail-phash", "65"],
    ):
        code, _, err = run(*argv)
        assert code == 2 and ("allowed:" in err or "LOW is above HIGH" in err), argv


def test_output_that_is_not_a_directory_is_refused(tmp_path: Path):
    """--output naming an existing file, /dev/null, or a path under a file: exit 2, nothing written."""
    afile = tmp_path / "file"
    afile.write_text("x")
    for output in (str(afile), "/dev/null", str(afile / "below")):
        code, _, err = run("run", QUICKSTART, "--output", output)
        assert code == 2 and "not a directory" in err, err
    assert afile.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_schemas_build_outside_the_repository_is_a_usage_error(tmp_path: Path, monkeypatch):
    """`schemas build --check` where there is no schemas/docs folder says so (exit 2), no traceback."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run("schemas", "build", "--check")
    assert code == 2 and "no model documents" in err


def test_validate_json_lists_problems_for_machines(tmp_path: Path):
    """validate --json prints file, line, column, json_path, message and hint for each problem; exit 2."""
    import json

    bad = tmp_path / "m.yaml"
    bad.write_text(
        "name: t\nprompts: [{id: a, text: b}]\nmodels: [fal-ai/flux-1/schnell]\nseeds: [1]\nlimts: {}\n"
    )
    code, out, _ = run("validate", "--json", str(bad))
    result = json.loads(out)
    assert code == 2 and result["ok"] is False
    (problem,) = result["problems"]
    assert problem == {
        "file": str(bad),
        "line": 5,
        "column": 1,
        "json_path": "$.limts",
        "message": "unknown key 'limts'",
        "job": None,
        "hint": problem["hint"],
    }
    assert "did you mean limits?" in problem["hint"]
    code, out, _ = run("validate", "--json", QUICKSTART)
    assert code == 0 and json.loads(out)["manifests"][0]["jobs"] == 8


def test_plan_size_cap_is_refused_before_expansion_and_can_be_raised(tmp_path: Path):
    """A plan above --max-plan-jobs is refused with its count; raising the cap lets it through."""
    m = tmp_path / "m.yaml"
    m.write_text(
        "name: t\nprovider: emulator\nprompts: [{id: a, text: b}]\nmodels: [fal-ai/flux-1/schnell]\n"
        "seeds: {start: 1, count: 50}\n"
    )
    code, _, err = run("validate", str(m), "--max-plan-jobs", "10")
    assert code == 2 and "up to 50 jobs" in err and "--max-plan-jobs" in err
    assert run("validate", str(m), "--max-plan-jobs", "50")[0] == 0


def test_manifest_output_that_is_a_file_is_reported_by_validate(tmp_path: Path):
    """`output: /dev/null` in a manifest is a located problem for validate as well as run."""
    m = tmp_path / "m.yaml"
    m.write_text(
        "name: t\noutput: /dev/null\nprompts: [{id: a, text: b}]\nmodels: [fal-ai/flux-1/schnell]\n"
        "seeds: [1]\n"
    )
    code, _, err = run("validate", str(m))
    assert code == 2 and err.startswith(
        f"{m}:2:9: $.output: output '/dev/null': /dev/null exists and is not a directory"
    )


_FLAG_TEXT = st.one_of(
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "5/s",
            "0/s",
            "0.5/min",
            "nan",
            "inf",
            "-inf",
            "1e309",
            "2.5",
            "10" * 12,
            "",
            " ",
            "5/h",
            "/s",
            "1/",
            "0x10",
            "1_000",
            "１２",
        ]
    ),
    st.text(max_size=8),
)


@settings(
    max_examples=int(os.environ.get("RENDERER_FUZZ_EXAMPLES") or 60),
    derandomize=True,
    deadline=None,
    database=None,
)
@given(
    flags=st.dictionaries(
        st.sampled_from(["--concurrency", "--rate", "--timeout", "--max-jobs", "--max-plan-jobs"]),
        _FLAG_TEXT,
        max_size=3,
    ),
    env=st.dictionaries(
        st.sampled_from(
            ["RENDERER_CONCURRENCY", "RENDERER_RATE", "RENDERER_TIMEOUT", "RENDERER_PROVIDER"]
        ),
        _FLAG_TEXT,
        max_size=3,
    ),
)
def test_flags_and_environment_are_total(flags: dict[str, str], env: dict[str, str]):
    """Any flag or RENDERER_* value: a dry run exits 0, or 2 naming the flag or variable; never a traceback."""
    argv = ["run", QUICKSTART, "--dry-run"] + [f"{k}={v}" for k, v in flags.items()]
    code, _, err = run(*argv, env={k: v.replace("\0", "") for k, v in env.items()})
    assert "Traceback" not in err
    assert code in (0, 2), err
    if code == 2:
        assert any(name in err for name in [*flags, *env]), err


def test_paths_given_to_commands_are_checked_not_crashed_on(tmp_path: Path):
    """--schemas /dev/null, RENDERER_SCHEMAS pointing nowhere and `report` on a non-run exit 2 naming them."""
    code, _, err = run("models", "--schemas", "/dev/null")
    assert code == 2 and err.startswith("error: --schemas '/dev/null': not a directory")
    code, _, err = run("validate", QUICKSTART, env={"RENDERER_SCHEMAS": str(tmp_path / "none")})
    assert code == 2 and err.startswith("error: RENDERER_SCHEMAS")
    code, _, err = run("report", str(tmp_path / "none"))
    assert code == 2 and "no run here" in err and not (tmp_path / "none").exists()


def test_dry_run_shows_paths_under_the_given_output(tmp_path: Path):
    """`run --dry-run --output X` lists paths under X and writes nothing; an --output that is a file is refused."""
    code, out, _ = run("run", QUICKSTART, "--dry-run", "--output", str(tmp_path / "o"))
    assert code == 0 and f"{tmp_path / 'o' / 'quickstart'}" in out and not (tmp_path / "o").exists()
    code, _, err = run("run", QUICKSTART, "--dry-run", "--output", "/dev/null")
    assert code == 2 and "not a directory" in err


def test_plan_counts_what_the_state_finished_and_samples_across_the_plan(tmp_path: Path):
    """`renderer plan` shows DONE per model from the run's state, also after the manifest grew, and spread samples."""
    from renderer.provider.emulator import ServiceTime

    models = ["fal-ai/flux-1/schnell", "fal-ai/imagen4/preview"]
    out = tmp_path / "out"
    m = write_manifest(tmp_path, models=models, seeds={"start": 1, "count": 5}, output=str(out))
    with background_emulator(service=ServiceTime("fixed", 0.0)) as emu:
        code, _, err = run(
            "run", str(m), "--provider", emu.url, "--quiet", "--max-jobs", "7", env={"FAL_KEY": "k"}
        )
    assert code == 0, err

    def done(text: str) -> dict[str, str]:
        rows = [
            line.split()
            for line in text.splitlines()
            if line.split()[:1] in (models[:1], models[1:], ["total"])
        ]
        return {row[0]: row[-2] for row in rows}

    code, text, err = run("plan", str(m))
    assert code == 0, err
    assert done(text) == {
        models[0]: "5",
        models[1]: "2",
        "total": "7",
    }  # the same plan: counted by one query
    samples = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    assert [s.split("/data/")[1] for s in samples] == [
        "fal-ai--flux-1--schnell/cat/s1-0.png",
        "fal-ai--flux-1--schnell/cat/s3-0.png",
        "fal-ai--flux-1--schnell/cat/s5-0.png",
        "fal-ai--imagen4--preview/cat/s2-0.png",
        "fal-ai--imagen4--preview/cat/s4-0.png",
    ]
    write_manifest(
        tmp_path,
        models=models,
        seeds={"start": 1, "count": 5},
        output=str(out),
        prompts=[{"id": "cat", "text": "a cat"}, {"id": "dog", "text": "a dog"}],
    )
    code, text, err = run("plan", str(m))
    assert code == 0, err
    assert done(text) == {
        models[0]: "5",
        models[1]: "2",
        "total": "7",
    }  # another plan: counted by its keys


def test_concurrency_flag_and_variable_cap_the_accounts_total(tmp_path: Path):
    """With provider.accounts the run's total is the accounts' sum; --concurrency or RENDERER_CONCURRENCY caps it."""
    from renderer.provider.emulator import ServiceTime

    from .conftest import background_emulator, write_manifest

    keys = {
        "FAL_KEY_A": "cap-key-a-" + os.urandom(6).hex(),
        "FAL_KEY_B": "cap-key-b-" + os.urandom(6).hex(),
    }
    m = write_manifest(
        tmp_path,
        seeds=list(range(1, 13)),
        limits={"rate": 1000},
        provider={
            "kind": "fal",
            "accounts": [
                {"key_env": "FAL_KEY_A", "concurrency": 3},
                {"key_env": "FAL_KEY_B", "concurrency": 3},
            ],
        },
    )
    peaks = []
    for extra, env in (([], {}), (["--concurrency", "2"], {}), ([], {"RENDERER_CONCURRENCY": "1"})):
        with background_emulator(
            service=ServiceTime("fixed", 0.3),
            workers=8,
            account_limits=(("FAL_KEY_A", 3), ("FAL_KEY_B", 3)),
            keys=tuple((name, key) for name, key in keys.items()),
        ) as emu:
            code, out, err = run(
                "run",
                str(m),
                "--provider",
                emu.url,
                "--output",
                str(tmp_path / f"o{len(peaks)}"),
                "--quiet",
                *extra,
                env={**keys, **env},
            )
            peaks.append(emu.stats()["peak_running"])  # what the provider ran at once
        assert code == 0, out + err
    assert peaks == [6, 2, 1]


def test_a_valid_manifest_is_checked_without_loading_jsonschema(tmp_path: Path):
    """Start-up before a run's first submit: a well-formed manifest with valid inputs is decided by
    QuickCheck, so jsonschema (~55 ms of CPU) is never imported; a broken one still gets its messages."""
    code = (
        "import io, sys\n"
        "from renderer.cli import main\n"
        "out, err = io.StringIO(), io.StringIO()\n"
        "code = main(['validate', sys.argv[1]], stdout=out, stderr=err)\n"
        "print(code, 'jsonschema' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    good = ROOT / "manifests" / "quickstart.yaml"
    done = subprocess.run(
        [sys.executable, "-c", code, str(good)], capture_output=True, text=True, env=env
    )
    assert done.stdout.split() == ["0", "False"], done.stderr
    bad = write_manifest(tmp_path, seeds="often")
    done = subprocess.run(
        [sys.executable, "-c", code, str(bad)], capture_output=True, text=True, env=env
    )
    assert done.stdout.split() == ["2", "True"], done.stderr
