"""The queued lead (renderer/runner/lead.py): sized from the completions seen and the CPU a round
takes, never below its floor nor above one queued request per slot."""

from __future__ import annotations

import asyncio
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from renderer.runner.config import AccountLimit, RunConfig
from renderer.runner.lead import (
    FirstRound,
    Lead,
    lead_cap,
    lead_for,
    provider_capacity,
    run_lead,
)


class Clock:
    """A CPU clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rounds(lead: Lead, clock: Clock, times: list[float], cpu: float) -> None:
    """Completions seen at `times`, each round of them taking `cpu` seconds of CPU."""
    for n, t in enumerate(times):
        if n % lead.round == 0:
            clock.now += cpu
        lead.freed(t)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 300),
    st.lists(st.floats(0, 0.5), max_size=400),
    st.floats(0, 2),
    st.booleans(),
)
def test_the_lead_stays_between_its_floor_and_one_queued_request_per_slot(
    limit: int, gaps: list[float], cpu: float, ramp: bool
) -> None:
    """Whatever the completions' timing and the client's load: at least max(2, ⌈S/8⌉) requests
    and at most max(2, S) wait in the provider's queue (the bound a stop or a kill leaves)."""
    clock = Clock()
    lead = Lead(limit, clock)
    assert lead.value == lead_for(limit) == max(2, math.ceil(limit / 8))
    if ramp:
        lead.ramped()
        assert lead.value == lead_cap(limit) == max(2, limit)
    now = 0.0
    for gap in gaps:
        now += gap
        clock.now += gap * cpu
        lead.freed(now)
        assert lead_for(limit) <= lead.value <= lead_cap(limit)


def test_completions_that_come_together_keep_one_queued_request_per_slot() -> None:
    """256 requests that finish together each round, the client busy 0.7 s working through
    each round: after the first round the lead is 256, so every freed slot starts a queued one."""
    clock = Clock()
    lead = Lead(256, clock)
    lead.ramped()
    for r in range(1, 6):
        # Seen one by one over 0.3 s as the client works through them.
        rounds(lead, clock, [r + 0.3 * i / 256 for i in range(256)], 0.7)
        assert lead.value == 256


def test_completions_spread_out_keep_the_lead_near_its_floor() -> None:
    """40 slots of ~5 s requests finishing spread out (one every 0.125 s), the client needing
    3 ms a job: after the first round, the lead is its floor and the one it sees within a
    round's CPU (0.12 s), not the whole limit."""
    clock = Clock()
    lead = Lead(40, clock)
    lead.ramped()
    assert lead.value == 40
    rounds(lead, clock, [5 + 0.125 * i for i in range(200)], 40 * 0.003)
    assert lead.value == lead_for(40) + 1 == 6


def test_the_lead_follows_a_change_within_a_round() -> None:
    """Bursts, then spread-out completions: the lead falls back once a whole round has come
    spread out; bursts again: it is back at the cap within the round that has one."""
    clock = Clock()
    lead = Lead(64, clock)
    lead.ramped()
    rounds(lead, clock, [1 + 0.01 * i / 64 for i in range(64)], 0.2)
    assert lead.value == 64
    rounds(lead, clock, [2 + 0.5 * i for i in range(128)], 0.2)
    assert lead.value == lead_for(64) + 1
    rounds(lead, clock, [100 + 0.01 * i / 64 for i in range(64)], 0.2)
    assert lead.value == 64


