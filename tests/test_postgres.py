"""The shared state rides out its own outages: workers reconnect through PostgreSQL restarts, and
past the outage window they stop cleanly with exit 75 (a scheduler's "try again later")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from renderer.errors import OutageError
from renderer.provider.emulator import ServiceTime
from renderer.state.postgres import PostgresStore

from .conftest import ROOT, background_emulator, write_manifest
from .servers import restart_postgres


def _worker(
    manifest: Path, url: str, state: str, folder: Path, *extra: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAL_KEY": "k"}
    return subprocess.Popen(
        [sys.executable, "-m", "renderer", "run", str(manifest), "--provider", url,
         "--state", state, "--output", str(folder / "o"), "--json", *extra],
        env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, str, str]:
    """The worker's exit code and output; a worker still running after `timeout` is a hang: killed, failed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the worker hung (killed after {timeout:g} s): {err.decode()[-2000:]}")
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
def test_workers_ride_out_postgresql_restarts(tmp_path: Path, postgres_url: str) -> None:
    """`pg_ctl restart -m fast` three times while two workers run: both reconnect and finish, no hang, every job once, nothing paid twice."""
    manifest = write_manifest(
        tmp_path,
        prompts=[{"id": f"p{i}", "text": f"a cat {i}"} for i in range(12)],
        seeds=[1, 2, 3, 4, 5, 6],
    )
    with background_emulator(service=ServiceTime("fixed", 0.6), workers=8) as emu:
        workers = [
            _worker(manifest, emu.url, postgres_url, tmp_path, "--concurrency", "4")
            for _ in range(2)
        ]
        restarts = 0
        time.sleep(1.5)
        while restarts < 3 and any(p.poll() is None for p in workers):
            restart_postgres(postgres_url)
            restarts += 1
            time.sleep(1.0)
        results = [_finish(p, 120) for p in workers]
        stats = emu.stats()
    assert restarts >= 2, "the run ended before the server could be restarted"
    for code, _out, err in results:
        assert code == 0, err[-2000:]
        assert "Traceback" not in err
    assert any("retrying for up to 90 s" in err for _c, _o, err in results)
    assert stats["submits"] == 72 and stats["duplicate_submits"] == 0
    record = json.loads((tmp_path / "o/t/run.json").read_text())
    assert record["outcome"] == "done" and record["paid_twice"]["all_runs"] == 0
    assert len((tmp_path / "o/t/data/metadata.jsonl").read_text().splitlines()) == 72


@pytest.mark.slow
def test_past_the_outage_window_a_worker_exits_75(tmp_path: Path, postgres_url: str) -> None:
    """The server down for longer than --outage: the worker stops by itself with exit 75 and a clear message; the rerun finishes without paying twice."""
    manifest = write_manifest(
        tmp_path, prompts=[{"id": f"p{i}", "text": f"a dog {i}"} for i in range(8)], seeds=[1, 2, 3]
    )
    with background_emulator(service=ServiceTime("fixed", 0.3), workers=8) as emu:
        proc = _worker(
            manifest, emu.url, postgres_url, tmp_path, "--concurrency", "2", "--outage", "2"
        )
        time.sleep(1.5)
        # Down for 6 s (three times the window): `pg_ctl stop`, then start again.
        stopper = threading.Thread(target=restart_postgres, args=(postgres_url, "fast", 6.0))
        stopper.start()
        code, _out, err = _finish(proc, 120)
        stopper.join(60)
        assert code == 75, err[-2000:]
        assert "stayed unreachable for the outage window (2 s)" in err and "Traceback" not in err
        assert "exit 75 means: try again later" in err
        rerun = _worker(manifest, emu.url, postgres_url, tmp_path)
        code, _out, err = _finish(rerun, 120)
        stats = emu.stats()
    assert code == 0, err[-2000:]
    assert stats["duplicate_submits"] == 0


def test_a_store_call_waits_for_the_server_and_then_gives_up(postgres_url: str) -> None:
    """A call on a broken connection reconnects and runs again; with the server gone past the window it raises OutageError, and later calls fail at once."""
    store = PostgresStore(postgres_url, Path("unused"), "outage-unit", outage=30)
    try:
        store.set_meta("a", "1")
        restart_postgres(postgres_url)  # every connection is cut
        assert store.meta("a") == "1"  # reconnected and read again
        store.outage = 0
        store.db.conn.close()  # a connection that broke, with no time left to wait
        with pytest.raises(OutageError):
            store.meta("a")
        started = time.monotonic()
        with pytest.raises(OutageError):
            store.counts()
        assert time.monotonic() - started < 1  # down: no second wait
    finally:
        store.close()


def test_a_connection_cut_while_a_worker_sets_up_its_schema_is_ridden_out(
    postgres_url: str,
) -> None:
    """The connection cut while a worker creates or migrates its run's schema (a restart as it
    starts): it connects again within the outage window and finishes setting up, never exit 75."""
    import psycopg

    from renderer.state.postgres import ADVISORY_SCHEMA

    holder = psycopg.connect(postgres_url, autocommit=True)
    opened: list[PostgresStore | BaseException] = []

    def open_store() -> None:
        try:
            opened.append(PostgresStore(postgres_url, Path("unused"), "setup-cut", outage=30))
        except BaseException as exc:  # (seen by the test below)
            opened.append(exc)

    def waiting() -> list[int]:
        """Backends waiting for the schema's advisory lock: the worker inside its set-up."""
        rows = holder.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
            (ADVISORY_SCHEMA,),
        ).fetchall()
        return [r[0] for r in rows]

    def wait_for(check: Any) -> Any:
        deadline = time.monotonic() + 20
        while not (found := check()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return found

    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_SCHEMA,))
        thread = threading.Thread(target=open_store)
        thread.start()
        first = wait_for(waiting)
        assert first, "the worker never reached its set-up"
        holder.execute("SELECT pg_terminate_backend(%s)", (first[0],))
        # It comes back on a new connection and waits in its set-up again.
        again = wait_for(lambda: [p for p in waiting() if p != first[0]])
        assert again, f"the worker did not come back: {opened}"
        holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_SCHEMA,))
        thread.join(30)
        [store] = opened
        assert isinstance(store, PostgresStore), store
        try:
            store.set_meta("a", "1")
            assert store.meta("a") == "1"
        finally:
            store.close()
    finally:
        holder.close()


def _cluster_pids(url: str) -> list[int]:
    """The test cluster's postmaster (by its postmaster.pid) and its children (by /proc): ours alone."""
    folder = Path(url.split("host=", 1)[1].split("&", 1)[0])
    postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == postmaster:
                pids.append(int(entry.name))
    return pids


def test_a_server_that_stops_answering_cannot_hang_a_call(postgres_url: str) -> None:
    """PostgreSQL frozen (SIGSTOP): a call waits at most the stall limit, then the outage window, and raises OutageError; it never hangs."""
    import signal

    store = PostgresStore(postgres_url, Path("unused"), "outage-stall", outage=2)
    store.db.watchdog.limit = 1.0
    pids = _cluster_pids(postgres_url)
    try:
        store.set_meta("a", "1")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            with pytest.raises(OutageError, match="stayed unreachable"):
                store.meta("a")
            waited = time.monotonic() - started
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        assert waited < 20  # the stall limit, the window and one connect timeout: bounded
        assert store.db.watchdog.fired >= 1
    finally:
        store.close()
    again = PostgresStore(postgres_url, Path("unused"), "outage-stall")
    try:
        assert again.meta("a") == "1"
    finally:
        again.close()
