"""Budgets in USD per key and per team, per day, week or month (UTC).

Before a call, its worst-case cost is reserved in every budget it falls under, atomically and all
or nothing; after it, the reservation is replaced by the real cost (a failed call releases what it
did not use). Since a call never costs more than its worst case, concurrent calls cannot overshoot
a budget.

Amounts are integers of nano-dollars, so that counters add exactly. Each budget's spend starts,
the first time a process sees it in a period, from the usage already recorded in the database.
`MemoryLedger` serves one process; `RedisLedger` is shared by replicas. The pipeline reaches them
through `meshgate.control.admission`, which on Redis runs the Lua below inside the rate limits'
script (one round trip for both).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from meshgate.control.deferred import DeferredWrites

NANO = 1_000_000_000

#: Reads the USD already spent in a scope since a time: (scope, since) -> USD.
SpentSince = Callable[["BudgetScope", float], Awaitable[float]]


def to_nano(usd: float) -> int:
    return round(usd * NANO)


def period_bounds(period: str, now: datetime | None = None) -> tuple[str, float, float]:
    """The period's id, start and end (unix seconds) containing `now`."""
    if now is None:
        # Every budgeted call asks; the answer changes once a day at most, so it is kept until the
        # period it names ends (datetime arithmetic and strftime cost more than the whole check).
        cached = _current_periods.get(period)
        if cached is not None and cached[1] <= time.time() < cached[2]:
            return cached
        cached = _period_bounds(period, datetime.now(UTC))
        _current_periods[period] = cached
        return cached
    return _period_bounds(period, now)


_current_periods: dict[str, tuple[str, float, float]] = {}


def _period_bounds(period: str, now: datetime) -> tuple[str, float, float]:
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end, label = day, day + timedelta(days=1), day.strftime("%Y-%m-%d")
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
        year, week, _ = start.isocalendar()
        label = f"{year}-W{week:02d}"
    elif period == "month":
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        label = start.strftime("%Y-%m")
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return label, start.timestamp(), end.timestamp()


@dataclass(frozen=True)
class BudgetScope:
    kind: str  # "key" | "team"
    name: str  # key id or team name
    limit_usd: float
    period: str

    def slot(self, label: str) -> str:
        return f"{self.kind}:{self.name}:{label}"


@dataclass(frozen=True)
class Reservation:
    slots: tuple[str, ...]
    amount: int  # nano-dollars reserved in each slot
    #: Redis: which life of each slot the reservation was made in (a slot Redis lost and that was
    #: seeded again is another life: the reservation is not in it).
    epochs: tuple[str, ...] = ()


@dataclass(frozen=True)
class BudgetRefusal:
    scope: BudgetScope
    spent_usd: float
    reset_at: float


class BudgetLedger(ABC):
    def __init__(self, spent_since: SpentSince) -> None:
        self.spent_since = spent_since

    @abstractmethod
    async def reserve(self, scopes: list[BudgetScope], amount: int) -> Reservation | BudgetRefusal: ...

    @abstractmethod
    async def settle(self, reservation: Reservation, actual: int) -> None:
        """Replace a reservation by the real cost. It may land a moment later (Redis): the real
        cost is never above the reservation, so until then the budget is on the strict side."""

    async def flush(self) -> None:
        """Wait until every settlement made so far counts."""
        return None

    async def close(self) -> None:
        return None


