"""Corrections to shared counters, sent to Redis after the response instead of before it.

Limits and budgets charge the worst case before a call and correct it after: the rate limiter
gives back the tokens a call did not use, the budget turns a reservation into the real cost. A
correction almost always lowers a count (a call rarely costs more than its worst-case estimate),
so until it lands the limits are a little stricter, never looser. That makes it safe to leave the
response's path: corrections that lower a count queue here and go out together, many calls' in
one pipelined transaction, on a task of their own. With replicas on Redis that took two of the
five round trips of a call out of its latency. A correction that raises a count (a call that used
more than its estimate) is sent at once instead, before the response, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("meshgate.control")

#: Seconds before a failed batch is sent once more.
RETRY_AFTER = 0.5

#: Adds one correction's commands to a pipeline (a script call on a pipeline is awaited).
Commands = Callable[[Any], Awaitable[Any] | None]


class DeferredWrites:
    def __init__(self, redis: Any, what: str) -> None:
        self.redis = redis
        self.what = what  # for the log: "rate limit", "budget"
        self._pending: list[Commands] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, commands: Commands) -> None:
        self._pending.append(commands)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._send())

    async def now(self, commands: Commands) -> None:
        """Send one correction at once (one that raises a count: deferred, it would loosen)."""
        await self._execute([commands])

    async def _send(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                for attempt in (1, 2):
                    try:
                        await self._execute(batch)
                        break
                    except Exception as exc:  # the counts stay on the strict side until they expire
                        if attempt == 2:
                            log.warning(
                                "%s: %d corrections may not have reached Redis (%s)",
                                self.what,
                                len(batch),
                                type(exc).__name__,
                            )
                        else:
                            await asyncio.sleep(RETRY_AFTER)
        finally:
            self._task = None

    async def _execute(self, batch: list[Commands]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for commands in batch:
                queued = commands(pipe)
                if queued is not None:
                    await queued
            await pipe.execute()

    async def flush(self) -> None:
        """Wait until nothing is queued (corrections added meanwhile included)."""
        while self._task is not None:
            await asyncio.shield(self._task)
