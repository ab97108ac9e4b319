"""Budgets: atomic worst-case reservations, settlement, seeding from recorded spend; memory and Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from meshgate.control.budget import (
    NANO,
    BudgetLedger,
    BudgetRefusal,
    BudgetScope,
    MemoryLedger,
    RedisLedger,
    Reservation,
    period_bounds,
    to_nano,
)
from meshgate.control.records import Limits
from tests.conftest import AppClient
from tests.control.test_auth import HELLO, mesh, new_key, post  # noqa: F401 - the module fixture
from tests.test_api_errors import assert_openai_error

REDIS_URL = "redis://127.0.0.1:6379/0"


class Seeds:
    def __init__(self, spent: float = 0.0) -> None:
        self.spent = spent
        self.calls = 0

    async def __call__(self, scope: BudgetScope, since: float) -> float:
        self.calls += 1
        await asyncio.sleep(0.01)
        return self.spent


@pytest.fixture(params=["memory", "redis"])
async def make_ledger(request: pytest.FixtureRequest) -> AsyncIterator:
    made: list[BudgetLedger] = []
    prefix = f"test:budget:{uuid.uuid4().hex}"

    def make(seeds: Seeds) -> BudgetLedger:
        ledger = MemoryLedger(seeds) if request.param == "memory" else RedisLedger(seeds, REDIS_URL, prefix=prefix)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        await ledger.close()


def test_periods() -> None:
    moment = datetime(2026, 11, 22, 15, 30, tzinfo=UTC)  # a Sunday
    assert period_bounds("day", moment)[0] == "2026-11-22"
    label, start, end = period_bounds("week", moment)
    assert label == "2026-W47" and datetime.fromtimestamp(start, UTC).weekday() == 0 and end - start == 7 * 86400
    label, start, end = period_bounds("month", moment)
    assert label == "2026-11" and datetime.fromtimestamp(end, UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    assert period_bounds("month", datetime(2026, 12, 31, tzinfo=UTC))[0] == "2026-12"


async def test_concurrent_reservations_never_overshoot(make_ledger) -> None:
    seeds = Seeds(spent=0.25)
    ledger = make_ledger(seeds)
    scope = BudgetScope("key", f"k-{uuid.uuid4().hex}", 1.0, "day")
    outcomes = await asyncio.gather(*(ledger.reserve([scope], to_nano(0.1)) for _ in range(20)))
    admitted = [o for o in outcomes if isinstance(o, Reservation)]
    assert len(admitted) == 7  # 0.25 already spent + 7 x 0.1 = 0.95 <= 1.0
    assert all(isinstance(o, BudgetRefusal) and o.scope == scope for o in outcomes if o not in admitted)
    assert seeds.calls >= 1


async def test_settle_releases_the_unused_part(make_ledger) -> None:
    ledger = make_ledger(Seeds())
    scope = BudgetScope("team", f"t-{uuid.uuid4().hex}", 1.0, "month")
    first = await ledger.reserve([scope], to_nano(0.9))
    assert isinstance(first, Reservation)
    assert isinstance(await ledger.reserve([scope], to_nano(0.2)), BudgetRefusal)
    await ledger.settle(first, to_nano(0.1))  # it really cost 0.1
    await ledger.flush()  # Redis: settlements go out after the call, batched
    second = await ledger.reserve([scope], to_nano(0.85))
    assert isinstance(second, Reservation)
    refusal = await ledger.reserve([scope], to_nano(0.1))
    assert isinstance(refusal, BudgetRefusal) and abs(refusal.spent_usd - 0.1) < 1e-9


async def test_redis_reads_the_seed_once_and_again_after_losing_its_data() -> None:
    seeds = Seeds(spent=0.3)
    ledger = RedisLedger(seeds, REDIS_URL, prefix=f"test:budget:{uuid.uuid4().hex}")
    try:
        scope = BudgetScope("key", f"k-{uuid.uuid4().hex}", 1.0, "day")
        first = await ledger.reserve([scope], to_nano(0.1))
        assert isinstance(first, Reservation) and seeds.calls == 1
        for _ in range(3):
            assert isinstance(await ledger.reserve([scope], to_nano(0.1)), Reservation)
        assert seeds.calls == 1  # the slot is known to Redis: no more database reads
        await ledger._redis.delete(*first.slots)  # Redis restarted without its data
        await ledger.settle(first, to_nano(0.05))
        await ledger.flush()
        assert await ledger._redis.exists(*first.slots) == 0  # not recreated without its seed
        refused = await ledger.reserve([scope], to_nano(0.8))  # seeded again: 0.3 + 0.8 > 1.0
        assert isinstance(refused, BudgetRefusal) and seeds.calls == 2
        assert abs(refused.spent_usd - 0.3) < 1e-9
    finally:
        await ledger.close()


async def test_all_or_nothing_across_key_and_team(make_ledger) -> None:
    ledger = make_ledger(Seeds())
    key = BudgetScope("key", f"k-{uuid.uuid4().hex}", 10.0, "day")
    team = BudgetScope("team", f"t-{uuid.uuid4().hex}", 0.5, "day")
    assert isinstance(await ledger.reserve([key, team], to_nano(0.4)), Reservation)
    refused = await ledger.reserve([key, team], to_nano(0.4))
    assert isinstance(refused, BudgetRefusal) and refused.scope == team
    other_team = BudgetScope("team", f"t-{uuid.uuid4().hex}", 5.0, "day")
    # The key was not charged for the refused reservation: 10 - 0.4 left.
    assert isinstance(await ledger.reserve([key, other_team], to_nano(4.0)), Reservation)


async def test_a_budget_hammered_by_concurrent_requests(mesh: AppClient) -> None:  # noqa: F811
    # bench costs $2.5 / $10 per million tokens; a call's worst case here is about $0.0005.
    key = await new_key(mesh, team="frugal", limits=Limits(budget_usd=0.002, budget_period="day"))
    body = {**HELLO, "max_tokens": 40}
    responses = await asyncio.gather(*(post(mesh, key, body) for _ in range(30)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert ok and refused and len(ok) + len(refused) == 30
    error = assert_openai_error(refused[0], 429, code="budget_exceeded")
    assert error["type"] == "insufficient_quota"
    assert "The key `key_" in error["message"]
    assert "budget" in error["message"] and int(refused[0].headers["retry-after"]) >= 1
    assert mesh.runtime.usage is not None and mesh.runtime.db is not None
    await mesh.runtime.usage.flush()
    spent = await mesh.runtime.db.fetchone(
        "SELECT SUM(cost_usd) AS usd FROM usage WHERE team = ? AND status = 200", ("frugal",)
    )
    assert spent is not None and 0 < spent["usd"] <= 0.002


async def test_spend_survives_a_restart_of_the_ledger(mesh: AppClient) -> None:  # noqa: F811
    """A new process starts each budget from the usage already recorded."""
    key = await new_key(mesh, team="persist", limits=Limits(budget_usd=1.0, budget_period="month"))
    assert (await post(mesh, key)).status_code == 200
    assert mesh.runtime.usage is not None
    await mesh.runtime.usage.flush()
    fresh = MemoryLedger(mesh.runtime._spent_since)
    principal = mesh.runtime.policy.authenticate({"authorization": f"Bearer {key}"})
    from meshgate.control.steps import budget_scopes

    outcome = await fresh.reserve(budget_scopes(principal), 0)
    assert isinstance(outcome, Reservation)
    assert fresh.spent(outcome.slots[0]) > 0
    assert fresh.spent(outcome.slots[0]) / NANO < 0.001


async def test_free_models_ignore_budgets(mesh: AppClient) -> None:  # noqa: F811
    key = await new_key(mesh, team="zero", limits=Limits(budget_usd=0.0, budget_period="day"))
    assert_openai_error(await post(mesh, key), 429, code="budget_exceeded")  # bench is priced
    free = await post(mesh, key, {"model": "remote-embed", "input": "x"}, "/v1/embeddings")  # no price
    assert free.status_code == 200
