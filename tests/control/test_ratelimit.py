"""Rate limiter contract: exact under concurrency, all-or-nothing across scopes, on memory and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from meshgate.control.ratelimit import MemoryLimiter, RateLimiter, RedisLimiter, Scope, current_window

REDIS_URL = "redis://127.0.0.1:6379/0"


async def fresh_window() -> None:
    """Wait out the end of a minute, so that a test's requests all fall in one window."""
    _, left = current_window()
    if left < 8:
        await asyncio.sleep(left + 0.05)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    redis_limiter = RedisLimiter(REDIS_URL, prefix=f"test:{uuid.uuid4().hex}")
    assert await redis_limiter.ping(), "Redis at 127.0.0.1:6379 is not reachable"
    yield redis_limiter
    await redis_limiter.close()


async def test_exact_rpm_under_concurrency(limiter: RateLimiter) -> None:
    await fresh_window()
    scopes = [Scope("key:a", rpm=7, tpm=None)]
    decisions = await asyncio.gather(*(limiter.acquire(scopes, 10) for _ in range(50)))
    assert sum(d.admitted for d in decisions) == 7
    refused = [d for d in decisions if not d.admitted]
    assert all(d.refused_limit == "requests" and d.refused_scope == scopes[0] for d in refused)


async def test_all_or_nothing_across_scopes(limiter: RateLimiter) -> None:
    await fresh_window()
    key_a = Scope("key:a", rpm=3, tpm=None)
    key_b = Scope("key:b", rpm=10, tpm=None)
    team = Scope("team:t", rpm=4, tpm=None)
    admitted_a = sum([(await limiter.acquire([key_a, team], 1)).admitted for _ in range(5)])
    assert admitted_a == 3
    admitted_b = sum([(await limiter.acquire([key_b, team], 1)).admitted for _ in range(5)])
    assert admitted_b == 1  # the team had one request left
    # key_b was not charged for the requests the team refused
    state = await limiter.acquire([key_b], 1)
    assert state.admitted and state.states[0].requests == 2


async def test_tokens_reserved_then_corrected(limiter: RateLimiter) -> None:
    await fresh_window()
    scope = Scope("key:t", rpm=None, tpm=1000)
    first = await limiter.acquire([scope], 600)
    assert first.admitted and first.headers()["x-ratelimit-remaining-tokens"] == "400"
    refused = await limiter.acquire([scope], 600)
    assert not refused.admitted and refused.refused_limit == "tokens"
    await limiter.adjust([scope], first.window, 50 - 600)  # it really used 50
    await limiter.flush()  # Redis: corrections go out after the call, batched
    second = await limiter.acquire([scope], 600)
    assert second.admitted and second.headers()["x-ratelimit-remaining-tokens"] == "350"


async def test_headers_name_the_tightest_scope(limiter: RateLimiter) -> None:
    await fresh_window()
    decision = await limiter.acquire([Scope("key:h", rpm=10, tpm=None), Scope("team:h", rpm=3, tpm=None)], 1)
    headers = decision.headers()
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-reset-requests"].endswith("s")


async def test_two_redis_replicas_share_one_limit() -> None:
    await fresh_window()
    prefix = f"test:{uuid.uuid4().hex}"
    one, two = RedisLimiter(REDIS_URL, prefix=prefix), RedisLimiter(REDIS_URL, prefix=prefix)
    try:
        scopes = [Scope("key:shared", rpm=11, tpm=None)]
        decisions = await asyncio.gather(*[(one if i % 2 else two).acquire(scopes, 1) for i in range(40)])
        assert sum(d.admitted for d in decisions) == 11
    finally:
        await one.close()
        await two.close()


def test_window_arithmetic() -> None:
    window, left = current_window(120.5)
    assert window == 2 and abs(left - 59.5) < 1e-9
    assert 0 < current_window(time.time())[1] <= 60


async def test_redis_corrections_land_on_their_own_and_only_in_their_window() -> None:
    await fresh_window()
    limiter = RedisLimiter(REDIS_URL, prefix=f"test:{uuid.uuid4().hex}")
    try:
        scope = Scope("key:later", rpm=None, tpm=1000)
        first = await limiter.acquire([scope], 600)
        for _ in range(3):  # three calls' corrections, sent together
            await limiter.adjust([scope], first.window, -100)
        for _ in range(100):  # no flush: the background send delivers them
            probe = await limiter.acquire([scope], 0)
            if probe.states[0].tokens == 300:
                break
            await asyncio.sleep(0.01)
        assert probe.states[0].tokens == 300
        await limiter.adjust([scope], first.window - 1, -100)  # a window that is over: left alone
        await limiter.flush()
        assert await limiter._redis.exists(f"{limiter.prefix}:{first.window - 1}:key:later:t") == 0
    finally:
        await limiter.close()
