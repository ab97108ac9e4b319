"""Server-sent events with hang-up detection, on as few tasks and layers as a stream allows.

The response first awaits the stream's first event, before any byte goes out: an error there (unknown
model, refused parameter, upstream down) is raised, and the app's error handlers turn it into a
proper HTTP error rather than an event in a 200 stream. It then relays the rest as they come.

One watcher task follows the connection for the whole call: when the client disconnects, the
producer is cancelled at once (the model stops at its next token), not when the next write fails.

Body messages go straight to the server's own `send` (RequestIdMiddleware keeps it in the scope):
the middleware wrappers around `send` only look at the response start, and at a thousand streams
each wrapper is thousands of extra coroutine calls a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.types import Receive, Scope, Send

from meshgate.errors import ClientDisconnected

log = logging.getLogger("meshgate.api")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-like proxies not to buffer
]

#: Scope key under which the outermost middleware keeps the server's unwrapped `send`.
RAW_SEND = "meshgate.raw_send"


class EventStreamResponse:
    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        self.events = events
        self.extra_headers = headers
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send, scope.get(RAW_SEND, send)))
        watch = asyncio.ensure_future(self._watch(receive))
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if pump.cancelled():
            if not self.started:
                raise ClientDisconnected()  # gone before the first event: counted and logged as 499
            return
        error = pump.exception()
        if error is None:
            return
        if not self.started:
            raise error  # before any byte: the app's error handlers answer it
        # After the start, a write to a closed connection: the client is gone, nothing to tell it.
        log.debug("stream ended by a failed write: %r", error)

    async def _pump(self, send: Send, raw_send: Send) -> None:
        events = self.events
        try:
            try:
                first: bytes | None = await events.__anext__()
            except StopAsyncIteration:
                first = None
            headers = SSE_HEADERS + [(k.encode(), v.encode()) for k, v in (self.extra_headers or {}).items()]
            self.started = True
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if first is not None:
                await raw_send({"type": "http.response.body", "body": first, "more_body": True})
                async for event in events:
                    await raw_send({"type": "http.response.body", "body": event, "more_body": True})
            await raw_send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    @staticmethod
    async def _watch(receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
