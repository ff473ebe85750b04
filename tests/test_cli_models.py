"""renderer.cli.models: `schemas build` reports and `models` list/show/add/update/schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from renderer.models.schemas import SchemaRegistry
from renderer.provider.emulator.openapi import document

from .conftest import SCHEMAS, background_app, background_emulator, cli, write_manifest

BUNDLED = SchemaRegistry(SCHEMAS)


def _doc(tmp_path: Path, endpoint: str, new: str) -> Path:
    path = tmp_path / f"{new.replace('/', '_')}.json"
    path.write_text(json.dumps(document(BUNDLED, endpoint), indent=2).replace(endpoint, new))
    return path


def test_models_add_fetches_fals_openapi_url(tmp_path: Path):
    """`models add ENDPOINT` downloads the OpenAPI document, records its URL, and `update` refetches it."""
    env = {"RENDERER_MODELS": str(tmp_path / "m")}
    with background_emulator() as emu:
        code, out, err = cli(
            "models", "add", "fal-ai/omnigen-v2", "--openapi-url", emu.url, env=env
        )
        assert code == 0, err
        assert out.startswith("added: fal-ai/omnigen-v2")
        assert (
            f"fetching {emu.url}/api/openapi/queue/openapi.json?endpoint_id=fal-ai/omnigen-v2"
            in err
        )
        code, out, _ = cli("models", "show", "fal-ai/omnigen-v2", "--json", env=env)
        body = json.loads(out)
        assert set(body) == {"endpoint", "input", "output", "sources", "warnings"}
        assert body["sources"][0]["origin"].startswith(emu.url)
        code, out, _ = cli("models", "update", "--openapi-url", emu.url, env=env)
        assert code == 0 and out.startswith("unchanged: fal-ai/omnigen-v2")
        code, _, err = cli("models", "add", "acme/nothing", "--openapi-url", emu.url, env=env)
        assert code == 2 and "fal knows no endpoint 'acme/nothing' (404)" in err


def test_models_add_offline_names_the_url_to_download(tmp_path: Path):
    """Offline, `models add ENDPOINT` exits 2 naming the URL to fetch by hand, and writes nothing."""
    env = {"RENDERER_MODELS": str(tmp_path / "m"), "FAL_KEY": "sekrit-key-123"}
    code, out, err = cli(
        "models", "add", "fal-ai/flux/dev", "--openapi-url", "http://127.0.0.1:9", env=env
    )
    assert code == 2 and out == ""
    assert "http://127.0.0.1:9/api/openapi/queue/openapi.json?endpoint_id=fal-ai/flux/dev" in err
    assert "by hand" in err and "renderer models add FILE" in err
    assert "sekrit" not in err and not (tmp_path / "m").exists()


def test_added_models_are_seen_by_every_command_without_flags(tmp_path: Path):
    """After `models add FILE`, a manifest using the added and bundled models validates and renders."""
    env = {"RENDERER_MODELS": str(tmp_path / "m")}
    code, out, err = cli(
        "models", "add", str(_doc(tmp_path, "fal-ai/flux-1/schnell", "acme/flux")), env=env
    )
    assert code == 0, err
    code, out, _ = cli("models", env=env)
    row = next(r for r in out.splitlines() if r.startswith("acme/flux"))
    assert row.split()[-1] == "added"
    manifest = write_manifest(
        tmp_path,
        output=str(tmp_path / "out"),
        models=["acme/flux", "fal-ai/flux-1/schnell", "fal-ai/omnigen-v2"],
    )
    assert cli("validate", str(manifest), env=env)[0] == 0
    code, out, err = cli("run", str(manifest), env=env)
    assert code == 0, err
    sidecars = sorted((tmp_path / "out/t/data").rglob("s1-0.json"))
    assert [p.parent.parent.name for p in sidecars] == [
        "acme--flux",
        "fal-ai--flux-1--schnell",
        "fal-ai--omnigen-v2",
    ]
    bad = write_manifest(tmp_path, models=[{"endpoint": "acme/flux", "params": {"num_images": 0}}])
    code, _, err = cli("validate", str(bad), env=env)
    assert code == 2 and "num_images" in err


def test_models_add_reports_each_source_and_keeps_the_good_ones(tmp_path: Path):
    """One refused source among several: the others are added, the bad one named, exit 2."""
    env = {"RENDERER_MODELS": str(tmp_path / "m")}
    notes = tmp_path / "notes.txt"
    notes.write_text("some notes\n")
    good = _doc(tmp_path, "fal-ai/flux-1/schnell", "acme/flux")
    code, out, err = cli("models", "add", str(notes), str(good), "missing.json", env=env)
    assert code == 2
    assert "refused: notes.txt:1: unknown document layout" in err
    assert "missing.json: no such document file, and not an endpoint id" in err
    assert out.startswith("added: acme/flux")


def test_models_schema_completes_and_checks_each_endpoints_params(tmp_path: Path):
    """The editors' manifest schema knows every endpoint and checks a model's params and axes."""
    target = tmp_path / "manifest.schema.json"
    code, out, _ = cli(
        "models", "schema", "--out", str(target), env={"RENDERER_MODELS": str(tmp_path)}
    )
    assert code == 0 and str(target) in out
    schema = json.loads(target.read_text())
    check = jsonschema.Draft202012Validator(schema)
    base = yaml.safe_load((Path(__file__).parent.parent / "manifests/quickstart.yaml").read_text())

    def with_model(model: object) -> dict[str, object]:
        return {**base, "models": [model]}

    recraft = "fal-ai/recraft/v2/text-to-image"
    assert check.is_valid(
        with_model({"endpoint": recraft, "axes": {"style": ["vector_illustration"]}})
    )
    assert not check.is_valid(with_model({"endpoint": recraft, "axes": {"style": ["vectr"]}}))
    assert not check.is_valid(with_model({"endpoint": recraft, "params": {"stlye": "x"}}))
    names = schema["properties"]["models"]["items"]["oneOf"][0]["anyOf"][0]["enum"]
    assert recraft in names and len(names) == 12


def test_models_list_clips_long_values_with_a_count():
    """Allowed values too long for a column say how many there are and end with an ellipsis."""
    _code, out, _ = cli("models", "fal-ai/recraft/v2/text-to-image")
    line = next(ln for ln in out.splitlines() if ln.startswith("style"))
    assert " values: " in line and "…" in line


def test_docs_list_the_current_build_warnings():
    """docs/models.md's "Current build warnings" block is exactly what `schemas build --check` prints."""
    readme = (Path(__file__).parent.parent / "docs/models.md").read_text()
    block = readme.split("### Current build warnings", 1)[1].split("```\n", 2)[1]
    _, _, err = cli("schemas", "build", "--check", "--dir", str(SCHEMAS))
    printed = [
        ln.removeprefix("warning: ") for ln in err.splitlines() if ln.startswith("warning: ")
    ]
    assert block.strip().splitlines() == printed


def test_models_add_never_sends_the_key_after_a_redirect_elsewhere(tmp_path: Path):
    """A server that redirects the OpenAPI download to another origin: the document is fetched, the key stays home."""

    from aiohttp import web

    seen: list[str | None] = []
    body = json.dumps(document(BUNDLED, "fal-ai/omnigen-v2"))

    async def other(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(text=body, content_type="application/json")

    second = web.Application()
    second.add_routes([web.get("/doc.json", other)])
    with background_app(second) as other_url:

        async def first(request: web.Request) -> web.Response:
            seen.append(request.headers.get("Authorization"))
            raise web.HTTPFound(f"{other_url}/doc.json")

        redirecting = web.Application()
        redirecting.add_routes([web.get("/{tail:.*}", first)])
        with background_app(redirecting) as first_url:
            env = {"RENDERER_MODELS": str(tmp_path / "m"), "FAL_KEY": "sekrit-key-123"}
            code, _out, err = cli(
                "models", "add", "fal-ai/omnigen-v2", "--openapi-url", first_url, env=env
            )
    assert code == 0, err
    assert seen == [
        "Key sekrit-key-123",
        None,
    ]  # sent to the origin asked for, not after the redirect
