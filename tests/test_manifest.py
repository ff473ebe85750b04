"""Manifest loading: every broken manifest in the corpus gets its exact located message."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import resource
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from renderer.cli import main
from renderer.errors import ManifestError
from renderer.manifest.load import load, parse
from renderer.manifest.located import load_yaml
from renderer.manifest.sources import text_id

from .conftest import MANIFESTS, ROOT

BROKEN = sorted((ROOT / "tests/manifests/broken").glob("*.yaml"))


def _validate(path: Path, cwd: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["validate", str(path.relative_to(cwd))], stdout=out, stderr=err, environ={})
    return code, out.getvalue(), err.getvalue()


def test_corpus_is_large_enough():
    """The issue asks for at least 40 broken manifests."""
    assert len(BROKEN) >= 40


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_manifest_reports_its_exact_first_problem(
    path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """Each broken manifest exits 2 with the `# expect:` line first, writes nothing, never a traceback."""
    expected = path.read_text(encoding="utf-8").splitlines()[0].removeprefix("# expect: ")
    monkeypatch.chdir(path.parent)
    before = set(path.parent.iterdir())
    code, out, err = _validate(path, path.parent)
    assert code == 2
    assert out == ""
    assert err.splitlines()[0] == expected
    assert "Traceback" not in err
    assert err.rstrip().endswith("hint: fix the lines above and run `renderer validate` again")
    assert set(path.parent.iterdir()) == before


def test_all_problems_are_reported_together(tmp_path: Path):
    """Several mistakes in one manifest are listed in one run, in file order."""
    bad = tmp_path / "m.yaml"
    bad.write_text(
        "name: t\nprompts:\n  - id: a\n    text: x\n  - id: a\n    text: y\nmodels:\n  - fal-ai/flux/schnell\n"
        "  - endpoint: fal-ai/imagen4/preview\n    params: {num_images: 9, aspect_ratoi: '1:1'}\nseeds: [0]\n"
    )
    with pytest.raises(ManifestError) as info:
        from renderer.models.schemas import SchemaRegistry
        from renderer.plan import planner as plan

        plan.build(load(bad), SchemaRegistry(ROOT / "schemas"))
    lines = [(p.line, p.json_path) for p in info.value.problems]
    assert lines == [
        (5, "$.prompts[1]"),
        (8, "$.models[0]"),
        (10, "$.models[1].params.num_images"),  # same line: ordered by column
        (10, "$.models[1].params.aspect_ratoi"),
        (11, "$.seeds[0]"),
    ]


def test_unknown_key_suggests_the_right_one():
    """A misspelt key names the allowed keys and the closest one."""
    with pytest.raises(ManifestError) as info:
        parse(
            "name: t\nprompts: [{id: a, text: b}]\nmodels: [x]\nseeds: [1]\nlimts: {}\n",
            Path("m.yaml"),
        )
    (problem,) = info.value.problems
    assert problem.suggestion == "limits"
    assert "concurrency" not in (problem.allowed or "") and "limits" in (problem.allowed or "")


def test_yaml_locations_are_one_based():
    """Keys and values are located at their 1-based line and column."""
    doc = load_yaml("a:\n  b: [1, 2]\n", "f.yaml")
    assert doc.where(("a", "b", 1)) == (2, 10)
    assert doc.where(("a", "b"), key=True) == (2, 3)
    assert doc.where(("a", "missing")) == (2, 3)


def test_prompt_files_load_with_their_own_locations(tmp_path: Path):
    """Prompts from .jsonl, .csv and .txt files get ids, tags and params, and file:line locations."""
    text = (
        "name: t\nprompts:\n  - file: prompts/list.jsonl\n  - file: prompts/list.csv\n  - file: prompts/list.txt\n"
        "models: [fal-ai/flux-1/schnell]\nseeds: [1]\n"
    )
    manifest = parse(text, ROOT / "tests/manifests/inline.yaml")
    ids = [p.id for p in manifest.prompts]
    assert ids[:3] == ["lighthouse", "orchard", "bridge"]
    assert ids[3].startswith("a-fox-in-the-") and ids[4].startswith("a-heron-at-dawn-")
    assert manifest.prompts[1].params == {"num_inference_steps": 2}
    assert manifest.prompts[2].tags == ("architecture", "old")
    assert manifest.prompts[4].where[1] == 4


def test_txt_prompt_ids_survive_insertions(tmp_path: Path):
    """Inserting a line in a .txt prompt file renames no other prompt."""

    def ids(lines: list[str]) -> list[str]:
        (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
        m = parse(
            "name: t\nprompts: [{file: p.txt}]\nmodels: [m]\nseeds: [1]\n", tmp_path / "m.yaml"
        )
        return [p.id for p in m.prompts]

    before = ids(["a fox", "a heron"])
    after = ids(["a cat", "a fox", "a heron"])
    assert after[1:] == before


def test_txt_prompt_ids_of_a_large_caption_file_are_distinct(tmp_path: Path):
    """50,000 distinct captions sharing their first words get 50,000 distinct ids (no false duplicates)."""
    lines = [f"a photo of a thing, number {i}" for i in range(50_000)]
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    m = parse("name: t\nprompts: [{file: p.txt}]\nmodels: [m]\nseeds: [1]\n", tmp_path / "m.yaml")
    assert len({p.id.lower() for p in m.prompts}) == 50_000


def test_a_row_over_the_cap_is_refused_where_it_is(tmp_path: Path):
    """A prompt file has no size cap, one row has: a line over it is exit 2 at file:line; nothing sent or written."""
    with open(tmp_path / "big.txt", "w") as handle:
        handle.write("a red fox\n" + "x" * (1 << 20) + "y\n" + "a heron\n")
    (tmp_path / "m.yaml").write_text(
        "name: t\nprompts:\n  - file: big.txt\nmodels: [fal-ai/flux-1/schnell]\n"
        "seeds: [1]\noutput: out\n"
    )
    out, err = io.StringIO(), io.StringIO()
    assert main(["plan", str(tmp_path / "m.yaml")], stdout=out, stderr=err) == 2
    text = err.getvalue()
    assert "big.txt:2:1" in text and "this row is over 1,048,576 characters" in text
    assert "Traceback" not in text
    assert not (tmp_path / "out").exists()


@given(
    st.text(max_size=300) | st.from_regex(r"([A-Za-z0-9]{1,30}[ ,.!-]{1,3}){0,12}", fullmatch=True)
)
def test_derived_ids_keep_their_formula(body: str):
    """A derived id is the first four [a-z0-9] runs of the lower-cased text (≤ 40 characters) and 48 bits of its sha256."""
    import hashlib

    words = re.sub(r"[^a-z0-9]+", "-", body.lower()).strip("-").split("-")[:4]
    digest = hashlib.sha256(body.encode(errors="surrogatepass")).hexdigest()[:12]
    if any("\ud800" <= c <= "\udfff" for c in body):
        return  # not valid Unicode: refused before an id is made
    assert text_id(body) == ("-".join(w for w in words if w)[:40] + "-" + digest).lstrip("-")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\ufeff"),
            max_size=12,
        ),
        max_size=12,
    ),
    block=st.integers(1, 40),
    ending=st.sampled_from(["\n", "\r\n"]),
    final=st.booleans(),
    backed=st.booleans(),
)
def test_prompt_files_stream_in_blocks_as_if_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines, block, ending, final, backed
):
    """Read a block at a time, a .txt file gives the prompts and line numbers of reading it whole, its texts held or read again."""
    from renderer.manifest import backed as backed_mod
    from renderer.manifest import reading

    monkeypatch.setattr(backed_mod, "BACKED_BYTES", -1 if backed else backed_mod.BACKED_BYTES)

    body = ending.join(line.replace("\n", " ").replace("\r", " ") for line in lines)
    body += ending if final and lines else ""
    (tmp_path / "p.txt").write_bytes(body.encode())
    expected = []
    for n, line in enumerate(body.split("\n"), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            expected.append((text_id(line.strip()), line.strip(), n))
    monkeypatch.setattr(reading, "BLOCK", block)
    try:
        m = parse(_manifest_with(tmp_path, "{file: p.txt}").read_text(), tmp_path / "m.yaml")
    except ManifestError as exc:  # no prompts at all, or a text repeated
        texts = [t for _, t, _ in expected]
        assert not texts or len(set(texts)) < len(texts), exc.problems
        return
    assert [(p.id, p.text, p.where[1]) for p in m.prompts] == expected
    assert [(p.id, p.text) for p in m.prompts[len(expected) // 2 :]] == [
        (pid, text) for pid, text, _ in expected[len(expected) // 2 :]
    ]  # read from the middle


def test_defaults_are_visible_and_resolved():
    """An emulator manifest without limits gets the documented defaults."""
    m = load(MANIFESTS / "quickstart.yaml")
    assert m.provider.kind == "emulator"
    assert m.limits.concurrency == 2 and m.limits.rate is None  # unset: submits are not paced
    assert m.retries.attempts == 6
    assert m.run_dir == Path("outputs/quickstart")


def test_missing_manifest_file_is_a_user_error():
    """A path that does not exist is exit 2 with a hint, not a traceback."""
    err = io.StringIO()
    assert main(["validate", "nope.yaml"], stdout=io.StringIO(), stderr=err, environ={}) == 2
    assert err.getvalue().startswith("nope.yaml:1:1: $: no such manifest file")


PROMPTS_BAD = ROOT / "tests/manifests/prompts/bad"


def _one_file_manifest(tmp_path: Path, prompt_file: Path) -> Path:
    m = tmp_path / "m.yaml"
    m.write_text(
        f"name: t\nprovider: emulator\nprompts: [{{file: {prompt_file}}}]\n"
        "models: [fal-ai/flux-1/schnell]\nseeds: [1]\n"
    )
    return m


def test_excel_bom_csv_reads_its_ids(tmp_path: Path):
    """A UTF-8 BOM (Excel's CSV) does not turn the first column into 'prompt id None'."""
    (prompt,) = load(_one_file_manifest(tmp_path, PROMPTS_BAD / "bom.csv")).prompts
    assert (prompt.id, prompt.text, prompt.tags) == ("bom", "excel wrote a BOM", ("x",))


def test_quoted_csv_field_keeps_its_line_break(tmp_path: Path):
    """A quoted field spanning two lines keeps the line break (the csv module reads the raw file)."""
    (prompt,) = load(_one_file_manifest(tmp_path, PROMPTS_BAD / "multiline.csv")).prompts
    assert prompt.text == "line one\nline two"


def test_yaml_merge_key_with_override_is_legal():
    """`<<: *base` followed by an overriding key is standard YAML, not a duplicate key."""
    doc = load_yaml("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  x: 3\n", "f.yaml")
    assert doc.data["m"] == {"x": 3, "y": 2}
    assert doc.where(("m", "x")) == (4, 6) and doc.where(("m", "y")) == (1, 20)


def test_duplicate_prompt_text_is_reported_once_with_its_rows(tmp_path: Path):
    """Three copies of one text in a CSV give one problem at the CSV row, naming every row."""
    with pytest.raises(ManifestError) as info:
        load(_one_file_manifest(tmp_path, PROMPTS_BAD / "duplicate-text.csv"))
    (problem,) = info.value.problems
    assert problem.file.endswith("duplicate-text.csv") and problem.line == 3
    assert "listed 3 times" in problem.message and "duplicate-text.csv:4" in problem.message


@pytest.mark.parametrize("path", ["/dev/null", "/", "no\0where.yaml"])
def test_paths_that_are_not_manifest_files_are_located_errors(path: str):
    """A device, a directory or a NUL in the path: exit 2 with `path:1:1`, never a traceback or a hang."""
    err = io.StringIO()
    assert main(["validate", path], stdout=io.StringIO(), stderr=err, environ={}) == 2
    assert ":1:1: $: " in err.getvalue() and "Traceback" not in err.getvalue()


def test_unreadable_manifest_is_a_located_error(tmp_path: Path):
    """A manifest without read permission is exit 2 naming it (as root: checked as `nobody`, since root reads all)."""
    import contextlib

    folder = Path(tempfile.mkdtemp())  # under /tmp, which every user may traverse
    folder.chmod(0o755)
    m = folder / "m.yaml"
    m.write_text("name: t\n")
    m.chmod(0)

    @contextlib.contextmanager
    def as_nobody() -> Iterator[None]:
        if os.geteuid() != 0:
            yield
            return
        os.seteuid(65534)  # the real uid stays root, so the next call may switch back
        try:
            yield
        finally:
            os.seteuid(0)

    err = io.StringIO()
    try:
        with as_nobody():
            code = main(["validate", str(m)], stdout=io.StringIO(), stderr=err, environ={})
    finally:
        m.unlink()
        folder.rmdir()
    assert code == 2
    assert err.getvalue().startswith(f"{m}:1:1: $: cannot read the manifest")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    prompts=st.integers(1, 3),
    seeds=st.integers(1, 4),
    steps=st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True),
    images=st.lists(st.integers(1, 4), min_size=1, max_size=2, unique=True),
    exclude=st.booleans(),
)
def test_plan_size_bounds_the_expanded_plan(
    prompts: int, seeds: int, steps: list[int], images: list[int], exclude: bool
):
    """The arithmetic plan size equals the job count without exclude, and bounds it with exclude."""
    from renderer.manifest.load import plan_size
    from renderer.models.schemas import SchemaRegistry
    from renderer.plan import planner as plan

    text = (
        "name: t\nprompts: ["
        + ", ".join(f"{{id: p{i}, text: prompt {i}}}" for i in range(prompts))
        + "]\n"
        f"models: [{{endpoint: fal-ai/flux-1/schnell, axes: {{num_inference_steps: {steps}}}}}, "
        "fal-ai/imagen4/preview]\n"
        f"seeds: {{start: 1, count: {seeds}}}\naxes: {{num_images: {images}}}\n"
        + ("exclude: [{prompt: p0}]\n" if exclude and prompts > 1 else "")
    )
    m = parse(text, Path("m.yaml"))
    jobs = len(plan.build(m, SchemaRegistry(ROOT / "schemas")).jobs)
    assert plan_size(m) == prompts * len(images) * (len(steps) + 1) * seeds
    assert jobs <= plan_size(m) and (jobs == plan_size(m)) == (not m.exclude)


