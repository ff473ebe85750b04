"""Shared job claims in a real PostgreSQL server: no double claims, fencing, reclaim with the request id."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from renderer.errors import StateError
from renderer.leases import LeaseLost, Leases

Make = Callable[..., Leases]


@pytest.fixture
def make(postgres_url: str) -> Iterator[Make]:
    """Open a worker's view of the test database; every one opened is closed at the end."""
    opened: list[Leases] = []

    def open_worker(owner: str, **kwargs: Any) -> Leases:
        opened.append(Leases(postgres_url, owner, **kwargs))
        return opened[-1]

    yield open_worker
    for leases in opened:
        leases.close()


def test_concurrent_claimers_never_share_a_job(postgres_url: str) -> None:
    """Three workers claiming batches at once: every job is claimed exactly once, in plan order per batch."""
    keys = [f"job-{i:05d}" for i in range(1500)]
    with Leases(postgres_url, "setup") as setup:
        setup.add(keys)
    got: dict[str, list[str]] = {}

    def work(owner: str) -> None:
        leases = Leases(postgres_url, owner, lease_seconds=60)
        mine: list[str] = []
        while batch := leases.claim(25):
            assert [c.key for c in batch] == sorted(c.key for c in batch)
            for claim in batch:
                leases.update(claim.key, "downloaded")
            mine += [c.key for c in batch]
        got[owner] = mine
        leases.close()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    claimed = Counter(k for mine in got.values() for k in mine)
    with Leases(postgres_url, "check") as check:
        assert check.remaining() == 0
    assert set(claimed) == set(keys) and max(claimed.values()) == 1
    assert len(got) == 3


def test_add_is_idempotent(make: Make) -> None:
    """Every worker registers the plan; jobs are added once and keep their state."""
    first = make("a")
    assert first.add(["x", "y"]) == 2
    (claim,) = first.claim(1)
    first.update(claim.key, "downloaded")
    assert make("b").add(["x", "y", "z"]) == 1
    assert first.counts()["downloaded"] == 1 and first.remaining() == 2


def test_expired_lease_is_reclaimed_with_its_request_id(make: Make) -> None:
    """A dead worker's submitted job goes to another worker after the lease, carrying the request id to reattach."""
    dead = make("dead", lease_seconds=0.3)
    dead.add(["k1", "k2"])
    claims = dead.claim(2)
    dead.update(claims[0].key, "submitted", request_id="req-123", account="FAL_KEY_A")
    alive = make("alive", lease_seconds=30)
    assert alive.claim(10) == []  # still leased
    time.sleep(0.5)
    taken = {c.key: c for c in alive.claim(10)}
    assert set(taken) == {"k1", "k2"}
    assert taken["k1"].request_id == "req-123" and taken["k1"].state == "submitted"
    assert taken["k1"].account == "FAL_KEY_A" and taken["k1"].claims == 2
    assert taken["k2"].request_id is None


def test_stale_owner_is_fenced(make: Make) -> None:
    """A worker whose lease expired and was taken over can record nothing; the new owner's state stands."""
    stale = make("stale", lease_seconds=0.3)
    stale.add(["k"])
    (claim,) = stale.claim(1)
    time.sleep(0.5)
    fresh = make("fresh", lease_seconds=30)
    assert [c.key for c in fresh.claim(1)] == ["k"]
    fresh.update("k", "submitted", request_id="req-fresh")
    with pytest.raises(LeaseLost):
        stale.update(claim.key, "downloaded")
    with pytest.raises(LeaseLost):
        stale.update(claim.key, "submitted", request_id="req-stale")
    assert stale.renew() == set()
    assert fresh.claim(1) == []
    row = fresh.db.execute("SELECT state, request_id, owner FROM claims WHERE key = 'k'").fetchone()
    assert row == ("submitted", "req-fresh", "fresh")


def test_expired_but_unclaimed_lease_still_fences(make: Make) -> None:
    """Even before anyone takes the job over, an expired lease cannot commit."""
    slow = make("slow", lease_seconds=0.2)
    slow.add(["k"])
    slow.claim(1)
    time.sleep(0.4)
    with pytest.raises(LeaseLost):
        slow.update("k", "submitted", request_id="r")


def test_renew_keeps_jobs_and_finished_jobs_are_never_claimed(make: Make) -> None:
    """Renewal keeps a live worker's jobs past the original lease; finished jobs stay finished."""
    worker = make("w", lease_seconds=0.6)
    worker.add(["a", "b", "c"])
    worker.claim(3)
    worker.update("c", "failed")
    for _ in range(3):
        time.sleep(0.3)
        assert worker.renew() == {"a", "b"}
    other = make("o", lease_seconds=30)
    assert other.claim(10) == []
    worker.update("a", "downloaded")
    worker.release(["b"])
    assert [c.key for c in other.claim(10)] == ["b"]
    assert {w["id"]: w["held"] for w in other.workers()} == {"o": 1, "w": 0}


def test_unreachable_server_is_a_state_error() -> None:
    """A URL that reaches no server is a StateError with a hint, not a traceback."""
    with pytest.raises(StateError) as caught:
        Leases("postgresql://nobody@/postgres?host=/nonexistent-dir&port=1&connect_timeout=2", "w")
    assert "shared state" in caught.value.message
