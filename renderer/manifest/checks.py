"""What a manifest may say: its structure against manifest.schema.json, numeric settings and their
ranges, parameter caps, accounts and name references. Every problem is collected, none raised alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from renderer import settings
from renderer.errors import Problem, UsageError, closest
from renderer.layout import WINDOWS_RESERVED as WINDOWS_DEVICES
from renderer.manifest.types import SECRET_KEYS
from renderer.models.schemas import default_schema_dir
from renderer.settings import is_remote, parse_s3

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

    from renderer.manifest.located import Located, Path_


def manifest_schema() -> dict[str, Any]:
    return dict(
        json.loads((default_schema_dir() / "manifest.schema.json").read_text(encoding="utf-8"))
    )


def manifest_validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator  # only for a manifest with problems (see below)

    return Draft202012Validator(manifest_schema())


def structure_errors(data: Any) -> list[ValidationError]:
    """Where `data` breaks manifest.schema.json. A valid manifest (the common case) is decided by
    QuickCheck without importing jsonschema (~55 ms of CPU before a run's first submit);
    jsonschema runs only for the messages of one that is not."""
    from renderer.models.quickcheck import QuickCheck

    quick = QuickCheck.of(manifest_schema())
    if quick is not None and quick.valid(data):
        return []
    return sorted(
        manifest_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path))
    )


def structure_problems(doc: Located, error: ValidationError) -> list[Problem]:
    path = tuple(error.absolute_path)
    if _setting_for(path):
        return []  # numeric settings are judged by settings.parse (see numeric_settings)
    if error.validator in ("oneOf", "anyOf") and error.context:
        # Report the alternative written for this kind of value (a mapping, a list, a
        # string…) rather than "is not valid under any of the given schemas".
        branches: dict[int, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.schema_path[0], []).append(sub)
        kind = _json_kind(error.instance)
        fitting = [
            errs
            for i, errs in branches.items()
            if error.validator_value[i].get("type") == kind
            or (kind == "string" and "enum" in error.validator_value[i])
            or (kind == "integer" and error.validator_value[i].get("type") == "number")
        ]
        if len(fitting) > 1 and isinstance(error.instance, dict):
            # Several mapping forms (e.g. seeds: {start, count} or {random}): pick the one
            # whose required keys the value has.
            # whose required keys the value has; else the one sharing most keys with it
            # (`{count: 4}` is a range missing its start, not a wrong list).
            fitting = [
                errs
                for i, errs in branches.items()
                if set(error.validator_value[i].get("required", [])) <= set(error.instance)
                and error.validator_value[i].get("type") == kind
            ] or fitting
            if len(fitting) > 1:

                def shared(i: int) -> int:
                    spec = error.validator_value[i]
                    return len(set(spec.get("properties", {})) & set(error.instance))

                mapping = [i for i in branches if error.validator_value[i].get("type") == kind]
                top = max((shared(i) for i in mapping), default=0)
                best_forms = [i for i in mapping if shared(i) == top]
                if top and len(best_forms) == 1:
                    fitting = [branches[best_forms[0]]]
        if len(fitting) == 1:
            return [p for sub in fitting[0] for p in structure_problems(doc, sub)]
        if not fitting:
            kinds = sorted(
                {
                    b.get("type", "one of " + ", ".join(map(str, b.get("enum", []))))
                    for b in error.validator_value
                }
            )
            return [doc.problem(path, f"expected {' or '.join(kinds)}, not {kind}")]
        from jsonschema.exceptions import best_match

        best = best_match(error.context)
        return structure_problems(doc, best)
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
                    (*path, key),
                    f"unknown key {key!r}",
                    key=True,
                    allowed=", ".join(known),
                    suggestion=closest(key, known),
                )
            )
        return found
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [doc.problem(path, f"missing required key {k!r}") for k in missing]
    if error.validator == "enum":
        return [
            doc.problem(
                path,
                f"{error.instance!r} is not allowed",
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
        return [
            doc.problem(
                path,
                f"{error.instance!r} is not in the expected form",
                allowed=error.schema.get("x-hint"),
            )
        ]
    if error.validator == "const":
        return [
            doc.problem(
                path,
                f"must be {json.dumps(error.validator_value)}, not {json.dumps(error.instance)}",
            )
        ]
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


# Where each numeric setting lives in a manifest; `settings.parse` owns these paths (range,
# finiteness, "5/s"), so the schema's own verdict on them is not repeated.
_SETTING_AT: dict[tuple[str | int, ...], str] = {
    ("limits", "concurrency"): "concurrency",
    ("limits", "rate"): "rate",
    ("limits", "timeout"): "timeout",
    ("limits", "outage"): "outage",
    ("retries", "attempts"): "attempts",
    ("retries", "backoff"): "backoff",
    ("retries", "max_backoff"): "max_backoff",
    ("budget",): "budget",
    ("provider", "emulator", "workers"): "workers",
    ("provider", "emulator", "latency"): "latency",
    ("provider", "emulator", "max_side"): "emulator_max_side",
}


def _setting_for(path: Path_) -> str | None:
    if path in _SETTING_AT:
        return _SETTING_AT[path]
    if len(path) == 3 and path[:2] == ("limits", "per_endpoint"):
        return "per_endpoint"
    if len(path) == 3 and path[0] == "prices" and path[2] in ("per_image", "per_megapixel"):
        return "price"
    if (
        len(path) == 4
        and path[:2] == ("provider", "accounts")
        and path[3] in ("concurrency", "rate")
    ):
        return str(path[3])
    return None


def _get(data: Any, path: Path_) -> Any:
    for part in path:
        # Two branches, not one `or`: each narrows part and data for the index (mypy).
        if isinstance(part, str) and isinstance(data, dict) and part in data:  # noqa: SIM114
            data = data[part]
        elif isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
            data = data[part]
        else:
            return _MISSING
    return data


_MISSING = object()


RESERVED_PARAMS = {
    "seed": "seeds come from `seeds:` (or `seed:` in an `extra` entry), never from parameters",
    "prompt": "prompt text comes from `prompts:` (or a prompt file), never from parameters",
    "model": "models are listed under `models:`",
}


# Caps where the endpoint schemas give only a minimum (the documents state no maximum). They
# refuse typos, not real requests: no documented model needs over a few hundred steps or
# renders beyond a few megapixels, and downloads are capped at 64 MB an image.
PARAM_CAPS = {"num_inference_steps": 1_000, "num_images": 100}


MAX_SIDE = 16_384


MAX_PIXELS = 64 * 1024 * 1024


def numeric_settings(doc: Located) -> tuple[dict[Path_, int | float], list[Problem]]:
    """Every numeric setting present, parsed by `settings.parse`, or a located problem."""
    values: dict[Path_, int | float] = {}
    problems: list[Problem] = []
    paths: list[tuple[str | int, ...]] = list(_SETTING_AT)
    raw = doc.data
    for key in ("limits",):
        per = _get(raw, (key, "per_endpoint"))
        if isinstance(per, dict):
            paths += [(key, "per_endpoint", e) for e in per]
    accounts = _get(raw, ("provider", "accounts"))
    if isinstance(accounts, list):
        paths += [
            ("provider", "accounts", i, name)
            for i, a in enumerate(accounts)
            if isinstance(a, dict)
            for name in ("concurrency", "rate")
            if name in a
        ]
    prices = raw.get("prices")
    if isinstance(prices, dict):
        paths += [
            ("prices", e, unit)
            for e, p in prices.items()
            if isinstance(p, dict)
            for unit in ("per_image", "per_megapixel")
            if unit in p
        ]
    for path in paths:
        value = _get(raw, path)
        if value is _MISSING or (path == ("budget",) and value is None):
            continue
        name = _setting_for(path)
        assert name is not None
        try:
            values[path] = settings.parse(name, value)
        except settings.SettingError as exc:
            problems.append(doc.problem(path, exc.message, allowed=exc.allowed))
    return values, problems


def _param_layers(raw: dict[str, Any]) -> list[tuple[Path_, dict[str, Any], bool]]:
    """(path, parameters, is_axes) for every place a manifest gives model input parameters."""
    layers: list[tuple[Path_, dict[str, Any], bool]] = []
    if isinstance(raw.get("defaults"), dict):
        layers.append((("defaults",), raw["defaults"], False))
    if isinstance(raw.get("axes"), dict):
        layers.append((("axes",), raw["axes"], True))
    for section in ("models", "prompts"):
        for i, item in enumerate(raw.get(section) or []):
            if isinstance(item, dict):
                if isinstance(item.get("params"), dict):
                    layers.append(((section, i, "params"), item["params"], False))
                if isinstance(item.get("axes"), dict):
                    layers.append(((section, i, "axes"), item["axes"], True))
    for i, group in enumerate(raw.get("zip") or []):
        if isinstance(group, dict):
            layers.append((("zip", i), group, True))
    for section in ("include", "extra"):
        for i, item in enumerate(raw.get(section) or []):
            if isinstance(item, dict):
                params = {k: v for k, v in item.items() if k not in RESERVED_PARAMS}
                layers.append(((section, i), params, False))
    return layers


def _value_caps(doc: Located, path: Path_, key: str, value: Any) -> list[Problem]:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if key in PARAM_CAPS and number(value) and value > PARAM_CAPS[key]:
        return [
            doc.problem(
                path,
                f"{key} {value:g} is beyond any documented model",
                allowed=f"at most {PARAM_CAPS[key]:,} (renderer's cap: the schemas give no maximum)",
            )
        ]
    if key == "image_size" and isinstance(value, dict):
        w, h = value.get("width"), value.get("height")
        sides: list[Any] = [s for s in (w, h) if number(s)]
        if any(s > MAX_SIDE for s in sides) or (
            len(sides) == 2 and sides[0] * sides[1] > MAX_PIXELS
        ):
            return [
                doc.problem(
                    path,
                    f"image_size {w}x{h} is beyond any documented model",
                    allowed=f"sides up to {MAX_SIDE:,} px and at most {MAX_PIXELS // 2**20} megapixels "
                    "(renderer's cap: the schemas give no maximum; downloads stop at 64 MB)",
                )
            ]
    return []


def semantic_problems(doc: Located, *, file: Path) -> list[Problem]:
    """What structure alone cannot catch: names that must resolve, reserved keys, sizes."""
    raw = doc.data
    problems: list[Problem] = []
    name = raw.get("name")
    if isinstance(name, str) and name.split(".")[0].lower() in WINDOWS_DEVICES:
        problems.append(
            doc.problem(
                ("name",),
                f"{name!r} is a Windows device name and cannot be a directory",
                allowed="any other name, e.g. " + f"{name}-run",
            )
        )
    output = raw.get("output")
    if isinstance(output, str) and "\0" in output:
        problems.append(doc.problem(("output",), "the output path contains a NUL character"))
    elif isinstance(output, str) and is_remote(output):
        try:
            parse_s3(output)
        except UsageError as exc:
            problems.append(
                doc.problem(("output",), exc.message, allowed="a directory, or s3://bucket/prefix")
            )
    state = raw.get("state")
    if isinstance(state, str) and urlsplit(state).password:
        problems.append(
            doc.problem(
                ("state",),
                "the state URL carries a password, and a manifest is no place for one",
                allowed="postgresql://USER@HOST/DB with the password in PGPASSWORD or ~/.pgpass",
            )
        )
    provider = raw.get("provider")
    if isinstance(provider, dict) and isinstance(provider.get("url"), str):
        try:
            settings.check_url(provider["url"])
        except settings.SettingError as exc:
            problems.append(doc.problem(("provider", "url"), exc.message, allowed=exc.allowed))
    for path, params, is_axes in _param_layers(raw):
        for key, value in params.items():
            if key in RESERVED_PARAMS and path[0] not in ("include", "extra"):
                what = "an axis" if is_axes else "a parameter"
                problems.append(
                    doc.problem(
                        (*path, key),
                        f"{key!r} cannot be {what}",
                        key=True,
                        allowed=RESERVED_PARAMS[key],
                    )
                )
                continue
            values = value if is_axes and isinstance(value, list) else [value]
            for i, v in enumerate(values):
                problems += _value_caps(doc, (*path, key, i) if is_axes else (*path, key), key, v)
    problems += _name_references(doc)
    problems += _account_problems(doc)
    return problems


def _account_problems(doc: Located) -> list[Problem]:
    """provider.accounts: names and keys listed once, and no setting that the accounts replace."""
    raw = doc.data
    accounts = _get(raw, ("provider", "accounts"))
    if not isinstance(accounts, list):
        return []
    problems: list[Problem] = []
    if "key_env" in raw["provider"]:
        # One source of keys: a plain key_env beside accounts would leave unclear which key follows which job.
        problems.append(
            doc.problem(
                ("provider", "key_env"),
                "provider.key_env and provider.accounts exclude each other",
                key=True,
                allowed="list that key as one more entry of accounts (key_env: …, concurrency: …)",
            )
        )
    if isinstance(raw.get("limits"), dict) and "concurrency" in raw["limits"]:
        problems.append(
            doc.problem(
                ("limits", "concurrency"),
                "limits.concurrency does not apply with "
                "provider.accounts: each account has its own",
                key=True,
                allowed="concurrency: N on each account (--concurrency still caps a run's total)",
            )
        )
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    for i, account in enumerate(accounts):
        name = account.get("name", account["key_env"])
        if name in names:
            problems.append(
                doc.problem(
                    ("provider", "accounts", i, "name" if "name" in account else "key_env"),
                    f"account name {name!r} is used twice (also accounts[{names[name]}])",
                    allowed="a distinct name for each account (the name defaults to key_env)",
                )
            )
        names.setdefault(name, i)
        if account["key_env"] in keys:
            problems.append(
                doc.problem(
                    ("provider", "accounts", i, "key_env"),
                    f"key variable {account['key_env']!r} is listed twice (also "
                    f"accounts[{keys[account['key_env']]}]); one key is one account",
                    allowed="each account's own key variable",
                )
            )
        keys.setdefault(account["key_env"], i)
    return problems


def _model_names(raw: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(endpoints, names) of the listed models; a model's name is its label, or its endpoint."""
    endpoints: list[str] = []
    names: list[str] = []
    for item in raw.get("models") or []:
        if isinstance(item, str):
            endpoints.append(item)
            names.append(item)
        elif isinstance(item, dict) and isinstance(item.get("endpoint"), str):
            endpoints.append(item["endpoint"])
            label = item.get("label")
            names.append(label if isinstance(label, str) else item["endpoint"])
    return endpoints, names


def _name_references(doc: Located) -> list[Problem]:
    """Every key that names a model, endpoint or axis must name one that exists."""
    raw = doc.data
    problems: list[Problem] = []
    endpoints, names = _model_names(raw)
    known_models = list(dict.fromkeys(endpoints + names))
    prices = raw.get("prices")
    if isinstance(prices, dict):
        for key in prices:
            if key not in known_models:
                problems.append(
                    doc.problem(
                        ("prices", key),
                        f"prices names {key!r}, which is not a listed model",
                        key=True,
                        allowed=", ".join(known_models),
                        suggestion=closest(key, known_models),
                    )
                )
    per = _get(raw, ("limits", "per_endpoint"))
    if isinstance(per, dict):
        for key in per:
            if key not in endpoints:
                problems.append(
                    doc.problem(
                        ("limits", "per_endpoint", key),
                        f"per_endpoint names {key!r}, which is not a listed endpoint",
                        key=True,
                        allowed=", ".join(dict.fromkeys(endpoints)),
                        suggestion=closest(key, endpoints),
                    )
                )
    axes = set(raw.get("axes") or {}) if isinstance(raw.get("axes"), dict) else set()
    for item in raw.get("models") or []:
        if isinstance(item, dict) and isinstance(item.get("axes"), dict):
            axes |= set(item["axes"])
    # Template variables, zip keys and inline alternations (alt1, alt2…) are axes too.
    if isinstance(raw.get("vars"), dict):
        axes |= set(raw["vars"])
    for group in raw.get("zip") or []:
        if isinstance(group, dict):
            axes |= set(group)
    for item in raw.get("prompts") or []:
        if isinstance(item, dict) and isinstance(item.get("text"), str) and "|" in item["text"]:
            axes |= {f"alt{n}" for n in range(1, item["text"].count("|") + 1)}
    keys = ["prompt", "model", "seed", *sorted(axes)]
    for i, entry in enumerate(raw.get("exclude") or []):
        if isinstance(entry, dict):
            for key in entry:
                if key not in keys:
                    problems.append(
                        doc.problem(
                            ("exclude", i, key),
                            f"exclude entry key {key!r} is not prompt, model, seed or an axis",
                            key=True,
                            allowed=", ".join(keys),
                            suggestion=closest(key, keys),
                        )
                    )
    budget = raw.get("budget")
    if (
        isinstance(budget, (int, float))
        and not isinstance(budget, bool)
        and raw.get("allow_unpriced") is not True
    ):
        priced = set(prices) if isinstance(prices, dict) else set()
        unpriced = [
            n for e, n in zip(endpoints, names, strict=True) if e not in priced and n not in priced
        ]
        if unpriced:
            problems.append(
                doc.problem(
                    ("budget",),
                    "a budget is set but these models have no price, so it cannot "
                    "bound them: " + ", ".join(dict.fromkeys(unpriced)),
                    allowed="add them to `prices:`, or set `allow_unpriced: true` to count "
                    "them as free",
                )
            )
    return problems