# ---------------------------------------------------------------- the fuzzer: validation is total
#
# Manifests and prompt files come from a small grammar (valid ones), then mutations of them:
# wrong types, deleted keys, typos, huge values, unicode, NaN, aliases, hostile YAML snippets,
# other encodings. For every input `renderer validate` must exit 0, or exit 2 with a located
# `file:line:col` message, no traceback, nothing written, nothing sent, within a time and
# memory bound. The suite runs a small fixed-seed budget; RENDERER_FUZZ_EXAMPLES=2000 runs more.

FUZZ_EXAMPLES = int(os.environ.get("RENDERER_FUZZ_EXAMPLES") or 60)
FUZZ_ENDPOINTS = [
    "fal-ai/flux-1/schnell",
    "fal-ai/imagen4/preview",
    "fal-ai/hidream-i1-fast",
    "fal-ai/recraft/v2/text-to-image",
    "fal-ai/ideogram/v2",
]
_CONNECTS: list[object] = []
_GUARD = {"on": False}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # An audit hook, not a mock: any connection attempted while validating is recorded.
    if _GUARD["on"] and event == "socket.connect":
        _CONNECTS.append(args[1])


sys.addaudithook(_audit)

_ids = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(_ids, st.integers(0, 9), max_size=2),
)


@st.composite
def _valid_manifest(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A manifest the grammar says is valid, and the prompt files it names."""
    files: dict[str, bytes] = {}
    prompts: list[Any] = [
        {
            "id": f"p{i}",
            "text": draw(_text.filter(str.strip)) + f" {i}",
            "tags": draw(st.lists(_ids, max_size=2)),
        }
        for i in range(draw(st.integers(0, 3)))
    ]
    kind = draw(st.sampled_from(["none", "csv", "jsonl", "txt"]))
    if kind != "none" or not prompts:
        kind = "csv" if kind == "none" else kind
        rows = [
            (f"f{i}", draw(_text.filter(str.strip)) + f" row {i}")
            for i in range(draw(st.integers(1, 4)))
        ]
        if kind == "csv":
            out = io.StringIO(newline="")
            writer = csv.writer(out)
            writer.writerow(["id", "text", "tags"])
            writer.writerows([(i, t, "a;b") for i, t in rows])
            body = out.getvalue()
        elif kind == "jsonl":
            body = "".join(json.dumps({"id": i, "text": t, "tags": ["x"]}) + "\n" for i, t in rows)
        else:
            body = "".join(t.replace("\n", " ").replace("\r", " ") + "\n" for _, t in rows)
        files[f"prompts.{kind}"] = body.encode("utf-8")
        prompts.append({"file": f"prompts.{kind}"})
    models: list[Any] = [
        draw(st.sampled_from([e, {"endpoint": e, "label": f"m{n}"}]))
        for n, e in enumerate(
            draw(st.lists(st.sampled_from(FUZZ_ENDPOINTS), min_size=1, max_size=3, unique=True))
        )
    ]
    data: dict[str, Any] = {
        "name": draw(_ids),
        "provider": "emulator",
        "prompts": prompts,
        "models": models,
        "seeds": draw(
            st.one_of(
                st.lists(st.integers(1, 10**6), min_size=1, max_size=3, unique=True),
                st.builds(
                    lambda s, c: {"start": s, "count": c}, st.integers(1, 99), st.integers(1, 3)
                ),
                st.builds(lambda n: {"random": n}, st.integers(1, 3)),
            )
        ),
    }
    if draw(st.booleans()):
        # The sweep language: variables (a list, or a wildcard file nesting another variable),
        # an alternation, a zip group, a sample and an order.
        data["vars"] = {"color": draw(st.lists(_ids, min_size=1, max_size=3, unique=True))}
        text = "a {color} thing, {matte|glossy} \\{literal\\}"
        if draw(st.booleans()):
            files["wild.txt"] = (
                "# wildcards\n"
                + "".join(
                    f"{w} __color__\n"
                    for w in draw(st.lists(_ids, min_size=1, max_size=3, unique=True))
                )
            ).encode()
            data["vars"]["shape"] = {"file": "wild.txt"}
            text += " __shape__"
        if draw(st.booleans()):
            data["zip"] = [{"subject": ["cat", "dog"], "num_inference_steps": [2, 4]}]
            text += " of a {subject}"
        data["prompts"].insert(0, {"id": "tpl", "text": text})
        if draw(st.booleans()):
            data["sample"] = draw(
                st.sampled_from(
                    [{"count": 3, "seed": 1}, {"fraction": 0.5, "seed": 2, "exhaustive": ["model"]}]
                )
            )
        data["order"] = draw(st.sampled_from(["plan", "sparse-first"]))
    if draw(st.booleans()):
        data["limits"] = {
            "concurrency": draw(st.integers(1, 8)),
            "rate": draw(st.sampled_from([5, "5/s", "30/min"])),
            "timeout": 60,
        }
    if draw(st.booleans()):
        data["defaults"] = {"aspect_ratio": draw(st.sampled_from(["1:1", "16:9", "9:16"]))}
    if draw(st.booleans()):
        data["retries"] = {"attempts": 3, "backoff": 0.5}
    if draw(st.booleans()):
        data["prices"] = {
            (m if isinstance(m, str) else m["endpoint"]): {"per_image": 0.01} for m in models
        }
        data["budget"] = 1000
    return data, files


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*path, i))
    return found


HOSTILE = [
    "!!python/object/apply:os.system [id]",
    "!include other.yaml",
    "&a [1, 2]",
    "*a",
    "*undefined",
    "<<: {x: 1}",
    "16:9",
    ".nan",
    "-.inf",
    "1e400",
    "0o17",
    "2024-01-01",
    "!!binary aGk=",
    "!!set {a}",
    "\t",
    "{",
    "[",
    "? [a, b]\n: c",
    "- - -",
    "'",
    '"',
    "\x00",
    "\x07",
    "\ufeff",
    "\u202e",
    "~",
    "CON",
    "yes",
    "[" * 200,
    "{a: " * 80,
    "&b [*b]",
]


@st.composite
def _fuzzed(draw: st.DrawFn) -> tuple[str, dict[str, bytes]]:
    """YAML text (a valid manifest, perhaps mutated structurally and then textually) and its files."""
    data, files = draw(_valid_manifest())
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(_paths(data)))
        if not path:
            continue
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        action = draw(st.sampled_from(["delete", "junk", "typo", "huge", "nan"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "typo" and isinstance(parent, dict) and isinstance(key, str) and key:
            i = draw(st.integers(0, len(key) - 1))
            parent[key[:i] + key[i + 1 :] + draw(st.sampled_from(["", "e", "_"]))] = parent.pop(key)
        elif action == "huge":
            parent[key] = draw(st.sampled_from([10**12, 10**30, 1e308, -1, 0, 2**31, 10**8]))
        elif action == "nan":
            parent[key] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        else:
            parent[key] = draw(_junk)
    text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()), sort_keys=False)
    if draw(st.booleans()):
        lines = text.split("\n")
        at = draw(st.integers(0, len(lines) - 1))
        snippet = draw(st.sampled_from(HOSTILE))
        where = draw(st.sampled_from(["line", "value", "end"]))
        if where == "line":
            lines.insert(at, snippet)
        elif where == "value" and ": " in lines[at]:
            lines[at] = lines[at].split(": ", 1)[0] + ": " + snippet
        else:
            lines[at] += snippet
        text = "\n".join(lines)
    if draw(st.integers(0, 9)) == 9:  # truncated (9, not 0: hypothesis favours small draws)
        text = text[: draw(st.integers(0, len(text)))]
    for name in list(files):
        mutation = draw(
            st.sampled_from(
                ["none", "none", "bom", "latin1", "utf16", "nul", "quote", "binary", "empty"]
            )
        )
        body = files[name]
        files[name] = {
            "none": body,
            "bom": b"\xef\xbb\xbf" + body,
            "nul": body[:5] + b"\x00" + body[5:],
            "latin1": body.decode("utf-8").encode("latin-1", "replace") + b"caf\xe9\n",
            "utf16": body.decode("utf-8").encode("utf-16"),
            "quote": body.replace(b",", b',"', 1),
            "binary": bytes(range(256)),
            "empty": b"",
        }[mutation]
    return text, files


@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    deadline=timedelta(seconds=10),
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
@given(case=_fuzzed())
def test_validate_is_total_on_fuzzed_manifests(case: tuple[str, dict[str, bytes]]):
    """Every generated or mutated manifest: exit 0, or exit 2 located at file:line:col; no traceback,
    nothing written, nothing sent, under 10 s (the deadline) and 1 GB of memory."""
    text, files = case
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "m.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        for name, body in files.items():
            (root / name).write_bytes(body)
        before = sorted(p.name for p in root.iterdir())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out, err = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(root)
        _GUARD["on"] = True
        try:
            code = main(["validate", "m.yaml"], stdout=out, stderr=err, environ={})
        finally:
            _GUARD["on"] = False
            os.chdir(cwd)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak  # KiB on Linux
        assert sorted(p.name for p in root.iterdir()) == before, "validate wrote a file"
    assert not _CONNECTS, f"validate opened a connection: {_CONNECTS}"
    assert grown < 1024 * 1024, f"validate grew the process by {grown} KiB"
    assert "Traceback" not in err.getvalue(), err.getvalue()
    if code == 0:
        assert out.getvalue().startswith("ok: m.yaml:")
    else:
        assert code == 2, err.getvalue()
        first = err.getvalue().splitlines()[0]
        assert re.match(r"^[^\n]+:\d+:\d+: \$", first), first


def test_a_manifest_too_large_to_check_quickly_is_refused_before_composing():
    """More than MAX_VALUES values written out (not only through aliases) is refused at the first one over."""
    from renderer.manifest.located import MAX_VALUES

    count = MAX_VALUES // 5 + 10  # an inline prompt is five values: mapping, two keys, two strings
    text = "name: t\nprompts:\n" + "".join(f"  - {{id: p{i}, text: x}}\n" for i in range(count))
    with pytest.raises(ManifestError) as info:
        load_yaml(text, "big.yaml")
    (problem,) = info.value.problems
    assert problem.message == f"the manifest holds more than {MAX_VALUES:,} values"
    assert "prompt file" in (problem.allowed or "") and problem.line > MAX_VALUES // 5


ACCOUNTS_HEAD = (
    "name: t\nprompts: [{id: a, text: b}]\nmodels: [fal-ai/flux-1/schnell]\nseeds: [1]\n"
)


def _account_problems(body: str) -> list[tuple[int, int, str, str, str | None, str | None]]:
    with pytest.raises(ManifestError) as info:
        parse(ACCOUNTS_HEAD + body, Path("m.yaml"))
    return [
        (p.line, p.col, p.json_path, p.message, p.allowed, p.suggestion)
        for p in info.value.problems
    ]


def test_provider_accounts_are_read_with_their_defaults():
    """provider.accounts: name defaults to key_env, concurrency to 2, rate to none (`5/s` is read as 5 per second)."""
    m = parse(
        ACCOUNTS_HEAD + "provider:\n  accounts:\n    - {key_env: FAL_KEY_A, concurrency: 40}\n"
        "    - {key_env: FAL_KEY_B, name: team-b, rate: 5/s}\n",
        Path("m.yaml"),
    )
    a, b = m.provider.accounts
    assert (a.name, a.key_env, a.concurrency, a.rate) == ("FAL_KEY_A", "FAL_KEY_A", 40, None)
    assert (b.name, b.key_env, b.concurrency, b.rate) == ("team-b", "FAL_KEY_B", 2, 5.0)


def test_bad_provider_accounts_are_located_with_what_is_allowed():
    """Unknown field (did you mean), concurrency 0, rate 0 and a missing key_env: each at its line:col with what is allowed."""
    problems = _account_problems(
        "provider:\n  accounts:\n"
        "    - {key_env: FAL_KEY_A, concurency: 3}\n"  # line 7
        "    - {key_env: FAL_KEY_B, concurrency: 0}\n"
        "    - {name: c, concurrency: 1}\n"
        "    - {key_env: FAL_KEY_D, rate: 0}\n"
        "    - {key_env: 'FAL KEY'}\n"
    )
    assert problems == [
        (
            7,
            28,
            "$.provider.accounts[0].concurency",
            "unknown key 'concurency'",
            "concurrency, key_env, name, rate",
            "concurrency",
        ),
        (
            8,
            41,
            "$.provider.accounts[1].concurrency",
            "0 is less than the minimum of 1",
            "an integer, at least 1 and at most 1,000",
            None,
        ),
        (9, 7, "$.provider.accounts[2]", "missing required key 'key_env'", None, None),
        (
            10,
            34,
            "$.provider.accounts[3].rate",
            "0 must be more than 0",
            "a number, more than 0 and at most 100,000 per second, or a string like 10/s or 120/min",
            None,
        ),
        (
            11,
            17,
            "$.provider.accounts[4].key_env",
            "'FAL KEY' is not in the expected form",
            "an environment variable name such as FAL_KEY_A",
            None,
        ),
    ]


def test_accounts_listed_twice_or_beside_a_plain_key_are_refused():
    """Duplicate names or key variables, key_env beside accounts, and limits.concurrency beside accounts: each named."""
    problems = _account_problems(
        "provider:\n  key_env: FAL_KEY\n  accounts:\n"
        "    - {key_env: FAL_KEY_A}\n"  # line 8
        "    - {key_env: FAL_KEY_B, name: FAL_KEY_A}\n"
        "    - {key_env: FAL_KEY_B, name: b2}\n"
        "limits: {concurrency: 4}\n"
    )
    assert [(line, path, message) for line, _, path, message, _, _ in problems] == [
        (6, "$.provider.key_env", "provider.key_env and provider.accounts exclude each other"),
        (
            9,
            "$.provider.accounts[1].name",
            "account name 'FAL_KEY_A' is used twice (also accounts[0])",
        ),
        (
            10,
            "$.provider.accounts[2].key_env",
            "key variable 'FAL_KEY_B' is listed twice (also accounts[1]); one key is one account",
        ),
        (
            11,
            "$.limits.concurrency",
            "limits.concurrency does not apply with provider.accounts: each account has its own",
        ),
    ]
    # The duplicate default name (key_env) is pinned at the key variable that repeats it.
    problems = _account_problems(
        "provider:\n  accounts: [{key_env: K1}, {key_env: K1, name: x}, {key_env: K1}]\n"
    )
    assert [p[2] for p in problems] == [
        "$.provider.accounts[1].key_env",
        "$.provider.accounts[2].key_env",
        "$.provider.accounts[2].key_env",
    ]


def test_bad_accounts_exit_2_and_send_nothing(tmp_path: Path):
    """`renderer run` with a bad account exits 2 before anything is written or sent."""
    bad = tmp_path / "m.yaml"
    bad.write_text(
        ACCOUNTS_HEAD + "provider:\n  accounts: [{key_env: FAL_KEY_A, concurrency: 0}]\n"
    )
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["run", str(bad), "--output", str(tmp_path / "o")],
        stdout=out,
        stderr=err,
        environ={"FAL_KEY_A": "secret-value-a"},
    )
    assert code == 2 and "m.yaml:6:" in err.getvalue() and "Traceback" not in err.getvalue()
    assert not (tmp_path / "o").exists()


def _manifest_with(tmp_path: Path, entry: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(f"name: t\nprompts:\n  - {entry}\nmodels: [m]\nseeds: [1]\n")
    return path


def test_a_caption_set_names_its_own_columns(tmp_path: Path):
    """`{file, text: caption}` reads a caption CSV/JSONL with no id column: ids derived from the text, stable."""
    (tmp_path / "c.csv").write_text(
        "url,caption,license\nhttp://x/1,a red fox,cc0\nhttp://x/2,a heron,cc0\n"
    )
    (tmp_path / "c.jsonl").write_text(
        '{"caption": "a red fox", "n": 1}\n{"caption": "a heron", "n": 2}\n'
    )
    for name in ("c.csv", "c.jsonl"):
        m = parse(
            _manifest_with(tmp_path, f"{{file: {name}, text: caption}}").read_text(),
            tmp_path / "m.yaml",
        )
        assert [p.text for p in m.prompts] == ["a red fox", "a heron"]
        assert [p.id for p in m.prompts] == [text_id("a red fox"), text_id("a heron")]
        assert m.prompts[1].where[1] == (3 if name == "c.csv" else 2)


def test_a_missing_text_column_is_named_with_a_suggestion(tmp_path: Path):
    """A mapped text column the file lacks: exit 2 listing the columns and a did-you-mean."""
    (tmp_path / "c.csv").write_text("url,caption\nhttp://x/1,a red fox\n")
    with pytest.raises(ManifestError) as caught:
        parse(
            _manifest_with(tmp_path, "{file: c.csv, text: captoin}").read_text(),
            tmp_path / "m.yaml",
        )
    (problem,) = caught.value.problems
    assert "no 'captoin' column" in problem.message and problem.suggestion == "caption"


def test_parquet_prompt_files_read_only_the_named_columns(tmp_path: Path):
    """A .parquet caption set: text and id from named columns, rows located by row number."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "key": ["r1", "r2", "r3"],
            "caption": ["a red fox", "a heron", "an owl at night"],
            "url": ["u1", "u2", "u3"],
        }
    )
    pq.write_table(table, tmp_path / "c.parquet")
    m = parse(
        _manifest_with(tmp_path, "{file: c.parquet, text: caption, id: key}").read_text(),
        tmp_path / "m.yaml",
    )
    assert [(p.id, p.text, p.where[1]) for p in m.prompts] == [
        ("r1", "a red fox", 1),
        ("r2", "a heron", 2),
        ("r3", "an owl at night", 3),
    ]
    with pytest.raises(ManifestError) as caught:
        parse(_manifest_with(tmp_path, "{file: c.parquet}").read_text(), tmp_path / "m.yaml")
    assert "no column 'text'" in caught.value.problems[0].message


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.sampled_from([None, "", "  ", "\u3000\t", "a\0b", "\u00a0x", "#tag"])
        | st.text(min_size=1, max_size=12),
        min_size=1,
        max_size=12,
    ),
    pad=st.sampled_from([0, 16384]),
    backed=st.booleans(),
)
def test_parquet_captions_are_checked_as_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values, pad: int, backed: bool
):
    """A Parquet caption column gives each good row as a prompt at its row number and each bad one as a problem there, batch by batch, its texts held or read again."""
    from renderer.manifest import backed as backed_mod

    monkeypatch.setattr(backed_mod, "BACKED_BYTES", -1 if backed else backed_mod.BACKED_BYTES)
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    column = [f"padding row {i}" for i in range(pad)] + values  # a first batch of good rows
    pq.write_table(pa.table({"caption": pa.array(column, pa.string())}), tmp_path / "c.parquet")
    good = [
        (n, v)
        for n, v in enumerate(column, 1)
        if isinstance(v, str) and v.strip() and "\0" not in v
    ]
    try:
        m = parse(
            _manifest_with(tmp_path, "{file: c.parquet, text: caption}").read_text(),
            tmp_path / "m.yaml",
        )
    except ManifestError as exc:
        kept = {n for n, _ in good}
        bad = [n for n in range(1, len(column) + 1) if n not in kept]
        texts = [v for _, v in good]
        lines = sorted({p.line for p in exc.problems if p.file.endswith("c.parquet")})
        assert lines == bad or len(set(texts)) < len(texts), exc.problems
        return
    assert [(p.id, p.text, p.where[1]) for p in m.prompts] == [(text_id(v), v, n) for n, v in good]
    assert [p.text for p in m.prompts[-3:]] == [v for _, v in good[-3:]]  # read from the end


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.sampled_from([None, "", "  ", "a\0b", "\u00a0x", 7, 'x, "quoted"\nline'])
        | st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
        min_size=1,
        max_size=12,
    ),
    pad=st.sampled_from([0, 5000]),
    suffix=st.sampled_from([".jsonl", ".csv"]),
)
@example(values=["\r", None], pad=0, suffix=".csv")  # a lone \r in a quoted field is a line
def test_jsonl_and_csv_captions_are_read_as_row_by_row(
    tmp_path: Path, values, pad: int, suffix: str
):
    """A caption column of a .jsonl or .csv file gives each good row as a prompt at its line, a batch at a time as one by one."""
    column = [f"padding row {i}" for i in range(pad)] + values
    path = tmp_path / f"c{suffix}"
    rows: list[tuple[int, Any]] = []  # (line, value as the reader gives it)
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"caption": v}) + "\n" for v in column))
        rows = list(enumerate(column, 1))
    else:
        with open(path, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["caption", "n"])
            for v in column:
                out.writerow(["" if v is None else v, 1])
        line = 2
        for v in column:
            text = "" if v is None else str(v)
            rows.append((line, text))
            # A quoted field's line breaks are lines of the file: \r\n, \n and a lone \r each one
            # (as Python's csv and editors count them).
            line += 1 + len(re.findall(r"\r\n|\r|\n", text))
    good = [(n, v) for n, v in rows if isinstance(v, str) and v.strip() and "\0" not in v]
    try:
        m = parse(
            _manifest_with(tmp_path, f"{{file: c{suffix}, text: caption}}").read_text(),
            tmp_path / "m.yaml",
        )
    except ManifestError as exc:
        if suffix == ".csv" and any("\0" in str(v) for v in column):  # the file is not text
            assert "NUL byte" in exc.problems[0].message
            return
        texts = [v for _, v in good]
        problems = sorted({p.line for p in exc.problems if p.file.endswith(f"c{suffix}")})
        kept = {n for n, _ in good}
        assert problems == [n for n, _ in rows if n not in kept] or len(set(texts)) < len(texts), (
            exc.problems
        )
        return
    assert [(p.id, p.text, p.where[1]) for p in m.prompts] == [(text_id(v), v, n) for n, v in good]


