"""Admission: a call's rate limits and budgets, decided together.

The pipeline keeps its two steps, "rate-limit" and "budget" (control/steps.py), with their names,
order, errors and headers: audit records list the steps that ran, and a refusal names the one that
refused. But they share one `Admission`, built from the process's rate limiter and budget ledger,
and the first of them that has something to check decides for both:

- `Admission` (one process, in memory): the limiter, then the ledger, exactly as the two steps did
  one after the other. Nothing there waits on the network, so there is no round trip to save.
- `RedisAdmission` (replicas sharing Redis): one Lua script, one EVALSHA, checks and charges the
  rate-limit windows and reserves the budgets atomically. Before it, a call under both cost two
  round trips before going upstream (the rate-limit script, then the budget's).

The script does what the two separate scripts did, in their order, so every outcome is one that
today's two steps could give (the script runs atomically: no other call comes in between):

1. every rate-limit scope is checked (`rl_check`); a refusal charges nothing and names the scope
   and the limit ("requests" or "tokens");
2. a budget slot that Redis does not hold (a new period, or a Redis that lost its data) makes the
   script answer "seeds needed" and charge nothing: the seeds, the usage already recorded in the
   database (the ledger's `spent_since`), are read and the script runs again. This second round
   trip happens once per budget per period;
3. the rate-limit windows are charged (`rl_charge`);
4. the budgets are checked and reserved, all or nothing (`bg_reserve`). A budget refusal leaves
   the rate-limit charge in place, as when the budget step refused after the rate-limit step had
   charged: the request counts against RPM, and its tokens are given back after the call (a
   refused call used none), which also keeps the rate-limit headers of such a refusal as they were.

After the call, the token correction and the budget settlement are one script call too (the
same script: `rl_correct` then `bg_settle`). Why it may leave the response's path: both only
lower counts this same call raised before it went upstream (the worst case charged up front is at
least what it used), and counters are sums, so applying the correction later, batched with other
calls' corrections in one transaction (control/deferred.py, on the limiter's connection), only
keeps the limits and budgets stricter meanwhile, never looser. A correction that raises a count
(a call that used more than its worst case) is sent at once, before the response, in one round
trip. Lost keys and re-seeded budgets are handled inside the scripts, as before.

Redis down: the admission script raises and the call fails in the step that asked, as before;
a failed correction is logged and the counts stay on the strict side until their window or
period ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from meshgate.control import budget as budget_lua
from meshgate.control import ratelimit as ratelimit_lua
from meshgate.control.budget import BudgetLedger, BudgetRefusal, BudgetScope, RedisLedger, Reservation
from meshgate.control.ratelimit import Decision, RateLimiter, RedisLimiter, Scope

log = logging.getLogger("meshgate.control")


@dataclass(frozen=True)
class Verdict:
    #: None when the call falls under no rate limit.
    decision: Decision | None = None
    #: None when the call falls under no budget, or the rate limits refused it (budgets untouched).
    budget: Reservation | BudgetRefusal | None = None


class Admission:
    """The limiter, then the ledger: for one process, where neither costs a round trip."""

    def __init__(self, limiter: RateLimiter, ledger: BudgetLedger) -> None:
        self.limiter = limiter
        self.ledger = ledger

    @staticmethod
    def of(limiter: RateLimiter, ledger: BudgetLedger) -> Admission:
        """One script for both when both live in the same Redis; else one after the other."""
        if isinstance(limiter, RedisLimiter) and isinstance(ledger, RedisLedger) and limiter.url == ledger.url:
            return RedisAdmission(limiter, ledger)
        return Admission(limiter, ledger)

    async def admit(self, scopes: list[Scope], tokens: int, budgets: list[BudgetScope], amount: int) -> Verdict:
        """Charge `scopes` one request of up to `tokens`, then reserve `amount` nano-dollars in every
        budget of `budgets`. A rate-limit refusal charges nothing; a budget refusal reserves nothing
        (the rate-limit charge stays: see the module's docstring)."""
        decision = await self.limiter.acquire(scopes, tokens) if scopes else None
        if decision is not None and not decision.admitted:
            return Verdict(decision)
        return Verdict(decision, await self.ledger.reserve(budgets, amount) if budgets else None)

    async def correct(
        self, scopes: list[Scope], decision: Decision | None, delta: int, reservation: Reservation | None, actual: int
    ) -> None:
        """After the call: correct the token charge by `delta` and replace the reservation by the
        `actual` cost. Never raises: a correction that fails leaves the counts on the strict side."""
        if decision is not None and decision.admitted:
            try:
                await self.limiter.adjust(scopes, decision.window, delta)
            except Exception as exc:  # over-counted until the window ends
                log.warning("rate limit: correcting the token charge failed (%s)", type(exc).__name__)
        if reservation is not None:
            try:
                await self.ledger.settle(reservation, actual)
            except Exception as exc:  # the reservation stays counted: errs on the side of the budget
                log.warning("budget: settling failed (%s)", type(exc).__name__)

    async def flush(self) -> None:
        """Wait until every correction made so far counts."""
        await self.limiter.flush()
        await self.ledger.flush()


# One script for both uses, so that the script a correction runs is the one every admission has
# just run: loaded in Redis (after a Redis restart the next admission loads it again), corrections
# can go out in a pipeline as plain EVALSHAs, without redis-py's SCRIPT EXISTS round trip first.
#
# ARGV[1] = "admit". KEYS: each rate-limit scope's request and token counters, then each budget
# slot. ARGV[2]: the number of rate-limit scopes; then the limiter's arguments
# (RedisLimiter.script_input), then the ledger's (RedisLedger.script_input). Answers rl_check's
# refusal {0, scope, kind}; {2, slot} when a slot needs its seed (nothing charged); else
# {1, r1, t1, ..., rn, tn, <bg_reserve's answer>}.
#
# ARGV[1] = "correct". KEYS: the token counters to correct, then the reservation's slots. ARGV[2]:
# the number of token counters; the token delta, the amount reserved, the actual cost, each slot's
# epoch.
_SCRIPT = (
    ratelimit_lua.LUA
    + budget_lua.LUA
    + """
local n = tonumber(ARGV[2])
if ARGV[1] == 'correct' then
  rl_correct(0, 2, n)
  bg_settle(n, 3, #KEYS - n)
  return 1
end
local m = #KEYS - 2 * n
local b = 4 + 2 * n
local refused = rl_check(0, 2, n)
if refused then return refused end
local unseeded = bg_unseeded(2 * n, b, m)
if unseeded then return {2, unseeded} end
return bg_reserve(2 * n, b, m, rl_charge(0, 2, n, {1}))
"""
)


class RedisAdmission(Admission):
    """Rate limits and budgets in one script: one round trip per call (see the module's docstring)."""

    limiter: RedisLimiter
    ledger: RedisLedger

    def __init__(self, limiter: RedisLimiter, ledger: RedisLedger) -> None:
        super().__init__(limiter, ledger)
        # The limiter's connections and correction queue: its close() sends what is queued.
        self._redis: Any = limiter._redis
        self._corrections = limiter._corrections
        self._script = self._redis.register_script(_SCRIPT)

    async def admit(self, scopes: list[Scope], tokens: int, budgets: list[BudgetScope], amount: int) -> Verdict:
        window, reset, rate_keys, rate_args = self.limiter.script_input(scopes, tokens)
        budget_keys, budget_args, starts = self.ledger.script_input(budgets, amount)
        keys = rate_keys + budget_keys
        result = await self._script(keys=keys, args=["admit", len(scopes), *rate_args, *budget_args])
        if int(result[0]) == 2:
            await self.ledger.read_seeds(budgets, starts, budget_args)
            result = await self._script(keys=keys, args=["admit", len(scopes), *rate_args, *budget_args])
        if int(result[0]) == 0:
            return Verdict(self.limiter.decision(scopes, window, reset, result))
        states = 1 + 2 * len(scopes)
        decision = self.limiter.decision(scopes, window, reset, result[:states]) if scopes else None
        reserved = self.ledger.outcome(budgets, budget_keys, amount, result[states:]) if budgets else None
        return Verdict(decision, reserved)

    async def correct(
        self, scopes: list[Scope], decision: Decision | None, delta: int, reservation: Reservation | None, actual: int
    ) -> None:
        counters: list[str] = []
        if decision is not None and decision.admitted:
            counters = self.limiter.correction_keys(scopes, decision.window, delta) or []
        if not counters and reservation is None:
            return
        keys = list(counters)
        args: list[int | str] = ["correct", len(counters), delta if counters else 0]
        if reservation is not None:
            keys += reservation.slots
            args += [reservation.amount, actual, *reservation.epochs]
        if (counters and delta > 0) or (reservation is not None and actual > reservation.amount):
            # It raises a count: deferred, it would loosen a limit. One round trip, before the response.
            try:
                await self._script(keys=keys, args=args)
            except Exception as exc:  # the counts stay on the strict side until they expire
                log.warning("rate limit and budget: correcting the charges failed (%s)", type(exc).__name__)
            return

        sha = self._script.sha

        def commands(pipe: Any) -> None:
            pipe.evalsha(sha, len(keys), *keys, *args)  # loaded: see _SCRIPT

        self._corrections.add(commands)  # after the response, batched: see control/deferred.py
