"""Shared fixtures: repository paths, an isolated environment, the schema registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from renderer.schemas import SchemaRegistry

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
DOCS = SCHEMAS / "docs"
MANIFESTS = ROOT / "manifests"


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's key or overrides."""
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "RENDERER_SCHEMAS", "RENDERER_PROVIDER"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def registry() -> SchemaRegistry:
    return SchemaRegistry(SCHEMAS)
