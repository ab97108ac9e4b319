"""Circuit breakers, one per deployment, and the live measurements routes choose by.

A breaker opens after `failures` failures in a row (connect errors, timeouts, 429, 5xx) and stays
open for `cooldown` seconds: an open breaker is never tried. Then it is half-open: one call at a time
may probe it; success closes it, failure opens it again for another cooldown.

With Redis (`--redis-url`), the breakers are shared by every replica: failures are counted in Redis,
and a breaker opened by one replica is open for all. Nothing of this is on the request path: a failure
or a recovery is written by a task of its own, and each replica reads the open breakers in one round
trip every POLL_INTERVAL seconds, so a replica learns of an outage another one saw within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from meshgate.background import Background
from meshgate.routing.config import BreakerConfig

log = logging.getLogger("meshgate.routing")

POLL_INTERVAL = 0.5
#: Weight of the newest sample in the latency average.
EWMA_ALPHA = 0.2


class Breaker:
    __slots__ = ("board", "cooldown", "failures", "name", "open_until", "probing", "threshold")

    def __init__(self, name: str, config: BreakerConfig, board: BreakerBoard) -> None:
        self.name = name
        self.threshold = config.failures
        self.cooldown = config.cooldown
        self.board = board
        self.failures = 0
        #: 0 while closed; else when the open period ends (monotonic seconds).
        self.open_until = 0.0
        self.probing = False

    @property
    def state(self) -> str:
        if not self.open_until:
            return "closed"
        return "open" if time.monotonic() < self.open_until else "half-open"

    def allows(self, now: float) -> bool:
        if not self.open_until:
            return True
        if now < self.open_until:
            return False
        return not self.probing  # half-open: one probe at a time

    def begin(self, now: float) -> None:
        if self.open_until and now >= self.open_until:
            self.probing = True

    def succeeded(self) -> None:
        if self.failures or self.open_until:
            was_open = bool(self.open_until)
            self.failures, self.open_until, self.probing = 0, 0.0, False
            if was_open:
                log.info("circuit of deployment %s closed", self.name)
            self.board.recovered(self)

    def failed(self, now: float) -> None:
        self.failures += 1
        half_open = bool(self.open_until) and now >= self.open_until
        self.probing = False
        if half_open or self.failures >= self.threshold:
            self.open(now, self.cooldown)
        self.board.failure(self)

    def open(self, now: float, seconds: float) -> None:
        if now + seconds > self.open_until:
            if not self.open_until or now >= self.open_until:
                log.warning(
                    "circuit of deployment %s open for %.1fs after %d failures", self.name, seconds, self.failures
                )
            self.open_until = now + seconds

    def neutral(self) -> None:
        """A call that ended in a way that says nothing of the deployment's health (a bad request)."""
        self.probing = False


class Ewma:
    """Latency of a deployment: a moving average of the last calls' seconds to the first byte."""

    __slots__ = ("samples", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.samples = 0

    def add(self, seconds: float) -> None:
        self.value = seconds if not self.samples else self.value + EWMA_ALPHA * (seconds - self.value)
        self.samples += 1


class BreakerBoard:
    """Every deployment's breaker and latency, by deployment name; in memory (one process)."""

    def __init__(self) -> None:
        self.breakers: dict[str, Breaker] = {}
        self.latency: dict[str, Ewma] = {}

    def breaker(self, name: str, config: BreakerConfig) -> Breaker:
        """The breaker of deployment `name` (kept across config reloads: its state stays)."""
        breaker = self.breakers.get(name)
        if breaker is None:
            breaker = self.breakers[name] = Breaker(name, config, self)
        else:
            breaker.threshold, breaker.cooldown = config.failures, config.cooldown
        return breaker

    def ewma(self, name: str) -> Ewma:
        ewma = self.latency.get(name)
        if ewma is None:
            ewma = self.latency[name] = Ewma()
        return ewma

    def failure(self, breaker: Breaker) -> None:
        """A failure to share with the other replicas (nothing to do in one process)."""

    def recovered(self, breaker: Breaker) -> None:
        """A recovery to share with the other replicas."""

    def states(self) -> dict[str, str]:
        return {name: breaker.state for name, breaker in self.breakers.items()}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


# A failure: count it; at the threshold (or when this replica's breaker opened: a failed half-open
# probe), open the breaker for everyone and reset the count.
# KEYS[1] = failures key, KEYS[2] = open key; ARGV[1] = threshold, ARGV[2] = cooldown ms, ARGV[3] = 1 to open.
_FAILURE_SCRIPT = """
local failures = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[2]) * 10, 60000))
if failures >= tonumber(ARGV[1]) or ARGV[3] == '1' then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class RedisBreakerBoard(BreakerBoard):
    """Breakers shared across replicas through Redis (see the module's docstring)."""

    PREFIX = "meshgate:breaker:"

    def __init__(self, url: str) -> None:
        super().__init__()
        import redis.asyncio as redis

        self.redis = redis.Redis.from_url(url)
        self._failure_script = self.redis.register_script(_FAILURE_SCRIPT)
        self._writes = Background(log, "circuit breaker: a Redis write")
        self._poller: asyncio.Task[None] | None = None

    def _keys(self, name: str) -> tuple[str, str]:
        return f"{self.PREFIX}{name}:failures", f"{self.PREFIX}{name}:open"

    def failure(self, breaker: Breaker) -> None:
        self._writes.spawn(self._share_failure(breaker, opened_here=breaker.open_until > time.monotonic()))

    async def _share_failure(self, breaker: Breaker, opened_here: bool) -> None:
        cooldown_ms = max(1, int(breaker.cooldown * 1000))
        opened = await self._failure_script(
            keys=list(self._keys(breaker.name)), args=[breaker.threshold, cooldown_ms, int(opened_here)]
        )
        if opened:
            breaker.open(time.monotonic(), breaker.cooldown)

    def recovered(self, breaker: Breaker) -> None:
        self._writes.spawn(self.redis.delete(*self._keys(breaker.name)))

    async def start(self) -> None:
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh(list(self.breakers.values()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: each replica keeps its own view meanwhile
                log.debug("circuit breaker: Redis read failed (%s)", type(exc).__name__)
            await asyncio.sleep(POLL_INTERVAL)

    async def refresh(self, breakers: Iterable[Breaker]) -> None:
        """Take the open breakers of every replica, in one round trip."""
        breakers = list(breakers)
        if not breakers:
            return
        pipe = self.redis.pipeline(transaction=False)
        for breaker in breakers:
            pipe.pttl(self._keys(breaker.name)[1])
        remaining = await pipe.execute()
        now = time.monotonic()
        for breaker, ms in zip(breakers, remaining, strict=True):
            if ms > 0:
                breaker.open(now, ms / 1000)
            elif breaker.open_until > now:
                breaker.open_until = now  # closed elsewhere: probe it here (half-open)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._writes.wait()
        await self.redis.aclose()
