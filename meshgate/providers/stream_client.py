"""A lean HTTP/1.1 client for streamed upstream answers, driven by the event loop's callbacks.

aiohttp serves every other upstream call. For streams its reader costs too much per event: the
parser feeds a StreamReader, which wakes the reading task, which passes the bytes up through the
generators. Here a connection is an asyncio protocol whose httptools parser (C, as in uvicorn)
hands each piece of body to the stream's consumer inside the same callback that read it from the
socket, so an event goes from the upstream socket to the client socket with no task switch
(meshgate/providers/streaming.py).

Keep-alive connections are pooled per upstream, at most `limit` in use at once (a stream holds
one for its whole length; callers beyond it wait their turn). A pooled connection that turns out
closed as it is reused (the upstream's idle timeout raced ours) gets the request once more on a
fresh connection, as aiohttp's, Go's and urllib3's clients do.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Protocol
from urllib.parse import urlsplit

import httptools

log = logging.getLogger("meshgate.providers")

#: How long a connection whose consumer left may take to finish its response (the terminating
#: chunk after `[DONE]`) before it is closed rather than pooled.
DETACHED_GRACE = 5.0


#: Headers the client writes itself: a configured one of the same name is left out.
_OWN_HEADERS = frozenset(
    ("host", "accept", "content-type", "content-length", "transfer-encoding", "accept-encoding", "connection")
)


class ResponseConsumer(Protocol):
    """Receives one response, from the connection's callbacks."""

    def response_started(self, status: int, headers: dict[bytes, bytes]) -> None: ...

    def response_body(self, piece: bytes) -> None: ...

    def response_ended(self) -> None: ...

    def response_lost(self, error: BaseException | None, stale: bool) -> None:
        """The connection closed before the response ended. `stale`: a reused connection that
        closed before a single response byte (the request may be sent again, once)."""


class UpstreamProtocolError(Exception):
    """The upstream's bytes are not HTTP/1.1."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    def __init__(self, pool: StreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.consumer: ResponseConsumer | None = None
        self.headers: dict[bytes, bytes] = {}
        self.in_use = False
        self.reused = False
        self.answering = False  # a response byte arrived for the current request
        self.interim = False  # the message being parsed is a 1xx before the real answer
        self.closed = False
        self.idle_since = 0.0
        self._grace: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            consumer, self.consumer = self.consumer, None
            self.close()
            if consumer is not None:
                consumer.response_lost(UpstreamProtocolError(str(exc)), False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._grace is not None:
            self._grace.cancel()
        self.pool._forget(self)
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            consumer.response_lost(exc, self.reused and not self.answering)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.answering = True
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.interim = True  # 103 Early Hints and the like: the answer is still to come
            return
        if self.consumer is not None:
            self.consumer.response_started(status, self.headers)

    def on_body(self, body: bytes) -> None:
        if self.consumer is not None:
            self.consumer.response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        consumer, self.consumer = self.consumer, None
        keep_alive = self.parser.should_keep_alive()
        if consumer is not None:
            consumer.response_ended()
        if keep_alive and not self.closed:
            self.pool.release(self)
        else:
            self.close()

    # used by the stream

    def send(self, request: bytes, consumer: ResponseConsumer) -> None:
        assert self.transport is not None and self.in_use
        self.consumer, self.answering = consumer, False
        self.transport.write(request)

    def detach(self) -> None:
        """The consumer is done, maybe before the response is (the chunk after `[DONE]`): let it
        end and come back to the pool, or close it if it does not within DETACHED_GRACE."""
        self.consumer = None
        if self.in_use and not self.closed:
            self.pause_reading(False)  # it may have ended with its consumer's valve closed
            self._grace = asyncio.get_running_loop().call_later(DETACHED_GRACE, self._grace_over)

    def abandon(self) -> None:
        """The consumer gives up mid-response (hang-up, failure): the connection cannot be reused."""
        self.consumer = None
        self.close()

    def _grace_over(self) -> None:
        if self.in_use:
            self.close()

    def pause_reading(self, paused: bool) -> None:
        if self.transport is not None and not self.closed:
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self.pool._forget(self)


class StreamPool:
    """Keep-alive connections to one upstream, for streamed calls."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        limit: int,
        connect_timeout: float,
        keepalive_timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if url.scheme == "https" else None
        self.prefix = url.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        host_header = host if url.port is None else f"{host}:{url.port}"
        lines = [f"host: {host_header}", "accept: text/event-stream", "accept-encoding: identity"]
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\0") or ":" in name:
                raise ValueError(f"header {name!r} has a character HTTP does not allow")
            if name.lower() not in _OWN_HEADERS:
                lines.append(f"{name}: {value}")
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        self.limit = limit
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[UpstreamConnection] = []  # most recently used last
        self._pruning: asyncio.TimerHandle | None = None
        self._in_use: set[UpstreamConnection] = set()

    def request(self, path: str, body: bytes) -> bytes:
        return (
            b"POST "
            + (self.prefix + path).encode("latin-1")
            + b" HTTP/1.1\r\n"
            + self._head
            + b"content-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    async def acquire(self, fresh: bool = False) -> UpstreamConnection:
        """A connection for one request: a pooled one unless `fresh`, else a new one."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        await self._slots.acquire()
        try:
            now = time.monotonic()
            while self._idle and not fresh:
                conn = self._idle.pop()
                if not conn.closed and now - conn.idle_since < self.keepalive_timeout:
                    conn.in_use, conn.reused = True, True
                    self._in_use.add(conn)
                    return conn
                conn.close()
            conn = await self._connect()
        except BaseException:
            self._slots.release()
            raise
        conn.in_use = True
        self._in_use.add(conn)
        return conn

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, protocol = await loop.create_connection(
                lambda: UpstreamConnection(self),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None,
            )
        return protocol

    def release(self, conn: UpstreamConnection) -> None:
        """The response ended on a connection that stays open: pool it."""
        if conn._grace is not None:
            conn._grace.cancel()
            conn._grace = None
        if conn.in_use:
            self._give_back(conn)
            conn.pause_reading(False)  # a stream may have ended with its consumer's valve closed
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            if self._pruning is None:
                self._pruning = asyncio.get_running_loop().call_later(self.keepalive_timeout, self._prune)

    def _prune(self) -> None:
        """Close the connections idle past the keep-alive time (the longest-idle are at the front),
        and look again when the next one will be: one timer per pool, not per connection."""
        self._pruning = None
        now = time.monotonic()
        while self._idle and now - self._idle[0].idle_since >= self.keepalive_timeout:
            self._idle.pop(0).close()
        if self._idle:
            due = self._idle[0].idle_since + self.keepalive_timeout - now
            self._pruning = asyncio.get_running_loop().call_later(due, self._prune)

    def _forget(self, conn: UpstreamConnection) -> None:
        if conn.in_use:
            self._give_back(conn)
        elif conn in self._idle:
            self._idle.remove(conn)

    def _give_back(self, conn: UpstreamConnection) -> None:
        conn.in_use = False
        self._in_use.discard(conn)
        assert self._slots is not None
        self._slots.release()

    async def close(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
            self._pruning = None
        for conn in [*self._idle, *self._in_use]:
            conn.close()
        self._idle.clear()
