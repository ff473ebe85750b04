"""Start the emulator in its own process (so client and server never share an event loop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def emulator(*args: str, tls: bool = False) -> Iterator[tuple[str, dict[str, str]]]:
    """Yields (base URL, extra environment for clients: the CA file when tls)."""
    extra: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "renderer", "emulator", *args]
        if tls:
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    str(key),
                    "-out",
                    str(cert),
                    "-days",
                    "1",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                ],
                check=True,
                capture_output=True,
            )
            cmd += ["--tls-cert", str(cert), "--tls-key", str(key)]
            extra["SSL_CERT_FILE"] = str(cert)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env
        ) as proc:
            try:
                assert proc.stdout is not None
                url = proc.stdout.readline().strip()
                if not url:
                    raise RuntimeError("the emulator did not start")
                yield url, extra
            finally:
                proc.terminate()


def stats(url: str, ca: str | None = None) -> dict:
    import ssl

    context = ssl.create_default_context(cafile=ca) if ca else None
    with urllib.request.urlopen(f"{url}/_emulator/stats", context=context) as resp:
        return json.loads(resp.read())


def requests_total(url: str, ca: str | None = None) -> int:
    return int(stats(url, ca)["requests"])
