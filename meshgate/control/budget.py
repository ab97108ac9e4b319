"""Budgets in USD per key and per team, per day, week or month (UTC).

Before a call, its worst-case cost is reserved in every budget it falls under, atomically and all
or nothing; after it, the reservation is replaced by the real cost (a failed call releases what it
did not use). Since a call never costs more than its worst case, concurrent calls cannot overshoot
a budget.

Amounts are integers of nano-dollars, so that counters add exactly. Each budget's spend starts,
the first time a process sees it in a period, from the usage already recorded in the database.
`MemoryLedger` serves one process; `RedisLedger` is shared by replicas.
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


# KEYS: one hash per slot (fields spent, reserved, epoch). ARGV: amount, ttl, epoch, then per
# slot: limit, seed. A slot seen for the first time starts from its seed (usage already in the
# database) and takes the epoch given; a seed of -1 means "not read yet": if such a slot is new to
# Redis, {2} asks for the seeds and charges nothing. Admitted: {1, epoch of each slot}.
_RESERVE = """
local amount = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  if tonumber(ARGV[3 + 2 * i]) < 0 and redis.call('EXISTS', KEYS[i]) == 0 then return {2, i} end
end
for i = 1, #KEYS do
  if redis.call('HSETNX', KEYS[i], 'spent', ARGV[3 + 2 * i]) == 1 then
    redis.call('HSET', KEYS[i], 'reserved', 0, 'epoch', ARGV[3])
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 + 2 * i])
  local spent = tonumber(redis.call('HGET', KEYS[i], 'spent'))
  local reserved = tonumber(redis.call('HGET', KEYS[i], 'reserved') or '0')
  if spent + reserved + amount > limit then return {0, i, spent} end
end
local admitted = {1}
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  admitted[i + 1] = redis.call('HGET', KEYS[i], 'epoch') or ''
end
return admitted
"""


class RedisLedger(BudgetLedger):
    def __init__(self, spent_since: SpentSince, url: str, prefix: str = "meshgate:budget") -> None:
        super().__init__(spent_since)
        import redis.asyncio as redis

        self._redis: Any = redis.from_url(url)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._settlements = DeferredWrites(self._redis, "budget")
        self.prefix = prefix
        self._epoch_prefix = uuid.uuid4().hex[:12] + ":"
        self._epochs = itertools.count()

    async def reserve(self, scopes: list[BudgetScope], amount: int) -> Reservation | BudgetRefusal:
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
        # One round trip when every slot is known to Redis; the seeds (a database query) are read
        # only when the script says a slot is new (a new period, or a Redis that lost its data).
        result = await self._reserve(keys=keys, args=args)
        if int(result[0]) == 2:
            for i, (scope, start) in enumerate(zip(scopes, starts, strict=True)):
                args[4 + 2 * i] = to_nano(await self.spent_since(scope, start))
            result = await self._reserve(keys=keys, args=args)
        if int(result[0]) == 0:
            scope = scopes[int(result[1]) - 1]
            return BudgetRefusal(scope, int(result[2]) / NANO, period_bounds(scope.period)[2])
        epochs = tuple(e.decode() if isinstance(e, bytes) else str(e) for e in result[1:])
        return Reservation(tuple(keys), amount, epochs)

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


# KEYS: the reservation's slots. ARGV: amount reserved, actual cost, then each slot's epoch at the
# reservation. A slot that is gone (Redis lost its data) is left alone: recreated here, it would
# hide the seed from reserve. A slot seeded again since (another epoch) never held the reservation:
# only the cost is added there, or its other reservations would be released.
_SETTLE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if (redis.call('HGET', KEYS[i], 'epoch') or '') == (ARGV[2 + i] or '') then
      redis.call('HINCRBY', KEYS[i], 'reserved', -tonumber(ARGV[1]))
    end
    redis.call('HINCRBY', KEYS[i], 'spent', tonumber(ARGV[2]))
  end
end
return 1
"""