@pytest.mark.parametrize("suffix", [".txt", ".parquet", "keep"])
def test_a_prompt_file_changed_after_its_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
):
    """A large prompt file read again (its texts and kept values not held) that changed since it was checked stops the command, never gives another text or value."""
    from renderer.manifest import backed as backed_mod

    monkeypatch.setattr(backed_mod, "BACKED_BYTES", -1)
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    def write(texts: list[str], src: list[str]) -> None:
        if suffix == ".txt":
            (tmp_path / "c.txt").write_text("".join(t + "\n" for t in texts))
        else:
            pq.write_table(pa.table({"caption": texts, "src": src}), tmp_path / "c.parquet")

    write(["a red fox", "a heron"], ["u1", "u2"])
    entry = "{file: c.txt}" if suffix == ".txt" else "{file: c.parquet, text: caption"
    entry += ", keep: [src]}" if suffix == "keep" else "}" * (suffix != ".txt")
    m = parse(_manifest_with(tmp_path, entry).read_text(), tmp_path / "m.yaml")
    assert [p.text for p in m.prompts] == ["a red fox", "a heron"]
    if suffix == "keep":
        assert [p.extra for p in m.prompts] == ['{"src":"u1"}', '{"src":"u2"}']
        write(["a red fox", "a heron"], ["u1", "u3"])  # only a kept value differs
    else:
        write(["a red fox", "a crane"], ["u1", "u2"])  # the same size: the text differs
    with pytest.raises(ManifestError) as caught:
        list(m.prompts)
    assert "changed (or is gone) since its prompts were checked" in caught.value.problems[0].message