class MemoryLedger(BudgetLedger):
    def __init__(self, spent_since: SpentSince) -> None:
        super().__init__(spent_since)
        self._spent: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._seeding: dict[str, asyncio.Future[None]] = {}

    async def _seed(self, scope: BudgetScope, slot: str, start: float) -> None:
        if slot in self._spent:
            return
        pending = self._seeding.get(slot)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._seeding[slot] = pending
            try:
                self._spent[slot] = to_nano(await self.spent_since(scope, start))
                self._reserved.setdefault(slot, 0)
                pending.set_result(None)
            except BaseException as exc:
                del self._seeding[slot]
                pending.set_exception(exc)
                raise
        await pending

    async def reserve(self, scopes: list[BudgetScope], amount: int) -> Reservation | BudgetRefusal:
        slots = []
        for scope in scopes:
            label, start, _ = period_bounds(scope.period)
            slot = scope.slot(label)
            await self._seed(scope, slot, start)
            slots.append(slot)
        # From here to the end there is no await: check and charge are one step on the event loop.
        for scope, slot in zip(scopes, slots, strict=True):
            if self._spent[slot] + self._reserved[slot] + amount > to_nano(scope.limit_usd):
                return BudgetRefusal(scope, self._spent[slot] / NANO, period_bounds(scope.period)[2])
        for slot in slots:
            self._reserved[slot] += amount
        return Reservation(tuple(slots), amount)

    async def settle(self, reservation: Reservation, actual: int) -> None:
        for slot in reservation.slots:
            self._reserved[slot] = max(self._reserved.get(slot, 0) - reservation.amount, 0)
            self._spent[slot] = self._spent.get(slot, 0) + actual

    def spent(self, slot: str) -> int:
        return self._spent.get(slot, 0)


# The Lua of the budgets, as functions that meshgate/control/admission.py also runs inside its
# script (rate limits and budgets in one round trip). Slot i is the hash KEYS[k+i] (fields spent,
# reserved, epoch). ARGV[a+1] is the amount, ARGV[a+2] the slots' ttl, ARGV[a+3] an epoch, then
# ARGV[a+2+2i] and ARGV[a+3+2i] slot i's limit and seed.
#   bg_unseeded: the first slot whose seed is -1 ("not read yet") and that Redis does not hold, or
#     false. Such a slot needs its seed (the usage already in the database) before anything counts.
#   bg_reserve: a slot seen for the first time starts from its seed and takes the epoch given; then
#     every slot is checked and, all having room, the amount is reserved in each. Appends to `out`
#     {0, slot index, spent} when refused (nothing reserved), {1, epoch of each slot} when admitted.
#   bg_settle: replaces a reservation by the real cost; ARGV[a+1] is the amount reserved, ARGV[a+2]
#     the actual cost, ARGV[a+2+i] slot i's epoch at the reservation. A slot that is gone (Redis
#     lost its data) is left alone: recreated here, it would hide the seed from bg_reserve. A slot
#     seeded again since (another epoch) never held the reservation: only the cost is added there,
#     or its other reservations would be released.
LUA = """
local function bg_unseeded(k, a, m)
  for i = 1, m do
    if tonumber(ARGV[a + 3 + 2 * i]) < 0 and redis.call('EXISTS', KEYS[k + i]) == 0 then return i end
  end
  return false
end
local function bg_reserve(k, a, m, out)
  local amount = tonumber(ARGV[a + 1])
  for i = 1, m do
    if redis.call('HSETNX', KEYS[k + i], 'spent', ARGV[a + 3 + 2 * i]) == 1 then
      redis.call('HSET', KEYS[k + i], 'reserved', 0, 'epoch', ARGV[a + 3])
      redis.call('EXPIRE', KEYS[k + i], tonumber(ARGV[a + 2]))
    end
  end
  for i = 1, m do
    local limit = tonumber(ARGV[a + 2 + 2 * i])
    local spent = tonumber(redis.call('HGET', KEYS[k + i], 'spent'))
    local reserved = tonumber(redis.call('HGET', KEYS[k + i], 'reserved') or '0')
    if spent + reserved + amount > limit then
      out[#out + 1] = 0
      out[#out + 1] = i
      out[#out + 1] = spent
      return out
    end
  end
  out[#out + 1] = 1
  for i = 1, m do
    redis.call('HINCRBY', KEYS[k + i], 'reserved', amount)
    out[#out + 1] = redis.call('HGET', KEYS[k + i], 'epoch') or ''
  end
  return out
end
local function bg_settle(k, a, m)
  for i = 1, m do
    if redis.call('EXISTS', KEYS[k + i]) == 1 then
      if (redis.call('HGET', KEYS[k + i], 'epoch') or '') == (ARGV[a + 2 + i] or '') then
        redis.call('HINCRBY', KEYS[k + i], 'reserved', -tonumber(ARGV[a + 1]))
      end
      redis.call('HINCRBY', KEYS[k + i], 'spent', tonumber(ARGV[a + 2]))
    end
  end
end
"""

