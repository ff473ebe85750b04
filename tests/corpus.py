"""The real-document corpus (tests/data/documents/): each endpoint's documents as found in public
sources, and `expected.json`, the parameters read by hand from the most authoritative of them.

`describe` puts a generated schema's parameter in expected.json's terms; `score` compares one
document's schema with the expectation, field by field. Used by tests/test_corpus.py and by
bench/documents.py (which prints the table the README quotes).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from renderer.models.generate import merge
from renderer.models.read import parse_file

CORPUS = Path(__file__).parent / "data" / "documents"
FIELDS = ("type", "nullable", "enum", "minimum", "maximum", "required", "default")
LAYOUTS = {
    "openapi": "fal OpenAPI",
    "proxy-openapi": "proxy OpenAPI",
    "fal-markdown": "fal llms.txt",
    "fal-page": "fal web page",
    "fal-docs": "fal docs site",
    "merged": "all of an endpoint's documents, merged",
    "proxy-table": "proxy table",
}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
    return node


def _kinds(node: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    node = _resolve(node, defs)
    found: set[str] = set()
    for branch in node.get("anyOf", []) + node.get("oneOf", []):
        found |= _kinds(branch, defs)
    kind = node.get("type")
    if isinstance(kind, str):
        found.add(kind)
    elif isinstance(kind, list):
        found |= set(kind)
    if not found and ("enum" in node or "const" in node):
        found.add("string")
    return found


def _enum(node: dict[str, Any], defs: dict[str, Any]) -> list[Any] | None:
    """The allowed values of the parameter's string form; None when any string is accepted."""
    node = _resolve(node, defs)
    if "enum" in node:
        return [v for v in node["enum"] if v is not None]
    branches = [_resolve(b, defs) for b in node.get("anyOf", []) + node.get("oneOf", [])]
    if any(b.get("type") == "string" and "enum" not in b for b in branches):
        return None
    for branch in branches:
        values = _enum(branch, defs)
        if values is not None:
            return values
    return None


def _bound(node: dict[str, Any], defs: dict[str, Any], key: str) -> Any:
    node = _resolve(node, defs)
    if key in node:
        return node[key]
    for branch in node.get("anyOf", []):
        value = _bound(branch, defs, key)
        if value is not None:
            return value
    return None


def describe(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """One generated parameter in expected.json's terms."""
    defs = schema.get("$defs", {})
    prop = schema["properties"][name]
    kinds = _kinds(prop, defs)
    enum = _enum(prop, defs)
    out: dict[str, Any] = {
        "type": sorted(kinds - {"null"}),
        "nullable": "null" in kinds,
        "enum": sorted(map(str, enum)) if enum is not None else None,
        "minimum": _bound(prop, defs, "minimum"),
        "maximum": _bound(prop, defs, "maximum"),
        "required": name in schema.get("required", []),
    }
    if "default" in prop:
        out["default"] = prop["default"]
    return out


def _same(field_name: str, want: Any, got: Any) -> bool:
    if field_name == "enum" and want is not None and got is not None:
        return sorted(map(str, want)) == got
    if field_name == "type":
        return sorted(want) == got
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return float(want) == float(got)
    return bool(want == got)


@dataclass
class Score:
    """How one document's schema matches the expectation."""

    endpoint: str
    document: str
    layout: str
    right: int = 0
    total: int = 0
    wrong: dict[str, list[str]] = field(default_factory=dict)  # parameter → fields that differ
    extra: list[str] = field(default_factory=list)  # parameters the document adds
    refused: str | None = None


def expected(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    return data


def read(folder: Path, documents: list[Path]) -> tuple[list[Any], str | None]:
    """The endpoint's parts of `documents` (EndpointDocs), or why none could be read."""
    from renderer.errors import DocumentError

    want = expected(folder)["endpoint"]
    found, why = [], None
    for document in documents:
        try:
            found += [d for d in parse_file(document) if d.endpoint == want]
        except DocumentError as exc:
            why = exc.message
    return found, (None if found else why or f"describes no {want}")


def score(folder: Path, document: Path | list[Path]) -> Score:
    # A list is one build of several documents (even a list of one): its layout is "merged".
    """Parse `document` (or several, merged as one build would) and compare every expected
    parameter with what it gives."""
    want = expected(folder)
    paths = document if isinstance(document, list) else [document]
    label = f"{folder.name}/" + "+".join(p.name for p in paths)
    result = Score(want["endpoint"], label, "?")
    docs, why = read(folder, paths)
    if why:
        result.refused = why
        result.total = len(want["params"])
        return result
    result.layout = "merged" if isinstance(document, list) else docs[0].style
    schema = merge(want["endpoint"], docs, [])
    for name, spec in want["params"].items():
        result.total += 1
        if name not in schema["properties"]:
            result.wrong[name] = ["missing"]
            continue
        got = describe(schema, name)
        bad = [f for f in FIELDS if f != "default" and not _same(f, spec.get(f), got.get(f))]
        if ("default" in spec) != ("default" in got) or (
            "default" in spec and not _same("default", spec["default"], got["default"])
        ):
            bad.append("default")
        if bad:
            result.wrong[name] = bad
        else:
            result.right += 1
    result.extra = sorted(set(schema["properties"]) - set(want["params"]))
    return result


def folders() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if (p / "expected.json").is_file())


def sources(folder: Path) -> list[Path]:
    """The endpoint's documents (everything but the expectations)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != "expected.json")


def documents() -> list[tuple[Path, Path]]:
    """(endpoint folder, document) for every document of an endpoint that has expectations."""
    pairs = []
    for folder in sorted(p for p in CORPUS.iterdir() if (p / "expected.json").is_file()):
        for doc in sorted(folder.iterdir()):
            if doc.name not in ("expected.json",) and doc.is_file():
                pairs.append((folder, doc))
    return pairs


# ---------------------------------------------------------------- validation verdicts


def cases() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((CORPUS / "cases.json").read_text(encoding="utf-8"))
    return data


def reason_of(message: str) -> str:
    """A violation's kind, as cases.json names reasons."""
    if "unknown property" in message:
        return "unknown"
    if "not an allowed value" in message or "neither a size object nor a preset" in message:
        return "enum"
    if "is not of type" in message or "is not valid under any" in message:
        return "type"
    if re.search(
        r"(less|greater) than (or equal to )?the (minimum|maximum)|too (short|long)|non-empty",
        message,
    ):
        return "range"
    if "required property" in message:
        return "required"
    return "other"


@dataclass
class Verdict:
    case: dict[str, Any]
    valid: bool  # what the renderer said
    reasons: list[tuple[str, str]]  # (reason, field) of each violation

    @property
    def right(self) -> bool:
        return self.valid == self.case["valid"]

    @property
    def right_reason(self) -> bool:
        if not self.right:
            return False
        if self.case["valid"]:
            return True
        return (self.case["reason"], self.case["field"]) in self.reasons


def verdict(schema: dict[str, Any], case: dict[str, Any]) -> Verdict:
    """Check one case's parameters as `renderer validate` does (SchemaRegistry.check)."""
    import tempfile

    from renderer.models.schemas import SchemaRegistry

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rel = f"endpoints/{case['endpoint']}.json"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_text(json.dumps(schema), encoding="utf-8")
        index = {"endpoints": {case["endpoint"]: {"file": rel, "required": []}}}
        (root / "index.json").write_text(json.dumps(index), encoding="utf-8")
        found = SchemaRegistry(root).check(case["endpoint"], case["params"])
    reasons = [(reason_of(v.message), v.json_path.removeprefix("$.").split(".")[0]) for v in found]
    return Verdict(case, not found, reasons)
