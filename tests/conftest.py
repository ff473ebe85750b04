"""Shared fixtures: repository paths, an isolated environment, the schema registry."""

from __future__ import annotations

import asyncio
import io
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from renderer.cli import main
from renderer.models.schemas import SchemaRegistry
from renderer.provider.emulator import Emulator, EmulatorConfig

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
DOCS = SCHEMAS / "docs"
MANIFESTS = ROOT / "manifests"


_REPORTED = (
    "pyyaml",
    "jsonschema",
    "aiohttp",
    "aiolimiter",
    "pillow",
    "tqdm",
    "uvloop",
    "psycopg",
    "obstore",
    "pyarrow",
    "hypothesis",
    "fal-client",
)


def pytest_report_header() -> str:
    """The versions this run installed: a fresh install takes the newest releases the ranges allow."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in _REPORTED:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} -")
    return "packages: " + ", ".join(found)


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's key or overrides."""
    for name in (
        "FAL_KEY",
        "FAL_KEY_ID",
        "FAL_KEY_SECRET",
        "RENDERER_SCHEMAS",
        "RENDERER_PROVIDER",
        "RENDERER_MODELS",
        "RENDERER_OPENAPI_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def registry() -> SchemaRegistry:
    return SchemaRegistry(SCHEMAS)


@contextmanager
def in_background(serving: Callable[[], AbstractAsyncContextManager[T]], what: str) -> Iterator[T]:
    """What `serving()` enters, kept open on its own thread and event loop while the block lasts,
    so code under test may call asyncio.run beside it."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        box["stop"] = asyncio.Event()
        async with serving() as value:
            box["value"] = value
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), f"{what} did not start"
    try:
        yield box["value"]
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)
        loop.close()


def background_emulator(**settings: Any) -> AbstractContextManager[Emulator]:
    """An emulator on its own thread and event loop, so code under test may call asyncio.run."""
    return in_background(lambda: Emulator(EmulatorConfig(**settings)), "the emulator")


def background_app(app: Any) -> AbstractContextManager[str]:
    """An aiohttp web.Application on 127.0.0.1, served on its own thread and event loop while
    the block lasts: its base URL (a test server that misbehaves as the test says)."""
    from aiohttp import web

    @asynccontextmanager
    async def site() -> AsyncIterator[str]:
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()

    return in_background(site, "the test server")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) in `folder`: a one-day certificate for localhost and 127.0.0.1."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def write_manifest(folder: Path, **data: Any) -> Path:
    body = {
        "name": "t",
        "provider": "emulator",
        "prompts": [{"id": "cat", "text": "a cat"}],
        "models": ["fal-ai/flux-1/schnell"],
        "seeds": [1],
        **data,
    }
    path = folder / "m.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, environ=env or {})
    return code, out.getvalue(), err.getvalue()


# -------------------------------------------------- real servers (tests/servers.py)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One private PostgreSQL cluster for the session: a libpq URL of its `postgres` database."""
    from tests import servers

    with servers.postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database of the session's cluster for one test (dropped afterwards)."""
    import uuid

    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.replace("@/postgres?", f"@/{name}?")
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """One S3-compatible server (SeaweedFS `weed mini`) on 127.0.0.1 for the session."""
    from tests import servers

    with servers.seaweedfs() as server:
        yield server


@pytest.fixture
def s3(s3_server: Any) -> tuple[Any, str, dict[str, str]]:
    """(server, a fresh s3://bucket/prefix URL for this test, the AWS variables that reach it)."""
    import uuid

    return s3_server, f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:12]}", s3_server.env()