# KEYS: the slots. ARGV: amount, ttl, epoch, then per slot: limit, seed. {2, slot index} asks for
# the seeds and charges nothing; otherwise bg_reserve's answer.
_RESERVE = (
    LUA
    + """
local unseeded = bg_unseeded(0, 0, #KEYS)
if unseeded then return {2, unseeded} end
return bg_reserve(0, 0, #KEYS, {})
"""
)

# KEYS: the reservation's slots. ARGV: amount reserved, actual cost, then each slot's epoch.
_SETTLE = (
    LUA
    + """
bg_settle(0, 0, #KEYS)
return 1
"""
)


class RedisLedger(BudgetLedger):
    def __init__(self, spent_since: SpentSince, url: str, prefix: str = "meshgate:budget") -> None:
        super().__init__(spent_since)
        import redis.asyncio as redis

        self.url = url
        self._redis: Any = redis.from_url(url)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._settlements = DeferredWrites(self._redis, "budget")
        self.prefix = prefix
        self._epoch_prefix = uuid.uuid4().hex[:12] + ":"
        self._epochs = itertools.count()

    def script_input(self, scopes: list[BudgetScope], amount: int) -> tuple[list[str], list[int | str], list[float]]:
        """The KEYS and ARGV of `bg_unseeded` and `bg_reserve` (see LUA) for one reservation, every
        seed still -1 (see `read_seeds`), and the start of each scope's period."""
        keys: list[str] = []
        args: list[int | str] = [amount, 0, f"{self._epoch_prefix}{next(self._epochs)}"]
        longest = 0.0
        starts: list[float] = []
        for scope in scopes:
            label, start, end = period_bounds(scope.period)
            keys.append(f"{self.prefix}:{scope.slot(label)}")
            args += [to_nano(scope.limit_usd), -1]
            starts.append(start)
            longest = max(longest, end - start)
        args[1] = int(longest) + 86400
        return keys, args, starts

    async def read_seeds(self, scopes: list[BudgetScope], starts: list[float], args: list[int | str]) -> None:
        """Put each slot's seed, the usage already recorded in its period, in `args`."""
        for i, (scope, start) in enumerate(zip(scopes, starts, strict=True)):
            args[4 + 2 * i] = to_nano(await self.spent_since(scope, start))

    @staticmethod
    def outcome(
        scopes: list[BudgetScope], keys: list[str], amount: int, result: list[Any]
    ) -> Reservation | BudgetRefusal:
        """A reservation or a refusal from bg_reserve's answer."""
        if int(result[0]) == 0:
            scope = scopes[int(result[1]) - 1]
            return BudgetRefusal(scope, int(result[2]) / NANO, period_bounds(scope.period)[2])
        epochs = tuple(e.decode() if isinstance(e, bytes) else str(e) for e in result[1:])
        return Reservation(tuple(keys), amount, epochs)

    async def reserve(self, scopes: list[BudgetScope], amount: int) -> Reservation | BudgetRefusal:
        keys, args, starts = self.script_input(scopes, amount)
        # One round trip when every slot is known to Redis; the seeds (a database query) are read
        # only when the script says a slot is new (a new period, or a Redis that lost its data).
        result = await self._reserve(keys=keys, args=args)
        if int(result[0]) == 2:
            await self.read_seeds(scopes, starts, args)
            result = await self._reserve(keys=keys, args=args)
        return self.outcome(scopes, keys, amount, result)

    async def settle(self, reservation: Reservation, actual: int) -> None:
        slots, amount, epochs = reservation.slots, reservation.amount, reservation.epochs

        def commands(pipe: Any) -> Awaitable[Any]:
            return self._settle(keys=list(slots), args=[amount, actual, *epochs], client=pipe)

        if actual > amount:
            await self._settlements.now(commands)  # it raises a count: deferred, it would loosen
        else:
            self._settlements.add(commands)  # after the response: see control/deferred.py

    async def flush(self) -> None:
        await self._settlements.flush()

    async def close(self) -> None:
        await self._settlements.flush()
        await self._redis.aclose()
