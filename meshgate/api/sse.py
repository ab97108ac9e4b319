"""Server-sent events with hang-up detection, on as few tasks and layers as a stream allows.

The response first awaits the stream's first event, before any byte goes out: an error there (unknown
model, refused parameter, upstream down) is raised, and the app's error handlers turn it into a
proper HTTP error rather than an event in a 200 stream. It then relays the rest as they come.

One watcher task follows the connection for the whole call: when the client disconnects, the
producer is cancelled at once (the model stops at its next token), not when the next write fails.

Body messages go straight to the server's own `send` (app.py's outermost wrapper keeps it in the
scope), or to uvicorn's transport (see `_chunked_uvicorn_cycle`): the middleware wrappers around
`send` only look at the response start, and at a thousand streams each wrapper is thousands of
extra coroutine calls a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, cast

from starlette.types import Message, Receive, Scope, Send

from meshgate.errors import ClientDisconnected
from meshgate.providers.streaming import Valve

log = logging.getLogger("meshgate.api")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-like proxies not to buffer
]

#: Turns a chunk into the bytes of its event, or None to leave it out.
Encode = Callable[[dict[str, Any]], "bytes | None"]

#: Scope key under which the outermost middleware keeps the server's unwrapped `send`.
RAW_SEND = "meshgate.raw_send"


class SSEWriter:
    """The client side of one stream (a pipeline ChunkSink): each chunk encoded and written at once.

    `deliver` runs inside the upstream's read callback, so the server's `send` is driven by hand:
    uvicorn's finishes in one step unless the client stopped reading and the transport is full.
    Then the rest of that send runs in a task, later chunks queue behind it, and the valve stays
    closed (the upstream socket paused) until it is through.
    """

    def __init__(self, send: Send, raw_send: Send, headers: dict[str, str], encode: Encode) -> None:
        self.send, self.raw_send, self.headers, self.encode = send, raw_send, headers, encode
        self.valve = Valve()
        self.started = False
        self.flusher: asyncio.Future[None] | None = None
        self._backlog: list[bytes] | None = None  # not None while a send is suspended
        self._broken: BaseException | None = None
        self._direct: Any = None  # uvicorn's own response cycle, when writing to it directly is safe

    async def start(self) -> None:
        headers = SSE_HEADERS + [(k.encode(), v.encode()) for k, v in self.headers.items()]
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        self._direct = _chunked_uvicorn_cycle(self.raw_send)

    def deliver(self, chunk: dict[str, Any]) -> None:
        data = self.encode(chunk)
        if data is not None:
            self.write(data)

    def write(self, body: bytes) -> None:
        if not body:
            return  # an empty chunk would end a chunked body
        direct = self._direct
        if direct is not None:
            # What uvicorn's send does for a chunked body, without a message dict and a coroutine.
            if not direct.disconnected:
                direct.transport.write(b"%x\r\n%s\r\n" % (len(body), body))
                if direct.flow.write_paused and not self.valve.paused:
                    self.valve.pause()
                    self.flusher = asyncio.ensure_future(self._drained(direct.flow))
            return
        if self._broken is not None:
            raise self._broken
        if self._backlog is not None:
            self._backlog.append(body)
            return
        sending = cast(Coroutine[Any, Any, None], self.raw_send(_body(body)))
        try:
            blocker = sending.send(None)
        except StopIteration:
            return
        self._backlog = []
        self.valve.pause()
        self.flusher = asyncio.ensure_future(self._flush(sending, blocker))

    async def _flush(self, sending: Coroutine[Any, Any, None], blocker: Any) -> None:
        try:
            await _Resumed(sending, blocker)
            while self._backlog:
                body = b"".join(self._backlog)
                self._backlog.clear()
                await self.raw_send(_body(body))
        except BaseException as exc:
            self._broken = exc
            raise
        self._backlog = None
        self.valve.resume()

    async def _drained(self, flow: Any) -> None:
        await flow.drain()
        self.valve.resume()

    async def end(self, tail: bytes) -> None:
        if self.flusher is not None:
            await self.flusher
        await self.raw_send({"type": "http.response.body", "body": tail, "more_body": False})


def _chunked_uvicorn_cycle(raw_send: Send) -> Any:
    """uvicorn's httptools response cycle behind `raw_send`, if its response is chunked: its body
    messages are then exactly `transport.write(size, body)` (uvicorn 0.2x to 0.5x), which the
    writer does itself; at twenty thousand events a second the ASGI message dict, two coroutines
    and the exception ending each were a tenth of the gateway's CPU. Any other server, or another
    uvicorn protocol (h11 keeps its own state of the body), gets ASGI messages through its `send`,
    stepped by hand (see SSEWriter.write): a `send` that needs to run inside a task of its own (an
    anyio cancel scope, `asyncio.timeout`) is not supported there."""
    cycle = getattr(raw_send, "__self__", None)
    if type(cycle).__module__ != "uvicorn.protocols.http.httptools_impl":
        return None
    if getattr(cycle, "chunked_encoding", None) is not True or not hasattr(cycle, "flow"):
        return None
    return cycle


def _body(body: bytes) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": True}


class _Resumed:
    """Awaits the rest of a coroutine that was stepped by hand and suspended on `blocker`."""

    __slots__ = ("blocker", "coro")

    def __init__(self, coro: Coroutine[Any, Any, None], blocker: Any) -> None:
        self.coro, self.blocker = coro, blocker

    def __await__(self) -> Generator[Any, None, None]:
        coro, waiting_on = self.coro, self.blocker
        while True:
            try:
                yield waiting_on  # the task waits on what the coroutine waited on
            except BaseException as exc:  # cancelled: hand it in
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting_on = coro.send(None)
            except StopIteration:
                return


class EventStreamResponse:
    """An SSE response fed by `produce(writer)`; ends with `done`, or with `failure(error)` when
    the stream fails after it started (before, the error is raised for the app's handlers)."""

    def __init__(
        self,
        produce: Callable[[SSEWriter], Awaitable[None]],
        encode: Encode,
        failure: Callable[[Exception], bytes],
        done: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.produce, self.encode, self.failure, self.done = produce, encode, failure, done
        self.headers = headers if headers is not None else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = SSEWriter(send, scope.get(RAW_SEND, send), self.headers, self.encode)
        main = asyncio.ensure_future(self._run(writer))
        watch = asyncio.ensure_future(self._watch(receive))
        try:
            await asyncio.wait((main, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (main, watch, writer.flusher):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            flusher = writer.flusher
            if flusher is not None and not flusher.cancelled() and flusher.exception() is not None:
                log.debug("stream write failed: %r", flusher.exception())  # taken, so never "unretrieved"
        if main.cancelled():
            if not writer.started:
                raise ClientDisconnected()  # gone before the first event: counted and logged as 499
            return
        error = main.exception()
        if error is None:
            return
        if not writer.started:
            raise error  # before any byte: the app's error handlers answer it
        # After the start, a write to a closed connection: the client is gone, nothing to tell it.
        log.debug("stream ended by a failed write: %r", error)

    async def _run(self, writer: SSEWriter) -> None:
        try:
            await self.produce(writer)
        except Exception as error:
            if not writer.started:
                raise
            tail = self.failure(error)
        else:
            tail = self.done
        await writer.end(tail)

    @staticmethod
    async def _watch(receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
