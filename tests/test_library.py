"""renderer.models.library: the user's added models folder, its provenance, layered over the bundled schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from renderer.errors import DocumentError
from renderer.models.library import Library, openapi_url
from renderer.models.schemas import SchemaRegistry, default_models_dir
from renderer.provider.emulator.openapi import document

from .conftest import SCHEMAS

BUNDLED = SchemaRegistry(SCHEMAS)


def _renamed(endpoint: str, new: str) -> bytes:
    """The emulator's OpenAPI document of a bundled endpoint, served under another id."""
    text = json.dumps(document(BUNDLED, endpoint), indent=2)
    return text.replace(endpoint, new).encode()


def test_added_model_is_layered_over_the_bundled_ones(tmp_path: Path):
    """An added endpoint is known next to the 12 bundled ones; the bundled ones stay."""
    lib = Library(tmp_path / "models")
    added = lib.add(_renamed("fal-ai/flux-1/schnell", "acme/flux"), "/x/a.json", label="a.json")
    assert added.endpoints == ("acme/flux",) and not added.replaced
    lib.build()
    registry = SchemaRegistry(SCHEMAS, lib.root)
    assert "acme/flux" in registry and "fal-ai/flux-1/schnell" in registry
    assert len(registry.endpoints) == len(BUNDLED.endpoints) + 1
    assert (
        registry.layer("acme/flux") == lib.root and registry.layer("fal-ai/omnigen-v2") == SCHEMAS
    )
    assert registry.check("acme/flux", {"prompt": "x", "num_images": 0})  # the minimum holds


def test_an_added_endpoint_replaces_the_bundled_one(tmp_path: Path):
    """Adding a document for a bundled endpoint makes it the one used, with its provenance."""
    lib = Library(tmp_path / "m")
    lib.add(_renamed("fal-ai/omnigen-v2", "fal-ai/omnigen-v2"), "https://x/o", label="o.json")
    lib.build()
    registry = SchemaRegistry(SCHEMAS, lib.root)
    assert registry.layer("fal-ai/omnigen-v2") == lib.root
    (where,) = registry.schema("fal-ai/omnigen-v2")["x-sources"]
    (prov,) = lib.provenance([where])
    assert prov["origin"] == "https://x/o" and prov["layout"] == "openapi"
    assert len(prov["sha256"]) == 64


def test_refused_document_leaves_the_folder_as_it_was(tmp_path: Path):
    """A document that cannot be read raises DocumentError and writes nothing."""
    lib = Library(tmp_path / "m")
    with pytest.raises(DocumentError, match="unknown document layout"):
        lib.add(b"just some notes\n", "/x/notes.txt", label="notes.txt")
    with pytest.raises(DocumentError, match="not UTF-8"):
        lib.add(b"\xff\xfe", "/x/b.txt", label="b.txt")
    assert not (tmp_path / "m").exists()


def test_adding_the_same_document_twice_changes_nothing(tmp_path: Path):
    """Re-adding identical bytes is 'unchanged'; a newer copy replaces the old under the same name."""
    lib = Library(tmp_path / "m")
    data = _renamed("fal-ai/flux-1/schnell", "acme/flux")
    first = lib.add(data, "/x/a.json", label="a.json")
    again = lib.add(data, "/elsewhere/a.json", label="a.json")
    assert again.unchanged and again.name == first.name
    newer = lib.add(data.replace(b'"minimum": 1', b'"minimum": 2'), "/x/a.json", label="a.json")
    assert newer.replaced and newer.name == first.name
    assert sorted(p.name for p in lib.docs_dir.iterdir()) == [first.name]


def test_fetched_documents_are_listed_for_update(tmp_path: Path):
    """Documents downloaded from an OpenAPI URL remember their endpoint and URL; files do not."""
    lib = Library(tmp_path / "m")
    url = openapi_url("acme/flux", "http://127.0.0.1:9")
    lib.add(_renamed("fal-ai/flux-1/schnell", "acme/flux"), url, label="x", fetched="acme/flux")
    lib.add(_renamed("fal-ai/omnigen-v2", "acme/omni"), "/x/o.json", label="o.json")
    assert lib.fetched() == [("acme__flux.openapi.json", "acme/flux", url)]
    assert url.endswith("/api/openapi/queue/openapi.json?endpoint_id=acme/flux")


def test_default_folder_is_per_user():
    """Without RENDERER_MODELS the folder is under XDG_DATA_HOME, else ~/.local/share."""
    assert default_models_dir({"XDG_DATA_HOME": "/d"}) == Path("/d/renderer/models")
    assert default_models_dir({"HOME": "/h"}) == Path("/h/.local/share/renderer/models")
