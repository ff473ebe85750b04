"""The schema generator on real model documents (tests/data/documents/), against hand-read expectations."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderer.models.generate import merge

from .corpus import cases, documents, folders, read, score, sources, verdict

SINGLE = documents()
FAL_OWN = ("openapi", "fal-markdown", "fal-docs")


@pytest.mark.parametrize(
    ("folder", "document"), SINGLE, ids=[f"{f.name}/{d.name}" for f, d in SINGLE]
)
def test_every_document_is_read_or_refused_with_a_reason(folder: Path, document: Path):
    """A real document yields the endpoint's parameters, or is refused saying why; never a crash."""
    result = score(folder, document)
    assert result.refused or result.total == result.right + len(result.wrong)
    if result.refused:
        assert "layout" in result.refused or "describes no" in result.refused


def test_fals_openapi_documents_are_read_exactly():
    """Every parameter of every fal OpenAPI document comes out exactly right."""
    results = [score(f, d) for f, d in SINGLE if d.name.startswith("openapi")]
    assert len(results) >= 10
    wrong = {r.document: r.wrong for r in results if r.wrong}
    assert not wrong


def test_fals_own_layouts_are_at_least_95_percent_right():
    """OpenAPI, llms.txt and docs-site pages, each read alone: ≥ 95 % of parameters exactly right."""
    results = [score(f, d) for f, d in SINGLE]
    own = [r for r in results if r.layout in FAL_OWN]
    assert {r.layout for r in own} == set(FAL_OWN)
    right, total = sum(r.right for r in own), sum(r.total for r in own)
    assert right / total >= 0.95, f"{right}/{total}"


def test_an_endpoints_documents_together_give_its_contract():
    """All of an endpoint's documents built together: ≥ 98 % of parameters right, fal's OpenAPI winning."""
    results = [score(folder, sources(folder)) for folder in folders()]
    assert len(results) >= 15
    right, total = sum(r.right for r in results), sum(r.total for r in results)
    assert right / total >= 0.98, {r.document: r.wrong for r in results if r.wrong}


def test_validate_is_right_for_the_right_reason():
    """The valid/invalid cases, checked with each endpoint's built schema: ≥ 95 % right for the right reason."""
    schemas = {}
    for folder in folders():
        parsed, _ = read(folder, sources(folder))
        schemas[parsed[0].endpoint] = merge(parsed[0].endpoint, parsed, [])
    judged = [verdict(schemas[c["endpoint"]], c) for c in cases()]
    assert len(judged) >= 200
    right = sum(v.right_reason for v in judged)
    assert right / len(judged) >= 0.95, [v.case for v in judged if not v.right_reason]
