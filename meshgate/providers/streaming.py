"""How a streamed answer travels: its first chunk pulled, the rest pushed.

A model's `stream()` is an async iterator of chunks, and any provider may stop there. The pipeline
pulls the first chunk (so that a failure before any output is a plain HTTP error), then hands the
rest to `relay()`, which calls a `deliver` function per chunk.

Why push: pulled through async generators, every chunk wakes a task and passes each layer's
`__anext__`; at a thousand streams that is twenty thousand wake-ups a second, and it was most of
the gateway's CPU per event (docs/architecture.md). A provider whose stream is a `PushStream`
(openai-compatible) calls `deliver` straight from the event loop's read callback: from the
upstream socket to the client socket without a task switch.

Backpressure runs the other way through a `Valve`: the client side closes it while a client is
not reading, and the producer stops (a pushed stream stops reading its upstream socket; a pulled
one stops pulling) until it opens again.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Any

#: Takes one chunk. It runs inside the producer's callbacks: it must not block, and what it raises
#: ends the stream with that error.
Deliver = Callable[[dict[str, Any]], None]


class Valve:
    """Open while the consumer keeps up; closed (paused) while it does not."""

    __slots__ = ("_listener", "_waiters", "paused")

    def __init__(self) -> None:
        self.paused = False
        #: Called with True on pause and False on resume (a pushed stream's socket reading).
        self._listener: Callable[[bool], None] | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def listen(self, listener: Callable[[bool], None] | None) -> None:
        self._listener = listener
        if listener is not None and self.paused:
            listener(True)

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            if self._listener is not None:
                self._listener(True)

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if self._listener is not None:
                self._listener(False)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self) -> None:
        while self.paused:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter


class PushStream(AsyncIterator[dict[str, Any]]):
    """A chunk stream that can also push what is left of it."""

    @abstractmethod
    async def relay(self, deliver: Deliver, valve: Valve) -> None:
        """Call `deliver` for every chunk not pulled yet, from the loop's own callbacks; return
        when the stream ends, raising its error if it failed."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop early (or tidy up after the end): release the upstream connection."""


async def relay(source: AsyncIterator[dict[str, Any]], deliver: Deliver, valve: Valve) -> None:
    """Deliver the rest of `source`: pushed when it can push, else pulled one by one."""
    if isinstance(source, PushStream):
        await source.relay(deliver, valve)
        return
    async for chunk in source:
        deliver(chunk)
        if valve.paused:
            await valve.wait()
