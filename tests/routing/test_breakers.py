"""Circuit breakers (in memory and shared through the real Redis) and the routing strategies."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest

from meshgate.routing import strategies
from meshgate.routing.breaker import BreakerBoard, RedisBreakerBoard
from meshgate.routing.config import BreakerConfig

REDIS = "redis://127.0.0.1:6379/14"


def test_breaker_opens_after_consecutive_failures_and_probes_once_half_open() -> None:
    board = BreakerBoard()
    breaker = board.breaker("d", BreakerConfig(failures=3, cooldown=0.2))
    now = time.monotonic()
    breaker.failed(now)
    breaker.succeeded()  # a success in between resets the count
    breaker.failed(now)
    breaker.failed(now)
    assert breaker.allows(now)
    breaker.failed(now)
    assert not breaker.allows(now) and breaker.state == "open"
    later = now + 0.25
    assert breaker.allows(later)  # half-open: one probe may go
    breaker.begin(later)
    assert not breaker.allows(later)  # ... and only one
    breaker.failed(later)  # the probe failed: open again for a whole cooldown
    assert not breaker.allows(later + 0.1) and breaker.allows(later + 0.25)
    breaker.begin(later + 0.25)
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allows(later + 0.25)


async def test_breakers_are_shared_through_redis() -> None:
    name = f"dep-{uuid.uuid4().hex[:8]}"
    config = BreakerConfig(failures=2, cooldown=5)
    one, two = RedisBreakerBoard(REDIS), RedisBreakerBoard(REDIS)
    try:
        a, b = one.breaker(name, config), two.breaker(name, config)
        # One failure on each replica: two in a row for the deployment, so it opens for both.
        a.failed(time.monotonic())
        await _settle(one)
        b.failed(time.monotonic())
        await _settle(two)
        await one.refresh([a])
        now = time.monotonic()
        assert not a.allows(now) and not b.allows(now)
        # A success anywhere closes it everywhere (the others probe it at once).
        b.open_until = now - 1
        b.begin(now)
        b.succeeded()
        await _settle(two)
        await one.refresh([a])
        assert a.allows(time.monotonic())
    finally:
        await one.close()
        await two.close()


async def _settle(board: RedisBreakerBoard) -> None:
    await board._writes.wait()


@dataclass
class Item:
    name: str
    weight: int = 1
    latency: float | None = None
    unit_price: float = 0.0


def test_weighted_order_follows_the_weights() -> None:
    rng = random.Random(7)
    items = [Item("a", 80), Item("b", 20)]
    firsts = Counter(strategies.weighted_order(items, rng.random)[0].name for _ in range(10_000))
    assert 0.78 <= firsts["a"] / 10_000 <= 0.82
    assert all(len(strategies.weighted_order(items, rng.random)) == 2 for _ in range(10))


def test_a_zero_weight_deployment_only_serves_as_failover() -> None:
    items = [Item("canary", 0), Item("main", 5)]
    assert all(strategies.weighted_order(items)[0].name == "main" for _ in range(200))
    assert strategies.weighted_order(items)[-1].name == "canary"


def test_sticky_hashing_moves_few_users_when_a_deployment_is_added() -> None:
    two = [Item("a", 1), Item("b", 1)]
    three = [*two, Item("c", 1)]
    users = [f"user-{n}" for n in range(3000)]
    before = {u: strategies.sticky_order(two, u)[0].name for u in users}
    after = {u: strategies.sticky_order(three, u)[0].name for u in users}
    moved = [u for u in users if before[u] != after[u]]
    assert all(after[u] == "c" for u in moved)  # only to the new one, never between the old ones
    assert 0.28 <= len(moved) / len(users) <= 0.39  # about its share (a third)
    share = Counter(before.values())
    assert 0.45 <= share["a"] / len(users) <= 0.55


def test_sticky_hashing_respects_weights() -> None:
    items = [Item("a", 3), Item("b", 1)]
    share = Counter(strategies.sticky_order(items, f"u{n}")[0].name for n in range(4000))
    assert 0.72 <= share["a"] / 4000 <= 0.78


def test_latency_and_cost_orders() -> None:
    items = [Item("slow", latency=0.5, unit_price=1), Item("new"), Item("fast", latency=0.1, unit_price=9)]
    assert [i.name for i in strategies.latency_order(items)] == ["new", "fast", "slow"]
    assert [i.name for i in strategies.cost_order(items)] == ["new", "slow", "fast"]
    assert [i.name for i in strategies.order("ordered", items, None)] == ["slow", "new", "fast"]


@pytest.mark.parametrize("strategy", ["weighted", "ordered", "least-latency", "least-cost"])
def test_every_strategy_keeps_every_deployment(strategy: str) -> None:
    items = [Item("a", 2, 0.2, 3), Item("b", 1, 0.1, 2), Item("c", 0, None, 1)]
    assert sorted(i.name for i in strategies.order(strategy, items, "user")) == ["a", "b", "c"]
