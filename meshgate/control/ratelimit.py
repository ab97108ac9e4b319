"""Rate limits: requests and tokens per minute, over several scopes at once (key, team, model).

Windows are fixed calendar minutes, so a limit of N admits exactly N in any window, and every
replica agrees on which window it is. A request is admitted only if every scope has room; then all
scopes are charged together (all or nothing). Tokens are charged at the request's worst case up
front and corrected with the real usage when the call ends.

Two backends: `MemoryLimiter` (one process; each check runs without an await, so it is atomic on
the event loop) and `RedisLimiter` (several replicas; one Lua script checks and charges atomically).
The pipeline does not call them directly: `meshgate.control.admission` decides a call's rate limits
and budgets together (on Redis, the Lua below and the budget's in one script: one round trip).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from meshgate.control.deferred import DeferredWrites

WINDOW = 60  # seconds


@dataclass(frozen=True)
class Scope:
    name: str  # e.g. "key:key_ab12", "team:platform", "model:bench"
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True)
class ScopeState:
    scope: Scope
    requests: int  # after this request
    tokens: int


@dataclass(frozen=True)
class Decision:
    admitted: bool
    window: int
    reset_seconds: float
    states: tuple[ScopeState, ...]
    #: When refused: the scope and which limit ("requests" or "tokens").
    refused_scope: Scope | None = None
    refused_limit: str | None = None

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, from the tightest scope of each kind."""
        headers: dict[str, str] = {}
        reset = f"{math.ceil(self.reset_seconds)}s"
        requests = [(s.scope.rpm - s.requests, s.scope.rpm) for s in self.states if s.scope.rpm]
        if requests:
            remaining, limit = min(requests)
            headers["x-ratelimit-limit-requests"] = str(limit)
            headers["x-ratelimit-remaining-requests"] = str(max(remaining, 0))
            headers["x-ratelimit-reset-requests"] = reset
        tokens = [(s.scope.tpm - s.tokens, s.scope.tpm) for s in self.states if s.scope.tpm]
        if tokens:
            remaining, limit = min(tokens)
            headers["x-ratelimit-limit-tokens"] = str(limit)
            headers["x-ratelimit-remaining-tokens"] = str(max(remaining, 0))
            headers["x-ratelimit-reset-tokens"] = reset
        return headers


