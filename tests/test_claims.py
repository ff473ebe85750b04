"""The job feed: claims in plan order, and ends whatever stops it, never waiting on its own queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

from renderer.manifest.load import load
from renderer.models.schemas import SchemaRegistry
from renderer.output.storage import LocalStorage
from renderer.plan import planner as plan_mod
from renderer.runner import Event, RunConfig
from renderer.runner.claims import Claims
from renderer.runner.job import RunState
from renderer.runner.reconcile import reconcile
from renderer.state.sqlite import SQLiteStore

from .conftest import write_manifest


def _claims(tmp_path: Path, registry: SchemaRegistry, jobs: int) -> tuple[Claims, SQLiteStore]:
    plan = plan_mod.build(
        load(write_manifest(tmp_path, seeds={"start": 1, "count": jobs})), registry
    )
    store = SQLiteStore(tmp_path / "run")
    config = RunConfig(provider="test", concurrency=2)
    events: list[Event] = []
    reconcile(plan, store, LocalStorage(store.run_dir), config, "http://test", events.append)
    store.join("w1", config.lease)
    return Claims(store, config, RunState(), events.append), store


def test_a_feed_cancelled_while_its_queue_is_full_ends_at_once(
    tmp_path: Path, registry: SchemaRegistry
) -> None:
    """A worker's error cancels the feed while nobody reads its full queue: it ends, no hang."""

    async def scenario() -> tuple[bool, int]:
        claims, store = _claims(tmp_path, registry, jobs=12)
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1)
        feed = asyncio.ensure_future(claims.feed(queue, consumers=2))
        while not queue.full():  # the feed now waits to hand over its second job
            assert not feed.done(), feed.exception()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        feed.cancel()  # what the task pool does when a worker raised: nobody reads the queue
        await asyncio.wait({feed}, timeout=5)  # not wait_for: it would wait for a hung task
        ended = feed.done()
        if not ended:  # leave no task behind for the next test
            while not feed.done():
                queue.get_nowait() if not queue.empty() else None
                await asyncio.sleep(0.01)
        store.close()
        return ended, queue.qsize()

    ended, _ = asyncio.run(scenario())
    assert ended, "the feed hung on its own full queue after being cancelled"


def test_a_feed_that_runs_out_hands_each_consumer_its_end(
    tmp_path: Path, registry: SchemaRegistry
) -> None:
    """Every job once, in plan order, then one None per consumer, even through a small queue."""

    async def scenario() -> list[str | None]:
        claims, store = _claims(tmp_path, registry, jobs=5)
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1)
        feed = asyncio.ensure_future(claims.feed(queue, consumers=3))
        got: list[str | None] = []
        while got.count(None) < 3:
            got.append(await asyncio.wait_for(queue.get(), 5))
        await asyncio.wait_for(feed, 5)
        store.close()
        return got

    got = asyncio.run(scenario())
    keys = [k for k in got if k is not None]
    assert len(keys) == 5 == len(set(keys)) and got[-3:] == [None, None, None]


def test_the_feed_hands_out_its_first_job_alone(tmp_path: Path, registry: SchemaRegistry) -> None:
    """After the first job, nothing more is handed out until `alone` returns (the first submit
    is then on the wire), and then every job still comes, in plan order."""

    async def scenario() -> tuple[list[str], list[str | None]]:
        claims, store = _claims(tmp_path, registry, jobs=6)
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=10)
        release = asyncio.Event()
        seen: list[str] = []

        async def alone() -> None:
            seen.extend(k for k in list(queue._queue) if k is not None)  # type: ignore[attr-defined]
            await release.wait()

        claims.alone = alone
        feed = asyncio.ensure_future(claims.feed(queue, consumers=1))
        await asyncio.sleep(0.05)
        held = queue.qsize()
        release.set()
        await asyncio.wait_for(feed, 5)
        got = [queue.get_nowait() for _ in range(queue.qsize())]
        store.close()
        assert held == 1
        return seen, got

    seen, got = asyncio.run(scenario())
    keys = [k for k in got if k is not None]
    assert len(seen) == 1 and keys[0] == seen[0] and len(keys) == 6 == len(set(keys))
    assert got[-1] is None