def test_txt_comment_lines_can_be_prompts(tmp_path: Path):
    """`comments: false` keeps lines starting with # as prompts (captions with hashtags)."""
    (tmp_path / "p.txt").write_text("#sunset over the sea\na red fox\n")
    on = parse(_manifest_with(tmp_path, "{file: p.txt}").read_text(), tmp_path / "m.yaml")
    off = parse(
        _manifest_with(tmp_path, "{file: p.txt, comments: false}").read_text(), tmp_path / "m.yaml"
    )
    assert [p.text for p in on.prompts] == ["a red fox"]
    assert [p.text for p in off.prompts] == ["#sunset over the sea", "a red fox"]


def _caption_files(folder: Path) -> dict[str, str]:
    """The same three-row caption set as .jsonl, .csv and .parquet (columns: caption, source_url,
    license, original_id; the JSONL's second row lacks its license). → file name: its entry's columns."""
    rows = [
        {"caption": "a red fox", "source_url": "https://x/1", "license": "cc0", "original_id": 1},
        {"caption": "a heron", "source_url": "https://x/2", "original_id": 2},
        {"caption": "an owl", "source_url": "https://x/3", "license": "cc-by", "original_id": 3},
    ]
    (folder / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (folder / "c.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["caption", "source_url", "license", "original_id"])
        writer.writeheader()
        writer.writerows(rows)
    made = {"c.jsonl": "text: caption", "c.csv": "text: caption"}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return made
    pq.write_table(
        pa.table(
            {
                k: [r.get(k) for r in rows]
                for k in ("caption", "source_url", "license", "original_id")
            }
        ),
        folder / "c.parquet",
    )
    return {**made, "c.parquet": "text: caption"}


def test_kept_columns_ride_with_each_prompt(tmp_path: Path):
    """`keep:` gives each row its kept values, typed as the file holds them (CSV: text), null where a row lacks one."""
    for name, columns in _caption_files(tmp_path).items():
        m = parse(
            _manifest_with(
                tmp_path, f"{{file: {name}, {columns}, keep: [source_url, license, original_id]}}"
            ).read_text(),
            tmp_path / "m.yaml",
        )
        extras = [json.loads(p.extra or "") for p in m.prompts]
        assert [list(e) for e in extras] == [["source_url", "license", "original_id"]] * 3
        assert [e["source_url"] for e in extras] == ["https://x/1", "https://x/2", "https://x/3"]
        number = str if name == "c.csv" else int
        assert [e["original_id"] for e in extras] == [number(1), number(2), number(3)]
        assert extras[1]["license"] == ("" if name == "c.csv" else None)
        plain = parse(
            _manifest_with(tmp_path, f"{{file: {name}, {columns}}}").read_text(),
            tmp_path / "m.yaml",
        )
        assert [p.extra for p in plain.prompts] == [None] * 3
        assert [(p.id, p.text) for p in plain.prompts] == [(p.id, p.text) for p in m.prompts]
    # A JSONL file read without a mapping: kept keys are allowed beside id and text.
    (tmp_path / "p.jsonl").write_text(
        '{"id": "a", "text": "a fox", "url": "u", "meta": {"w": 1}}\n'
    )
    m = parse(
        _manifest_with(tmp_path, "{file: p.jsonl, keep: [url, meta]}").read_text(),
        tmp_path / "m.yaml",
    )
    assert m.prompts[0].extra == '{"url":"u","meta":"{\\"w\\":1}"}'  # nested: its JSON text


@settings(
    deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(["c.jsonl", "c.csv", "c.parquet"]),
    st.sampled_from(["source_url", "license", "original_id"]),
    st.sampled_from(["drop", "double", "swap", "case"]),
    st.integers(0, 6),
)
def test_a_kept_name_the_file_lacks_is_located_with_a_suggestion(
    tmp_path: Path, name: str, column: str, mistake: str, at: int
):
    """A misspelt kept column, in any format: exit 2 at the manifest's keep entry, did-you-mean the
    file's column, nothing written."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    files = _caption_files(folder)
    if name not in files:
        return
    at %= len(column) - 1
    wrong = {
        "drop": column[:at] + column[at + 1 :],
        "double": column[:at] + column[at] + column[at:],
        "swap": column[:at] + column[at + 1] + column[at] + column[at + 2 :],
        "case": column.upper(),
    }[mistake]
    if wrong == column:
        return
    m = _manifest_with(folder, f"{{file: {name}, {files[name]}, keep: [{wrong}]}}")
    m.write_text(m.read_text().replace("name: t\n", "name: t\nprovider: emulator\noutput: out\n"))
    out, err = io.StringIO(), io.StringIO()
    code = main(["run", str(m)], stdout=out, stderr=err, environ={})
    text = err.getvalue()
    assert code == 2 and "Traceback" not in text, text
    line = m.read_text().splitlines().index(f"  - {{file: {name}, {files[name]}, keep: [{wrong}]}}")
    col = m.read_text().splitlines()[line].index(wrong) + 1
    assert text.startswith(
        f"{m}:{line + 1}:{col}: $.prompts[0].keep[0]: the prompt file {name} has no column {wrong!r}"
    ), text
    assert f"did you mean {column}?" in text
    assert not (folder / "out").exists()


def test_keep_refuses_what_would_clash_or_cannot_be(tmp_path: Path):
    """keep: on .txt, a column the entry already reads, a dataset column, an axis or variable column, a
    Parquet column of bytes: each refused at its own place in the manifest, the other side named."""
    _caption_files(tmp_path)
    (tmp_path / "p.txt").write_text("a fox\n")
    cases = {
        "{file: p.txt, keep: [url]}": ("$.prompts[0].keep", "a .txt prompt file has no columns"),
        "{file: c.csv, text: caption, keep: [caption]}": (
            "$.prompts[0].keep[0]",
            "already read as the prompts' text: the dataset has it as `prompt`",
        ),
        "{file: c.jsonl, text: caption, keep: [source_url, seed]}": (
            "$.prompts[0].keep[1]",
            "clashes with the dataset's own column 'seed'",
        ),
        "{file: c.csv, text: caption, keep: [image]}": (
            "$.prompts[0].keep[0]",
            "clashes with the dataset's own column 'image'",
        ),
    }
    for entry, (path, message) in cases.items():
        with pytest.raises(ManifestError) as caught:
            parse(_manifest_with(tmp_path, entry).read_text(), tmp_path / "m.yaml")
        (problem,) = caught.value.problems
        assert (problem.json_path, message in problem.message) == (path, True), problem
    m = tmp_path / "m.yaml"
    m.write_text(
        "name: t\nprompts:\n  - {file: c.csv, text: caption, keep: [license, source_url]}\n"
        "  - {id: a, text: 'a {source_url}'}\nmodels: [{endpoint: m, axes: {license: [x]}}]\n"
        "seeds: [1]\nvars: {source_url: [u]}\n"
    )
    with pytest.raises(ManifestError) as caught:
        parse(m.read_text(), m)
    found = {p.json_path: p.message for p in caught.value.problems}
    assert found == {
        "$.prompts[0].keep[0]": f"kept column 'license' clashes with the axis column 'license' set at {m}:5:31",
        "$.prompts[0].keep[1]": f"kept column 'source_url' clashes with the axis column 'source_url' set at {m}:7:8",
    }
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["a fox"], "blob": [b"\x00\x01"]}), tmp_path / "b.parquet")
    with pytest.raises(ManifestError) as caught:
        parse(
            _manifest_with(tmp_path, "{file: b.parquet, keep: [blob]}").read_text(),
            tmp_path / "m.yaml",
        )
    assert "holds binary data" in caught.value.problems[0].message
