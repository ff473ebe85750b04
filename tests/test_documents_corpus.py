"""The real-document corpus in tests/data/documents is complete, traceable and self-consistent."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent / "data" / "documents"
DOCUMENT = re.compile(r"^(openapi\.json|(llms|page|proxy)(-\d+)?\.txt|openapi-\d+\.json)$")
FOLDERS = sorted(p for p in ROOT.iterdir() if p.is_dir())
REASONS = {None, "enum", "range", "unknown", "type"}
JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object"}


def _expected(folder: Path) -> dict[str, Any]:
    """Load one folder's expected.json."""
    return json.loads((folder / "expected.json").read_text(encoding="utf-8"))


def _endpoint(folder: Path) -> str:
    """The endpoint id a folder name stands for."""
    return folder.name.replace("__", "/")


def _sources_files() -> set[str]:
    """Every document path named in the first column of SOURCES.md's file table."""
    text = (ROOT / "SOURCES.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([^`]+/[^`]+)` \|", text, flags=re.MULTILINE))


def _cases() -> list[dict[str, Any]]:
    """Load the validation set."""
    cases: list[dict[str, Any]] = json.loads((ROOT / "cases.json").read_text(encoding="utf-8"))
    return cases


def test_corpus_covers_fifteen_endpoints_in_three_layouts() -> None:
    """The corpus is big enough for the acceptance bar: 15 endpoints, 3 layouts."""
    layouts = {
        re.sub(r"(-\d+)?\.(txt|json)$", "", f.name)
        for folder in FOLDERS
        for f in folder.iterdir()
        if DOCUMENT.match(f.name)
    }
    assert len(FOLDERS) >= 15
    assert len(layouts) >= 3


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_folder_has_expected_and_a_document(folder: Path) -> None:
    """Each endpoint folder holds expected.json, one document or more, and nothing else."""
    names = {f.name for f in folder.iterdir()}
    assert "expected.json" in names
    documents = {n for n in names if DOCUMENT.match(n)}
    assert documents
    assert names == documents | {"expected.json"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_expected_is_well_formed(folder: Path) -> None:
    """expected.json names its folder's endpoint, an existing source, and well-typed parameters."""
    expected = _expected(folder)
    assert expected["endpoint"] == _endpoint(folder)
    assert (folder / expected["source"]).is_file()
    assert "prompt" in expected["params"]
    for name, param in expected["params"].items():
        assert param["type"] and set(param["type"]) <= JSON_TYPES, name
        assert param["type"] == sorted(param["type"]), name
        assert isinstance(param["nullable"], bool) and isinstance(param["required"], bool), name
        assert param["enum"] is None or (isinstance(param["enum"], list) and param["enum"]), name
        if param["minimum"] is not None and param["maximum"] is not None:
            assert param["minimum"] <= param["maximum"], name
        if "array" in param["type"]:
            assert param.get("items_type") in JSON_TYPES, name


def test_sources_lists_exactly_the_documents() -> None:
    """Every document on disk is in SOURCES.md, and every file SOURCES.md names exists."""
    on_disk = {
        f"{folder.name}/{f.name}"
        for folder in FOLDERS
        for f in folder.iterdir()
        if DOCUMENT.match(f.name)
    }
    assert _sources_files() == on_disk


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("*/openapi*.json")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_openapi_documents_parse_and_name_their_endpoint(path: Path) -> None:
    """Each OpenAPI file is JSON, version 3.x, with the endpoint's submit and result paths."""
    document = json.loads(path.read_text(encoding="utf-8"))
    endpoint = _endpoint(path.parent)
    assert str(document["openapi"]).startswith("3.")
    assert "post" in document["paths"][f"/{endpoint}"]
    assert "get" in document["paths"][f"/{endpoint}/requests/{{request_id}}"]
    assert any(name.endswith("Input") for name in document["components"]["schemas"])


def test_cases_name_known_endpoints_and_fields() -> None:
    """Every case targets a corpus endpoint and names a field that fits its reason."""
    expected = {_endpoint(folder): _expected(folder)["params"] for folder in FOLDERS}
    for case in _cases():
        params = expected[case["endpoint"]]
        assert case["reason"] in REASONS, case
        if case["valid"]:
            assert case["reason"] is None and set(case["params"]) <= set(params), case
        elif case["reason"] == "unknown":
            assert case["field"] not in params and case["field"] in case["params"], case
        else:
            assert case["field"] in params and case["field"] in case["params"], case


def test_every_endpoint_has_six_mixed_cases() -> None:
    """Each endpoint has at least six cases, some valid and some invalid."""
    by_endpoint: dict[str, list[bool]] = {}
    for case in _cases():
        by_endpoint.setdefault(case["endpoint"], []).append(case["valid"])
    assert set(by_endpoint) == {_endpoint(folder) for folder in FOLDERS}
    for verdicts in by_endpoint.values():
        assert len(verdicts) >= 6 and any(verdicts) and not all(verdicts)
