"""The callback-driven HTTP/1.1 client for streamed upstream answers (meshgate/providers/stream_client.py)
and the stream it carries (meshgate/providers/sse_upstream.py), through OpenAICompatibleChat.stream().

Every upstream is a raw asyncio server, so the test decides each byte it sends and when, and sees
each connection and request the gateway makes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshgate.errors import InvalidRequest, MeshError, RateLimited, UpstreamError, UpstreamTimeout
from meshgate.protocol import ChatCompletionRequest, UserMessage
from meshgate.providers.base import CallContext, ProviderContext
from meshgate.providers.openai_compatible import OpenAICompatibleChat, OpenAICompatibleConfig
from meshgate.providers.sse_upstream import UpstreamEventStream
from meshgate.providers.streaming import Valve
from tests.sse_wire import DONE, END, HEAD, chunk, event

NAME = "streamed"  # the model's name in meshgate; "up" is the upstream's
REQUEST = ChatCompletionRequest(model=NAME, messages=[UserMessage(content="hello")], stream=True)


def answer(*events: int) -> bytes:
    """A whole streamed answer: the head, the events, `[DONE]` and the terminating chunk."""
    return HEAD + b"".join(event(i) for i in events) + DONE + END


def error_answer(status: int, reason: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: keep-alive\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Request:
    connection: int  # which connection carried it, from 1
    number: int  # which request it is overall, from 1
    on_connection: int  # which request on its connection, from 1
    line: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes


#: Answers one request; returns whether to read the next request on that connection (False: close).
Script = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Upstream:
    script: Script
    port: int = 0
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    eofs: int = 0  # connections the gateway closed (the server read EOF where a request could start)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        connection, on_connection = self.connections, 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.eofs += 1
                    return
                line, *rest = head[:-4].decode("latin-1").split("\r\n")
                raw = [(k.strip(), v.strip()) for k, v in (h.split(":", 1) for h in rest)]
                headers = {k.lower(): v for k, v in raw}
                body = await reader.readexactly(int(headers["content-length"]))
                on_connection += 1
                request = Request(connection, len(self.requests) + 1, on_connection, line, headers, raw, body)
                self.requests.append(request)
                self.log.append(f"request {request.number}")
                if not await self.script(request, reader, writer):
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[Upstream]:
    upstream = Upstream(script)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        async with server:
            yield upstream
    finally:
        for task in list(upstream.tasks):
            task.cancel()
        await asyncio.gather(*upstream.tasks, return_exceptions=True)


@asynccontextmanager
async def model_on(port: int, **options: Any) -> AsyncIterator[OpenAICompatibleChat]:
    config = OpenAICompatibleConfig(
        name=NAME,
        provider="openai-compatible",
        model="up",
        base_url=f"http://127.0.0.1:{port}/v1",
        **options,
    )
    model = OpenAICompatibleChat(config, ProviderContext(data_dir=Path(".")))
    await model.start()
    try:
        yield model
    finally:
        await model.close()


def open_stream(model: OpenAICompatibleChat) -> UpstreamEventStream:
    stream = model.stream(REQUEST, CallContext(request_id="r"))
    assert isinstance(stream, UpstreamEventStream)
    return stream


def text(event: dict[str, Any]) -> str:
    return str(event["choices"][0]["delta"]["content"])


async def collect(model: OpenAICompatibleChat, into: list[str] | None = None) -> list[str]:
    """Pull a whole stream, then close it as the pipeline does."""
    texts = [] if into is None else into
    stream = open_stream(model)
    try:
        async for item in stream:
            assert item["model"] == NAME
            texts.append(text(item))
    finally:
        await stream.aclose()
    return texts


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# 1. keep-alive


async def test_two_streams_in_a_row_share_one_connection() -> None:
    async def stream_answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(0, 1, 2))
        await writer.drain()
        return True

    async with serving(stream_answer) as upstream, model_on(upstream.port) as model:
        assert await collect(model) == ["t0", "t1", "t2"]
        assert await collect(model) == ["t0", "t1", "t2"]
    assert upstream.connections == 1
    assert [(r.connection, r.on_connection) for r in upstream.requests] == [(1, 1), (1, 2)]


async def test_a_connection_whose_terminating_chunk_comes_later_is_pooled_when_it_comes() -> None:
    ended: list[float] = []

    async def done_then_end(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD + event(0) + event(1) + DONE)
        await writer.drain()
        await asyncio.sleep(0.15)
        writer.write(END)
        await writer.drain()
        ended.append(time.monotonic())
        return True

    async with serving(done_then_end) as upstream, model_on(upstream.port) as model:
        pool = model.upstream.streams
        assert await collect(model) == ["t0", "t1"]
        finished = time.monotonic()
        assert not ended  # the stream ended at `[DONE]`, not at the terminating chunk
        await eventually(lambda: len(pool._idle) == 1)  # detached, then pooled once the response ended
        assert ended
        assert await collect(model) == ["t0", "t1"]
    assert finished < ended[0]
    assert upstream.connections == 1
    assert len(upstream.requests) == 2


# 2. a pooled connection the upstream closed


async def test_a_closed_pooled_connection_is_sent_again_on_a_fresh_one() -> None:
    async def once_per_connection(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.on_connection > 1:
            return False  # close without a byte, as an upstream whose idle timeout fired
        writer.write(answer(0, 1))
        await writer.drain()
        return True

    async with serving(once_per_connection) as upstream, model_on(upstream.port) as model:
        assert await collect(model) == ["t0", "t1"]
        assert await collect(model) == ["t0", "t1"]
    assert upstream.connections == 2
    assert len(upstream.requests) == 3
    assert [(r.connection, r.on_connection) for r in upstream.requests] == [(1, 1), (1, 2), (2, 1)]


async def test_a_stale_connection_is_retried_only_once() -> None:
    async def only_the_first(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.number > 1:
            return False  # the reused connection and the fresh one both close without a byte
        writer.write(answer(0))
        await writer.drain()
        return True

    async with serving(only_the_first) as upstream, model_on(upstream.port) as model:
        assert await collect(model) == ["t0"]
        with pytest.raises(UpstreamError) as caught:
            await collect(model)
        await asyncio.sleep(0.1)  # time for a third try, if one were (wrongly) made
    assert type(caught.value) is UpstreamError
    assert caught.value.status == 502
    assert "failed before an answer" in caught.value.message
    assert upstream.connections == 2
    assert len(upstream.requests) == 3


# 3. HTTP status errors


@pytest.mark.parametrize(
    ("status", "reason", "extra", "check"),
    [
        (
            400,
            "Bad Request",
            "",
            lambda e: type(e) is InvalidRequest and "rejected the request: upstream says no" in e.message,
        ),
        (
            401,
            "Unauthorized",
            "",
            lambda e: type(e) is UpstreamError and "credentials" in e.message and e.upstream_status == 401,
        ),
        (429, "Too Many Requests", "retry-after: 7\r\n", lambda e: type(e) is RateLimited and e.retry_after == 7),
        (
            500,
            "Internal Server Error",
            "",
            lambda e: type(e) is UpstreamError and e.status == 502 and e.upstream_status == 500,
        ),
    ],
)
async def test_an_error_status_maps_to_its_error_and_the_connection_is_kept(
    status: int, reason: str, extra: str, check: Callable[[MeshError], bool]
) -> None:
    async def error_first(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.number == 1:
            writer.write(error_answer(status, reason, "upstream says no", extra))
        else:
            writer.write(answer(0, 1))
        await writer.drain()
        return True

    async with serving(error_first) as upstream, model_on(upstream.port) as model:
        with pytest.raises(MeshError) as caught:
            await collect(model)
        assert check(caught.value), (type(caught.value), caught.value.message, vars(caught.value))
        assert await collect(model) == ["t0", "t1"]
    assert upstream.connections == 1
    assert len(upstream.requests) == 2


async def test_an_error_status_whose_body_ends_with_the_connection_keeps_its_meaning() -> None:
    async def close_delimited(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 7\r\n"
            b"connection: close\r\n\r\n" + json.dumps({"error": {"message": "slow down"}}).encode()
        )
        await writer.drain()
        return False

    async with serving(close_delimited) as upstream, model_on(upstream.port) as model:
        with pytest.raises(MeshError) as caught:
            await collect(model)
    assert isinstance(caught.value, RateLimited), caught.value.message
    assert caught.value.retry_after == 7


# 4. - 7. failures


@pytest.mark.parametrize("ending", ["close", "terminating chunk"])
async def test_a_stream_without_done_ends_early(ending: str) -> None:
    async def no_done(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD + event(0) + event(1))
        await writer.drain()
        await asyncio.sleep(0.05)
        if ending == "close":
            return False
        writer.write(END)
        await writer.drain()
        return True

    received: list[str] = []
    async with serving(no_done) as upstream, model_on(upstream.port) as model:
        with pytest.raises(UpstreamError) as caught:
            await collect(model, into=received)
    assert received == ["t0", "t1"]
    assert "ended the stream early (no [DONE])" in caught.value.message
    assert caught.value.status == 502


async def test_an_upstream_that_does_not_speak_http_is_broken_http() -> None:
    async def not_http(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"hello, this is not HTTP at all\r\n\r\n")
        await writer.drain()
        return True  # and keep the connection open: the failure is the bytes, not a close

    async with serving(not_http) as upstream, model_on(upstream.port) as model:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            await collect(model)
        assert time.monotonic() - started < 2
        await eventually(lambda: upstream.eofs == 1)  # the gateway closed the connection
    assert "broken HTTP" in caught.value.message
    assert caught.value.status == 502


async def test_an_upstream_nobody_listens_for_is_unreachable() -> None:
    port = unused_port()
    async with model_on(port, connect_timeout=2.0) as model:
        with pytest.raises(UpstreamError) as caught:
            await collect(model)
    assert f"unreachable at http://127.0.0.1:{port}/v1" in caught.value.message
    assert caught.value.status == 502
    assert model.upstream.streams._slots is not None
    assert not model.upstream.streams._slots.locked()  # the slot was given back


@pytest.mark.parametrize(
    ("bad_event", "message"),
    [
        (b'data: {"error": {"message": "boom"}}\n\n', "failed mid-stream: boom"),
        (b"data: {not json\n\n", "sent an unreadable stream event"),
    ],
    ids=["error-event", "unreadable-event"],
)
async def test_a_bad_event_mid_stream_fails_the_stream(bad_event: bytes, message: str) -> None:
    async def bad(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD + event(0) + chunk(bad_event))
        await writer.drain()
        return True

    received: list[str] = []
    async with serving(bad) as upstream, model_on(upstream.port) as model:
        with pytest.raises(UpstreamError) as caught:
            await collect(model, into=received)
        await eventually(lambda: upstream.eofs == 1)  # mid-response: the connection cannot be reused
    assert received == ["t0"]
    assert message in caught.value.message


# 8. max_connections


async def test_with_one_connection_a_second_stream_waits_for_the_first() -> None:
    async def slow_answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD + event(0))
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(event(1) + DONE + END)
        await writer.drain()
        upstream.log.append(f"end {request.number}")
        return True

    async with serving(slow_answer) as upstream, model_on(upstream.port, max_connections=1) as model:
        first, second = await asyncio.gather(collect(model), collect(model))
    assert first == second == ["t0", "t1"]
    assert upstream.log == ["request 1", "end 1", "request 2", "end 2"]
    assert upstream.connections == 1


# 9. what is sent


async def test_what_is_sent_upstream() -> None:
    async def stream_answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(0))
        await writer.drain()
        return True

    headers = {"x-team": "blue", "OpenAI-Organization": "org-1"}
    async with serving(stream_answer) as upstream:
        async with model_on(upstream.port, api_key="sk-secret", headers=headers) as model:
            assert await collect(model) == ["t0"]
        async with model_on(upstream.port) as model:
            assert await collect(model) == ["t0"]
    keyed, keyless = upstream.requests
    assert keyed.line == "POST /v1/chat/completions HTTP/1.1"
    assert keyed.headers["host"] == f"127.0.0.1:{upstream.port}"
    assert keyed.headers["authorization"] == "Bearer sk-secret"
    assert keyed.headers["x-team"] == "blue"
    assert keyed.headers["openai-organization"] == "org-1"
    assert keyed.headers["content-type"] == "application/json"
    assert int(keyed.headers["content-length"]) == len(keyed.body)
    names = [name.lower() for name, _ in keyed.raw_headers]
    assert len(names) == len(set(names)), names  # no header twice
    body = json.loads(keyed.body)
    assert body["stream"] is True
    assert body["model"] == "up"
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert "authorization" not in keyless.headers
    assert "x-team" not in keyless.headers
    assert int(keyless.headers["content-length"]) == len(keyless.body)


@pytest.mark.parametrize(
    "headers",
    [{"x-evil": "a\r\nx-injected: 1"}, {"x-evil": "a\nb"}, {"x-evil\r\nx-injected": "1"}, {"x:evil": "1"}],
)
def test_a_header_http_does_not_allow_is_refused_when_the_model_is_built(headers: dict[str, str]) -> None:
    config = OpenAICompatibleConfig(
        name=NAME, provider="openai-compatible", model="up", base_url="http://127.0.0.1:9/v1", headers=headers
    )
    with pytest.raises(ValueError, match="HTTP does not allow"):
        OpenAICompatibleChat(config, ProviderContext(data_dir=Path(".")))


# 10. push mode


async def test_relay_pushes_every_event_in_order() -> None:
    async def paced(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD)
        for i in range(6):
            writer.write(event(i))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(DONE + END)
        await writer.drain()
        return True

    async with serving(paced) as upstream, model_on(upstream.port) as model:
        stream = open_stream(model)
        delivered: list[dict[str, Any]] = []
        try:
            first = await anext(stream)
            await stream.relay(delivered.append, Valve())
        finally:
            await stream.aclose()
        assert [text(e) for e in [first, *delivered]] == [f"t{i}" for i in range(6)]
        assert all(e["model"] == NAME for e in [first, *delivered])
        assert await collect(model) == [f"t{i}" for i in range(6)]  # and the connection was pooled
    assert upstream.connections == 1


async def test_a_paused_valve_stops_reading_the_upstream_and_is_no_read_timeout() -> None:
    written: list[int] = []

    async def paced(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD)
        for i in range(10):
            writer.write(event(i))
            await writer.drain()
            written.append(i)
            await asyncio.sleep(0.03)
        writer.write(DONE + END)
        await writer.drain()
        return True

    loop = asyncio.get_running_loop()
    # read_timeout 0.2: the pause below lasts 0.6 s.
    async with serving(paced) as upstream, model_on(upstream.port, read_timeout=0.2) as model:
        stream = open_stream(model)
        valve = Valve()
        received: list[str] = []
        seen: list[tuple[int, bool, int]] = []  # (delivered, socket reading, events written upstream)

        def look() -> None:
            assert stream.conn is not None and stream.conn.transport is not None
            seen.append((len(received), stream.conn.transport.is_reading(), len(written)))

        def deliver(item: dict[str, Any]) -> None:
            assert item["model"] == NAME
            received.append(text(item))
            if len(received) == 2:
                valve.pause()
                loop.call_later(0.1, look)
                loop.call_later(0.55, look)
                loop.call_later(0.6, valve.resume)

        try:
            first = await anext(stream)
            deliver(first)
            await stream.relay(deliver, valve)
        finally:
            await stream.aclose()
    assert received == [f"t{i}" for i in range(10)]
    (early, reading_early, _), (late, reading_late, written_late) = seen
    assert not reading_early and not reading_late
    assert early == late < 10  # nothing delivered while paused
    assert written_late == 10 > late  # although the upstream kept writing


async def test_a_stream_ending_while_paused_leaves_a_usable_connection() -> None:
    async def last_in_one_write(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD + event(0))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(event(1) + event(2) + DONE + END)  # one read: the last events, [DONE] and the end
        await writer.drain()
        return True

    async with serving(last_in_one_write) as upstream, model_on(upstream.port, read_timeout=0.3) as model:
        stream = open_stream(model)
        valve = Valve()
        received: list[str] = []

        def deliver(item: dict[str, Any]) -> None:
            received.append(text(item))
            if len(received) == 2:
                valve.pause()  # the client is slow just as the answer ends

        try:
            await anext(stream)
            await stream.relay(deliver, valve)
        finally:
            await stream.aclose()
        valve.resume()
        assert received == ["t1", "t2"]
        assert upstream.connections == 1
        assert await collect(model) == ["t0", "t1", "t2"]  # on the pooled connection


async def test_relay_after_a_full_read_ahead_buffer_gets_the_rest() -> None:
    async def burst(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD + b"".join(event(i) for i in range(300)))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(event(300) + DONE + END)
        await writer.drain()
        return True

    async with serving(burst) as upstream, model_on(upstream.port, read_timeout=0.3) as model:
        stream = open_stream(model)
        received: list[str] = []
        try:
            received.append(text(await anext(stream)))
            await asyncio.sleep(0.15)  # the pipeline's sink.start() (the client's response head)
            await stream.relay(lambda item: received.append(text(item)), Valve())
        finally:
            await stream.aclose()
    assert received == [f"t{i}" for i in range(301)]


# 11. total timeout


async def test_the_total_timeout_ends_a_stream_that_keeps_going() -> None:
    async def forever(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD)
        for i in range(100):  # ten seconds, far past the timeout; cancelled when the test ends
            writer.write(event(i))
            await writer.drain()
            await asyncio.sleep(0.1)
        return False

    received: list[str] = []
    async with serving(forever) as upstream, model_on(upstream.port, timeout=0.3, read_timeout=5.0) as model:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as caught:
            await collect(model, into=received)
        waited = time.monotonic() - started
    assert "did not answer in time" in caught.value.message
    assert caught.value.status == 504
    assert 0.25 < waited < 2
    assert 1 <= len(received) < 10
    assert received == [f"t{i}" for i in range(len(received))]


async def test_the_total_timeout_covers_the_wait_for_a_connection() -> None:
    async def no_terminating_chunk(
        request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(HEAD + event(0) + DONE)
        await writer.drain()
        await asyncio.sleep(10)  # the terminating chunk never comes: the first stream holds the slot
        return False

    async with (
        serving(no_terminating_chunk) as upstream,
        model_on(upstream.port, max_connections=1, timeout=0.3) as model,
    ):
        assert await collect(model) == ["t0"]  # detached: its connection waits DETACHED_GRACE (5 s)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(collect(model), 1.5)
        assert time.monotonic() - started < 1.0


# 12. a failing consumer


async def test_a_raise_in_deliver_ends_relay_and_closes_the_connection() -> None:
    async def endless_then_normal(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.connection > 1:
            writer.write(answer(0))
            await writer.drain()
            return True
        writer.write(HEAD)
        eof = asyncio.ensure_future(reader.read(1))
        try:
            for i in range(100):
                if eof.done():
                    assert eof.result() == b""
                    upstream.log.append("eof")
                    return False
                writer.write(event(i))
                await writer.drain()
                await asyncio.sleep(0.02)
        finally:
            eof.cancel()
        return False

    class ClientGone(Exception):
        pass

    async with serving(endless_then_normal) as upstream, model_on(upstream.port, max_connections=1) as model:
        stream = open_stream(model)
        received: list[str] = []

        def deliver(item: dict[str, Any]) -> None:
            received.append(text(item))
            if len(received) == 3:
                raise ClientGone

        started = time.monotonic()
        try:
            received.append(text(await anext(stream)))
            with pytest.raises(ClientGone):
                await stream.relay(deliver, Valve())
        finally:
            await eventually(lambda: "eof" in upstream.log)  # before aclose(): relay() itself closed it
            await stream.aclose()
        assert time.monotonic() - started < 2
        assert received == ["t0", "t1", "t2"]
        assert await collect(model) == ["t0"]  # the one connection slot was given back
    assert upstream.connections == 2


# 13. TLS (cloud upstreams are https)


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost`, and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_an_https_upstream_streams_over_tls_and_is_verified(
    tls_cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_cert
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)

    async def stream_answer(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(0, 1))
        await writer.drain()
        return True

    upstream = Upstream(stream_answer)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    config = {"name": NAME, "provider": "openai-compatible", "model": "up", "base_url": f"https://localhost:{port}/v1"}
    async with server:
        # Not trusted: the certificate is verified, and the failure is an upstream error.
        untrusted = OpenAICompatibleChat(OpenAICompatibleConfig(**config), ProviderContext(data_dir=Path(".")))
        await untrusted.start()
        try:
            with pytest.raises(UpstreamError):
                await collect(untrusted)
        finally:
            await untrusted.close()
        # Trusted (the system's trust store, pointed at this certificate): the stream arrives.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusted = OpenAICompatibleChat(OpenAICompatibleConfig(**config), ProviderContext(data_dir=Path(".")))
        await trusted.start()
        try:
            assert await collect(trusted) == ["t0", "t1"]
            assert await collect(trusted) == ["t0", "t1"]  # over the same TLS connection
        finally:
            await trusted.close()
        for task in list(upstream.tasks):
            task.cancel()
        await asyncio.gather(*upstream.tasks, return_exceptions=True)
    assert upstream.requests[-1].headers["host"] == f"localhost:{port}"
    assert [r.connection for r in upstream.requests] == [1, 1]  # the refused handshake never got to it
