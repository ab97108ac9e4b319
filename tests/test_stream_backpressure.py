"""A client that stops reading holds the upstream back, through a real uvicorn socket.

The response is read raw, so its chunked framing is taken apart here.

Stream events are pushed from the upstream's read callback straight into the server's `send`.
When the client does not read, that send has to wait: the gateway must then stop reading the
upstream (not buffer the stream in memory), and deliver every event, in order, once the client
reads again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn

from tests.conftest import AppClient, free_port, make_runtime
from tests.sse_wire import DONE, END, HEAD, event

EVENTS = 2000
CONTENT = "x" * 16_000  # 32 MB in all: more than every socket buffer on the way can hold


class FastUpstream:
    """Writes all events as fast as its reader takes them, and notes when it got rid of the last."""

    def __init__(self) -> None:
        self.finished_at: float | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        writer.write(HEAD)
        try:
            for i in range(EVENTS):
                writer.write(event(i, f"{i}:{CONTENT}"))
                await writer.drain()
            writer.write(DONE + END)
            await writer.drain()
            self.finished_at = time.monotonic()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture(params=["httptools", "h11"])
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[FastUpstream, int, str]]:
    """meshgate behind uvicorn with either HTTP protocol: with httptools the writer writes chunks to
    the transport itself; with h11 it drives plain ASGI sends, which then really wait."""
    upstream = FastUpstream()
    listener = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream_port = listener.sockets[0].getsockname()[1]
    runtime = make_runtime(
        tmp_path,
        f"""
        models:
          - name: fast
            provider: openai-compatible
            model: up
            base_url: http://127.0.0.1:{upstream_port}/v1
        """,
    )
    client = await AppClient.started(runtime)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="error", lifespan="off", http=request.param)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.02)
    assert client.key is not None
    try:
        async with listener:
            yield upstream, port, client.key
    finally:
        server.should_exit = True
        await task
        await client.http.aclose()
        await runtime.stop()


async def test_a_client_that_stops_reading_pauses_the_upstream_and_loses_nothing(
    served: tuple[FastUpstream, int, str],
) -> None:
    upstream, port, key = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data, reading_from = await _stream_with_a_pause(reader, writer, key)
    finally:
        writer.close()  # else the server's shutdown would wait for this connection
    assert upstream.finished_at is not None and upstream.finished_at >= reading_from, "the upstream was not held"

    payloads = [line[6:] for line in dechunk(data).split(b"\n") if line.startswith(b"data: ")]
    assert payloads[-1] == b"[DONE]"
    indexes = [int(json.loads(p)["choices"][0]["delta"]["content"].split(":")[0]) for p in payloads[:-1]]
    assert indexes == list(range(EVENTS))  # every event, in order


async def _stream_with_a_pause(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: str
) -> tuple[bytes, float]:
    """Ask for the stream, read nothing for a second, then read it all: (body, when reading began)."""
    body = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: meshgate\r\nconnection: close\r\n"
        b"content-type: application/json\r\n"
        + f"authorization: Bearer {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.sleep(1.0)  # not reading: the buffers on the way fill up, then the upstream must wait
    reading_from = time.monotonic()
    data = await asyncio.wait_for(reader.read(-1), timeout=60)  # closed after the response (connection: close)
    return data, reading_from


def dechunk(rest: bytes) -> bytes:
    """A chunked HTTP/1.1 body, taken apart."""
    body = bytearray()
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return bytes(body)
        body += rest[:size]
        rest = rest[size + 2 :]
