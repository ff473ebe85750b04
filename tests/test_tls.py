"""provider/tls.py: aiohttp imported by the CLI with its CA certificates loaded in a thread."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from renderer.provider import tls
from renderer.provider.client import Client

from .conftest import ROOT, self_signed

# A fresh interpreter (this process imported aiohttp long ago): the deferred import, then what
# a user of its contexts relies on, as JSON.
FRESH = """
import json, ssl
original = ssl.SSLContext.load_default_certs
from renderer.provider import tls
deferred = tls.import_aiohttp()
restored = (
    ssl.SSLContext.load_default_certs is original
    and "set_default_verify_paths" not in ssl.SSLContext.__dict__
)
tls.ready()
import aiohttp.connector as connector
verified = ssl.create_default_context()
unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
unverified.set_default_verify_paths()
print(json.dumps({
    "deferred": deferred,
    "restored": restored,
    "pending_after_ready": tls.pending(),
    "verified": connector._SSL_CONTEXT_VERIFIED.cert_store_stats() == verified.cert_store_stats(),
    "unverified": connector._SSL_CONTEXT_UNVERIFIED.cert_store_stats() == unverified.cert_store_stats(),
    "cas": verified.cert_store_stats()["x509_ca"],
}))
"""


def fresh(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_deferred_import_gives_aiohttp_contexts_the_same_certificates(tmp_path: Path):
    """After ready(), aiohttp's two default contexts hold what an undeferred import gives them; ssl is as before."""
    bundle = tmp_path / "ca.pem"
    self_signed(tmp_path)  # one CA in the bundle: the comparison is not vacuous
    bundle.write_bytes((tmp_path / "cert.pem").read_bytes())
    done = fresh(FRESH, SSL_CERT_FILE=str(bundle))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got == {
        "deferred": True,
        "restored": True,
        "pending_after_ready": False,
        "verified": True,
        "unverified": True,
        "cas": 1,
    }


def test_the_loader_thread_is_not_a_daemon():
    """An exit right after the import waits for the load (a daemon thread crashed OpenSSL's cleanup)."""
    tls._start([lambda: time.sleep(0.05)])
    try:
        assert tls._thread is not None and not tls._thread.daemon
    finally:
        tls.ready()
    script = "from renderer.provider import tls; tls.import_aiohttp()"
    for _ in range(8):  # the process ends while the thread loads: a clean exit every time
        done = fresh(script)
        assert done.returncode == 0, done.stderr


def test_no_deferral_once_aiohttp_is_imported_or_another_thread_runs():
    """A plain import when aiohttp is already there (this process) or another thread could make a context."""
    assert tls.import_aiohttp() is False and not tls.pending()
    script = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(0.5,)).start()\n"
        "from renderer.provider import tls\n"
        "print(tls.import_aiohttp(), tls.pending())\n"
    )
    done = fresh(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_client_waits_for_a_pending_load_before_any_request():
    """Client.__aenter__ returns only once the deferred load is done, without blocking the loop."""
    order: list[str] = []
    tls._start([lambda: (time.sleep(0.2), order.append("loaded"))])

    async def scenario() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.ensure_future(ticker())
        async with Client("http://127.0.0.1:9"):
            order.append("entered")
        beat.cancel()
        assert ticks >= 5  # the loop ran while the client waited

    asyncio.run(scenario())
    assert order == ["loaded", "entered"]


def test_a_failed_load_is_raised_where_the_client_starts():
    """What the load raised is raised by ready() and by the client, not swallowed."""

    def broken() -> None:
        raise OSError("no CA bundle")

    async def scenario() -> None:
        async with Client("http://127.0.0.1:9"):
            pass

    tls._start([broken])
    try:
        with pytest.raises(OSError, match="no CA bundle"):
            tls.ready()
        with pytest.raises(OSError, match="no CA bundle"):
            asyncio.run(scenario())
    finally:
        tls._start([])  # the module ready again for the rest of the suite
        tls.ready()


# An import cut short after aiohttp.connector made its contexts (Ctrl-C while aiohttp.tracing
# loads): the methods are restored and the noted loads still made.
INTERRUPTED = """
import importlib.abc, json, ssl, sys
class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "aiohttp.tracing":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from renderer.provider import tls
try:
    tls.import_aiohttp()
except KeyboardInterrupt:
    pass
tls.ready()
connector = sys.modules["aiohttp.connector"]
print(json.dumps([
    "set_default_verify_paths" in ssl.SSLContext.__dict__,
    connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
]))
"""


def test_an_interrupted_import_still_loads_the_contexts_it_made(tmp_path: Path):
    """Ctrl-C during aiohttp's import: ssl is restored and the contexts already made get their CAs."""
    cert, _ = self_signed(tmp_path)
    done = fresh(INTERRUPTED, SSL_CERT_FILE=str(cert))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [False, 1]


def test_cli_run_over_https_verifies_the_server_with_the_deferred_certificates(tmp_path: Path):
    """`renderer run` against an HTTPS provider trusted through SSL_CERT_FILE renders every job."""
    cert, key = self_signed(tmp_path)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "name: tls\nprompts: [{id: cat, text: a cat}, {id: dog, text: a dog}, {id: fox, text: a fox}]\nmodels: [fal-ai/flux-1/schnell]\n"
        "seeds: [1]\nlimits: {concurrency: 2}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAL_KEY": "tls-key"}
    emulator = [sys.executable, "-m", "renderer", "emulator", "--latency", "0.05"]
    emulator += ["--tls-cert", str(cert), "--tls-key", str(key)]
    with subprocess.Popen(
        emulator, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    ) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            assert url.startswith("https://127.0.0.1:"), url
            run = [sys.executable, "-m", "renderer", "run", str(manifest), "--provider", url]
            run += ["--output", str(tmp_path / "out"), "--quiet"]
            done = subprocess.run(
                run,
                capture_output=True,
                text=True,
                env={**env, "SSL_CERT_FILE": str(cert)},
                cwd=ROOT,
                timeout=120,
                check=False,
            )
        finally:
            server.terminate()
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").rglob("*.png"))) == 3
