"""`- hub: org/name` prompt sources (renderer/manifest/hub.py) against a Hub on 127.0.0.1.

The server below speaks the part of the Hub's HTTP API huggingface_hub calls for a dataset at a
revision: `GET /api/datasets/ORG/NAME[/revision/REV]?blobs=True` (the commit and each file's
size, git blob id and LFS sha256), `/api/datasets/ORG/NAME/refs`, and `HEAD|GET
/datasets/ORG/NAME/resolve/REV/PATH` (X-Repo-Commit, ETag / X-Linked-Etag, sizes). It can
misbehave on request: statuses, listed sizes or hashes that are not the served bytes, bodies
cut short, files that are not what their name says. HF_ENDPOINT points renderer at it and
HF_HOME at a temporary folder, in the environment the CLI is handed (as `renderer` hands it
the process's) and in os.environ for the Python API, which reads that by default.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from renderer.manifest.hubfiles import _by_split_words, _card_configs
from renderer.manifest.load import load
from tests import conftest
from tests.servers import free_port

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("huggingface_hub")


def _hf_env() -> dict[str, str]:
    """The HF_* variables of this process as the fixtures set them."""
    return {k: v for k, v in os.environ.items() if k.startswith("HF_")}


def cli(*argv: str) -> tuple[int, str, str]:
    """The CLI handed the HF_* variables of this process, as the `renderer` command is."""
    return conftest.cli(*argv, env=_hf_env())


def _parquet(columns: dict[str, list[Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


class Hub:
    """Datasets by commit, branches, and the faults to serve (set by a test)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        self.status: int | None = None  # every API and file answer has this status
        self.gated: set[str] = set()  # repos whose files need a token
        self.token: str | None = None  # the token those files accept
        self.served: dict[str, bytes] = {}  # path → bytes served instead of the listed ones
        self.cut: set[str] = set()  # paths whose body stops halfway (Content-Length whole)
        self.etag: str | None = None  # the ETag every file is served with, instead of its hash
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.url = ""

    def commit(self, repo: str, files: dict[str, bytes], card: dict[str, Any] | None = None) -> str:
        """A new commit of `repo` holding `files` (its card's YAML as `card`), now on main."""
        entry = self.repos.setdefault(repo, {"commits": {}, "main": None})
        sha = hashlib.sha1(f"{repo}{len(entry['commits'])}{sorted(files)}".encode()).hexdigest()
        entry["commits"][sha] = {"files": files, "card": card}
        entry["main"] = sha
        return sha

    def _resolve(self, request: web.Request) -> tuple[dict[str, Any], str] | web.Response:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests.append((request.method, request.path, request.headers.get("Authorization")))
        if self.status is not None:
            return web.Response(status=self.status, text="the Hub is having a bad day")
        if repo not in self.repos:
            return web.Response(status=401, headers={"X-Error-Code": "RepoNotFound"})
        entry = self.repos[repo]
        rev = request.match_info.get("rev", "main")
        sha = entry["main"] if rev == "main" else rev
        if sha not in entry["commits"]:
            return web.Response(status=404, headers={"X-Error-Code": "RevisionNotFound"})
        return entry, sha

    async def info(self, request: web.Request) -> web.Response:
        got = self._resolve(request)
        if isinstance(got, web.Response):
            return got
        entry, sha = got
        commit = entry["commits"][sha]
        siblings = []
        for path, data in commit["files"].items():
            blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
            sibling: dict[str, Any] = {"rfilename": path, "size": len(data), "blobId": blob}
            if not path.endswith((".md", ".jsonl", ".csv")):
                sibling["lfs"] = {
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "pointerSize": 134,
                }
            siblings.append(sibling)
        body = {"id": request.match_info["org"] + "/" + request.match_info["name"], "sha": sha}
        body |= {"private": False, "gated": False, "siblings": siblings}
        if commit["card"] is not None:
            body["cardData"] = commit["card"]
        return web.json_response(body)

    async def refs(self, request: web.Request) -> web.Response:
        got = self._resolve(request)
        if isinstance(got, web.Response):
            return got
        _entry, sha = got
        branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": sha}
        return web.json_response({"branches": [branch], "tags": [], "converts": []})

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        got = self._resolve(request)
        if isinstance(got, web.Response):
            return got
        entry, sha = got
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        if repo in self.gated and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, headers={"X-Error-Code": "GatedRepo"})
        path = request.match_info["path"]
        listed = entry["commits"][sha]["files"].get(path)
        if listed is None:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        data = self.served.get(path, listed)
        etag = self.etag or hashlib.sha256(data).hexdigest()
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        if path in self.cut:
            await response.write(data[: len(data) // 2])
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-body
            return response
        await response.write(data)
        await response.write_eof()
        return response


@contextmanager
def serving() -> Iterator[Hub]:
    """A Hub on 127.0.0.1 on its own thread (its URL in `.url`) while the block lasts."""
    state = Hub()
    app = web.Application()
    base = "/{org}/{name}"
    app.router.add_get("/api/datasets" + base, state.info)
    app.router.add_get("/api/datasets" + base + "/revision/{rev}", state.info)
    app.router.add_get("/api/datasets" + base + "/refs", state.refs)
    app.router.add_get("/datasets" + base + "/resolve/{rev}/{path:.+}", state.resolve)
    with conftest.background_app(app) as url:
        state.url = url
        yield state


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """A Hub on 127.0.0.1 named by HF_ENDPOINT; HF_HOME in tmp_path; no HF_TOKEN."""
    with serving() as state:
        monkeypatch.setenv("HF_ENDPOINT", state.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        yield state


CAPTIONS = {
    "caption": ["a red fox", "a heron at dawn", "an owl", "a lighthouse in fog"],
    "source_url": ["https://x/0", "https://x/1", None, "https://x/3"],
    "license": ["cc0", "cc-by", "cc0", "cc0"],
}


def _manifest(folder: Path, entry: dict[str, Any], name: str = "t") -> Path:
    body = {
        "name": name,
        "provider": "emulator",
        "output": str(folder / "out"),
        "prompts": [entry],
        "models": ["fal-ai/flux-1/schnell"],
        "seeds": [1],
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    """metadata.jsonl's rows without what differs between two runs of one plan."""
    lines = (run_dir / "data" / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    return sorted(({k: v for k, v in r.items() if k != "request_id"} for r in rows), key=str)


def test_a_hub_dataset_runs_as_its_local_parquet_file(hub: Hub, tmp_path: Path):
    """A run from `hub:` writes the same jobs, paths and dataset rows as the same Parquet file named with `file:`."""
    data = _parquet(CAPTIONS)
    sha = hub.commit(
        "org/caps", {"README.md": b"# caps\n", "data/train-00000-of-00001.parquet": data}
    )
    (tmp_path / "caps.parquet").write_bytes(data)
    mapping = {"text": "caption", "keep": ["source_url", "license"]}
    remote = _manifest(tmp_path, {"hub": "org/caps", **mapping}, "remote")
    local = _manifest(tmp_path, {"file": "caps.parquet", **mapping}, "local")
    for manifest in (remote, local):
        code, _, err = cli("run", str(manifest), "--quiet")
        assert code == 0, err
    served = [path for method, path, _ in hub.requests if method == "GET"]
    assert served[-1] == f"/datasets/org/caps/resolve/{sha}/data/train-00000-of-00001.parquet"
    a, b = _rows(tmp_path / "out/remote"), _rows(tmp_path / "out/local")
    assert len(a) == 4 and a == b
    assert {r["prompt"]: r["source_url"] for r in a} == dict(
        zip(CAPTIONS["caption"], CAPTIONS["source_url"], strict=True)
    )
    images = sorted(
        p.relative_to(tmp_path / "out/remote")
        for p in (tmp_path / "out/remote/data").rglob("*.png")
    )
    assert images == sorted(
        p.relative_to(tmp_path / "out/local") for p in (tmp_path / "out/local/data").rglob("*.png")
    )


def _problems(manifest: Path) -> str:
    """`renderer validate`'s answer to a manifest that must be refused: exit 2, no traceback."""
    code, out, err = cli("validate", str(manifest))
    assert code == 2, (out, err)
    assert "Traceback" not in err
    return err


def test_a_missing_dataset_split_config_or_column_is_named_with_the_real_choices(
    hub: Hub, tmp_path: Path
):
    """No such dataset, revision, config, split, column or kept column: exit 2 at the entry's field, with what the dataset has and a did-you-mean; nothing written."""
    card = {
        "configs": [
            {"config_name": "en", "data_files": [{"split": "train", "path": "en/train-*"}]},
            {
                "config_name": "fr",
                "data_files": [
                    {"split": "train", "path": "fr/train-*"},
                    {"split": "validation", "path": "fr/valid-*"},
                ],
            },
        ]
    }
    data = _parquet(CAPTIONS)
    hub.commit(
        "org/caps",
        {"en/train-0.parquet": data, "fr/train-0.parquet": data, "fr/valid-0.parquet": data},
        card,
    )
    cases = [
        ({"hub": "org/capz", "text": "caption"}, "$.prompts[0].hub", "no dataset org/capz", None),
        (
            {"hub": "org/caps", "text": "caption"},
            "$.prompts[0].hub",
            "2 configs and none is its default",
            None,
        ),
        (
            {"hub": "org/caps", "config": "fre", "text": "caption"},
            "$.prompts[0].config",
            "no config 'fre'",
            "fr",
        ),
        (
            {"hub": "org/caps", "config": "fr", "split": "validaton", "text": "caption"},
            "$.prompts[0].split",
            "no split 'validaton'",
            "validation",
        ),
        (
            {"hub": "org/caps", "config": "fr", "revision": "v2", "text": "caption"},
            "$.prompts[0].revision",
            "no such revision",
            None,
        ),
        (
            {"hub": "org/caps", "config": "en", "text": "captoin"},
            "$.prompts[0].hub",
            "no column 'captoin'",
            "caption",
        ),
        (
            {"hub": "org/caps", "config": "en", "text": "caption", "keep": ["licence"]},
            "$.prompts[0].keep[0]",
            "has no column 'licence'",
            "license",
        ),
    ]
    for entry, at, message, suggestion in cases:
        err = _problems(_manifest(tmp_path, entry))
        assert "t.yaml:" in err and f": {at}: " in err and message in err, err
        assert (f"did you mean {suggestion}?" in err) == (suggestion is not None), err
    assert "its configs: en, fr" in _problems(
        _manifest(tmp_path, {"hub": "org/caps", "config": "fre"})
    )
    assert "its splits: train, validation" in _problems(
        _manifest(tmp_path, {"hub": "org/caps", "config": "fr", "split": "test"})
    )
    assert "its branches and tags: main" in _problems(
        _manifest(tmp_path, {"hub": "org/caps", "revision": "v2"})
    )
    code, _, err = cli("run", str(_manifest(tmp_path, {"hub": "org/caps", "config": "fre"})))
    assert code == 2 and "no config 'fre'" in err
    assert not (tmp_path / "out").exists()


def test_a_run_keeps_the_commit_it_started_from(hub: Hub, tmp_path: Path):
    """A `hub:` run records the commit its revision (or none) resolved to; once the dataset moves, a rerun with the same words is refused naming both commits, and pinning either commit runs."""

    def run(**pin: str) -> tuple[int, str]:
        entry = {"hub": "org/caps", "text": "caption", **pin}
        code, _, err = cli("run", str(_manifest(tmp_path, entry)), "--quiet")
        assert "Traceback" not in err
        return code, err

    def written() -> list[Path]:
        return sorted((tmp_path / "out/t/data").rglob("*.png"))

    first = hub.commit("org/caps", {"train.parquet": _parquet(CAPTIONS)})
    assert run() == (0, "")
    moved = {**CAPTIONS, "caption": [*CAPTIONS["caption"][:3], "a lighthouse at noon"]}
    second = hub.commit("org/caps", {"train.parquet": _parquet(moved)})
    before = written()
    code, err = run()
    assert code == 2 and f"is at commit {second}" in err and f"planned from {first}" in err, err
    assert f"`revision: {first}`" in err and f"`revision: {second}`" in err
    assert written() == before  # nothing written
    assert run(revision=first) == (0, "")
    assert written() == before  # the same rows: nothing rendered again
    assert run(revision=second) == (0, "")
    assert {r["prompt"] for r in _rows(tmp_path / "out/t")} == set(moved["caption"])
    assert run(revision="main") == (0, "")  # a branch named: recorded at the commit it is now
    third = hub.commit("org/caps", {"train.parquet": _parquet(CAPTIONS)})
    code, err = run(revision="main")
    assert code == 2 and f"with `revision: main` is at commit {third}" in err, err
    assert f"planned from {second}" in err


def _snapshots(tmp_path: Path) -> list[Path]:
    """The files the Hugging Face cache holds as downloaded (its snapshots)."""
    return sorted(p for p in (tmp_path / "hf").rglob("snapshots/*/**/*") if p.is_file())


@pytest.mark.parametrize(
    "fault",
    [
        "status 500",
        "status 503",
        "same size other bytes",
        "longer",
        pytest.param("cut short", marks=pytest.mark.slow),  # huggingface_hub retries for ~5 s
        "not parquet",
        "etag escapes",
    ],
)
def test_a_hostile_hub_is_refused_and_nothing_it_served_is_kept(
    hub: Hub, tmp_path: Path, fault: str
):
    """A Hub that errs, serves bytes other than the ones it lists, cuts a download short, serves a file that is not what its name says or names it with a path: a clear refusal at the entry, nothing read or kept, nothing written outside the cache; a healthy Hub then serves the run."""
    data = _parquet(CAPTIONS)
    listed = b"<html>rate limited</html>" if fault == "not parquet" else data
    hub.commit("org/caps", {"data/train.parquet": listed})
    if fault.startswith("status"):
        hub.status = int(fault.split()[1])
    elif fault == "same size other bytes":
        hub.served["data/train.parquet"] = data[:-3] + b"xyz"
    elif fault == "longer":
        hub.served["data/train.parquet"] = data + b"xyz"
    elif fault == "cut short":
        hub.cut.add("data/train.parquet")
    elif fault == "etag escapes":  # huggingface_hub would store the download at blobs/<ETag>
        hub.etag = "../../../../escaped"
    m = _manifest(tmp_path, {"hub": "org/caps", "text": "caption"})
    err = _problems(m)
    assert "t.yaml:5:8: $.prompts[0].hub: " in err, err
    expected = {
        "status 500": "answered 500 for org/caps",
        "status 503": "answered 503 for org/caps",
        "same size other bytes": "not the file the Hub lists (1,066 bytes, sha256",
        "longer": "got 1,069 bytes",
        "cut short": "was cut short",
        "not parquet": "train.parquet: not a readable Parquet file",
        "etag escapes": "names the download '../../../../escaped', which is not a plain name",
    }[fault]
    assert expected in err, err
    assert not list(tmp_path.rglob("escaped*"))
    if fault != "not parquet":  # (that file is the one the Hub lists: what it holds is refused)
        assert _snapshots(tmp_path) == []
    if fault == "not parquet":
        return
    hub.status, hub.served, hub.cut, hub.etag = None, {}, set(), None
    code, out, err = cli("validate", str(m))
    assert code == 0 and "4 jobs" in out, err
    assert [p.name for p in _snapshots(tmp_path)] == ["train.parquet"]


def test_a_gated_dataset_needs_a_token_from_the_environment_only(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A gated dataset without HF_TOKEN, or with one that cannot read it, is refused clearly; HF_TOKEN is sent to the Hub and never printed."""
    hub.commit("org/caps", {"train.parquet": _parquet(CAPTIONS)})
    hub.gated.add("org/caps")
    hub.token = "hf_right_" + "x" * 20
    m = _manifest(tmp_path, {"hub": "org/caps", "text": "caption"})
    (tmp_path / "hf").mkdir(exist_ok=True)
    (tmp_path / "hf" / "token").write_text(hub.token)  # a login's token file is not read
    assert "is gated" in _problems(m) and "export HF_TOKEN=" in _problems(m)
    assert {auth for _, _, auth in hub.requests} == {None}
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_" + "y" * 20)
    err = _problems(m)
    assert "is gated" in err and "hf_wrong" not in err
    monkeypatch.setenv("HF_TOKEN", hub.token)
    code, out, err = cli("validate", str(m))
    assert code == 0 and hub.token not in out + err, err
    sent = {auth for method, _, auth in hub.requests if method == "GET"}
    assert f"Bearer {hub.token}" in sent


def test_without_the_extra_or_the_hub_the_refusal_says_what_to_do(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """huggingface_hub not installed: the pip command; the Hub unreachable: which endpoint and what to check; both exit 2 with nothing written."""
    hub.commit("org/caps", {"train.parquet": _parquet(CAPTIONS)})
    m = _manifest(tmp_path, {"hub": "org/caps", "text": "caption"})
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
        err = _problems(m)
    assert "needs the `hub` extra" in err and "pip install 'renderer-batch[hub]'" in err
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    err = _problems(m)
    assert "could not be reached for org/caps" in err and "network access to the Hub" in err
    code, _, err = cli("run", str(m))
    assert code == 2 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_split_in_shards_is_read_in_order_and_a_bad_row_is_located(hub: Hub, tmp_path: Path):
    """A split in several shards (JSONL here) is one prompt source in shard order; a bad row names the entry, the data file at its commit and the line; a column missing from the shards is said once."""
    rows = [{"caption": c, "license": "cc0"} for c in CAPTIONS["caption"]]
    shard = [
        b"".join(json.dumps(r).encode() + b"\n" for r in part) for part in (rows[:2], rows[2:])
    ]
    files = {
        "data/train-00000-of-00002.jsonl": shard[0],
        "data/train-00001-of-00002.jsonl": shard[1],
        "data/test-00000-of-00001.jsonl": b'{"caption": "a test row"}\n',
    }
    sha = hub.commit("org/caps", files)
    m = _manifest(tmp_path, {"hub": "org/caps", "text": "caption", "keep": ["license"]})
    read = load(m, _hf_env())
    assert [(p.text, p.extra) for p in read.prompts] == [
        (c, '{"license":"cc0"}') for c in CAPTIONS["caption"]
    ]
    assert [p.where[0] for p in read.prompts][1:3] == [
        f"hf://datasets/org/caps@{sha}/data/train-00000-of-00002.jsonl",
        f"hf://datasets/org/caps@{sha}/data/train-00001-of-00002.jsonl",
    ]
    test = _manifest(tmp_path, {"hub": "org/caps", "split": "test", "text": "caption"}, "test")
    assert "1 jobs" in cli("validate", str(test))[1]
    parquet = {f"data/train-0000{i}-of-00002.parquet": _parquet(CAPTIONS) for i in (0, 1)}
    hub.commit("org/pq", parquet)
    err = _problems(_manifest(tmp_path, {"hub": "org/pq", "text": "captoin"}, "pq"))
    assert err.count("no column 'captoin'") == 1 and "(1 more files not read)" in err, err
    files["data/train-00001-of-00002.jsonl"] = shard[1] + b'{"caption": "  "}\n'
    sha = hub.commit("org/caps", files)
    err = _problems(m)
    assert (
        f"t.yaml:5:8: $.prompts[0].hub: hf://datasets/org/caps@{sha}/"
        "data/train-00001-of-00002.jsonl line 3: prompt" in err
    ), err


def test_a_dataset_of_other_files_is_refused_with_the_formats_read(hub: Hub, tmp_path: Path):
    """Images in the split: refused at `split`, naming the formats found and those read; a .json file is read when it is JSON Lines and refused when it is one document; an empty data file is said to hold no prompts."""
    hub.commit(
        "org/pics",
        {"train/0.png": b"\x89PNG", "train/metadata.json": b"[]", "test/x.csv": b"text\na\n"},
    )
    hub.commit(
        "org/empty", {"data/train.parquet": _parquet({"caption": pa.array([], pa.string())})}
    )
    err = _problems(_manifest(tmp_path, {"hub": "org/empty", "text": "caption"}))
    assert "t.yaml:5:8: $.prompts[0].hub: the data file hf://datasets/org/empty@" in err, err
    assert "/data/train.parquet holds no prompts" in err
    err = _problems(_manifest(tmp_path, {"hub": "org/pics"}))
    assert "$.prompts[0].split: split 'train' of config 'default' is held in .png files" in err
    assert "Parquet, JSON Lines or CSV (.parquet, .jsonl, .json, .csv)" in err
    code, out, err = cli("validate", str(_manifest(tmp_path, {"hub": "org/pics", "split": "test"})))
    assert code == 0 and "1 jobs" in out, err
    lines = b'{"text": "an owl"}\n{"text": "a heron"}\n'
    hub.commit("org/json", {"train.json": lines, "test.json": b'[\n  {"text": "an owl"}\n]\n'})
    code, out, err = cli("validate", str(_manifest(tmp_path, {"hub": "org/json"})))
    assert code == 0 and "2 jobs" in out, err  # .json files holding JSON Lines are read
    err = _problems(_manifest(tmp_path, {"hub": "org/json", "split": "test"}))
    assert "test.json is one JSON document (an array or an object over several lines)" in err


def test_the_cards_default_config_is_read_without_naming_it(hub: Hub, tmp_path: Path):
    """A card's configs: the one marked default is read when `config:` is absent, the others by name, each from its own files (patterns under its data_dir; without patterns, its data_dir's files by split words)."""
    card = {
        "configs": [
            {"config_name": "all", "data_files": "full/*.csv"},
            {"config_name": "small", "data_files": ["part/*.csv"], "default": True},
            {"config_name": "by_dir", "data_dir": "full", "data_files": {"test": "*.csv"}},
            {"config_name": "by_words", "data_dir": "words"},
        ]
    }
    files = {"full/a.csv": b"text\nan owl\na heron\n", "part/a.csv": b"text\nan owl\n"}
    files |= {"words/test.csv": b"text\na fox\n", "words/valid.csv": b"text\na cat\n"}
    hub.commit("org/caps", files, card)
    assert "1 jobs" in cli("validate", str(_manifest(tmp_path, {"hub": "org/caps"})))[1]
    both = _manifest(tmp_path, {"hub": "org/caps", "config": "all"})
    assert "2 jobs" in cli("validate", str(both))[1]
    in_dir = _manifest(tmp_path, {"hub": "org/caps", "config": "by_dir", "split": "test"})
    assert "2 jobs" in cli("validate", str(in_dir))[1]
    words = _manifest(tmp_path, {"hub": "org/caps", "config": "by_words", "split": "tets"})
    assert "its splits: validation, test" in _problems(words)


_FOLDERS = st.sampled_from(["data", "train", "valid", "test_set", "x", "my-dev", "Train", "eval2"])
_NAMES = st.sampled_from(
    [
        "train",
        "test",
        "validation",
        "eval",
        "restrained",
        "my_train_set",
        "part",
        "dev",
        "val",
        "train-00000-of-00002",
        "test-00001-of-00002",
        "data",
        "Test",
        "README",
        ".hidden",
    ]
)
_PATHS = st.builds(
    lambda folders, name, tail, ext: "/".join([*folders, name + tail + ext]),
    st.lists(_FOLDERS, max_size=2),
    _NAMES,
    st.sampled_from(["", "-1", "_0"]),
    st.sampled_from([".parquet", ".jsonl", ".csv"]),
)


@settings(max_examples=50, deadline=None)
@given(paths=st.lists(_PATHS, min_size=1, max_size=6, unique=True))
def test_splits_are_the_files_datasets_would_load(paths: list[str]):
    """Without configs in the card, each split holds exactly the files `datasets` finds for it in the same layout (sharded names, folders, file names, else all train)."""
    datasets_files = pytest.importorskip("datasets.data_files")
    assume(not any(q.startswith(p.rsplit(".", 1)[0] + "/") for p in paths for q in paths))
    with tempfile.TemporaryDirectory() as folder:
        for p in paths:
            (Path(folder) / p).parent.mkdir(parents=True, exist_ok=True)
            (Path(folder) / p).write_text("x")
        try:
            patterns = datasets_files.get_data_patterns(folder)
        except datasets_files.EmptyDatasetError:
            patterns = {}
        found = datasets_files.DataFilesDict.from_patterns(patterns, base_path=folder)
        theirs = {
            str(k): sorted({str(Path(f).relative_to(folder)) for f in v}) for k, v in found.items()
        }
    ours = _by_split_words(sorted(paths))
    assert {k: sorted(v) for k, v in ours.items()} == theirs


def test_a_run_pinned_to_a_commit_needs_the_hub_only_once(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Pinned to a 40-hex commit whose files are cached, a manifest validates and runs with the Hub unreachable; unpinned, it is refused (its commit cannot be known)."""
    sha = hub.commit("org/caps", {"data/train.parquet": _parquet(CAPTIONS)})
    pinned = _manifest(tmp_path, {"hub": "org/caps", "text": "caption", "revision": sha})
    assert cli("validate", str(pinned))[0] == 0
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    code, _, err = cli("run", str(pinned), "--quiet")
    assert code == 0 and not err, err
    assert len(_rows(tmp_path / "out/t")) == 4
    unpinned = _manifest(tmp_path, {"hub": "org/caps", "text": "caption"}, "unpinned")
    assert "could not be reached for org/caps" in _problems(unpinned)
    (listing,) = (tmp_path / "hf").rglob(f"renderer/{sha}.json")
    listing.write_text(json.dumps({"sha": sha, "files": {"data/train.parquet": 1}, "card": {}}))
    assert "could not be reached for org/caps" in _problems(pinned)  # a damaged list is not used


def test_a_damaged_cached_file_is_refused_then_downloaded_again(hub: Hub, tmp_path: Path):
    """A data file edited in the cache since it was downloaded fails the check on the next command: removed, refused, and the run after downloads it whole."""
    hub.commit("org/caps", {"data/train.parquet": _parquet(CAPTIONS)})
    m = _manifest(tmp_path, {"hub": "org/caps", "text": "caption"})
    assert cli("validate", str(m))[0] == 0
    (cached,) = _snapshots(tmp_path)
    blob = cached.resolve()
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    assert "not the file the Hub lists" in _problems(m)
    assert _snapshots(tmp_path) == []
    code, out, err = cli("validate", str(m))
    assert code == 0 and "4 jobs" in out, err


_PATTERNS = st.sampled_from(
    [
        "data/*.parquet",
        "**/*.csv",
        "*/train-*",
        "en/**",
        "**",
        "data/train-*",
        "*.jsonl",
        "**/test*",
        "fr/*",
        "*/*/*",
    ]
)
_CARD_PATHS = st.builds(
    lambda folders, name, ext: "/".join([*folders, name + ext]),
    st.lists(st.sampled_from(["data", "en", "fr", "x", "a-b"]), max_size=2),
    st.sampled_from(["train-0", "train-1", "test", "part", "valid_x", "data"]),
    st.sampled_from([".parquet", ".jsonl", ".csv"]),
)


@settings(max_examples=50, deadline=None)
@given(
    paths=st.lists(_CARD_PATHS, min_size=1, max_size=6, unique=True),
    train=st.lists(_PATTERNS, min_size=1, max_size=2, unique=True),
    test=_PATTERNS,
)
def test_card_patterns_match_the_files_datasets_would_load(
    paths: list[str], train: list[str], test: str
):
    """A card's data_files patterns (`*` within a folder, `**` across) select the files `datasets` selects for each split."""
    datasets_files = pytest.importorskip("datasets.data_files")
    assume(not any(q.startswith(p.rsplit(".", 1)[0] + "/") for p in paths for q in paths))
    given = {"train": train, "test": [test]}
    card = {
        "configs": [
            {"config_name": "c", "data_files": [{"split": k, "path": v} for k, v in given.items()]}
        ]
    }
    ours = _card_configs(card, sorted(paths))["c"]
    with tempfile.TemporaryDirectory() as folder:
        for p in paths:
            (Path(folder) / p).parent.mkdir(parents=True, exist_ok=True)
            (Path(folder) / p).write_text("x")
        try:
            found = datasets_files.DataFilesDict.from_patterns(
                datasets_files.sanitize_patterns(given), base_path=folder
            )
        except FileNotFoundError:  # a pattern matching nothing: datasets refuses; so do we
            assert any(not files for files in ours.values())
            return
        theirs = {
            str(k): sorted({str(Path(f).relative_to(folder)) for f in v}) for k, v in found.items()
        }
    assert {k: sorted(v) for k, v in ours.items()} == theirs


def test_the_python_api_reads_a_hub_entry(hub: Hub, tmp_path: Path):
    """`renderer.load_manifest` with a `hub:` entry in a dict plans the dataset's rows, and its problems are the CLI's."""
    import renderer
    from renderer.errors import ManifestError

    hub.commit("org/caps", {"train.parquet": _parquet(CAPTIONS)})
    body = {"name": "t", "provider": "emulator", "models": ["fal-ai/flux-1/schnell"], "seeds": [1]}
    plan = renderer.load_manifest({**body, "prompts": [{"hub": "org/caps", "text": "caption"}]})
    assert plan.images == 4
    assert plan.manifest.hub[0].sha == hub.repos["org/caps"]["main"]
    with pytest.raises(ManifestError) as caught:
        renderer.load_manifest({**body, "prompts": [{"hub": "org/caps", "split": "tset"}]})
    assert "no split 'tset'" in caught.value.problems[0].message


def test_the_commit_a_run_read_is_in_run_json_the_card_and_the_summaries(hub: Hub, tmp_path: Path):
    """The commit a `hub:` entry resolved to is stated where a user looks: run.json, the dataset card (and an export's), `validate` and `plan` (with no request beyond loading the manifest), and `plan` says when the run was planned from another."""
    first = hub.commit("org/caps", {"data/train.parquet": _parquet(CAPTIONS)})
    m = _manifest(tmp_path, {"hub": "org/caps", "text": "caption"})
    said = f"hub: org/caps (config default, split train) at commit {first}"
    load(m, _hf_env())  # the data file is downloaded into the cache
    asked = len(hub.requests)
    load(m, _hf_env())
    loading = len(hub.requests) - asked
    code, out, err = cli("validate", str(m))
    assert code == 0 and f"  {said}\n" in out, err
    assert len(hub.requests) - asked == 2 * loading  # validate asked what loading asks, no more
    code, out, _ = cli("validate", str(m), "--json")
    provenance = {
        "repo": "org/caps",
        "config": "default",
        "split": "train",
        "revision": None,
        "commit": first,
    }
    assert code == 0 and json.loads(out)["manifests"][0]["hub"] == [provenance]
    assert cli("run", str(m), "--quiet")[0] == 0
    run = tmp_path / "out/t"
    assert json.loads((run / "run.json").read_text())["hub"] == [provenance]
    card = (run / "data/README.md").read_text()
    assert "## Prompt source\n\n- the Hugging Face dataset `org/caps`, config `default`" in card
    assert f"at commit `{first}`" in card and f"hf://datasets/org/caps@{first}" in card
    code, _, err = cli("export", str(run), "--format", "parquet", "--out", str(tmp_path / "x"))
    assert code == 0, err
    assert f"at commit `{first}`" in (tmp_path / "x/README.md").read_text()
    code, out, _ = cli("plan", str(m))
    assert code == 0 and said in out and "planned from" not in out
    second = hub.commit("org/caps", {"data/train.parquet": _parquet(CAPTIONS)})
    code, out, _ = cli("plan", str(m))
    assert code == 0 and f"at commit {second}; this run was planned from {first}" in out


def test_the_hub_settings_come_from_the_environment_the_cli_is_handed(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """HF_ENDPOINT and HF_HOME are read from the environment handed to the CLI, not from the process's: the handed one names the Hub that answers."""
    hub.commit("org/caps", {"data/train.parquet": _parquet(CAPTIONS)})
    m = _manifest(tmp_path, {"hub": "org/caps", "text": "caption"})
    handed = _hf_env()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    code, out, err = conftest.cli("validate", str(m), env=handed)
    assert code == 0 and "4 jobs" in out, err
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    dead = {**handed, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    code, _, err = conftest.cli("validate", str(m), env=dead)
    assert code == 2 and "could not be reached for org/caps" in err
