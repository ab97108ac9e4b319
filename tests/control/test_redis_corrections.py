"""Redis corrections that land on a key Redis lost (restart, eviction, failover) or seeded again.

docs/operations.md and control/deferred.py promise that until a correction lands the limits are a
little stricter, never looser, and that a budget lost by Redis is seeded again: no correction may
leave a limit looser than configured.
"""

from __future__ import annotations

import uuid

from meshgate.control.budget import BudgetRefusal, BudgetScope, RedisLedger, Reservation, to_nano
from meshgate.control.ratelimit import RedisLimiter, Scope
from tests.control.test_budget import REDIS_URL, Seeds
from tests.control.test_ratelimit import fresh_window


async def test_a_correction_on_a_lost_counter_does_not_raise_the_limit() -> None:
    await fresh_window()
    limiter = RedisLimiter(REDIS_URL, prefix=f"test:{uuid.uuid4().hex}")
    try:
        scope = Scope("key:lost", rpm=None, tpm=1000)
        first = await limiter.acquire([scope], 900)
        assert first.admitted
        await limiter._redis.delete(*limiter._keys([scope], first.window))  # Redis lost its data
        await limiter.adjust([scope], first.window, 100 - 900)  # the call used 100 of its 900
        await limiter.flush()
        # Redis knows of no use in this window now: it may admit the limit once, never more.
        second = await limiter.acquire([scope], 1000)
        assert second.admitted and second.states[0].tokens == 1000  # not -800 + 1000
        assert not (await limiter.acquire([scope], 1)).admitted
    finally:
        await limiter.close()


async def test_a_settlement_after_a_reseed_does_not_loosen_the_budget() -> None:
    seeds = Seeds(spent=0.0)
    ledger = RedisLedger(seeds, REDIS_URL, prefix=f"test:budget:{uuid.uuid4().hex}")
    try:
        scope = BudgetScope("key", f"k-{uuid.uuid4().hex}", 1.0, "day")
        early = await ledger.reserve([scope], to_nano(0.9))  # a long call, in flight
        assert isinstance(early, Reservation)
        await ledger._redis.delete(*early.slots)  # Redis lost its data
        # Another call: the slot is new again, seeded from recorded usage (the long call is not in it yet).
        assert isinstance(await ledger.reserve([scope], to_nano(0.05)), Reservation)
        await ledger.settle(early, to_nano(0.9))  # the long call really cost its worst case
        await ledger.flush()
        # Spent 0.9, 0.05 still reserved: 0.2 more would exceed 1.0.
        outcome = await ledger.reserve([scope], to_nano(0.2))
        fields = await ledger._redis.hgetall(early.slots[0])
        assert isinstance(outcome, BudgetRefusal), f"admitted over the budget: {fields}"
    finally:
        await ledger.close()


async def test_corrections_that_raise_a_count_land_before_the_call_returns() -> None:
    await fresh_window()
    limiter = RedisLimiter(REDIS_URL, prefix=f"test:{uuid.uuid4().hex}")
    ledger = RedisLedger(Seeds(), REDIS_URL, prefix=f"test:budget:{uuid.uuid4().hex}")
    try:
        scope = Scope("key:over", rpm=None, tpm=1000)
        first = await limiter.acquire([scope], 100)
        await limiter.adjust([scope], first.window, 50)  # used 150 of an estimated 100
        probe = await limiter.acquire([scope], 0)  # no flush: it is already counted
        assert probe.states[0].tokens == 150

        budget = BudgetScope("key", f"k-{uuid.uuid4().hex}", 1.0, "day")
        reservation = await ledger.reserve([budget], to_nano(0.1))
        assert isinstance(reservation, Reservation)
        await ledger.settle(reservation, to_nano(0.3))  # cost more than reserved
        refused = await ledger.reserve([budget], to_nano(0.75))  # no flush: 0.3 + 0.75 > 1.0
        assert isinstance(refused, BudgetRefusal) and abs(refused.spent_usd - 0.3) < 1e-9
    finally:
        await limiter.close()
        await ledger.close()
