"""YAML manifest → a typed, structurally valid `Manifest`. Nothing here touches the network.

Every problem is located: YAML is composed into nodes first so each value keeps its
`line:col`, and a JSON path into the data. Structural problems (unknown keys, wrong types)
come from `schemas/manifest.schema.json`, the same schema editors use. All problems are
collected and raised together as one ManifestError.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from .errors import ManifestError, Problem, UserError
from .schemas import closest, default_schema_dir

Path_ = tuple[str | int, ...]
SECRET_KEYS = {"key", "api_key", "apikey", "fal_key", "token", "secret", "authorization"}
PROVIDERS = {"fal": "https://queue.fal.run", "emulator": None}


# ---------------------------------------------------------------- YAML with locations


@dataclass
class Located:
    """Parsed YAML data plus the location of every key and value in it."""

    file: str
    data: Any
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """The closest known location for a path: the node itself, or its nearest parent."""
        table = self.keys if key else self.values
        for n in range(len(path), -1, -1):
            if path[:n] in table:
                return table[path[:n]]
            if path[:n] in self.values:
                return self.values[path[:n]]
        return (1, 1)

    def problem(self, path: Path_, message: str, *, key: bool = False, **kw: Any) -> Problem:
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, message, json_path(path), **kw)


def json_path(path: Path_) -> str:
    text = "$"
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part)}]"
    return text


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


# libyaml's loader when PyYAML was built with it (the wheels are): the same nodes and marks, faster.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str, file: str) -> Located:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError:
        if _Loader is not yaml.SafeLoader:
            # libyaml's messages drop detail ("found character '\t'"); syntax errors are rare,
            # so the pure-Python parser is asked again for the clearer wording.
            try:
                yaml.SafeLoader(text).get_single_node()
            except yaml.MarkedYAMLError as clearer:
                exc = clearer
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ManifestError([Problem(file, line, col, f"invalid YAML: {reason}")]) from exc
    finally:
        loader.dispose()
    located = Located(file, data)
    problems: list[Problem] = []

    def walk(n: yaml.Node, path: Path_) -> None:
        located.values[path] = _mark(n)
        if isinstance(n, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, value_node in n.value:
                key = key_node.value
                if key in seen and key != "<<":
                    line, col = _mark(key_node)
                    first = _mark(seen[key])[0]
                    problems.append(
                        Problem(file, line, col, f"duplicate key {key!r} (first at line {first})", json_path(path))
                    )
                seen[key] = key_node
                located.keys[(*path, key)] = _mark(key_node)
                walk(value_node, (*path, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    if node is not None:
        walk(node, ())
    if problems:
        raise ManifestError(problems)
    return located


# ---------------------------------------------------------------- structure


def _manifest_validator() -> Draft202012Validator:
    schema = json.loads((default_schema_dir() / "manifest.schema.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


def _structure_problems(doc: Located, error: ValidationError) -> list[Problem]:
    path = tuple(error.absolute_path)
    if error.validator in ("oneOf", "anyOf") and error.context:
        # Report the alternative written for this kind of value (a mapping, a list, a
        # string…) rather than "is not valid under any of the given schemas".
        branches: dict[int, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.schema_path[0], []).append(sub)
        kind = _json_kind(error.instance)
        fitting = [
            errs for i, errs in branches.items()
            if error.validator_value[i].get("type") == kind
            or (kind == "string" and "enum" in error.validator_value[i])
        ]
        if len(fitting) > 1 and isinstance(error.instance, dict):
            # Several mapping forms (e.g. seeds: {start, count} or {random}): pick the one
            # whose required keys the value has.
            fitting = [
                errs for i, errs in branches.items()
                if set(error.validator_value[i].get("required", [])) <= set(error.instance)
                and error.validator_value[i].get("type") == kind
            ] or fitting
        if len(fitting) == 1:
            return [p for sub in fitting[0] for p in _structure_problems(doc, sub)]
        if not fitting:
            kinds = sorted({b.get("type", "one of " + ", ".join(map(str, b.get("enum", [])))) for b in error.validator_value})
            return [doc.problem(path, f"expected {' or '.join(kinds)}, not {kind}")]
        best = best_match(error.context)
        return _structure_problems(doc, best)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        found = []
        for key in error.instance:
            if key in known:
                continue
            if key.lower() in SECRET_KEYS:
                found.append(
                    doc.problem(
                        (*path, key),
                        "an API key is never accepted in a manifest",
                        key=True,
                        allowed="set the key in the environment: export FAL_KEY=… "
                        "(or name another variable with provider.key_env)",
                    )
                )
                continue
            found.append(
                doc.problem(
                    (*path, key), f"unknown key {key!r}", key=True,
                    allowed=", ".join(known), suggestion=closest(key, known),
                )
            )
        return found
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [doc.problem(path, f"missing required key {k!r}") for k in missing]
    if error.validator == "enum":
        return [
            doc.problem(
                path, f"{error.instance!r} is not allowed",
                allowed=", ".join(map(str, error.validator_value)),
                suggestion=closest(error.instance, error.validator_value),
            )
        ]
    if error.validator == "pattern" and path and path[-1] in ("id", "name", "label"):
        return [
            doc.problem(
                path,
                f"{error.instance!r} is not a safe name",
                allowed="1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(it becomes a directory name)",
            )
        ]
    if error.validator == "pattern":
        return [doc.problem(path, f"{error.instance!r} is not in the expected form", allowed=error.schema.get("x-hint"))]
    if error.validator == "const":
        return [doc.problem(path, f"must be {json.dumps(error.validator_value)}, not {json.dumps(error.instance)}")]
    return [doc.problem(path, error.message)]


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


# ---------------------------------------------------------------- the typed manifest


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    params: dict[str, Any]
    tags: tuple[str, ...]
    where: tuple[str, int, int]  # file, line, col
    path: Path_  # JSON path in the manifest (or ("prompts", i) for a prompt file's row)


@dataclass(frozen=True)
class Model:
    endpoint: str
    name: str  # label, or the endpoint id
    params: dict[str, Any]
    axes: dict[str, list[Any]]
    unchecked: bool
    path: Path_


@dataclass(frozen=True)
class ProviderConfig:
    kind: str = "fal"  # fal | emulator | custom
    url: str | None = "https://queue.fal.run"
    auth: str = "Key"
    key_env: str = "FAL_KEY"
    emulator: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    concurrency: int = 2  # a new fal account runs 2 requests at once
    per_endpoint: dict[str, int] = field(default_factory=dict)
    rate: float = 10.0  # submissions per second
    timeout: float = 900.0  # seconds per job, from submit to downloaded


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    backoff: float = 0.5  # base of exponential backoff with full jitter, seconds
    max_backoff: float = 30.0


@dataclass(frozen=True)
class Manifest:
    file: Path
    name: str
    output: Path
    provider: ProviderConfig
    limits: Limits
    retries: RetryPolicy
    budget: float | None
    license: str | None
    prices: dict[str, dict[str, float]]
    defaults: dict[str, Any]
    prompts: tuple[Prompt, ...]
    models: tuple[Model, ...]
    seeds: Any  # list[int] | {"start","count"} | {"random": n}
    axes: dict[str, list[Any]]
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]]
    extra: list[dict[str, Any]]
    doc: Located = field(repr=False, compare=False)

    @property
    def run_dir(self) -> Path:
        return self.output / self.name


def _rate(value: float | str) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    amount, unit = value.split("/")
    return float(amount) / (60.0 if unit.startswith("m") else 1.0)


def _prompt_file(doc: Located, base: Path, index: int, rel: str) -> tuple[list[Prompt], list[Problem]]:
    path = (base / rel).resolve()
    where = ("prompts", index, "file")
    if not path.is_file():
        return [], [doc.problem(where, f"prompt file not found: {rel} (relative to the manifest's folder)")]
    name = str(path)
    prompts: list[Prompt] = []
    problems: list[Problem] = []
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                body = line.strip()
                words = re.sub(r"[^a-z0-9]+", "-", body.lower()).strip("-").split("-")[:4]
                # Content-derived ids: inserting a line never renames another prompt.
                pid = "-".join(w for w in words if w)[:40] + "-" + hashlib.sha256(body.encode()).hexdigest()[:6]
                prompts.append(Prompt(pid.lstrip("-"), body, {}, (), (name, n, 1), where))
        return prompts, problems
    rows: list[tuple[int, dict[str, Any]]] = []
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        rows = [(reader.line_num, dict(r)) for r in reader]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(Problem(name, n, exc.colno, f"invalid JSON: {exc.msg}"))
                continue
            if not isinstance(row, dict):
                problems.append(Problem(name, n, 1, "each line must be a JSON object with id and text"))
                continue
            rows.append((n, row))
    for n, row in rows:
        pid, body = row.get("id"), row.get("text")
        if not isinstance(pid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", pid):
            problems.append(
                Problem(name, n, 1, f"prompt id {pid!r} is missing or not a safe name",
                        allowed="1-64 letters, digits, '.', '_' or '-'")
            )
            continue
        if not isinstance(body, str) or not body.strip():
            problems.append(Problem(name, n, 1, f"prompt {pid!r} has no text"))
            continue
        tags = row.get("tags") or []
        if isinstance(tags, str):
            tags = [t for t in re.split(r"[;,|]", tags) if t.strip()]
        params = row.get("params") or {}
        if not isinstance(params, dict):
            problems.append(Problem(name, n, 1, f"prompt {pid!r}: params must be an object"))
            continue
        prompts.append(Prompt(pid, body, params, tuple(t.strip() for t in tags), (name, n, 1), where))
    return prompts, problems


def _provider(raw: Any) -> ProviderConfig:
    if raw is None:
        return ProviderConfig()
    if isinstance(raw, str):
        raw = {"kind": raw}
    kind = raw.get("kind", "custom" if "url" in raw else "fal")
    url = raw.get("url", PROVIDERS.get(kind))
    return ProviderConfig(kind, url, raw.get("auth", "Key"), raw.get("key_env", "FAL_KEY"), dict(raw.get("emulator", {})))


def parse(text: str, file: Path) -> Manifest:
    """Structure-check a manifest and return it typed; raise ManifestError with every problem."""
    doc = load_yaml(text, str(file))
    if not isinstance(doc.data, dict):
        raise ManifestError([doc.problem((), "a manifest is a mapping with name, prompts, models and seeds")])
    problems: list[Problem] = []
    for error in sorted(_manifest_validator().iter_errors(doc.data), key=lambda e: list(map(str, e.absolute_path))):
        problems.extend(_structure_problems(doc, error))
    raw = doc.data
    provider = raw.get("provider")
    if isinstance(provider, dict) and provider.get("kind", "custom" if "url" in provider else "fal") == "custom" and "url" not in provider:
        problems.append(doc.problem(("provider",), "a custom provider needs a url", allowed="url: https://…"))
    if problems:
        raise ManifestError(problems)

    base = file.parent
    prompts: list[Prompt] = []
    for i, item in enumerate(raw["prompts"]):
        if "file" in item:
            found, errs = _prompt_file(doc, base, i, item["file"])
            prompts.extend(found)
            problems.extend(errs)
        else:
            line, col = doc.where(("prompts", i))
            prompts.append(
                Prompt(item["id"], item["text"], dict(item.get("params", {})), tuple(item.get("tags", [])),
                       (str(file), line, col), ("prompts", i))
            )
    models = []
    for i, item in enumerate(raw["models"]):
        item = {"endpoint": item} if isinstance(item, str) else item
        models.append(
            Model(item["endpoint"], item.get("label", item["endpoint"]), dict(item.get("params", {})),
                  dict(item.get("axes", {})), bool(item.get("unchecked")), ("models", i))
        )
    limits = raw.get("limits", {})
    retries = raw.get("retries", {})
    manifest = Manifest(
        file=file,
        name=raw["name"],
        # Like the default outputs/, an explicit output is relative to the working directory.
        output=Path(raw.get("output", "outputs")),
        provider=_provider(provider),
        limits=Limits(
            concurrency=limits.get("concurrency", Limits.concurrency),
            per_endpoint=dict(limits.get("per_endpoint", {})),
            rate=_rate(limits["rate"]) if "rate" in limits else Limits.rate,
            timeout=float(limits.get("timeout", Limits.timeout)),
        ),
        retries=RetryPolicy(
            attempts=retries.get("attempts", RetryPolicy.attempts),
            backoff=float(retries.get("backoff", RetryPolicy.backoff)),
            max_backoff=float(retries.get("max_backoff", RetryPolicy.max_backoff)),
        ),
        budget=raw.get("budget"),
        license=raw.get("license"),
        prices=dict(raw.get("prices", {})),
        defaults=dict(raw.get("defaults", {})),
        prompts=tuple(prompts),
        models=tuple(models),
        seeds=raw["seeds"],
        axes=dict(raw.get("axes", {})),
        include=list(raw.get("include", [])),
        exclude=list(raw.get("exclude", [])),
        extra=list(raw.get("extra", [])),
        doc=doc,
    )
    if problems:
        raise ManifestError(problems)
    return manifest


def load(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such manifest", hint="check the path; manifests/ has examples") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError([Problem(str(path), 1, 1, "not UTF-8 text")]) from exc
    return parse(text, path)