def current_window(now: float | None = None) -> tuple[int, float]:
    now = time.time() if now is None else now
    window = int(now // WINDOW)
    return window, (window + 1) * WINDOW - now


class RateLimiter(ABC):
    @abstractmethod
    async def acquire(self, scopes: list[Scope], tokens: int) -> Decision:
        """Admit one request costing up to `tokens`, or refuse without charging anything."""

    @abstractmethod
    async def adjust(self, scopes: list[Scope], window: int, delta: int) -> None:
        """Correct the token charge of an admitted request (`delta` may be negative). It may land
        a moment later (Redis): corrections only give back, so limits stay on the strict side."""

    async def flush(self) -> None:
        """Wait until every correction made so far counts."""
        return None

    async def close(self) -> None:
        return None


class MemoryLimiter(RateLimiter):
    def __init__(self) -> None:
        self._window = -1
        self._requests: dict[str, int] = {}
        self._tokens: dict[str, int] = {}

    def _roll(self, window: int) -> None:
        if window != self._window:
            self._window = window
            self._requests.clear()
            self._tokens.clear()

    async def acquire(self, scopes: list[Scope], tokens: int) -> Decision:
        window, reset = current_window()
        self._roll(window)
        for scope in scopes:
            if scope.rpm is not None and self._requests.get(scope.name, 0) + 1 > scope.rpm:
                return Decision(False, window, reset, (), scope, "requests")
            if scope.tpm is not None and self._tokens.get(scope.name, 0) + tokens > scope.tpm:
                return Decision(False, window, reset, (), scope, "tokens")
        states = []
        for scope in scopes:
            self._requests[scope.name] = self._requests.get(scope.name, 0) + 1
            self._tokens[scope.name] = self._tokens.get(scope.name, 0) + tokens
            states.append(ScopeState(scope, self._requests[scope.name], self._tokens[scope.name]))
        return Decision(True, window, reset, tuple(states))

    async def adjust(self, scopes: list[Scope], window: int, delta: int) -> None:
        if window != self._window:
            return  # that window is over; its counts no longer matter
        for scope in scopes:
            self._tokens[scope.name] = max(self._tokens.get(scope.name, 0) + delta, 0)


# The Lua of the rate limits, as functions that meshgate/control/admission.py also runs inside its
# script (rate limits and budgets in one round trip). Scope i has its request counter at KEYS[k+2i-1]
# and its token counter at KEYS[k+2i]; ARGV[a+1] is the counters' ttl, ARGV[a+2] the request's
# worst-case tokens, ARGV[a+1+2i] and ARGV[a+2+2i] scope i's rpm and tpm (-1 = no limit).
#   rl_check: the first refusal, {0, scope index, 1=requests|2=tokens}, or false; charges nothing.
#   rl_charge: charges every scope; appends each scope's requests and tokens (after it) to `out`.
#   rl_correct: adds ARGV[a+1] to the n token counters at KEYS[k+i]. A counter Redis lost is left
#     alone (recreated below zero it would admit more than the limit for the rest of its window),
#     and none goes below zero.
LUA = """
local function rl_check(k, a, n)
  local cost = tonumber(ARGV[a + 2])
  for i = 1, n do
    local rpm = tonumber(ARGV[a + 1 + 2 * i])
    local tpm = tonumber(ARGV[a + 2 + 2 * i])
    if rpm >= 0 and tonumber(redis.call('GET', KEYS[k + 2 * i - 1]) or '0') + 1 > rpm then return {0, i, 1} end
    if tpm >= 0 and tonumber(redis.call('GET', KEYS[k + 2 * i]) or '0') + cost > tpm then return {0, i, 2} end
  end
  return false
end
local function rl_charge(k, a, n, out)
  local ttl = tonumber(ARGV[a + 1])
  local cost = tonumber(ARGV[a + 2])
  for i = 1, n do
    local r = redis.call('INCR', KEYS[k + 2 * i - 1])
    local t = redis.call('INCRBY', KEYS[k + 2 * i], cost)
    redis.call('EXPIRE', KEYS[k + 2 * i - 1], ttl)
    redis.call('EXPIRE', KEYS[k + 2 * i], ttl)
    out[#out + 1] = r
    out[#out + 1] = t
  end
  return out
end
local function rl_correct(k, a, n)
  for i = 1, n do
    if redis.call('EXISTS', KEYS[k + i]) == 1 then
      if redis.call('INCRBY', KEYS[k + i], ARGV[a + 1]) < 0 then redis.call('SET', KEYS[k + i], 0, 'KEEPTTL') end
    end
  end
end
"""

# KEYS: for each scope, its request counter then its token counter. ARGV: ttl, tokens, then for
# each scope its rpm and tpm. Returns {1, r1, t1, r2, t2, ...} when admitted, rl_check's refusal
# when refused.
_ACQUIRE = (
    LUA
    + """
local n = #KEYS / 2
local refused = rl_check(0, 0, n)
if refused then return refused end
return rl_charge(0, 0, n, {1})
"""
)

# KEYS: token counters; ARGV: delta.
_CORRECT = (
    LUA
    + """
rl_correct(0, 0, #KEYS)
return 1
"""
)


class RedisLimiter(RateLimiter):
    def __init__(self, url: str, prefix: str = "meshgate:rl") -> None:
        import redis.asyncio as redis

        self.url = url
        self._redis: Any = redis.from_url(url)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._correct = self._redis.register_script(_CORRECT)
        self._corrections = DeferredWrites(self._redis, "rate limit")
        self.prefix = prefix

    def _keys(self, scopes: list[Scope], window: int) -> list[str]:
        keys = []
        for scope in scopes:
            keys += [f"{self.prefix}:{window}:{scope.name}:r", f"{self.prefix}:{window}:{scope.name}:t"]
        return keys

    def script_input(self, scopes: list[Scope], tokens: int) -> tuple[int, float, list[str], list[int]]:
        """The current window, the seconds left in it, and the KEYS and ARGV of `rl_check` and
        `rl_charge` (see LUA) for one request."""
        window, reset = current_window()
        args: list[int] = [WINDOW * 2, tokens]
        for scope in scopes:
            args += [scope.rpm if scope.rpm is not None else -1, scope.tpm if scope.tpm is not None else -1]
        return window, reset, self._keys(scopes, window), args

    @staticmethod
    def decision(scopes: list[Scope], window: int, reset: float, result: list[Any]) -> Decision:
        """A Decision from the script's answer: rl_check's refusal, or {1, r1, t1, ...}."""
        if int(result[0]) == 0:
            refused = scopes[int(result[1]) - 1]
            return Decision(False, window, reset, (), refused, "requests" if int(result[2]) == 1 else "tokens")
        states = tuple(
            ScopeState(scope, int(result[1 + 2 * i]), int(result[2 + 2 * i])) for i, scope in enumerate(scopes)
        )
        return Decision(True, window, reset, states)

    def correction_keys(self, scopes: list[Scope], window: int, delta: int) -> list[str] | None:
        """The token counters a correction of `delta` applies to, or None when there is nothing to
        correct or that window is over (its keys may be gone)."""
        if delta == 0 or window != current_window()[0]:
            return None
        return self._keys(scopes, window)[1::2]

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def acquire(self, scopes: list[Scope], tokens: int) -> Decision:
        window, reset, keys, args = self.script_input(scopes, tokens)
        return self.decision(scopes, window, reset, await self._acquire(keys=keys, args=args))

    async def adjust(self, scopes: list[Scope], window: int, delta: int) -> None:
        keys = self.correction_keys(scopes, window, delta)
        if keys is None:
            return

        def commands(pipe: Any) -> Awaitable[Any]:
            return self._correct(keys=keys, args=[delta], client=pipe)

        if delta > 0:
            await self._corrections.now(commands)  # it raises a count: deferred, it would loosen
        else:
            self._corrections.add(commands)  # after the response: see control/deferred.py

    async def flush(self) -> None:
        await self._corrections.flush()

    async def close(self) -> None:
        await self._corrections.flush()
        await self._redis.aclose()
