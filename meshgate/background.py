"""Work started without the caller waiting for it (a cache store, a breaker's Redis write, a config
reload), kept referenced until it is done (the event loop only holds weak references to tasks), its
failure logged rather than lost, and waited for or cancelled at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any


class Background:
    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what  # for the log: "cache store", "circuit breaker Redis write", ...
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, work: Awaitable[Any]) -> None:
        task: asyncio.Future[Any] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self.log.warning("%s failed (%s: %s)", self.what, type(error).__name__, error)

    async def wait(self) -> None:
        """Until nothing runs, work spawned meanwhile included."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)