def test_what_the_run_admits_is_its_accounts_leads_or_exactly_a_cap_of_the_users_own() -> None:
    """One account or several: the run admits their leads at their most; a --concurrency below the
    accounts' sum (no provider holds it) admits no lead at all."""
    assert run_lead(RunConfig(concurrency=64)) == 64
    assert provider_capacity(RunConfig(concurrency=64)) == 128
    accounts = (AccountLimit("a", 8), AccountLimit("b", 4))
    assert run_lead(RunConfig(concurrency=12, accounts=accounts)) == 8 + 4
    assert run_lead(RunConfig(concurrency=10, accounts=accounts)) == 0
    assert provider_capacity(RunConfig(concurrency=10, accounts=accounts)) == 10


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 12),
    st.lists(
        st.one_of(
            st.tuples(st.just("took"), st.integers(0, 20)),
            st.tuples(st.just("granted"), st.integers(0, 20)),
            st.tuples(st.just("answered"), st.integers(0, 20)),
            st.tuples(st.just("dry"), st.just(0)),
        ),
        max_size=60,
    ),
)
def test_the_first_round_is_over_once_its_grants_are_answered(
    capacity: int, steps: list[tuple[str, int]]
) -> None:
    """Follows wait for the first round while a submit granted in it has no answer, until the
    task pool has handed out as many jobs as there are slots (or run dry): a follow that starts
    then waits, and goes on as soon as the round's last answer comes; once over it stays over."""

    async def scenario() -> None:
        first = FirstRound(lambda: capacity)
        first.LONGEST = 60.0  # (this property is about the rule; the bound has its own test)
        assert first.over.is_set()  # not armed: nothing waits
        first.arm()
        handed, dry, open_, over = 0, False, set(), False
        for op, key in steps:
            if op == "took":
                first.took()
                handed += 1
            elif op == "granted":
                first.granted(f"k{key}")
                if not over:
                    open_.add(key)
            elif op == "answered":
                first.answered(f"k{key}")
                open_.discard(key)
                over = over or (not open_ and (dry or handed >= capacity))
            else:
                first.ran_dry()
                dry = True
                over = over or not open_
            assert first.over.is_set() == over
        if over or (not open_ and (dry or handed >= capacity)):
            assert await first.wait() == 0.0  # (a follow looks at the rule itself)
            assert first.over.is_set()
            return
        follow = asyncio.ensure_future(first.wait())
        await asyncio.sleep(0.01)
        assert not follow.done()  # a follow waits while the round is not over
        first.ran_dry()
        for key in sorted(open_):
            assert not follow.done()
            first.answered(f"k{key}")
        assert 0.0 < await asyncio.wait_for(follow, 1.0) < 1.0  # at its last answer

    asyncio.run(scenario())


def test_nothing_waits_for_the_first_round_past_its_bound() -> None:
    """A first round that never ends by its rule (a grant never answered) holds follows back at
    most FirstRound.LONGEST: a follow then goes on."""

    async def scenario() -> float:
        first = FirstRound(lambda: 4)
        first.LONGEST = 0.1
        first.arm()
        first.granted("k")
        return await asyncio.wait_for(first.wait(), 5.0)

    assert 0.05 <= asyncio.run(scenario()) < 2.0


def test_the_first_submit_goes_out_alone_until_it_is_answered() -> None:
    """The feed's wait after its first job (FirstRound.alone) ends at the first answer, or after
    ALONE when none comes; a round that was never armed (a paced run) does not wait at all."""

    async def scenario() -> tuple[bool, bool, float, float]:
        first = FirstRound(lambda: 4)
        loop = asyncio.get_running_loop()
        unarmed = loop.time()
        await first.alone()
        unarmed = loop.time() - unarmed
        first.ALONE = 5.0
        first.arm()
        waiting = asyncio.ensure_future(first.alone())
        await asyncio.sleep(0.02)
        held = not waiting.done()
        first.answered("k")
        await asyncio.wait_for(waiting, 1.0)  # at the answer, not after ALONE
        first.ALONE = 0.05
        first.arm()
        started = loop.time()
        await asyncio.wait_for(first.alone(), 5.0)
        return held, first.first.is_set(), unarmed, loop.time() - started

    held, answered, unarmed, bounded = asyncio.run(scenario())
    assert held and not answered and unarmed < 0.01 and 0.04 <= bounded < 2.0
