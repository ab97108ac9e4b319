"""One streamed call to an OpenAI-style upstream: its SSE `data:` events decoded as they are read.

Pulled (`async for`), events wait in a small queue for the reader. Pushed (`relay`), each event is
decoded and handed on inside the connection's read callback (meshgate/providers/streaming.py).

Timeouts run on one timer per stream that looks every `read_timeout` seconds, never re-armed per
event: the stream fails when it has waited that long on the upstream (time a slow client holds it
paused does not count), or when the whole call outlasts `total_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from meshgate.errors import MeshError, UpstreamError, UpstreamTimeout
from meshgate.providers.stream_client import StreamPool, UpstreamConnection, UpstreamProtocolError
from meshgate.providers.streaming import Deliver, PushStream, Valve

log = logging.getLogger("meshgate.providers")
_json_decode = msgspec.json.Decoder().decode

#: Events read ahead of a reader that pulls: past this many, the upstream socket is paused.
PULL_BUFFER = 256
#: Most bytes of an error response kept for its message.
ERROR_BODY_LIMIT = 64 * 1024

StatusError = Callable[[int, bytes, dict[str, str]], MeshError]


class UpstreamEventStream(PushStream):
    def __init__(
        self,
        pool: StreamPool,
        request: bytes,
        *,
        name: str,
        provider: str,
        model: str | None,
        read_timeout: float,
        total_timeout: float,
        status_error: StatusError,
    ) -> None:
        self.pool, self.request = pool, request
        self.name, self.provider, self.model = name, provider, model
        self.read_timeout, self.total_timeout = read_timeout, total_timeout
        self.status_error = status_error
        self.loop = asyncio.get_running_loop()
        self.conn: UpstreamConnection | None = None
        self.pending: deque[dict[str, Any]] = deque()
        self.deliver: Deliver | None = None
        self.valve: Valve | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.opened = False
        self.done = False  # `[DONE]` read
        self.closed = False
        self.error: BaseException | None = None
        self.stale = False  # the pooled connection was closed under us: send again, once
        self.retried = False
        self.status = 0
        self.error_body: bytearray | None = None
        self.headers: dict[str, str] = {}
        self.rest = b""
        self.last_progress = 0.0
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.opening: asyncio.Future[UpstreamConnection] | None = None
        self.sent = False  # the request went out (it may wait for a free connection first)
        self.read_paused = False

    # pulling

    def __aiter__(self) -> UpstreamEventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self.pending:
            if self.error is not None:
                raise self.error
            if self.done or self.closed:
                raise StopAsyncIteration
            await self._progress()
        event = self.pending.popleft()
        if self.read_paused and len(self.pending) < PULL_BUFFER // 2:
            self._pause_reading(False)
        return event

    # pushing

    async def relay(self, deliver: Deliver, valve: Valve) -> None:
        try:
            while self.pending:  # read ahead while the first event was pulled
                deliver(self.pending.popleft())
        except Exception as exc:
            self._fail(exc)
            raise
        self.deliver, self.valve = deliver, valve
        self.last_progress = self.loop.time()
        # Reading follows the valve from now on (it may have stopped for a full read-ahead buffer).
        self._pause_reading(valve.paused)
        valve.listen(self._flow)
        try:
            while True:
                if self.error is not None:
                    raise self.error
                if self.done or self.closed:
                    return
                await self._progress()
        finally:
            valve.listen(None)
            self.deliver = None

    async def aclose(self) -> None:
        self.closed = True
        self._stop_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.done:
                conn.detach()  # the rest of the response is the terminating chunk: pool it after
            else:
                conn.abandon()

    # the common wait of both ways

    async def _progress(self) -> None:
        """Open or reopen the request if needed, else wait for the next thing to happen."""
        if not self.opened or self.stale:
            await self._open()
            return
        self.waiter = self.loop.create_future()
        if self.deliver is None:
            self.last_progress = self.loop.time()  # pulling: the wait on the upstream starts now
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def _open(self) -> None:
        if not self.opened:
            self.opened = True
            now = self.loop.time()
            self.last_progress, self.deadline = now, now + self.total_timeout
            self.timer = self.loop.call_at(min(self.deadline, now + self.read_timeout), self._tick)
        fresh, self.stale = self.stale, False
        if fresh:
            self.retried = True
            log.info("upstream of %s closed a pooled connection; retrying once", self.name)
        # In a task of its own, so that the stream's timer can end the wait for a free connection.
        self.opening = opening = asyncio.ensure_future(self.pool.acquire(fresh=fresh))
        try:
            conn = await opening
        except asyncio.CancelledError:
            _give_back_if_won(opening)  # the acquire may have finished as the cancel came
            current = asyncio.current_task()
            if self.error is not None and current is not None and not current.cancelling():
                return  # cancelled by _fail (a timeout): the error is raised by the caller's loop
            raise
        except TimeoutError:
            self._fail(self._too_late())
            return
        except OSError:
            self._fail(
                UpstreamError(
                    f"The upstream of `{self.name}` is unreachable at {self.pool.base_url}", provider=self.provider
                )
            )
            return
        finally:
            self.opening = None
        if self.closed or self.error is not None:  # timed out or closed while connecting
            conn.abandon()
            return
        self.conn = conn
        self.sent = True
        self.last_progress = self.loop.time()  # the wait on the upstream starts with the request
        conn.send(self.request, self)

    # outcomes

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is not None or self.done:
            return
        self.error = error
        self._stop_timer()
        if self.opening is not None:
            self.opening.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abandon()
        self._wake()

    def _finish(self) -> None:
        self.done = True
        self._stop_timer()
        self._wake()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _tick(self) -> None:
        self.timer = None
        if self.error is not None or self.done or self.closed:
            return
        now = self.loop.time()
        if now >= self.deadline:
            self._fail(self._too_late())
            return
        waiting = self._waiting_on_upstream()
        if waiting and now - self.last_progress >= self.read_timeout:
            self._fail(
                UpstreamTimeout(
                    f"The upstream of `{self.name}` sent nothing for {self.read_timeout:g}s", provider=self.provider
                )
            )
            return
        since = self.last_progress if waiting else now
        self.timer = self.loop.call_at(min(self.deadline, since + self.read_timeout), self._tick)

    def _waiting_on_upstream(self) -> bool:
        if not self.sent:
            return False  # queued for a free connection: only the total timeout counts
        if self.deliver is not None:
            return self.valve is None or not self.valve.paused
        return self.waiter is not None or not self.pending

    # backpressure

    def _flow(self, paused: bool) -> None:
        self._pause_reading(paused)
        if not paused:
            self.last_progress = self.loop.time()

    def _pause_reading(self, paused: bool) -> None:
        self.read_paused = paused
        if self.conn is not None:
            self.conn.pause_reading(paused)

    # the connection's callbacks (stream_client.ResponseConsumer)

    def response_started(self, status: int, headers: dict[bytes, bytes]) -> None:
        self.status = status
        self.last_progress = self.loop.time()
        if status >= 400:
            self.error_body = bytearray()
            self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}

    def response_body(self, piece: bytes) -> None:
        self.last_progress = self.loop.time()
        if self.error_body is not None:
            if len(self.error_body) < ERROR_BODY_LIMIT:
                self.error_body += piece
            return
        if self.done or self.error is not None:
            return
        # Split in C (bytes.split) rather than a find-and-slice loop: this runs per event.
        lines = (self.rest + piece if self.rest else piece).split(b"\n")
        self.rest = lines.pop()  # an incomplete line, kept for the next piece
        deliver, pending = self.deliver, self.pending
        for line in lines:
            if line[:5] != b"data:":
                continue  # comments, `event:` and blank separator lines
            data = line[5:].strip()
            if data == b"[DONE]":
                self._finish()
                return
            try:
                event = _json_decode(data)
            except msgspec.DecodeError:
                self._fail(
                    UpstreamError(
                        f"The upstream of `{self.name}` sent an unreadable stream event", provider=self.provider
                    )
                )
                return
            if isinstance(event, dict):
                if "error" in event:
                    detail = event["error"].get("message", "") if isinstance(event["error"], dict) else event["error"]
                    self._fail(
                        UpstreamError(
                            f"The upstream of `{self.name}` failed mid-stream: {detail}", provider=self.provider
                        )
                    )
                    return
                if self.model is not None:
                    event["model"] = self.model
            if deliver is None:
                pending.append(event)
                continue
            try:
                deliver(event)
            except Exception as exc:  # the consumer's failure ends the stream with it
                self._fail(exc)
                return
        if deliver is None and pending:
            if len(pending) >= PULL_BUFFER and not self.read_paused:
                self._pause_reading(True)
            self._wake()

    def response_ended(self) -> None:
        self.conn = None  # the connection goes back to the pool (or closes) on its own
        if self.error_body is not None:
            self._fail(self.status_error(self.status, bytes(self.error_body), self.headers))
        elif not self.done:
            self._fail(self._ended_early())

    def response_lost(self, error: BaseException | None, stale: bool) -> None:
        self.conn = None
        if self.done or self.error is not None or self.closed:
            return
        if self.error_body is not None:  # an error answer whose body ended with the connection
            self._fail(self.status_error(self.status, bytes(self.error_body), self.headers))
            return
        if stale and not self.retried:
            self.stale, self.sent = True, False
            self._wake()
            return
        if isinstance(error, UpstreamProtocolError):
            self._fail(
                UpstreamError(
                    f"The upstream of `{self.name}` answered with broken HTTP: {error}", provider=self.provider
                )
            )
        elif self.status == 0:
            self._fail(
                UpstreamError(
                    f"The connection to the upstream of `{self.name}` failed before an answer", provider=self.provider
                )
            )
        else:
            self._fail(self._ended_early())

    def _too_late(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"The upstream of `{self.name}` did not answer in time", provider=self.provider)

    def _ended_early(self) -> UpstreamError:
        return UpstreamError(
            f"The upstream of `{self.name}` ended the stream early (no [DONE])", provider=self.provider
        )


def _give_back_if_won(opening: asyncio.Future[UpstreamConnection]) -> None:
    """A connection acquired in the same moment its waiter was cancelled goes back unused (else
    its pool slot would stay taken); a failed acquire's error is taken so it is not reported."""
    if opening.done() and not opening.cancelled() and opening.exception() is None:
        opening.result().abandon()
