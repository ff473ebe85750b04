"""AdaptiveLimit (renderer/runner/limits.py): provider slots handed out in order, never over capacity;
and the deliveries' slots beside them (deliver.Deliveries): refills go first."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.runner.deliver import Deliveries
from renderer.runner.limits import AdaptiveLimit

# One step of a schedule: a new job asks for a slot, a holder gives one back, a waiting job is
# cancelled (a stop, a lost lease), a 429 halves the allowance, or a success raises it.
steps = st.lists(
    st.sampled_from(["ask", "ask", "release", "cancel", "throttled", "succeeded"]), max_size=60
)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(0, 3), steps)
def test_slots_never_exceed_capacity_and_no_waiter_is_left_behind(
    ceiling: int, lead: int, schedule: list[str]
) -> None:
    """Whatever the order of asks, releases, cancellations and 429s: the slots counted are the
    slots held, waiters are served in the order they asked, and no job waits while a slot is free."""

    async def scenario() -> None:
        slots = AdaptiveLimit(ceiling, lead)
        holders: list[int] = []
        waiting: dict[int, asyncio.Task[None]] = {}
        served: list[int] = []

        async def job(n: int) -> None:
            await slots.acquire()
            served.append(n)
            holders.append(n)

        for n, step in enumerate(schedule):
            if step == "ask":
                waiting[n] = asyncio.ensure_future(job(n))
            elif step == "release" and holders:
                holders.pop(0)
                await slots.release()
            elif step == "cancel" and waiting:
                victim = min(waiting)
                waiting[victim].cancel()
            elif step == "throttled":
                slots.throttled()
            elif step == "succeeded":
                slots.succeeded()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            waiting = {k: t for k, t in waiting.items() if not t.done()}
            assert slots.active == len(holders)
            if waiting:
                assert slots.active >= slots.capacity, "a job waits while a slot is free"
            assert served == sorted(served), "served out of the order they asked"
        for task in waiting.values():
            task.cancel()
        await asyncio.gather(*waiting.values(), return_exceptions=True)

    asyncio.run(scenario())


def test_a_slot_granted_to_a_job_cancelled_before_it_ran_is_given_back() -> None:
    """A stop that cancels a job just as its slot comes free leaves that slot to the next job."""

    async def scenario() -> None:
        slots = AdaptiveLimit(1)
        await slots.acquire()
        first = asyncio.ensure_future(slots.acquire())
        second = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        await slots.release()  # granted to `first`, which has not run yet
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.wait_for(second, 1)  # the slot went on to `second`
        assert slots.active == 1

    asyncio.run(scenario())


# One step of a burst: a job is given a freed slot for its next submit ("grant"), one of those
# sends its submit ("send"), a finished job asks to start its delivery ("deliver"), a waiting
# delivery is cancelled ("cancel").
burst = st.lists(st.sampled_from(["grant", "grant", "send", "deliver", "cancel"]), max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), burst, st.randoms(use_true_random=False))
def test_a_delivery_starts_only_after_the_submits_granted_before_it(
    bound: int, schedule: list[str], rng: Any
) -> None:
    """When many requests finish at once, every freed slot's next submit goes out before a result
    read or download that came after it starts, and no delivery waits for a submit granted later."""

    async def scenario() -> None:
        deliveries = Deliveries(bound)
        granted: list[str] = []  # granted, not yet sent, in grant order
        grants = 0
        started: list[int] = []  # deliveries in, by the grants counted when each asked
        waiting: dict[int, tuple[int, set[str], asyncio.Task[None]]] = {}
        inside = 0

        async def delivery(n: int) -> None:
            nonlocal inside
            async with deliveries:
                inside += 1
                started.append(n)
                await asyncio.sleep(3600)  # held until the scenario ends

        for n, step in enumerate(schedule):
            if step == "grant":
                key = f"k{grants}"
                grants += 1
                deliveries.granted(key)
                granted.append(key)
            elif step == "send" and granted:
                deliveries.sent(granted.pop(rng.randrange(len(granted))))
            elif step == "deliver":
                waiting[n] = (n, set(granted), asyncio.ensure_future(delivery(n)))
            elif step == "cancel" and waiting:
                victim = min(waiting)
                waiting[victim][2].cancel()
                del waiting[victim]
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            for m, (_, before, _task) in list(waiting.items()):
                # In once the submits granted before it asked are all sent and a slot is free;
                # never before; and never kept waiting by a submit granted after it asked.
                if before & set(granted):
                    assert m not in started, (
                        "a delivery started before a submit granted ahead of it"
                    )
                elif inside < bound:
                    assert m in started, "a delivery waits although its submits are all sent"
                if m in started:
                    del waiting[m]
            assert inside <= bound
        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    asyncio.run(scenario())
